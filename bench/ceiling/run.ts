/**
 * `npm run bench:ceiling` (root, Linux): how fast can each client go when the origin is not the
 * limit? nginx on loopback serves a safetensors model from memory with sendfile (HTTP) or from memory
 * through user-space TLS (HTTPS), and each contender stages it to a tmpfs, so what is left to measure
 * is the client: its throughput and the CPU it spends per GiB, and for coldstart its main thread's.
 * The origin is NOT S3 (see origin.ts for what it answers and what it does not).
 *
 *   1. apt-get installs what is missing (nginx-light, rclone, gnuplot-nox, time); a tmpfs is mounted,
 *      sized for the origin's copy of the model and one destination
 *   2. the model is generated on the tmpfs (real safetensors shards, index, config), nginx starts on
 *      two loopback ports (HTTP, HTTPS with a CA made here) and the bench checks it answers as the
 *      clients need, with the AWS SDK v3 as coldstart uses it
 *   3. per run, every contender stages the model over every protocol into a fresh directory, the
 *      order rotating run by run; every file is SHA-256-checked against the source: a wrong or
 *      missing file fails the run, and a failed run is reported, never counted
 *   4. a table on stdout, bench/RESULTS-ceiling.md and bench/results-ceiling.png
 *   5. nginx is stopped and the tmpfs unmounted on every way out, ^C included
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream, existsSync, mkdirSync, readdirSync, readFileSync, statSync } from "node:fs";
import { readFile, rm, writeFile } from "node:fs/promises";
import { cpus, loadavg, release, totalmem } from "node:os";
import { join, relative, resolve } from "node:path";
import { pipeline } from "node:stream/promises";
import { Command, InvalidArgumentError } from "commander";
import { count, gitCommit, list, positive, tryRun } from "../lab/tools.js";
import { CONTENDER_IDS, type Contender, contenderEnv, findContenders, type Target } from "./contenders.js";
import { CLK_TCK, log, machineBusySeconds, mountTmpfs, preflight, settle } from "./machine.js";
import { type ModelFile, writeModel } from "./model.js";
import { checkOrigin, type Origin, type Protocol, startOrigin } from "./origin.js";
import { chart, machineTable, runTable, type Sample, summarize, table, threadTable } from "./results.js";
import { withTeardown } from "./teardown.js";

const ROOT = resolve(import.meta.dirname, "../..");
// Node 20 here; the image ships Node 24 (see src/cli/bin.ts). The self-check uses the SDK in-process.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";
const REPORT_USAGE = resolve(ROOT, "bench/lib/report-usage.mjs");
const THREAD_USAGE = resolve(import.meta.dirname, "thread-usage.mjs");
const BUCKET = "bucket";
const PREFIX = "model/";
const GIB = 2 ** 30;
const MIB = 2 ** 20;
const RUN_TIMEOUT_MS = 10 * 60_000;
const NOT_S3 =
  "the origin is nginx on loopback, NOT S3: static files, a static listing, no auth, no checksums, " +
  "no multipart objects, no per-connection limits; it measures the client, not a network or S3";

const program = new Command("bench:ceiling")
  .description("coldstart pull and the baselines against nginx on loopback: the client is the limit")
  .option("--size-gib <n>", "tensor data in the model, GiB", positive, 2)
  .option("--shards <n>", "safetensors shards the model is split into", count, 4)
  .option("--runs <n>", "runs of every contender over every protocol", count, 3)
  .option("--tools <ids>", `comma-separated subset of ${CONTENDER_IDS.join(",")}`, list)
  .option("--protocols <list>", "comma-separated subset of http,https", list, ["http", "https"])
  .option("--results <file>", "where the markdown goes", resolve(ROOT, "bench/RESULTS-ceiling.md"))
  .option("--chart <file>", "where the PNG chart goes", resolve(ROOT, "bench/results-ceiling.png"))
  .option("--work <dir>", "where the tmpfs is mounted (on a fresh directory inside)", "/tmp")
  .option(
    "--settle <seconds>",
    "before each run, wait up to this long for a second in which the machine is idle (under 0.2 busy cores)",
    positive,
    120,
  )
  .option("--note <text>", "a line for the results, e.g. what else the machine was running");
program.parse(process.argv);
const opts = program.opts<{
  sizeGib: number;
  shards: number;
  runs: number;
  tools?: string[];
  protocols: string[];
  results: string;
  chart: string;
  work: string;
  settle: number;
  note?: string;
}>();
for (const p of opts.protocols)
  if (p !== "http" && p !== "https") throw new InvalidArgumentError(`unknown protocol "${p}" (http, https)`);
const protocols = opts.protocols as Protocol[];

preflight(
  "bench:ceiling",
  [
    ["nginx", "nginx-light"],
    ["rclone", "rclone"],
    ["gnuplot", "gnuplot-nox"],
    ["/usr/bin/time", "time"],
    ["openssl", "openssl"],
    ["umount", "mount"],
  ],
  ROOT,
);
const { found, missing } = findContenders();
for (const id of opts.tools ?? [])
  if (!(CONTENDER_IDS as readonly string[]).includes(id))
    throw new InvalidArgumentError(`unknown contender "${id}" (${CONTENDER_IDS.join(", ")})`);
const contenders = found.filter((c) => !opts.tools || opts.tools.includes(c.id));
const skipped = missing.filter((m) => !opts.tools || opts.tools.some((id) => m.startsWith(`${id} `)));
if (!contenders.length) throw new Error(`none of ${opts.tools?.join(", ")} is installed`);
// Read before anything is written: the results are rewritten by this run.
const COMMIT = gitCommit(
  ROOT,
  [opts.results, opts.chart].map((f) => relative(ROOT, f)).filter((f) => !f.startsWith("..")),
);
const stressAtStart = busyWith();
const samples: Sample[] = [];
const failures: { contender: string; protocol: Protocol; run: number; why: string }[] = [];
let current: ChildProcess | undefined;

log(`ceiling: ${NOT_S3}`);
for (const m of skipped) log(`ceiling: skipped: ${m}`);

await withTeardown(async (teardown) => {
  // The origin's copy of the model and one destination at a time.
  const mount = mountTmpfs(teardown, {
    work: opts.work,
    name: "coldstart-ceiling",
    sizeBytes: 2 * opts.sizeGib * GIB + 512 * MIB,
    needBytes: 2 * opts.sizeGib * GIB + 1536 * MIB,
  });
  log(`ceiling: tmpfs on ${mount}`);
  const started = Date.now();
  const files = writeModel(join(mount, "origin", BUCKET, PREFIX), opts.sizeGib * GIB, opts.shards);
  const bytes = files.reduce((n, f) => n + f.size, 0);
  log(
    `ceiling: model: ${files.length} files, ${(bytes / GIB).toFixed(2)} GiB, written in ${((Date.now() - started) / 1000).toFixed(1)} s`,
  );
  const originOptions = {
    dir: join(mount, "nginx"),
    root: join(mount, "origin"),
    bucket: BUCKET,
    prefix: PREFIX,
    files,
  };
  const origin = await startOrigin(originOptions, teardown);
  log(`ceiling: ${origin.version}: ${protocols.map((p) => origin.endpoints[p]).join(", ")}`);
  const verification: string[] = [];
  for (const p of protocols) {
    const { ok, report } = await checkOrigin(origin, originOptions, p);
    for (const l of report) log(`  ${l}`);
    verification.push(...report);
    if (!ok)
      throw new Error("the origin does not answer as the contenders need (see above): nothing measured");
  }
  const home = join(mount, "home");
  mkdirSync(home, { recursive: true });
  const env = contenderEnv(home, origin.caFile);
  teardown.add("stop the contender running", () => {
    if (current) killGroup(current);
  });

  // One unmeasured pass per protocol first: the first bytes written to a fresh tmpfs cost more here
  // (in this VM, first-touch of guest memory: a first run measured twice the system time).
  const floor = found.find((c) => c.id === "node-ranged");
  if (floor)
    for (const protocol of protocols) {
      const dest = join(mount, "dest", `warm-up-${protocol}`);
      const target = { protocol, endpoint: origin.endpoints[protocol], bucket: BUCKET, prefix: PREFIX, dest };
      const got = await measure(
        floor,
        { ...target, caFile: origin.caFile },
        env,
        origin,
        join(mount, "usage"),
      );
      await rm(dest, { recursive: true, force: true });
      log(
        `warm-up ${protocol} (not counted): ${"why" in got ? `FAILED: ${got.why}` : `${got.wallSeconds.toFixed(2)} s`}`,
      );
    }

  for (let run = 0; run < opts.runs; run++) {
    // Rotate who goes first, and alternate the protocols: the machine drifts.
    const order = run % 2 ? [...protocols].reverse() : protocols;
    for (const protocol of order) {
      for (const c of contenders.map((_, i) => contenders[(i + run) % contenders.length] as Contender)) {
        const dest = join(mount, "dest", `${run + 1}-${c.id}-${protocol}`);
        const target: Target = {
          protocol,
          endpoint: origin.endpoints[protocol],
          bucket: BUCKET,
          prefix: PREFIX,
          dest,
          caFile: origin.caFile,
        };
        // This bench is idle between runs: whatever is busy then is someone else.
        const idleBefore = await settle("ceiling", opts.settle);
        const got = await measure(c, target, env, origin, join(mount, "usage"));
        const why = "why" in got ? got.why : await checkDigests(dest, files);
        await rm(dest, { recursive: true, force: true });
        const tag = `run ${run + 1}/${opts.runs} ${protocol} ${c.id}`;
        if (why !== null || "why" in got) {
          failures.push({ contender: c.name, protocol, run, why: why ?? "?" });
          log(`${tag}: FAILED: ${why}`);
          continue;
        }
        const sample: Sample = { contender: c.name, protocol, run, bytes, ...got, busyBefore: idleBefore };
        samples.push(sample);
        log(
          `${tag}: ${(bytes / GIB / got.wallSeconds).toFixed(2)} GiB/s, ${got.wallSeconds.toFixed(2)} s, ` +
            `${(got.userSeconds + got.systemSeconds).toFixed(2)} CPU-s` +
            (got.mainThreadSeconds !== undefined
              ? ` (main thread ${got.mainThreadSeconds.toFixed(2)})`
              : "") +
            `, ${(got.maxRssBytes / 1e6).toFixed(0)} MB, ${got.requests} requests; ` +
            `rest of the machine ${Math.max(0, got.machineSeconds - got.originSeconds - got.userSeconds - got.systemSeconds).toFixed(2)} CPU-s, ` +
            `${idleBefore.toFixed(2)} busy cores before`,
        );
      }
    }
  }
  await publish(files, bytes, origin, verification, mount);
});

/** What else is keeping the machine busy: stress-ng's pids, if any. */
function busyWith(): string {
  return tryRun("pgrep", ["stress-ng"])?.split("\n").join(" ") ?? "";
}

