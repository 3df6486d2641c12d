/**
 * `npm run bench:handshake` (root, Linux): while the daemon stages one model at full speed from nginx
 * on loopback, are the `coldstart wait` handshakes for another, already-ready model answered within
 * 100 ms? Run once per --workers setting (default `auto`, then `0`: every part on the main thread,
 * the baseline), each on a fresh daemon and staging root.
 *
 *   1. a tmpfs is mounted; two models are written on it (a small "ready" one and a big "busy" one) and
 *      each is served by its own nginx (bench/ceiling/origin.ts serves one prefix per instance)
 *   2. per setting, once the machine is idle (--settle, as run.ts waits): a daemon pointed at the ready
 *      model's origin stages it and stops; a second daemon, on the same root but pointed at the busy
 *      model's origin, is the one measured (s3.endpoint is one per daemon: a restart is how one daemon
 *      comes to hold models from two origins)
 *   3. idle (the control): rounds of concurrent handshakes, then a batch of real `coldstart wait`
 *      processes (parked once their modules are loaded, then released at once: see GATE), while
 *      nothing stages
 *   4. busy: the big model is PUT over the TCP API (prefetch, with the token), and once its bytes flow
 *      the same rounds and batch run again. After each, the big model must still be staging, or the
 *      batch is void and redone on a fresh staging of it (DELETE, PUT)
 *   5. a table on stdout and bench/RESULTS-handshake.md; daemons and nginx stopped, the tmpfs
 *      unmounted on every way out, ^C included
 *
 * A handshake is what `coldstart wait ID --source URI --socket S --env-file F` sends over the socket,
 * on one keep-alive connection of its own (src/cli/wait-command.ts): PUT /v1/models/ID {source},
 * GET /v1/models/ID/ready?timeoutSeconds=2 (its long-poll, answered at once for a ready model), GET
 * /v1/node (for the env file). Each is timed from the request's creation (connect included for the
 * first) to the last byte of its answer; the target is judged on the GET …/ready answers, the whole
 * sequence is reported beside them, and so is each request's time inside the daemon (fastify's
 * responseTime, from its info logs).
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { rm, writeFile } from "node:fs/promises";
import { Agent, request } from "node:http";
import { cpus, loadavg, release, totalmem } from "node:os";
import { join, relative, resolve } from "node:path";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { pathToFileURL } from "node:url";
import { Command, InvalidArgumentError } from "commander";
import { count, gitCommit, list, positive } from "../lab/tools.js";
import { contenderEnv } from "./contenders.js";
import { CLK_TCK, log, machineBusySeconds, mountTmpfs, preflight, settle } from "./machine.js";
import { type ModelFile, writeModel } from "./model.js";
import { checkOrigin, type Origin, type OriginOptions, startOrigin, stopProcess } from "./origin.js";
import { withTeardown } from "./teardown.js";

const ROOT = resolve(import.meta.dirname, "../..");
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";
const BIN = resolve(ROOT, "bin/coldstart.js");
const BUCKET = "bucket";
const READY_ID = "bench/ready";
const BUSY_ID = "bench/busy";
const READY_SOURCE = `s3://${BUCKET}/ready/`;
const BUSY_SOURCE = `s3://${BUCKET}/busy/`;
const TOKEN = "handshake-bench-token";
const GIB = 2 ** 30;
const MIB = 2 ** 20;
/** Retries of a busy batch that finished after the big model did. */
const VOID_RETRIES = 3;
/**
 * Parks a `coldstart wait` process once its modules are loaded (dist/cli/main.js, the whole command
 * tree), until a line on stdin: the batch then measures the command's own work, not 50 Node start-ups
 * fighting for two cores.
 */
const GATE =
  "data:text/javascript,await import(process.env.BENCH_PRELOAD);process.stderr.write('parked\\n');" +
  "await new Promise((r)=>process.stdin.once('data',()=>{process.stdin.destroy();r()}));";

const whole = (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`expected a whole number ≥ 0, got ${v}`);
  return n;
};

const program = new Command("bench:handshake")
  .description("coldstart wait handshakes for a ready model while the daemon stages another at full speed")
  .option("--busy-gib <n>", "tensor data in the model staged during the measurement, GiB", positive, 2)
  .option("--busy-shards <n>", "safetensors shards of the busy model", count, 4)
  .option("--ready-mib <n>", "tensor data in the ready model (one shard), MiB", positive, 64)
  .option("--handshakes <n>", "concurrent handshakes per round", count, 50)
  .option("--rounds <n>", "rounds of concurrent handshakes per phase (idle, busy)", count, 3)
  .option("--processes <n>", "real `coldstart wait` processes per phase, run at once (0: none)", whole, 50)
  .option("--workers <list>", "comma-separated download.workers settings, one daemon each", list, [
    "auto",
    "0",
  ])
  .option("--target-ms <ms>", "the latency every GET …/ready answer must beat", positive, 100)
  .option("--results <file>", "where the markdown goes", resolve(ROOT, "bench/RESULTS-handshake.md"))
  .option("--work <dir>", "where the tmpfs is mounted (on a fresh directory inside)", "/tmp")
  .option(
    "--settle <seconds>",
    "before each setting, wait up to this long for a second in which the machine is idle (under 0.2 busy cores)",
    positive,
    30,
  )
  .option("--note <text>", "a line for the results, e.g. what else the machine was running");
