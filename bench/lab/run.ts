/**
 * `npm run bench:lab` (root, Linux): coldstart pull against the baselines on the lab's shaped S3-like
 * network, every scenario, several runs, in one session, then bench/RESULTS.md and its chart.
 *
 *   1. the lab comes up and checks its own shaping (netlab.ts); it stops here if the check fails
 *   2. Ceph RGW starts in the server namespace and the scenarios' files are uploaded there
 *   3. per run, every tool downloads every scenario into a fresh directory, in the client namespace,
 *      under /usr/bin/time (wall, user + system CPU, peak RSS); the tools' order rotates run by run
 *   4. every file of every run is SHA-256-checked against what was uploaded: a wrong or missing file
 *      fails the run, and a failed run is reported, never counted
 *   5. the lab is taken down on every way out
 */
import { type ChildProcess, execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream, existsSync, rmSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { join, relative, resolve } from "node:path";
import { pipeline } from "node:stream/promises";
import { Command, InvalidArgumentError } from "commander";
import { rgwAvailable } from "../../test/support/rgw.js";
import {
  describeLab,
  killGroup,
  type LabState,
  labOptions,
  labUp,
  onLabDown,
  runIn,
  SERVER_IP,
  startInServer,
  verifyShaping,
  withLab,
  withLabFlags,
} from "./netlab.js";
import { chart, judge, type Sample, summarize, tables } from "./results.js";
import { SCENARIOS, type SeededFile } from "./scenarios.js";
import { count, findTools, gitCommit, list, machineLine, type Tool, toolEnv } from "./tools.js";

const ROOT = resolve(import.meta.dirname, "../..");
const RGW_PORT = 7480;
const PROXY_PORT = 7481;
const RUN_TIMEOUT_MS = 15 * 60_000;

interface Failure {
  scenario: string;
  tool: string;
  run: number;
  why: string;
}

const program = withLabFlags(
  new Command("bench:lab").description(
    "coldstart pull against the baselines on the shaped S3-like lab network",
  ),
)
  .option("--runs <n>", "runs of every tool in every scenario", count, 3)
  .option("--scenarios <names>", `comma-separated subset of ${SCENARIOS.map((s) => s.name).join(",")}`, list)
  .option(
    "--tools <ids>",
    "comma-separated subset of the tools found (coldstart,aws-debian,aws,rclone,naive)",
    list,
  )
  .option("--results <file>", "where the markdown goes", resolve(ROOT, "bench/RESULTS.md"))
  .option("--chart <file>", "where the PNG chart goes", resolve(ROOT, "bench/results.png"))
  .option("--raw <file>", "where every run's numbers go, as JSON", resolve(ROOT, "bench/results.json"))
  .option("--work <dir>", "scratch directory (downloads, RGW's store)", "/var/tmp");
program.parse(process.argv);
const opts = program.opts<{
  runs: number;
  scenarios?: string[];
  tools?: string[];
  results: string;
  chart: string;
  raw: string;
  work: string;
}>();

preflight();
const scenarios = pick(SCENARIOS, opts.scenarios, (s) => s.name, "scenario");
const tools = pick(findTools(), opts.tools, (t) => t.id, "tool");
const work = await mkdtemp(join(opts.work, "coldstart-lab-"));
// Read before any output is written: results.json is rewritten during the run.
const COMMIT = gitCommit(ROOT, ["bench/results.*", "bench/RESULTS.md"]);
const samples: Sample[] = [];
const failures: Failure[] = [];
let state: LabState | undefined;
/** The 503 proxy of the scenario running, if any. */
let faults: ChildProcess | undefined;
let verification: string[] = [];
/** What each 503 scenario's proxy reports having served. */
const injected: Record<string, string> = {};

try {
  await withLab(async () => {
    state = await labUp(labOptions(program));
    // After labUp (which clears what a killed run left, hooks included), and before RGW's hook, so
    // it runs last: the downloads go even when a signal ends the run.
    onLabDown(() => rmSync(work, { recursive: true, force: true }));
    log(`lab: ${describeLab(state)}`);
    const checked = await verifyShaping(state);
    verification = checked.report;
    for (const l of checked.report) log(`  ${l}`);
    if (!checked.ok)
      throw new Error("the lab's shaping is off (see above): nothing measured on it would mean anything");

    const s3 = await startRgwInServer(join(work, "rgw"));
    log(`rgw: ${s3.endpoint}`);
    const seeded = await seed(s3);
    const home = join(work, "home");
    await mkdir(home, { recursive: true });
    await mkdir(join(work, "dest"), { recursive: true });
    const env = toolEnv(home, s3);

    for (const scenario of scenarios) {
      const files = seeded.datasets[scenario.dataset];
      // Never check a run against nothing: an empty list would pass every digest check.
      if (!files?.length) throw new Error(`the seed reported no files for dataset ${scenario.dataset}`);
      const bytes = files.reduce((n, f) => n + f.size, 0);
      const endpoint = scenario.slowDownEvery
        ? await startFaults(s3.endpoint, scenario.slowDownEvery)
        : s3.endpoint;
      try {
        for (let run = 0; run < opts.runs; run++) {
          // Rotate who goes first: the machine drifts, and the page cache and RGW's warm up.
          for (const tool of tools.map((_, i) => tools[(i + run) % tools.length] as Tool)) {
            const dest = join(work, "dest", `${scenario.name}-${tool.id}-${run}`);
            const target = { endpoint, bucket: seeded.bucket, prefix: `${scenario.dataset}/`, dest };
            const got = await measure(tool, target, env);
            const why = "why" in got ? got.why : await checkDigests(dest, files);
            await rm(dest, { recursive: true, force: true });
            if (why !== null || "why" in got) {
              failures.push({ scenario: scenario.name, tool: tool.name, run, why: why ?? "?" });
              log(`${scenario.name} run ${run + 1}/${opts.runs} ${tool.id}: FAILED: ${why}`);
              await saveRaw();
              continue;
            }
            samples.push({ scenario: scenario.name, tool: tool.name, run, bytes, ...got });
            await saveRaw();
            log(
              `${scenario.name} run ${run + 1}/${opts.runs} ${tool.id}: ${(bytes / 1e6 / got.wallSeconds).toFixed(1)} MB/s, ` +
                `${got.wallSeconds.toFixed(2)} s, ${got.cpuSeconds.toFixed(2)} CPU-s, ${(got.maxRssBytes / 1e6).toFixed(0)} MB`,
            );
          }
        }
      } finally {
        if (scenario.slowDownEvery) await stopFaults(scenario.name);
      }
    }
    await publish();
  });
} finally {
  await rm(work, { recursive: true, force: true });
}

/** Every run's numbers so far, rewritten after each run: a crash or a ^C loses at most the run in flight. */
async function saveRaw(): Promise<void> {
  const raw = {
    generatedAt: new Date().toISOString(),
    lab: state,
    verification,
    samples,
    failures,
    injected,
  };
  await writeFile(opts.raw, `${JSON.stringify(raw, null, 1)}\n`);
}

function log(line: string): void {
  process.stderr.write(`${line}\n`);
}

function preflight(): void {
  const missing: string[] = [];
  if (process.getuid?.() !== 0) missing.push("root (network namespaces and tc)");
  if (!rgwAvailable()) missing.push("Ceph RGW (`bash scripts/install-test-deps.sh`)");
  if (!existsSync("/usr/bin/time")) missing.push("GNU time (`apt-get install time`)");
  try {
    execFileSync("gnuplot", ["--version"], { stdio: "ignore" });
  } catch {
    missing.push("gnuplot, for the chart (`apt-get install gnuplot-nox`)");
  }
  if (missing.length) {
    log(`bench:lab needs: ${missing.join("; ")}`);
    process.exit(2);
  }
}

function pick<T>(all: readonly T[], wanted: string[] | undefined, id: (x: T) => string, what: string): T[] {
  if (!wanted) return [...all];
  for (const w of wanted)
    if (!all.some((x) => id(x) === w))
      throw new InvalidArgumentError(
        `unknown or not installed ${what} "${w}" (have: ${all.map(id).join(", ")})`,
      );
  return all.filter((x) => wanted.includes(id(x)));
}

interface S3 {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
}

async function startRgwInServer(dir: string): Promise<S3> {
  const script = resolve(ROOT, "test/support/rgw/start-rgw.sh");
  onLabDown(() =>
    execFileSync("bash", [resolve(ROOT, "test/support/rgw/stop-rgw.sh"), dir], { stdio: "ignore" }),
  );
  const r = await runIn("server", "env", [
    `RGW_BIND=${SERVER_IP}`,
    `RGW_PORT=${RGW_PORT}`,
    // Should this process be SIGKILLed, RGW's watchdog stops the cluster.
    `RGW_WATCH_PID=${process.pid}`,
    "bash",
    script,
    dir,
  ]);
  if (r.code !== 0)
    throw new Error(
      `start-rgw.sh failed (${r.code ?? r.signal}): ${r.stderr.trim().split("\n").slice(-5).join("\n")}`,
    );
  return JSON.parse(r.stdout.trim().split("\n").pop() ?? "") as S3;
}

async function seed(s3: S3): Promise<{ bucket: string; datasets: Record<string, SeededFile[]> }> {
  log("seeding the scenarios' files");
  const r = await runIn(
    "server",
    process.execPath,
    [
      "--import",
      "tsx",
      resolve(import.meta.dirname, "server-side.ts"),
      "seed",
      s3.endpoint,
      ...new Set(scenarios.map((s) => s.dataset)),
    ],
    { env: { ...process.env, AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey } },
  );
  if (r.code !== 0)
    throw new Error(
      `seeding failed (${r.code ?? r.signal}): ${r.stderr.trim().split("\n").slice(-5).join("\n")}`,
    );
  return JSON.parse(r.stdout.trim().split("\n").pop() ?? "");
}

async function startFaults(upstream: string, every: number): Promise<string> {
  const { child, line } = await startInServer(
    process.execPath,
    [
      "--import",
      "tsx",
      resolve(import.meta.dirname, "server-side.ts"),
      "faults",
      upstream,
      SERVER_IP,
      String(PROXY_PORT),
      String(every),
    ],
    /^listening /,
  );
  faults = child;
  return line.slice("listening ".length).trim();
}
async function stopFaults(scenario: string): Promise<void> {
  const child = faults;
  faults = undefined;
  if (!child?.stdout) return;
  let out = "";
  child.stdout.on("data", (d: string) => {
    out += d;
  });
  const closed = new Promise((done) => child.once("close", done));
  killGroup(child, "SIGTERM");
  await Promise.race([closed, new Promise((done) => setTimeout(done, 5_000))]);
  killGroup(child, "SIGKILL");
  const line = /served .*/.exec(out)?.[0];
  if (line) {
    injected[scenario] = line;
    log(`${scenario}: the proxy ${line}`);
  }
}

async function measure(
  tool: Tool,
  target: { endpoint: string; bucket: string; prefix: string; dest: string },
  env: NodeJS.ProcessEnv,
): Promise<{ wallSeconds: number; cpuSeconds: number; maxRssBytes: number } | { why: string }> {
  const [cmd, args] = tool.command(target);
  const usage = `${target.dest}.time`;
  const started = process.hrtime.bigint();
  // GNU time reports the command's own and its reaped children's CPU, and its largest process's RSS.
  const r = await runIn("client", "/usr/bin/time", ["-f", "%U %S %M", "-o", usage, cmd, ...args], {
    env,
    timeoutMs: RUN_TIMEOUT_MS,
  });
  const wallSeconds = Number(process.hrtime.bigint() - started) / 1e9;
  if (r.code !== 0) {
    const tail = (r.stderr || r.stdout).trim().split("\n").slice(-3).join(" | ");
    return { why: `exit ${r.code ?? r.signal}: ${tail}` };
  }
  const [user, system, rssKb] =
    (await readFile(usage, "utf8")).trim().split("\n").pop()?.split(" ").map(Number) ?? [];
  await rm(usage, { force: true });
  if (user === undefined || system === undefined || rssKb === undefined)
    return { why: "no usage from /usr/bin/time" };
  return { wallSeconds, cpuSeconds: user + system, maxRssBytes: rssKb * 1024 };
}

/** null when every file is there with the uploaded bytes; else what is wrong. */
async function checkDigests(dest: string, files: SeededFile[]): Promise<string | null> {
  for (const f of files) {
    const path = join(dest, f.relPath);
    if (!existsSync(path)) return `missing ${relative(dest, path)}`;
    const h = createHash("sha256");
    await pipeline(createReadStream(path), h);
    const got = h.digest("hex");
    if (got !== f.sha256) return `${f.relPath}: sha256 ${got}, uploaded ${f.sha256}`;
  }
  return null;
}

async function publish(): Promise<void> {
  if (!state) return;
  if (samples.length === 0) {
    for (const f of failures) log(`${f.scenario}, ${f.tool}, run ${f.run + 1}: ${f.why}`);
    throw new Error("every run failed: nothing to publish");
  }
  const rows = summarize(samples, state.linkMbit);
  // The targets are coldstart's: without it in the run there is nothing to judge.
  const ours = tools.find((t) => t.id === "coldstart");
  const verdicts = ours ? judge(rows, ours.name) : [];
  await saveRaw();
  const dataFile = join(work, "chart.dat");
  const { data, script } = chart(rows, state.linkMbit, dataFile, opts.chart);
  await writeFile(dataFile, data);
  execFileSync("gnuplot", [], { input: script, stdio: ["pipe", "inherit", "inherit"] });

  const command = [
    "npm run bench:lab",
    ...(process.argv.slice(2).length ? ["--", ...process.argv.slice(2)] : []),
  ].join(" ");
  const machine = machineLine();
  const titles = Object.fromEntries(SCENARIOS.map((s) => [s.name, s.title]));
  const md = [
    "# Benchmark lab results",
    "",
    `Generated by \`${command}\` at commit ${COMMIT} on ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC. How the lab works and what limits these numbers: [bench/README.md](README.md).`,
    "",
    `- **Machine:** ${machine}. Server (RGW), shaping and clients share these cores.`,
    `- **Link:** ${describeLab(state)}${state.note ? ` (${state.note})` : ""}.`,
    "- **Self-check before measuring:**",
    ...verification.map((l) => `  - ${l}`),
    `- **Runs:** ${opts.runs} per tool per scenario, tools in rotating order; every file SHA-256-checked after every run. Wall time is the whole command (start-up included); CPU is user + system of the command and its children; peak RSS is its largest process (GNU time).`,
    "- **Tools:**",
    ...tools.map((t) => `  - ${t.name}: \`${shown(t)}\``),
    "",
    `![MB/s per tool per scenario](${relative(resolve(opts.results, ".."), opts.chart)})`,
    "",
    "## Targets (coldstart pull at default settings, medians)",
    "",
    "| target | met | measured |",
    "| --- | --- | --- |",
    ...verdicts.map((v) => `| ${v.target} | ${v.met ? "yes" : "**no**"} | ${v.detail} |`),
    "",
    "## Scenarios",
    "",
    ...tables(rows, titles).flatMap((l) =>
      l.startsWith("### ") && injected[l.slice(4).split(":")[0] ?? ""]
        ? [l, "", `The fault proxy ${injected[l.slice(4).split(":")[0] ?? ""]} (every tool's runs together).`]
        : [l],
    ),
    ...(failures.length
      ? [
          "## Failed runs (not counted above)",
          "",
          ...failures.map((f) => `- ${f.scenario}, ${f.tool}, run ${f.run + 1}: ${f.why}`),
          "",
        ]
      : []),
  ];
  await writeFile(opts.results, `${md.join("\n")}`);
  log(`wrote ${[opts.results, opts.chart, opts.raw].map((f) => relative(ROOT, f)).join(", ")}`);
  for (const v of verdicts) log(`${v.met ? "met    " : "NOT MET"} ${v.target}: ${v.detail}`);
}

/** A tool's command line as it ran, with placeholders and paths relative to the repository. */
function shown(t: Tool): string {
  const [cmd, args] = t.command({ endpoint: "ENDPOINT", bucket: "BUCKET", prefix: "PREFIX/", dest: "DEST" });
  return [cmd === process.execPath ? "node" : cmd, ...args]
    .map((a) => (a.startsWith(ROOT) ? relative(ROOT, a) : a))
    .join(" ");
}