/** SIGKILLs a contender's process group (it runs in its own) and waits until its leader has exited. */
function killGroup(child: ChildProcess): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, "SIGKILL");
  } catch {
    return;
  }
  const pause = new Int32Array(new SharedArrayBuffer(4));
  for (let i = 0; i < 100; i++) {
    try {
      const stat = readFileSync(`/proc/${child.pid}/stat`, "utf8");
      if (stat[stat.lastIndexOf(")") + 2] === "Z") return;
    } catch {
      return;
    }
    Atomics.wait(pause, 0, 0, 50);
  }
}

type Measured = Omit<Sample, "contender" | "protocol" | "run" | "bytes" | "busyBefore">;

async function measure(
  c: Contender,
  t: Target,
  baseEnv: NodeJS.ProcessEnv,
  origin: Origin,
  scratch: string,
): Promise<Measured | { why: string }> {
  mkdirSync(scratch, { recursive: true });
  const usageFile = join(scratch, `${t.protocol}-${c.id}-${Date.now()}.usage`);
  const threadsFile = `${usageFile}.threads`;
  const [program, args] = c.command(t);
  const [cmd, argv, env] =
    c.kind === "node"
      ? [
          process.execPath,
          ["--import", REPORT_USAGE, "--import", THREAD_USAGE, program, ...args],
          { ...baseEnv, BENCH_USAGE_FILE: usageFile, BENCH_THREADS_FILE: threadsFile },
        ]
      : // GNU time: the command's own and its reaped children's CPU, and its largest process's RSS.
        ["/usr/bin/time", ["-f", "%U %S %M", "-o", usageFile, program, ...args], baseEnv];
  const logMark = statSync(origin.accessLog).size;
  const load1 = loadavg()[0] ?? 0;
  const before = { machine: machineBusySeconds(), origin: processTreeSeconds(origin.pid) };
  const startedAt = process.hrtime.bigint();
  // Its own process group, so a timeout or a ^C takes the whole command (time and its child) down.
  const child = spawn(cmd, argv, { env, detached: true, stdio: ["ignore", "pipe", "pipe"] });
  current = child;
  let out = "";
  const keep = (d: Buffer) => {
    out = (out + d.toString()).slice(-16_384);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  const timer = setTimeout(() => killGroup(child), RUN_TIMEOUT_MS);
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((done) =>
    child.once("close", (c, s) => done([c, s])),
  );
  clearTimeout(timer);
  current = undefined;
  const wallSeconds = Number(process.hrtime.bigint() - startedAt) / 1e9;
  const machineSeconds = machineBusySeconds() - before.machine;
  const originSeconds = processTreeSeconds(origin.pid) - before.origin;
  const requests = readFileSync(origin.accessLog)
    .subarray(logMark)
    .toString()
    .split("\n")
    .filter(Boolean).length;
  if (code !== 0) {
    const tail = out.trim().split("\n").slice(-3).join(" | ");
    return { why: `exit ${code ?? signal}: ${tail}` };
  }
  if (c.kind === "external") {
    const [user, system, rssKb] =
      (await readFile(usageFile, "utf8")).trim().split("\n").pop()?.split(" ").map(Number) ?? [];
    if (user === undefined || system === undefined || rssKb === undefined)
      return { why: "no usage from /usr/bin/time" };
    return {
      wallSeconds,
      userSeconds: user,
      systemSeconds: system,
      maxRssBytes: rssKb * 1024,
      requests,
      load1,
      originSeconds,
      machineSeconds,
    };
  }
  const usage = JSON.parse((await readFile(usageFile, "utf8")).trim().split("\n")[0] ?? "{}") as {
    userSeconds: number;
    systemSeconds: number;
    maxRssBytes: number;
  };
  const threadsLine = JSON.parse((await readFile(threadsFile, "utf8")).trim().split("\n")[0] ?? "{}") as {
    pid: number;
    threads: { tid: number; name: string; userTicks: number; systemTicks: number }[];
  };
  // Node 20 names every other thread "node". Their user time is mostly V8's platform workers (GC),
  // their system time mostly libuv's pool (file writes): split that way, not by name.
  const threads: Record<string, number> = { main: 0, "others: user": 0, "others: system": 0 };
  let mainThreadSeconds: number | undefined;
  for (const th of threadsLine.threads) {
    if (th.tid === threadsLine.pid) {
      mainThreadSeconds = (th.userTicks + th.systemTicks) / CLK_TCK;
      threads.main = mainThreadSeconds;
      continue;
    }
    threads["others: user"] = (threads["others: user"] ?? 0) + th.userTicks / CLK_TCK;
    threads["others: system"] = (threads["others: system"] ?? 0) + th.systemTicks / CLK_TCK;
  }
  const job = /staged .* in ([\d.]+)s/.exec(out)?.[1];
  return {
    wallSeconds,
    userSeconds: usage.userSeconds,
    systemSeconds: usage.systemSeconds,
    maxRssBytes: usage.maxRssBytes,
    ...(mainThreadSeconds !== undefined ? { mainThreadSeconds } : {}),
    threads,
    ...(job ? { jobSeconds: Number(job) } : {}),
    requests,
    load1,
    originSeconds,
    machineSeconds,
  };
}

/** User + system CPU-seconds of a process and its live children (nginx's master and workers). */
function processTreeSeconds(pid: number): number {
  let ticks = 0;
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, "utf8");
    } catch {
      continue;
    }
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // Fields from 3 on: ppid is field 4, utime and stime fields 14 and 15.
    if (Number(entry) === pid || Number(f[1]) === pid) ticks += Number(f[11]) + Number(f[12]);
  }
  return ticks / CLK_TCK;
}