program.parse(process.argv);
const opts = program.opts<{
  busyGib: number;
  busyShards: number;
  readyMib: number;
  handshakes: number;
  rounds: number;
  processes: number;
  workers: string[];
  targetMs: number;
  results: string;
  work: string;
  settle: number;
  note?: string;
}>();
for (const w of opts.workers)
  if (w !== "auto" && !/^\d+$/.test(w))
    throw new InvalidArgumentError(`--workers: "${w}" is not auto or a number`);

type Phase = "idle" | "busy";
type Measure = "ready" | "handshake" | "process" | "put" | "readyInside" | "node";
/** Seen by the client: request created to the answer's last byte. */
const CLIENT: Partial<Record<Measure, string>> = {
  ready: "GET …/ready: the answer that says ready",
  handshake: "whole handshake: PUT, GET …/ready, GET /v1/node (connect included)",
  process: "`coldstart wait` process, go → exit (modules preloaded)",
};
/** Inside the daemon: fastify's responseTime, from the request read to the answer written. */
const INSIDE: Partial<Record<Measure, string>> = {
  put: "PUT /v1/models/ID",
  readyInside: "GET …/ready",
  node: "GET /v1/node",
};

interface Batch {
  phase: Phase;
  kind: "round" | "processes";
  /** Milliseconds by measure. */
  ms: Partial<Record<Measure, number[]>>;
  failures: string[];
  /** Busy phase: the big model's bytes during the batch, and whether it was still staging after it. */
  busyBytes?: number;
  seconds: number;
  stillStaging?: boolean;
  /** Busy CPU-seconds of the whole machine per second during the batch (/proc/stat). */
  busyCores?: number;
  /** Daemon event-loop delay over the batch (prom-client's monitorEventLoopDelay, 10 ms resolution). */
  loopMaxMs?: number;
}

interface ConfigResult {
  workers: string;
  batches: Batch[];
  voided: number;
  /** The last staging of the big model, PUT to ready. */
  stageSeconds?: number;
  /** Daemon CPU during the busy phase (process, main thread), seconds. */
  busyCpu?: { process: number; main: number; wall: number };
  load: [number, number];
  /** Busy cores of the machine in the second before the setting started (see settle). */
  busyBefore: number;
}

preflight("bench:handshake", [["nginx", "nginx-light"]], ROOT);
const COMMIT = gitCommit(
  ROOT,
  [relative(ROOT, opts.results)].filter((f) => !f.startsWith("..")),
);
const loadAtStart = readFileSync("/proc/loadavg", "utf8").trim();
const results: ConfigResult[] = [];
const live = new Set<ChildProcess>();

await withTeardown(async (teardown) => {
  // Room for the origins' copies, one staging root and headroom: the daemon evicts above 90% of its
  // filesystem's use, which the origins' copies count in.
  const models = opts.busyGib * GIB + opts.readyMib * MIB;
  const mount = mountTmpfs(teardown, {
    work: opts.work,
    name: "coldstart-handshake",
    sizeBytes: 3 * models + GIB,
    needBytes: 2 * models + GIB,
  });
  // Undone before the unmount: a daemon still running keeps files open on the tmpfs.
  teardown.add("stop the daemon and the wait processes", () => {
    for (const c of live) stopProcess(c);
  });
  log(`handshake: tmpfs on ${mount}; load ${loadAtStart}`);
  const started = Date.now();
  const serve = async (name: "ready" | "busy", bytes: number, shards: number) => {
    const root = join(mount, `origin-${name}`);
    const files = writeModel(join(root, BUCKET, name), bytes, shards);
    const o: OriginOptions = {
      dir: join(mount, `nginx-${name}`),
      root,
      bucket: BUCKET,
      prefix: `${name}/`,
      files,
    };
    const origin = await startOrigin(o, teardown);
    const { ok, report } = await checkOrigin(origin, o, "http");
    if (!ok) {
      for (const l of report) log(`  ${l}`);
      throw new Error(`the ${name} model's origin does not answer as coldstart needs: nothing measured`);
    }
    return { origin, files };
  };
  const ready = await serve("ready", opts.readyMib * MIB, 1);
  const busy = await serve("busy", opts.busyGib * GIB, opts.busyShards);
  const total = (files: ModelFile[]) => files.reduce((n, f) => n + f.size, 0);
  const busyBytes = total(busy.files);
  log(
    `handshake: models written in ${((Date.now() - started) / 1000).toFixed(1)} s: ready ${(total(ready.files) / MIB).toFixed(0)} MiB, ` +
      `busy ${(busyBytes / GIB).toFixed(2)} GiB; ${ready.origin.version}`,
  );
  // The first bytes written to a fresh tmpfs cost more here (first-touch of guest memory, see
  // run.ts): touch as much as one staging of the big model, so no setting stages on colder memory.
  const warm = join(mount, "warm-up");
  execFileSync("dd", ["if=/dev/zero", `of=${warm}`, "bs=8M", `count=${Math.ceil(busyBytes / (8 * MIB))}`], {
    stdio: "ignore",
  });
  await rm(warm);

  const home = join(mount, "home");
  mkdirSync(home, { recursive: true });
  const env = contenderEnv(home, ready.origin.caFile);
  const tokenFile = join(home, "tokens");
  writeFileSync(tokenFile, `${TOKEN}\n`);
  for (const workers of opts.workers) {
    const dir = join(mount, `daemon-workers-${workers}`);
    const r = await measureSetting(workers, dir, { ready: ready.origin, busy: busy.origin }, env, tokenFile);
    results.push(r);
    await rm(dir, { recursive: true, force: true });
  }
  await publish(busyBytes, total(ready.files), ready.origin);
});

