/**
 * `npm run bench:lab:fanout` (root, Linux): N coldstart daemons, each in its own network namespace
 * with its own S3-like link (fanout-net.ts), staging one model from the lab's S3 server (Ceph RGW),
 * with and without peers, for each N of --nodes:
 *
 *   - independent: N daemons without peers stage at once (what N nodes pay without peers);
 *   - together:    N daemons that know each other as peers stage at once (each takes the parts in its
 *                  own random order and waits for pieces a peer is fetching from S3);
 *   - staggered:   the first stages alone, then the other N-1 at once, with every other node as a peer.
 *   - cooperative: as together, and every PUT names the N nodes as its cohort (the first wave a
 *                  ModelCache resource starts): each part has one node that reads it from S3, and
 *                  the others take it from that node (src/peers/cohort.ts).
 *
 * Measured per run: S3 egress (object bytes RGW served, counted by a proxy in the server namespace,
 * the only way to RGW), the time from the first stage request until every node is ready (the daemons
 * are started and ready before it), and their ratios against `independent` at the same N. Every file
 * of every node is SHA-256-checked against what was uploaded: a wrong or missing file fails the run,
 * and a failed run is listed, never counted. The lab checks its own network first and measures nothing
 * if that is off; it is taken down on every way out, ^C included.
 */