/** null when every file is there with the source's bytes; else what is wrong. */
async function checkDigests(dest: string, files: ModelFile[]): Promise<string | null> {
  for (const f of files) {
    const path = join(dest, f.relPath);
    if (!existsSync(path)) return `missing ${f.relPath}`;
    const h = createHash("sha256");
    await pipeline(createReadStream(path, { highWaterMark: 1 << 20 }), h);
    const got = h.digest("hex");
    if (got !== f.sha256) return `${f.relPath}: sha256 ${got}, source ${f.sha256}`;
  }
  return null;
}

function machine(origin: Origin): string[] {
  const cpu = cpus();
  const version = (cmd: string, args: string[], re: RegExp) => re.exec(tryRun(cmd, args) ?? "")?.[1] ?? "?";
  return [
    `CPU: ${cpu.length} × ${cpu[0]?.model.trim() ?? "?"}; ${(totalmem() / GIB).toFixed(0)} GiB memory; Linux ${release()}`,
    `Node ${process.version} (OpenSSL ${process.versions.openssl}); ${origin.version}; ` +
      `system OpenSSL ${version("openssl", ["version"], /OpenSSL (\S+)/)}`,
    `Contenders: ${contenders.map((c) => c.version).join("; ")}`,
  ];
}

async function publish(
  files: ModelFile[],
  bytes: number,
  origin: Origin,
  verification: string[],
  scratch: string,
): Promise<void> {
  if (samples.length === 0) {
    for (const f of failures) log(`${f.contender}, ${f.protocol}, run ${f.run + 1}: ${f.why}`);
    throw new Error("every run failed: nothing to publish");
  }
  const rows = summarize(samples);
  const title = `coldstart and the baselines against nginx on loopback (not S3): ${(bytes / GIB).toFixed(2)} GiB in ${opts.shards} shards, ${opts.runs} run${opts.runs === 1 ? "" : "s"}`;
  const data = { speed: join(scratch, "speed.dat"), cpu: join(scratch, "cpu.dat"), png: opts.chart };
  const drawn = chart(rows, data, title, Object.fromEntries(contenders.map((c) => [c.name, c.short])));
  await writeFile(data.speed, drawn.speed);
  await writeFile(data.cpu, drawn.cpu);
  execFileSync("gnuplot", [], { input: drawn.script, stdio: ["pipe", "inherit", "inherit"] });

  const loads = samples.map((s) => s.load1);
  const stressAtEnd = busyWith();
  const command = [
    "npm run bench:ceiling",
    ...(process.argv.length > 2 ? ["--", ...process.argv.slice(2)] : []),
  ];
  const shards = files.filter((f) => f.relPath.endsWith(".safetensors"));
  const md = [
    "# Ceiling bench results",
    "",
    `> **The origin is not S3.** It is nginx on loopback serving files from a tmpfs with sendfile, a static ListObjectsV2 document, no authentication, checksums or multipart objects, and no per-connection limits. These numbers are what each client can do when nothing but the client and this machine's CPU limit it; they say nothing about S3 or a network.`,
    "",
    `Generated by \`${command.join(" ")}\` at commit ${COMMIT} on ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC. How it works: [bench/README.md](README.md#the-ceiling-npm-run-benchceiling).`,
    "",
    ...machine(origin).map((l) => `- ${l}`),
    `- **Load:** 1-minute load average just before each run (this bench's own previous runs included) ${Math.min(...loads).toFixed(2)}–${Math.max(...loads).toFixed(2)}; ` +
      `stress-ng ${stressAtStart ? `running at the start (pids ${stressAtStart})` : "not running at the start"}, ` +
      `${stressAtEnd ? `running at the end (pids ${stressAtEnd})` : "not running at the end"}. Client and origin share these cores.`,
    ...(opts.note ? [`- **Note:** ${opts.note}`] : []),
    `- **Model:** ${shards.length} safetensors shards of ${(shards[0]?.size ?? 0).toLocaleString("en-US")} bytes, index and config: ${files.length} files, ${bytes.toLocaleString("en-US")} bytes (${(bytes / GIB).toFixed(2)} GiB), random tensor data, on a tmpfs; each destination a fresh directory on the same tmpfs.`,
    `- **Settling:** before each run the bench waited (up to ${opts.settle} s) for a second in which the whole machine was under 0.2 busy cores; busy cores in that second: ${Math.min(...samples.map((x) => x.busyBefore)).toFixed(2)}–${Math.max(...samples.map((x) => x.busyBefore)).toFixed(2)}. The rest of the machine's CPU during each run is in the tables below.`,
    `- **Runs:** ${opts.runs} per contender per protocol, contenders in rotating order and protocols alternating run by run; every file SHA-256-checked after every run. Wall time is the whole command, start-up included; GiB/s = model bytes / wall time. CPU is user + system of the client (Node contenders: the process, via bench/lib/report-usage.mjs; others: the command and its children, via GNU time); the main thread's CPU is read from /proc/PID/task/PID/stat as the process exits; peak RSS is VmHWM (largest process for GNU time).`,
    "- **Origin self-check** (AWS SDK v3, path-style, before any run):",
    ...verification.map((l) => `  - ${l}`),
    "- **Contenders:**",
    ...contenders.map((c) => `  - ${c.name}: \`${shown(c)}\``),
    ...skipped.map((m) => `  - skipped: ${m}`),
    "",
    `![GiB/s and CPU-s per GiB per contender and protocol](${relative(resolve(opts.results, ".."), opts.chart)})`,
    "",
    "## Medians (min–max) over the runs",
    "",
    ...table(rows),
    "",
    ...(rows.some((r) => r.jobGibPerSecond)
      ? [
          "coldstart's own timer (its summary line: listing to last commit, without process start-up), GiB/s: " +
            rows
              .filter((r) => r.jobGibPerSecond)
              .map(
                (r) =>
                  `${r.protocol} ${r.jobGibPerSecond?.median.toFixed(2)} (${r.jobGibPerSecond?.min.toFixed(2)}–${r.jobGibPerSecond?.max.toFixed(2)})`,
              )
              .join(", ") +
            ".",
          "",
        ]
      : []),
    "## Where the Node contenders' CPU went, by thread",
    "",
    "Median CPU-s per GiB of the threads alive at exit: `main` is the event loop (user + system); Node 20 names every other thread `node`, so they are split by kind of time: their user time is mostly V8's platform workers (concurrent and parallel GC), their system time mostly libuv's pool (the file writes). Threads that ended before exit are only in the process total.",
    "",
    ...threadTable(rows),
    "",
    "## The whole machine during the runs",
    "",
    "Median CPU-s per GiB: the client; nginx (master and workers); the rest of the machine's busy time from /proc/stat (kernel work charged to no process, this bench's own process, anything else running). On loopback part of the receiving side's kernel work runs in the sender's context and is charged to nginx.",
    "",
    ...machineTable(rows, cpus().length),
    "",
    "## Every run",
    "",
    ...runTable(samples),
    "",
    ...(failures.length
      ? [
          "## Failed runs (not counted above)",
          "",
          ...failures.map((f) => `- run ${f.run + 1}, ${f.contender}, ${f.protocol}: ${f.why}`),
          "",
        ]
      : []),
  ];
  await writeFile(opts.results, md.join("\n"));
  process.stdout.write(
    `\n${NOT_S3}\n\n${table(rows).join("\n")}\n\n${threadTable(rows).join("\n")}\n\n${machineTable(rows, cpus().length).join("\n")}\n`,
  );
  if (failures.length)
    process.stdout.write(`\n${failures.length} failed run(s): see ${relative(ROOT, opts.results)}\n`);
  log(`wrote ${[opts.results, opts.chart].map((f) => relative(ROOT, f)).join(", ")}`);
}

/** A contender's command line as it runs, with placeholders and paths relative to the repository. */
function shown(c: Contender): string {
  const [program, args] = c.command({
    protocol: "https",
    endpoint: "ENDPOINT",
    bucket: BUCKET,
    prefix: PREFIX,
    dest: "DEST",
    caFile: "CA.pem",
  });
  return [...(c.kind === "node" ? ["node"] : []), program, ...args]
    .map((a) => (a.startsWith(ROOT) ? relative(ROOT, a) : a))
    .join(" ");
}