// ---------------------------------------------------------------------------------------------------
// The daemon

interface Daemon {
  child: ChildProcess;
  api: string;
  metrics: string;
  socket: string;
  /** The socket surface's completed requests: url, fastify's responseTime (ms), pino's time (epoch ms). */
  socketRequests: { url: string; responseTime: number; time: number }[];
  tail: string[];
  stop(): void;
}

async function startDaemon(
  workers: string,
  endpoint: string,
  dir: string,
  env: NodeJS.ProcessEnv,
  tokenFile: string,
): Promise<Daemon> {
  const socket = join(dir, "run", "coldstart.sock");
  const args = [
    BIN,
    "daemon",
    ...["--root", join(dir, "root"), "--socket", socket],
    ...["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--token-file", tokenFile],
    ...["--allow-source", `s3://${BUCKET}/**`, "--endpoint", endpoint, "--path-style"],
    ...["--workers", workers, "--shutdown-grace", "1000", "--node-labels", "off"],
    // Node facts pinned to "no GPU, GDS off": no probe runs, whatever the machine.
    ...["--gds", "off", "--nvml-library", "/nonexistent", "--nvidia-smi", "/nonexistent"],
  ];
  const child = spawn(process.execPath, args, { env, stdio: ["ignore", "pipe", "pipe"] });
  live.add(child);
  const tail: string[] = [];
  const socketRequests: Daemon["socketRequests"] = [];
  const urls = new Map<string, string>();
  let buffered = "";
  const ready = new Promise<{ api: string; metrics: string }>((done, fail) => {
    child.stdout?.on("data", (d: Buffer) => {
      const lines = (buffered + d.toString()).split("\n");
      buffered = lines.pop() ?? "";
      for (const line of lines) {
        tail.push(line);
        if (tail.length > 40) tail.shift();
        let e: Record<string, unknown>;
        try {
          e = JSON.parse(line) as Record<string, unknown>;
        } catch {
          continue;
        }
        if (e.msg === "coldstart daemon ready") done({ api: String(e.api), metrics: String(e.metrics) });
        if (e.surface !== "socket") continue;
        const key = String(e.reqId);
        if (e.msg === "incoming request") urls.set(key, String((e.req as { url?: string } | undefined)?.url));
        else if (e.msg === "request completed") {
          socketRequests.push({
            url: urls.get(key) ?? "?",
            responseTime: Number(e.responseTime),
            time: Number(e.time),
          });
          urls.delete(key);
        }
      }
    });
    child.stderr?.on("data", (d: Buffer) => tail.push(...d.toString().trim().split("\n")));
    child.once("exit", (code, sig) =>
      fail(new Error(`daemon exited ${code ?? sig}: ${tail.slice(-5).join(" | ")}`)),
    );
  });
  const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
  const { api, metrics } = await ready.finally(() => clearTimeout(timer));
  return {
    child,
    api: api.startsWith("http") ? api : `http://${api}`,
    metrics: metrics.startsWith("http") ? metrics : `http://${metrics}`,
    socket,
    socketRequests,
    tail,
    stop() {
      stopProcess(child);
      live.delete(child);
    },
  };
}

interface Answer {
  status: number;
  body: string;
}