import { type ChildProcess, execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream, existsSync, readFileSync, rmSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { join, relative, resolve } from "node:path";
import { pipeline } from "node:stream/promises";
import { Command, InvalidArgumentError } from "commander";
import { callDaemon, type DaemonEndpoint } from "../../src/api/client.js";
import { NO_GPU_FLAGS } from "../../test/support/processes.js";
import { rgwAvailable } from "../../test/support/rgw.js";
import {
  describeFanout,
  type FanoutState,
  fanoutUp,
  labCpuTicks,
  lanIp,
  MAX_NODES,
  nodeNs,
  runInNs,
  S3_IP,
  SERVER_NS,
  startInNs,
  verifyFanout,
  whole,
  withFanoutFlags,
} from "./fanout-net.js";
import { killGroup, labOptions, onLabDown, withLab } from "./netlab.js";
import type { SeededFile } from "./scenarios.js";
import { gitCommit, machineLine } from "./tools.js";

const ROOT = resolve(import.meta.dirname, "../..");
const BIN = resolve(ROOT, "bin/coldstart.js");
const RGW_PORT = 7480;
const PROXY_PORT = 7481;
const API_PORT = 8476;
const METRICS_PORT = 9476;
const MODEL = "bench/model";
const TOKEN = "bench-fanout-token";
/** A run that takes longer than this has failed. */
const RUN_DEADLINE_MS = 15 * 60_000;
const MODES = ["independent", "together", "staggered", "cooperative"] as const;
type Mode = (typeof MODES)[number];

const list = (v: string) =>
  v
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
const counts = (v: string) =>
  list(v).map((s) => {
    const n = Number(s);
    if (!Number.isInteger(n) || n < 1 || n > MAX_NODES)
      throw new InvalidArgumentError(`node counts must be whole numbers from 1 to ${MAX_NODES}, got ${s}`);
    return n;
  });
const count = (v: string) => {
  const n = whole(v);
  if (n < 1) throw new InvalidArgumentError(`expected a whole number ≥ 1, got ${v}`);
  return n;
};
const modes = (v: string) =>
  list(v).map((s) => {
    if (!(MODES as readonly string[]).includes(s))
      throw new InvalidArgumentError(`unknown mode ${s} (have: ${MODES.join(", ")})`);
    return s as Mode;
  });

const program = withFanoutFlags(
  new Command("bench:lab:fanout").description(
    "N coldstart daemons in network namespaces staging one model from the lab's shaped S3, with and without peers",
  ),
)
  .option("--nodes <list>", "node counts to measure, comma-separated", counts, [1, 2, 4])
  .option("--modes <list>", `comma-separated subset of ${MODES.join(",")}`, modes, [...MODES])
  .option("--runs <n>", "runs of every mode at every node count (medians reported)", count, 1)
  .option("--shards <n>", "safetensors shards of the model", count, 4)
  .option("--shard-mib <n>", "MiB per shard", count, 128)
  .option("--concurrency <n>", "the daemons' ranged GETs in flight (default: theirs, 32)", count)
  .option("--results <file>", "where the markdown goes", resolve(ROOT, "bench/RESULTS-fanout.md"))
  .option("--work <dir>", "scratch directory (the nodes' staging roots, RGW's store)", "/var/tmp");
program.parse(process.argv);
const opts = program.opts<{
  nodes: number[];
  modes: Mode[];
  runs: number;
  shards: number;
  shardMib: number;
  concurrency?: number;
  lanMbit: number;
  results: string;
  work: string;
}>();

interface S3 {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
}

interface Daemon {
  node: number;
  child: ChildProcess;
  ep: DaemonEndpoint;
  root: string;
  /** The tail of its log, for an error message. */
  log: () => string;
  /** The nodes its PUT names as staging the model together (cooperative mode). */
  cohort?: string[] | undefined;
}

interface Sample {
  nodes: number;
  mode: Mode;
  run: number;
  /** Object bytes the S3 server served (the proxy's count). */
  s3Bytes: number;
  seconds: number;
  /** staggered: the first node alone, then the rest. */
  phases?: [number, number];
  /** Verified bytes the nodes received from peers, all nodes together (their metrics). */
  peerBytes: number;
  /**
   * coldstart_download_bytes_total over the nodes. Documented as bytes from S3, it counts the pieces
   * from peers too (measured here): logged, not reported as egress.
   */
  nodeS3Bytes: number;
  /** Share of the machine's CPU time busy during the run (every process, the other tenants' included). */
  cpuBusy: number;
  /** Share of the machine's CPU time the lab's processes used (daemons, RGW, proxy, delayer). */
  cpuLab: number;
}

interface Failure {
  nodes: number;
  mode: Mode;
  run: number;
  why: string;
}

preflight();
const work = await mkdtemp(join(opts.work, "coldstart-fanout-"));
const COMMIT = gitCommit(ROOT, ["bench/RESULTS-fanout.md"]);
const samples: Sample[] = [];
const failures: Failure[] = [];
let state: FanoutState | undefined;
let verification: string[] = [];
let modelBytes = 0;
let modelFiles = 0;

try {
  await withLab(async () => {
    const maxNodes = Math.max(...opts.nodes);
    state = await fanoutUp({ ...labOptions(program), nodes: maxNodes, lanMbit: opts.lanMbit });
    // After fanoutUp's hook: runs before it, so the staging roots go even when a signal ends the run.
    onLabDown(() => rmSync(work, { recursive: true, force: true }));
    log(`lab: ${describeFanout(state)}${state.note ? ` (${state.note})` : ""}`);
    if (state.rttMs > 0 && state.rttBy === "none")
      throw new Error(`no way to add the ${state.rttMs} ms round trip here: ${state.note}`);
    const checked = await verifyFanout(state);
    verification = checked.report;
    for (const l of checked.report) log(`  ${l}`);
    if (!checked.ok)
      throw new Error("the lab's network is off (see above): nothing measured on it would mean anything");

    const s3 = await startRgwInServer(join(work, "rgw"));
    log(`rgw: ${s3.endpoint} in ${SERVER_NS}`);
    const model = await seedModel(s3);
    modelBytes = model.files.reduce((n, f) => n + f.size, 0);
    modelFiles = model.files.length;
    if (!model.files.length) throw new Error("the seed reported no files");
    log(`model: ${mib(modelBytes)} MiB in ${model.files.length} files, s3://${model.bucket}/${model.prefix}`);
    const counter = await startCounter(s3.endpoint);
    await writeFile(join(work, "tokens"), `${TOKEN}\n`);
    const env = {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      HOME: process.env.HOME ?? "/root",
      AWS_ACCESS_KEY_ID: s3.accessKeyId,
      AWS_SECRET_ACCESS_KEY: s3.secretAccessKey,
      AWS_REGION: "us-east-1",
      AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: "true",
    };

    for (let run = 0; run < opts.runs; run++) {
      for (const n of opts.nodes) {
        for (const mode of opts.modes) {
          // With one node there is no peer: the other modes are independent.
          if (n === 1 && mode !== "independent") continue;
          const dir = join(work, `n${n}-${mode}-${run}`);
          await mkdir(dir, { recursive: true });
          const daemons: Daemon[] = [];
          try {
            for (let i = 1; i <= n; i++) {
              const peers = peersOf(mode, i, n);
              daemons.push(await startDaemon(i, peers, dir, model.bucket, counter.url, env));
            }
            const cohort = mode === "cooperative" ? daemons.map((d) => peerUrl(d.node)) : undefined;
            for (const d of daemons) d.cohort = cohort;
            const got = await measureRun(mode, daemons, `s3://${model.bucket}/${model.prefix}`, counter);
            for (const d of daemons) killGroup(d.child, "SIGKILL");
            const why = await checkNodes(daemons, model.files);
            if (why) throw new Error(why);
            samples.push({ nodes: n, mode, run, ...got });
            log(
              `${n} node(s) ${mode.padEnd(11)} run ${run + 1}/${opts.runs}: S3 served ${gib(got.s3Bytes)} GiB ` +
                `(${(got.s3Bytes / modelBytes).toFixed(2)} models), all ready in ${got.seconds.toFixed(1)} s` +
                `${got.phases ? ` (first ${got.phases[0].toFixed(1)} s, then ${got.phases[1].toFixed(1)} s)` : ""}, ` +
                `from peers ${gib(got.peerBytes)} GiB (the nodes' coldstart_download_bytes_total: ${gib(got.nodeS3Bytes)} GiB), CPU busy ${pct(got.cpuBusy)} (lab ${pct(got.cpuLab)}); every file checked`,
            );
          } catch (e) {
            const why = e instanceof Error ? e.message : String(e);
            failures.push({ nodes: n, mode, run, why });
            log(`${n} node(s) ${mode} run ${run + 1}: FAILED: ${why}`);
          } finally {
            for (const d of daemons) killGroup(d.child, "SIGKILL");
            await rm(dir, { recursive: true, force: true });
          }
        }
      }
    }
    await publish();
  });
} finally {
  await rm(work, { recursive: true, force: true });
}
if (failures.length) process.exitCode = 1;

/** independent: none; together, cooperative: every other node; staggered: none for the first, every other for the rest. */
function peersOf(mode: Mode, node: number, n: number): number[] {
  if (mode === "independent" || (mode === "staggered" && node === 1)) return [];
  return Array.from({ length: n }, (_, i) => i + 1).filter((j) => j !== node);
}

function log(line: string): void {
  process.stderr.write(`${line}\n`);
}
function mib(b: number): string {
  return (b / 2 ** 20).toFixed(0);
}
function gib(b: number): string {
  return (b / 2 ** 30).toFixed(2);
}
function pct(x: number): string {
  return `${Math.round(x * 100)}%`;
}

function preflight(): void {
  const missing: string[] = [];
  if (process.getuid?.() !== 0) missing.push("root (network namespaces and tc)");
  if (!rgwAvailable()) missing.push("Ceph RGW (`bash scripts/install-test-deps.sh`)");
  if (!existsSync(resolve(ROOT, "dist/cli/bin.js"))) missing.push("the built daemon (`npm run build`)");
  if (missing.length) {
    log(`bench:lab:fanout needs: ${missing.join("; ")}`);
    process.exit(2);
  }
}

async function startRgwInServer(dir: string): Promise<S3> {
  onLabDown(() =>
    execFileSync("bash", [resolve(ROOT, "test/support/rgw/stop-rgw.sh"), dir], { stdio: "ignore" }),
  );
  // On the server namespace's loopback: the nodes reach it only through the counting proxy.
  const r = await runInNs(SERVER_NS, "env", [
    `RGW_PORT=${RGW_PORT}`,
    // Should this process be SIGKILLed, RGW's watchdog stops the cluster.
    `RGW_WATCH_PID=${process.pid}`,
    "bash",
    resolve(ROOT, "test/support/rgw/start-rgw.sh"),
    dir,
  ]);
  if (r.code !== 0)
    throw new Error(
      `start-rgw.sh failed (${r.code ?? r.signal}): ${r.stderr.trim().split("\n").slice(-5).join("\n")}`,
    );
  return JSON.parse(r.stdout.trim().split("\n").pop() ?? "") as S3;
}

async function seedModel(s3: S3): Promise<{ bucket: string; prefix: string; files: SeededFile[] }> {
  log(`seeding a model of ${opts.shards} × ${opts.shardMib} MiB`);
  const r = await runInNs(
    SERVER_NS,
    process.execPath,
    [
      ...["--import", "tsx", resolve(import.meta.dirname, "server-side.ts")],
      ...["model", s3.endpoint, String(opts.shards), String(opts.shardMib)],
    ],
    { ...process.env, AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey },
  );
  if (r.code !== 0)
    throw new Error(
      `seeding failed (${r.code ?? r.signal}): ${r.stderr.trim().split("\n").slice(-5).join("\n")}`,
    );
  return JSON.parse(r.stdout.trim().split("\n").pop() ?? "");
}

/** The proxy in front of RGW that counts what it serves; `take()` reads the count and zeroes it. */
async function startCounter(upstream: string): Promise<{ url: string; take: () => Promise<number> }> {
  const { child, line } = await startInNs(
    SERVER_NS,
    process.execPath,
    [
      ...["--import", "tsx", resolve(import.meta.dirname, "server-side.ts")],
      ...["count", upstream, S3_IP, String(PROXY_PORT)],
    ],
    /^listening /,
  );
  let waiting: ((n: number) => void) | undefined;
  let out = "";
  child.stdout?.on("data", (d: string) => {
    out += d;
    for (let nl = out.indexOf("\n"); nl >= 0; nl = out.indexOf("\n")) {
      const m = /^served (\d+)$/.exec(out.slice(0, nl).trim());
      out = out.slice(nl + 1);
      if (m && waiting) {
        waiting(Number(m[1]));
        waiting = undefined;
      }
    }
  });
  const take = () =>
    new Promise<number>((done, fail) => {
      const timer = setTimeout(() => fail(new Error("the counting proxy did not answer")), 10_000);
      waiting = (n) => {
        clearTimeout(timer);
        done(n);
      };
      // `ip netns exec` execs the command: the child's pid is the proxy's.
      if (child.pid !== undefined) process.kill(child.pid, "SIGUSR1");
    });
  return { url: line.slice("listening ".length).trim(), take };
}

/** Starts node i's daemon in its namespace, listening on its LAN address; resolves once it is ready. */
async function startDaemon(
  node: number,
  peers: number[],
  dir: string,
  bucket: string,
  endpoint: string,
  env: NodeJS.ProcessEnv,
): Promise<Daemon> {
  const root = join(dir, `n${node}`);
  const socket = join(dir, `n${node}.sock`);
  const args = [
    ...["--", BIN, "daemon"],
    ...["--listen", `${lanIp(node)}:${API_PORT}`, "--metrics-listen", `${lanIp(node)}:${METRICS_PORT}`],
    ...["--socket", socket, "--root", root, "--token-file", join(work, "tokens")],
    ...["--allow-source", `s3://${bucket}/**`, "--endpoint", endpoint, "--path-style"],
    ...NO_GPU_FLAGS,
    ...(opts.concurrency ? ["--concurrency", String(opts.concurrency)] : []),
    // info: the ready line.
    ...["--log-level", "info"],
    ...peers.flatMap((p) => ["--peer", peerUrl(p)]),
    // Its own URL among the cohort's (cooperative mode).
    ...["--peer-self", lanIp(node)],
  ];
  const started = startInNs(nodeNs(node), process.execPath, args, /"msg":"coldstart daemon ready"/, env);
  const { child } = await Promise.race([
    started,
    new Promise<never>((_, fail) =>
      setTimeout(() => fail(new Error(`node ${node}: daemon not ready after 60 s`)), 60_000).unref(),
    ),
  ]);
  let tail = "";
  const keep = (d: string) => {
    tail = (tail + d).slice(-4096);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  // The handshake socket: the bench runs outside the node's namespace, and a unix socket is a file.
  // With the token: a cohort is only taken from an authenticated caller.
  return { node, child, ep: { socketPath: socket, token: TOKEN }, root, log: () => tail };
}

function peerUrl(node: number): string {
  return `http://${lanIp(node)}:${API_PORT}`;
}

/** Asks a daemon for the model and waits until it is ready. */
async function stage(d: Daemon, source: string, deadline: number): Promise<void> {
  const path = `/v1/models/${encodeURIComponent(MODEL)}`;
  const put = await callDaemon(d.ep, "PUT", path, { source, ...(d.cohort ? { cohort: d.cohort } : {}) });
  if (put.status !== 200 && put.status !== 202)
    throw new Error(`node ${d.node}: PUT answered ${put.status}: ${JSON.stringify(put.body)}`);
  while (Date.now() < deadline) {
    const wait = Math.max(1, Math.min(300, Math.floor((deadline - Date.now()) / 1000)));
    const res = await callDaemon(d.ep, "GET", `${path}/ready?timeoutSeconds=${wait}`, undefined, {
      timeoutMs: (wait + 10) * 1000,
    });
    if (res.status === 200) return;
    if (res.status !== 503)
      throw new Error(
        `node ${d.node}: not ready (${res.status}): ${JSON.stringify(res.body)}; log: ${d.log().slice(-600)}`,
      );
  }
  throw new Error(`node ${d.node}: not ready after ${RUN_DEADLINE_MS / 60_000} minutes`);
}

/** One run: the stage requests as the mode says, the S3 bytes, the time until every node is ready. */
async function measureRun(
  mode: Mode,
  daemons: Daemon[],
  source: string,
  counter: { take: () => Promise<number> },
): Promise<Omit<Sample, "nodes" | "mode" | "run">> {
  await counter.take();
  const cpu0 = cpuTimes();
  const lab0 = labCpuTicks();
  const t0 = performance.now();
  const deadline = Date.now() + RUN_DEADLINE_MS;
  let phases: [number, number] | undefined;
  const [first, ...rest] = daemons;
  if (mode === "staggered" && first && rest.length) {
    await stage(first, source, deadline);
    const t1 = performance.now();
    await Promise.all(rest.map((d) => stage(d, source, deadline)));
    phases = [(t1 - t0) / 1000, (performance.now() - t1) / 1000];
  } else {
    await Promise.all(daemons.map((d) => stage(d, source, deadline)));
  }
  const seconds = (performance.now() - t0) / 1000;
  const cpu1 = cpuTimes();
  const lab1 = labCpuTicks();
  const s3Bytes = await counter.take();
  let peerBytes = 0;
  let nodeS3Bytes = 0;
  for (const d of daemons) {
    const m = await callDaemon(d.ep, "GET", "/metrics");
    const text = String(m.body);
    peerBytes += metric(text, /^coldstart_peer_bytes_total\{direction="in"\} (\S+)$/m);
    nodeS3Bytes += metric(text, /^coldstart_download_bytes_total\{[^}]*\} (\S+)$/m);
  }
  return {
    s3Bytes,
    seconds,
    ...(phases ? { phases } : {}),
    peerBytes,
    nodeS3Bytes,
    cpuBusy: (cpu1.busy - cpu0.busy) / (cpu1.total - cpu0.total),
    cpuLab: (lab1 - lab0) / (cpu1.total - cpu0.total),
  };
}

function metric(text: string, re: RegExp): number {
  const m = re.exec(text);
  return m ? Number(m[1]) : 0;
}

/** The machine's CPU time so far, busy (not idle or waiting for I/O) and in all, in jiffies. */
function cpuTimes(): { busy: number; total: number } {
  const fields = (readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "").trim().split(/\s+/).slice(1, 9);
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] =
    fields.map(Number);
  const busy = user + nice + system + irq + softirq + steal;
  return { busy, total: busy + idle + iowait };
}

/** null when every node has every file with the uploaded bytes; else what is wrong. */
async function checkNodes(daemons: Daemon[], files: SeededFile[]): Promise<string | null> {
  for (const d of daemons) {
    const dest = join(d.root, "models", ...MODEL.split("/"));
    for (const f of files) {
      const path = join(dest, f.relPath);
      if (!existsSync(path)) return `node ${d.node}: missing ${f.relPath}`;
      const h = createHash("sha256");
      await pipeline(createReadStream(path), h);
      const got = h.digest("hex");
      if (got !== f.sha256) return `node ${d.node}: ${f.relPath}: sha256 ${got}, uploaded ${f.sha256}`;
    }
  }
  return null;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] ?? 0) : ((s[m - 1] ?? 0) + (s[m] ?? 0)) / 2;
}

interface Row {
  nodes: number;
  mode: Mode;
  runs: number;
  s3Bytes: number;
  seconds: number;
  phases?: [number, number];
  peerBytes: number;
  cpuBusy: number;
  cpuLab: number;
  egressRatio?: number;
  timeRatio?: number;
}

function rows(): Row[] {
  const out: Row[] = [];
  for (const n of opts.nodes) {
    for (const mode of opts.modes) {
      const mine = samples.filter((s) => s.nodes === n && s.mode === mode);
      if (!mine.length) continue;
      const phases = mine.flatMap((s) => (s.phases ? [s.phases] : []));
      out.push({
        nodes: n,
        mode,
        runs: mine.length,
        s3Bytes: median(mine.map((s) => s.s3Bytes)),
        seconds: median(mine.map((s) => s.seconds)),
        ...(phases.length
          ? { phases: [median(phases.map((p) => p[0])), median(phases.map((p) => p[1]))] }
          : {}),
        peerBytes: median(mine.map((s) => s.peerBytes)),
        cpuBusy: median(mine.map((s) => s.cpuBusy)),
        cpuLab: median(mine.map((s) => s.cpuLab)),
      });
    }
  }
  for (const r of out) {
    const base = out.find((b) => b.nodes === r.nodes && b.mode === "independent");
    if (!base) continue;
    r.egressRatio = r.s3Bytes / base.s3Bytes;
    r.timeRatio = r.seconds / base.seconds;
  }
  return out;
}