/** One request; resolves at the last byte of the answer. */
function call(
  target: { socketPath: string } | { url: string },
  method: string,
  path: string,
  body?: unknown,
  agent?: Agent,
): Promise<Answer> {
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  const headers: Record<string, string | number> = { accept: "application/json" };
  if (payload) {
    headers["content-type"] = "application/json";
    headers["content-length"] = payload.length;
  }
  let where: { socketPath: string } | { hostname: string; port: string };
  if ("url" in target) {
    const u = new URL(target.url);
    where = { hostname: u.hostname, port: u.port };
    headers.authorization = `Bearer ${TOKEN}`;
  } else where = target;
  return new Promise((done, fail) => {
    const req = request(
      { ...where, path, method, headers, agent: agent ?? false, timeout: 30_000 },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("error", fail);
        res.on("end", () => done({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
      },
    );
    req.on("timeout", () => req.destroy(new Error(`${method} ${path}: no answer in 30 s`)));
    req.on("error", fail);
    req.end(payload);
  });
}

function modelPath(id: string): string {
  return `/v1/models/${encodeURIComponent(id)}`;
}

interface Status {
  state: string;
  bytesDone: number;
  bytesTotal: number;
}

async function status(d: Daemon, id: string): Promise<Status | undefined> {
  const res = await call({ url: d.api }, "GET", modelPath(id));
  if (res.status === 404) return undefined;
  if (res.status !== 200) throw new Error(`GET ${id}: ${res.status} ${res.body}`);
  return JSON.parse(res.body) as Status;
}

async function put(d: Daemon, id: string, source: string): Promise<void> {
  const res = await call({ url: d.api }, "PUT", modelPath(id), { source });
  if (res.status !== 200 && res.status !== 202) throw new Error(`PUT ${id}: ${res.status} ${res.body}`);
}

async function until(
  d: Daemon,
  id: string,
  done: (s: Status) => boolean,
  timeoutMs: number,
): Promise<Status> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await status(d, id);
    if (s?.state === "failed") throw new Error(`${id} failed: ${JSON.stringify(s)}`);
    if (s && done(s)) return s;
    if (Date.now() > deadline)
      throw new Error(`${id}: not there in ${timeoutMs / 1000} s: ${JSON.stringify(s)}`);
    await sleep(20);
  }
}

/** Daemon CPU, process and main thread, in seconds (/proc). */
function daemonCpu(d: Daemon): { process: number; main: number } {
  const ticks = (file: string) => {
    const stat = readFileSync(file, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  };
  return {
    process: ticks(`/proc/${d.child.pid}/stat`),
    main: ticks(`/proc/${d.child.pid}/task/${d.child.pid}/stat`),
  };
}

/** The daemon's largest event-loop delay since the last scrape, ms (prom-client resets its histogram on each). */
async function loopDelay(d: Daemon): Promise<number> {
  const text = await new Promise<string>((done, fail) => {
    const req = request(`${d.metrics}/metrics`, { agent: false }, (res) => {
      let s = "";
      res.on("data", (c: Buffer) => (s += c));
      res.on("end", () => done(s));
      res.on("error", fail);
    });
    req.on("error", fail);
    req.end();
  });
  return 1000 * Number(/^nodejs_eventloop_lag_max_seconds ([\d.e+-]+)/m.exec(text)?.[1] ?? Number.NaN);
}

// ---------------------------------------------------------------------------------------------------
// Handshakes

/** What `coldstart wait READY_ID --source … --env-file …` asks, on one connection of its own. */
async function handshake(
  socketPath: string,
): Promise<{ handshake: number; ready: number } | { why: string }> {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const at = { socketPath };
  try {
    const t0 = performance.now();
    const a = await call(at, "PUT", modelPath(READY_ID), { source: READY_SOURCE }, agent);
    const t1 = performance.now();
    const b = await call(at, "GET", `${modelPath(READY_ID)}/ready?timeoutSeconds=2`, undefined, agent);
    const t2 = performance.now();
    const c = await call(at, "GET", "/v1/node", undefined, agent);
    const t3 = performance.now();
    if (a.status !== 200 || b.status !== 200 || c.status !== 200)
      return { why: `answers ${a.status} ${b.status} ${c.status}: ${b.body.slice(0, 200)}` };
    return { handshake: t3 - t0, ready: t2 - t1 };
  } catch (err) {
    return { why: (err as Error).message };
  } finally {
    agent.destroy();
  }
}

async function round(d: Daemon, phase: Phase): Promise<Batch> {
  const from = Date.now();
  const t0 = performance.now();
  const got = await Promise.all(Array.from({ length: opts.handshakes }, () => handshake(d.socket)));
  const seconds = (performance.now() - t0) / 1000;
  // The daemon logs a request as it answers it; give its last lines time to reach this process.
  await sleep(100);
  const to = Date.now();
  const inside = d.socketRequests.filter((r) => r.time >= from && r.time <= to);
  const took = (match: (url: string) => boolean) =>
    inside.filter((r) => match(r.url)).map((r) => r.responseTime);
  const ok = got.filter((g): g is { handshake: number; ready: number } => !("why" in g));
  return {
    phase,
    kind: "round",
    ms: {
      handshake: ok.map((g) => g.handshake),
      ready: ok.map((g) => g.ready),
      put: took((u) => u === modelPath(READY_ID)),
      readyInside: took((u) => u.startsWith(`${modelPath(READY_ID)}/ready`)),
      node: took((u) => u === "/v1/node"),
    },
    failures: got.flatMap((g) => ("why" in g ? [g.why] : [])),
    seconds,
  };
}

interface Parked {
  child: ChildProcess;
  exited: Promise<{ code: number | null; at: number; stderr: string }>;
}

/** Starts `coldstart wait` processes and resolves once each is parked, its modules loaded. */
async function park(d: Daemon, dir: string, env: NodeJS.ProcessEnv): Promise<Parked[]> {
  mkdirSync(join(dir, "env"), { recursive: true });
  const preload = pathToFileURL(resolve(ROOT, "dist/cli/main.js")).href;
  return Promise.all(
    Array.from({ length: opts.processes }, async (_, i) => {
      const args = ["wait", READY_ID, "--source", READY_SOURCE, "--socket", d.socket, "--json"];
      args.push("--env-file", join(dir, "env", String(i)), "--timeout", "60000");
      // "--": Node 20 would read `--env-file` after the script as its own (see bin/coldstart.js).
      const child = spawn(process.execPath, ["--import", GATE, "--", BIN, ...args], {
        env: { ...env, BENCH_PRELOAD: preload },
        stdio: ["pipe", "ignore", "pipe"],
      });
      live.add(child);
      let stderr = "";
      const parked = new Promise<void>((done, fail) => {
        child.stderr?.on("data", (c: Buffer) => {
          stderr += c;
          if (stderr.includes("parked\n")) done();
        });
        child.once("exit", (code) => fail(new Error(`wait exited ${code} before it was parked: ${stderr}`)));
      });
      const exited = new Promise<{ code: number | null; at: number; stderr: string }>((done) =>
        child.once("exit", (code) => {
          live.delete(child);
          done({ code, at: performance.now(), stderr: stderr.replace("parked\n", "") });
        }),
      );
      await parked;
      return { child, exited };
    }),
  );
}

async function go(phase: Phase, parked: Parked[]): Promise<Batch> {
  const t0 = performance.now();
  for (const p of parked) p.child.stdin?.end("go\n");
  const ends = await Promise.all(parked.map((p) => p.exited));
  const ok = ends.filter((e) => e.code === 0);
  return {
    phase,
    kind: "processes",
    ms: { process: ok.map((e) => e.at - t0) },
    failures: ends
      .filter((e) => e.code !== 0)
      .map((e) => `exit ${e.code}: ${e.stderr.trim().split("\n").at(-1)}`),
    seconds: (Math.max(...ends.map((e) => e.at)) - t0) / 1000,
  };
}

async function measureSetting(
  workers: string,
  dir: string,
  origins: { ready: Origin; busy: Origin },
  env: NodeJS.ProcessEnv,
  tokenFile: string,
): Promise<ConfigResult> {
  const tag = `workers ${workers}`;
  const busyBefore = await settle(tag, opts.settle);
  const load1 = loadavg()[0] ?? 0;
  const result: ConfigResult = { workers, batches: [], voided: 0, load: [load1, load1], busyBefore };

  // The ready model, staged by a daemon that fetches from its origin.
  let d = await startDaemon(workers, origins.ready.endpoints.http, dir, env, tokenFile);
  try {
    await put(d, READY_ID, READY_SOURCE);
    await until(d, READY_ID, (s) => s.state === "ready", 120_000);
  } finally {
    d.stop();
  }
  d = await startDaemon(workers, origins.busy.endpoints.http, dir, env, tokenFile);
  try {
    const s = await status(d, READY_ID);
    if (s?.state !== "ready") throw new Error(`${READY_ID} is ${s?.state ?? "unknown"} after the restart`);
    log(
      `${tag}: daemon ${d.child.pid}, ${READY_ID} ready; load ${loadavg()
        .map((l) => l.toFixed(2))
        .join(" ")}`,
    );

    /** Runs a batch with the daemon's loop delay and the machine's busy cores measured around it. */
    const measured = async (run: () => Promise<Batch>): Promise<Batch> => {
      await loopDelay(d);
      const [cpu0, t0] = [machineBusySeconds(), performance.now()];
      const b = await run();
      b.busyCores = (machineBusySeconds() - cpu0) / ((performance.now() - t0) / 1000);
      b.loopMaxMs = await loopDelay(d);
      return b;
    };
    const show = (b: Batch) => {
      const [measure, ms] = Object.entries(b.ms).find(([m]) => m === "ready" || m === "process") ?? ["?", []];
      const sorted = [...(ms ?? [])].sort((x, y) => x - y);
      log(
        `${tag}: ${b.phase} ${b.kind}: ${measure} p50 ${pct(sorted, 50).toFixed(1)} ms, max ${(sorted.at(-1) ?? Number.NaN).toFixed(1)} ms` +
          (b.failures.length ? `, ${b.failures.length} FAILED (${b.failures[0]})` : "") +
          (b.busyBytes !== undefined
            ? `; big model ${(b.busyBytes / MIB / b.seconds).toFixed(0)} MiB/s, ${b.stillStaging ? "still staging after it" : "NOT staging any more: void"}`
            : "") +
          `; daemon loop delay max ${(b.loopMaxMs ?? Number.NaN).toFixed(1)} ms; machine ${(b.busyCores ?? Number.NaN).toFixed(2)} busy cores`,
      );
    };

    // Idle: the control.
    for (let i = 0; i < opts.rounds; i++) {
      const b = await measured(() => round(d, "idle"));
      result.batches.push(b);
      show(b);
    }
    if (opts.processes) {
      const parked = await park(d, dir, env);
      const b = await measured(() => go("idle", parked));
      result.batches.push(b);
      show(b);
    }

    // Busy: the big model stages while each batch runs; a batch it outlived is void and redone.
    let putAt = 0;
    const arm = async (): Promise<Status> => {
      const flowing = (x: Status) => x.state === "staging" && x.bytesDone > 0 && x.bytesDone < x.bytesTotal;
      const s = await status(d, BUSY_ID);
      if (s && s.state !== "ready") {
        // Starting, staging or verifying: use its bytes if they still flow, else restage it once ready.
        const x = await until(d, BUSY_ID, (y) => y.state === "ready" || flowing(y), 300_000);
        if (x.state !== "ready") return x;
      }
      if (s) {
        const res = await call({ url: d.api }, "DELETE", modelPath(BUSY_ID));
        if (res.status !== 204) throw new Error(`DELETE ${BUSY_ID}: ${res.status} ${res.body}`);
      }
      putAt = performance.now();
      await put(d, BUSY_ID, BUSY_SOURCE);
      return until(d, BUSY_ID, flowing, 120_000);
    };
    const cpu0 = daemonCpu(d);
    const wall0 = performance.now();
    const busyBatch = async (run: () => Promise<Batch>) => {
      for (let attempt = 0; ; attempt++) {
        const before = await arm();
        const b = await measured(run);
        const after = await status(d, BUSY_ID);
        b.stillStaging = after?.state === "staging";
        b.busyBytes = (after?.bytesDone ?? 0) - before.bytesDone;
        show(b);
        if (b.stillStaging) return result.batches.push(b);
        result.voided++;
        if (attempt >= VOID_RETRIES)
          throw new Error(
            `the big model finished before a batch did ${VOID_RETRIES + 1} times: use a bigger --busy-gib`,
          );
      }
    };
    for (let i = 0; i < opts.rounds; i++) await busyBatch(() => round(d, "busy"));
    if (opts.processes) {
      // Parked before the big model stages again: 50 Node start-ups would eat its window.
      if ((await status(d, BUSY_ID))?.state === "staging")
        await until(d, BUSY_ID, (x) => x.state === "ready", 300_000);
      const parked = await park(d, dir, env);
      await busyBatch(() => go("busy", parked));
    }
    const cpu1 = daemonCpu(d);
    result.busyCpu = {
      process: cpu1.process - cpu0.process,
      main: cpu1.main - cpu0.main,
      wall: (performance.now() - wall0) / 1000,
    };
    await until(d, BUSY_ID, (x) => x.state === "ready", 300_000);
    result.stageSeconds = (performance.now() - putAt) / 1000;
    result.load[1] = loadavg()[0] ?? 0;
    log(`${tag}: last staging of ${BUSY_ID}: ${result.stageSeconds.toFixed(2)} s PUT to ready`);
    return result;
  } catch (err) {
    log(`${tag}: daemon's last lines:\n  ${d.tail.slice(-10).join("\n  ")}`);
    throw err;
  } finally {
    d.stop();
  }
}

/**
 * Waits (up to --settle seconds) for a second in which the machine is nearly idle (under 0.2 busy
 * cores), as bench/ceiling/run.ts does: whatever is busy then is someone else, and would be during
 * the measurement too. Returns the busy cores of the last second measured.
 */
// ---------------------------------------------------------------------------------------------------
// Results

function pct(sorted: number[], p: number): number {
  if (!sorted.length) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] as number;
}