function table(rs: Row[]): string[] {
  const head = [
    "nodes",
    "mode",
    "S3 egress GiB (models)",
    "egress ratio (ideal)",
    "all ready s",
    "time ratio",
    "from peers GiB",
    "CPU busy (lab)",
  ];
  const body = rs.map((r) => [
    String(r.nodes),
    r.mode,
    `${gib(r.s3Bytes)} (${(r.s3Bytes / modelBytes).toFixed(2)})`,
    r.egressRatio === undefined
      ? "–"
      : `${r.egressRatio.toFixed(2)} (${r.mode === "independent" ? "1" : `1/${r.nodes} = ${(1 / r.nodes).toFixed(2)}`})`,
    `${r.seconds.toFixed(1)}${r.phases ? ` (${r.phases[0].toFixed(1)} + ${r.phases[1].toFixed(1)})` : ""}`,
    r.timeRatio === undefined ? "–" : r.timeRatio.toFixed(2),
    gib(r.peerBytes),
    `${pct(r.cpuBusy)} (${pct(r.cpuLab)})`,
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => (b[i] ?? "").length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join(" | ")} |`;
  return [line(head), line(widths.map((w) => "-".repeat(w))), ...body.map(line)];
}

async function publish(): Promise<void> {
  if (!state) return;
  if (samples.length === 0) {
    for (const f of failures) log(`${f.nodes} node(s) ${f.mode} run ${f.run + 1}: ${f.why}`);
    throw new Error("every run failed: nothing to publish");
  }
  const rs = rows();
  const command = [
    "npm run bench:lab:fanout",
    ...(process.argv.slice(2).length ? ["--", ...process.argv.slice(2)] : []),
  ].join(" ");
  const machine = machineLine();
  const md = [
    "# Fan-out lab results",
    "",
    `Generated by \`${command}\` at commit ${COMMIT} on ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC. How the lab works: [bench/README.md](README.md#the-fan-out-lab-npm-run-benchlabfanout).`,
    "",
    `- **Machine:** ${machine}. RGW, the counting proxy, the delayer and every node's daemon share these cores.`,
    `- **Network:** ${describeFanout(state)}${state.note ? ` (${state.note})` : ""}.`,
    "- **Self-check before measuring:**",
    ...verification.map((l) => `  - ${l}`),
    `- **Model:** ${mib(modelBytes)} MiB in ${modelFiles} files (${opts.shards} safetensors shards of ${opts.shardMib} MiB, multipart-uploaded in 8 MiB parts, plus index, config, tokenizer); ${opts.concurrency ? `the daemons with ${opts.concurrency} ranged GETs in flight, else at their defaults (8 MiB parts)` : "the daemons at their defaults (32 ranged GETs in flight, 8 MiB parts)"}.`,
    `- **Runs:** ${opts.runs} per mode per node count${opts.runs > 1 ? " (medians)" : ""}; every file of every node SHA-256-checked after every run. Time runs from the first stage request to the last node ready; the daemons were started and ready before it. S3 egress: object bytes the proxy in front of RGW served. From peers: the verified bytes the nodes' \`coldstart_peer_bytes_total{direction="in"}\` counted. CPU busy: the whole machine's over the run, and in parentheses the lab's processes' (daemons, RGW, proxy, delayer; not the kernel's softirq work for the veths and shaping): the difference is other tenants of the machine.`,
    "",
    "Ratios are against `independent` at the same node count; staggered's time is the first node alone plus the other nodes after it. With one node there is no peer, so only `independent` runs.",
    "",
    ...table(rs),
    "",
    ...(failures.length
      ? [
          "## Failed runs (not counted above)",
          "",
          ...failures.map((f) => `- ${f.nodes} node(s), ${f.mode}, run ${f.run + 1}: ${f.why}`),
          "",
        ]
      : []),
  ];
  await writeFile(opts.results, `${md.join("\n")}`);
  process.stdout.write(`${table(rs).join("\n")}\n`);
  log(`wrote ${relative(ROOT, opts.results)}`);
  for (const f of failures) log(`FAILED: ${f.nodes} node(s), ${f.mode}, run ${f.run + 1}: ${f.why}`);
}