interface Line {
  workers: string;
  phase: Phase;
  measure: Measure;
  n: number;
  p50: number;
  p95: number;
  max: number;
  over: number;
}

/** Per setting (a setting listed twice in --workers pools its runs), phase and measure. */
function lines(measures: Partial<Record<Measure, string>>): Line[] {
  const out: Line[] = [];
  for (const workers of new Set(opts.workers))
    for (const phase of ["idle", "busy"] as const)
      for (const measure of Object.keys(measures) as Measure[]) {
        const ms = results
          .filter((r) => r.workers === workers)
          .flatMap((r) => r.batches)
          .filter((b) => b.phase === phase)
          .flatMap((b) => b.ms[measure] ?? [])
          .sort((a, b) => a - b);
        if (!ms.length) continue;
        out.push({
          workers,
          phase,
          measure,
          n: ms.length,
          p50: pct(ms, 50),
          p95: pct(ms, 95),
          max: ms.at(-1) as number,
          over: ms.filter((x) => x > opts.targetMs).length,
        });
      }
  return out;
}

function f1(x: number): string {
  return x.toFixed(1);
}

function latencyTable(measures: Partial<Record<Measure, string>>, what: string): string[] {
  return [
    `| workers | daemon | ${what} | n | p50 ms | p95 ms | max ms | over ${opts.targetMs} ms |`,
    "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ...lines(measures).map(
      (l) =>
        `| ${l.workers} | ${l.phase === "busy" ? "staging the big model" : "idle"} | ${measures[l.measure]} | ${l.n} | ${f1(l.p50)} | ${f1(l.p95)} | ${f1(l.max)} | ${l.over} |`,
    ),
  ];
}

async function publish(busyBytes: number, readyBytes: number, origin: Origin): Promise<void> {
  const client = latencyTable(CLIENT, "seen by the client");
  const inside = latencyTable(INSIDE, "inside the daemon (fastify responseTime)");
  const rows = lines(CLIENT);
  const verdict = [...new Set(opts.workers)].map((workers) => {
    const busy = (m: Measure) =>
      rows.find((l) => l.workers === workers && l.phase === "busy" && l.measure === m);
    const [ready, hs] = [busy("ready"), busy("handshake")];
    const failed = results
      .filter((r) => r.workers === workers)
      .flatMap((r) => r.batches)
      .filter((b) => b.phase === "busy" && b.kind === "round")
      .reduce((n, b) => n + b.failures.length, 0);
    const pass = ready !== undefined && ready.over === 0 && failed === 0;
    return (
      `workers ${workers}: ${pass ? "PASS" : "FAIL"}: while the big model staged, ${ready?.over ?? "?"} of ${ready?.n ?? 0} ready answers ` +
      `over ${opts.targetMs} ms (p95 ${ready ? f1(ready.p95) : "?"}, max ${ready ? f1(ready.max) : "?"} ms); whole handshakes: ` +
      `${hs?.over ?? "?"} of ${hs?.n ?? 0} over (max ${hs ? f1(hs.max) : "?"} ms)${failed ? `; ${failed} FAILED` : ""}`
    );
  });
  const context = [
    "| workers | busy batches (void, redone) | big model MiB/s during them | machine busy cores during them (of " +
      `${cpus().length}) | last staging, PUT to ready | daemon CPU-s in the busy phase (main thread) | daemon loop delay max, idle / busy (ms) | load1 before / after; busy cores before |`,
    "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ...results.map((r) => {
      const busy = r.batches.filter((b) => b.phase === "busy");
      const secs = busy.reduce((n, b) => n + b.seconds, 0);
      const bytes = busy.reduce((n, b) => n + (b.busyBytes ?? 0), 0);
      const cores = busy.reduce((n, b) => n + (b.busyCores ?? 0) * b.seconds, 0) / secs;
      const lagMax = (p: Phase) =>
        Math.max(...r.batches.filter((b) => b.phase === p).map((b) => b.loopMaxMs ?? Number.NaN));
      const cpu = r.busyCpu;
      return (
        `| ${r.workers} | ${busy.length} (${r.voided}) | ${(bytes / MIB / secs).toFixed(0)} | ${cores.toFixed(2)} | ` +
        `${r.stageSeconds?.toFixed(2) ?? "?"} s, ${r.stageSeconds ? (busyBytes / GIB / r.stageSeconds).toFixed(2) : "?"} GiB/s | ` +
        `${cpu ? `${cpu.process.toFixed(2)} (${cpu.main.toFixed(2)}) over ${cpu.wall.toFixed(1)} s` : "?"} | ` +
        `${f1(lagMax("idle"))} / ${f1(lagMax("busy"))} | ${r.load[0].toFixed(2)} / ${r.load[1].toFixed(2)}; ${r.busyBefore.toFixed(2)} |`
      );
    }),
  ];
  const perBatch = [
    `| workers | daemon | batch | n | p50 ms | max ms | big model MiB/s | daemon loop delay max ms | machine busy cores |`,
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ...results.flatMap((r) => {
      const seen = new Map<string, number>();
      return r.batches.map((b) => {
        const key = `${b.phase} ${b.kind}`;
        seen.set(key, (seen.get(key) ?? 0) + 1);
        const ms = [...((b.kind === "round" ? b.ms.ready : b.ms.process) ?? [])].sort((x, y) => x - y);
        const label = b.kind === "round" ? `round ${seen.get(key)}: GET …/ready` : "processes: go → exit";
        return (
          `| ${r.workers} | ${b.phase === "busy" ? "staging" : "idle"} | ${label} | ${ms.length} | ${f1(pct(ms, 50))} | ${f1(ms.at(-1) ?? Number.NaN)} | ` +
          `${b.busyBytes === undefined ? "–" : (b.busyBytes / MIB / b.seconds).toFixed(0)} | ${f1(b.loopMaxMs ?? Number.NaN)} | ${(b.busyCores ?? Number.NaN).toFixed(2)} |`
        );
      });
    }),
  ];
  const failures = results.flatMap((r) =>
    r.batches.flatMap((b) => b.failures.map((w) => `workers ${r.workers}, ${b.phase} ${b.kind}: ${w}`)),
  );
  const command = [
    "npm run bench:handshake",
    ...(process.argv.length > 2 ? ["--", ...process.argv.slice(2)] : []),
  ];
  const cpu = cpus();
  const md = [
    "# Handshake bench results",
    "",
    `Are \`coldstart wait\` handshakes for a ready model answered within ${opts.targetMs} ms while the daemon stages another model at full speed? Generated by \`${command.join(" ")}\` at commit ${COMMIT} on ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC (bench/ceiling/handshake.ts).`,
    "",
    ...verdict.map((v) => `- **${v}**`),
    "",
    `- CPU: ${cpu.length} × ${cpu[0]?.model.trim() ?? "?"}; ${(totalmem() / GIB).toFixed(0)} GiB memory; Linux ${release()}; Node ${process.version}; ${origin.version}`,
    `- **Load:** /proc/loadavg at the start \`${loadAtStart}\`, at the end \`${readFileSync("/proc/loadavg", "utf8").trim()}\`; each setting first waited up to ${opts.settle} s for an idle second (busy cores before each, and during the batches, below). The daemon, nginx, the bench and the wait processes share these cores${opts.note ? `. Note: ${opts.note}` : ""}.`,
    `- **Models:** on a tmpfs, each served by its own nginx on loopback (HTTP; not S3: static files and listing, no auth): the ready one ${(readyBytes / MIB).toFixed(0)} MiB (1 shard), the big one ${(busyBytes / GIB).toFixed(2)} GiB (${opts.busyShards} shards); the daemon's root on the same tmpfs.`,
    `- **Per --workers setting** (download.workers ${opts.workers.join(", ")}, in that order), a fresh root: one daemon stages the ready model from its origin and stops; the daemon measured starts on that root pointed at the big model's origin (defaults otherwise: 32 GETs in flight, 8 MiB parts, token auth on TCP, info logs).`,
    `- **Handshake:** what \`coldstart wait ${READY_ID} --source ${READY_SOURCE} --socket S --env-file F\` sends over the unix socket, on one keep-alive connection of its own: PUT /v1/models/ID {source} (200: held), GET /v1/models/ID/ready?timeoutSeconds=2 (the long-poll, 200 at once: ready), GET /v1/node (for the env file). A round is ${opts.handshakes} at once; ${opts.rounds} rounds idle, then ${opts.rounds} while the big model stages (PUT over the TCP API with the token; a round starts once its bytes flow, and counts only if it is still staging after the round). Each request is timed from its creation (the PUT's includes the connect) to the last byte of its answer; the target is judged on the GET …/ready answers.`,
    `- **Processes:** ${opts.processes ? `${opts.processes} real \`coldstart wait\` processes (same arguments) at once, each parked after loading its modules (a \`--import\` gate, see the source), so the batch does not time ${opts.processes} Node start-ups on ${cpu.length} cores; timed from the line that releases them all to each one's exit (code 0 required); parked before the big model starts staging.` : "none (--processes 0)."}`,
    "- **Inside the daemon:** fastify's responseTime of each socket request (the daemon's info logs): from the request read to its answer written; the client sees that plus the time both event loops and the socket take.",
    "",
    ...client,
    "",
    ...inside,
    "",
    ...context,
    "",
    "Batch by batch, in the order they ran:",
    "",
    ...perBatch,
    "",
    ...(failures.length ? ["Failures:", "", ...failures.slice(0, 20).map((w) => `- ${w}`), ""] : []),
  ].join("\n");
  await writeFile(opts.results, md);
  process.stdout.write(
    `\n${verdict.join("\n")}\n\n${client.join("\n")}\n\n${inside.join("\n")}\n\n${context.join("\n")}\n\n${perBatch.join("\n")}\n`,
  );
  log(`handshake: wrote ${relative(process.cwd(), opts.results)}`);
}
