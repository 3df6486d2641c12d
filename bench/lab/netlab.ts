/**
 * The benchmark lab's network (root, Linux): an S3-like link between two network namespaces the lab
 * creates, so that speed claims are measured where one connection is slow and many are fast, as from
 * an EC2 node to S3, not on loopback where one connection is as fast as fifty.
 *
 *   cs-lab-c (clients: coldstart, aws, rclone)  10.77.0.2 ── veth ── 10.77.0.1  cs-lab-s (S3 server)
 *
 * Downloads (server to client) are shaped on the server's veth: a cap per client connection under a
 * cap for the link (see shaping.ts). The added round trip delays every client-to-server packet
 * (requests, ACKs), so TCP sees it as RTT: with netem on the client's veth where the kernel has it,
 * else (this machine's kernel) with an iptables NFQUEUE rule and nfq-delay.c, which holds each packet
 * for the delay in user space. Traffic never leaves the machine. `down` (and every exit path of
 * `verify`, signals included) stops the delayer and removes both namespaces, veths and qdiscs with them.
 *
 *   npx tsx bench/lab/netlab.ts verify [--per-connection-mbit 64] [--link-mbit 800] [--rtt-ms 20]
 *   npx tsx bench/lab/netlab.ts up | down
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync } from "node:fs";
import { resolve } from "node:path";
import { Command, InvalidArgumentError } from "commander";
import { PORT_BASE, PORT_WINDOW, shapingBatch } from "./shaping.js";

export const SERVER_NS = "cs-lab-s";
export const CLIENT_NS = "cs-lab-c";
export const SERVER_IP = "10.77.0.1";
export const CLIENT_IP = "10.77.0.2";
const SERVER_DEV = "cs-lab-vs";
const CLIENT_DEV = "cs-lab-vc";

export interface LabOptions {
  perConnectionMbit: number;
  linkMbit: number;
  rttMs: number;
}

/** Defaults this 2-core machine serves without the server or the shaping being the bottleneck. */
export const DEFAULTS: LabOptions = { perConnectionMbit: 40, linkMbit: 400, rttMs: 20 };

export interface LabState extends LabOptions {
  /** How the round trip is added: netem, the NFQUEUE delayer, or not at all (rttMs 0, or neither works). */
  rttBy: "netem" | "nfqueue" | "none";
  note: string | null;
}

const DELAYER_SOURCE = resolve(import.meta.dirname, "nfq-delay.c");
const DELAYER = resolve(import.meta.dirname, "../../build/lab/nfq-delay");
let delayer: ChildProcess | undefined;
/** Processes the lab started in its namespaces: a deleted namespace does not stop them. */
const started = new Set<ChildProcess>();

function run(cmd: string, args: string[], input?: string): string {
  return execFileSync(cmd, args, { encoding: "utf8", input, stdio: ["pipe", "pipe", "pipe"] });
}
const ns = (name: string, cmd: string, args: string[], input?: string) =>
  run("ip", ["netns", "exec", name, cmd, ...args], input);

/** Cleanups for what runs in the namespaces but outlives its process (RGW's daemons), newest first. */
const downHooks: (() => void)[] = [];
export function onLabDown(fn: () => void): void {
  downHooks.unshift(fn);
}

/** Removes everything the lab made. Idempotent: also clears what a killed run left. */
export function labDown(): void {
  for (const fn of downHooks.splice(0)) {
    try {
      fn();
    } catch (e) {
      process.stderr.write(`netlab: cleanup failed: ${firstLine(e)}\n`);
    }
  }
  for (const c of started) killGroup(c, "SIGKILL");
  started.clear();
  delayer?.kill("SIGKILL");
  delayer = undefined;
  try {
    run("pkill", ["-KILL", "-f", DELAYER]);
  } catch {
    // none left from a killed run
  }
  for (const name of [SERVER_NS, CLIENT_NS]) {
    try {
      run("ip", ["netns", "del", name]);
    } catch {
      // not there
    }
  }
}

/** Creates the namespaces, the veth pair, the addresses and the shaping. */
export async function labUp(o: LabOptions): Promise<LabState> {
  labDown();
  run("ip", ["netns", "add", SERVER_NS]);
  run("ip", ["netns", "add", CLIENT_NS]);
  run("ip", [
    "link",
    "add",
    SERVER_DEV,
    "netns",
    SERVER_NS,
    "type",
    "veth",
    "peer",
    "name",
    CLIENT_DEV,
    "netns",
    CLIENT_NS,
  ]);
  for (const [name, dev, ip] of [
    [SERVER_NS, SERVER_DEV, SERVER_IP],
    [CLIENT_NS, CLIENT_DEV, CLIENT_IP],
  ] as const) {
    ns(name, "ip", ["addr", "add", `${ip}/24`, "dev", dev]);
    ns(name, "ip", ["link", "set", dev, "up"]);
    ns(name, "ip", ["link", "set", "lo", "up"]);
  }
  // Clients use exactly the port window the shaping has a class for.
  ns(CLIENT_NS, "sysctl", [
    "-q",
    "-w",
    `net.ipv4.ip_local_port_range=${PORT_BASE} ${PORT_BASE + PORT_WINDOW - 1}`,
  ]);
  ns(SERVER_NS, "tc", ["-batch", "-"], `${shapingBatch({ dev: SERVER_DEV, ...o }).join("\n")}\n`);
  if (o.rttMs === 0) return { ...o, rttBy: "none", note: null };
  try {
    ns(CLIENT_NS, "tc", ["qdisc", "add", "dev", CLIENT_DEV, "root", "netem", "delay", `${o.rttMs}ms`]);
    return { ...o, rttBy: "netem", note: null };
  } catch (e) {
    const why = `no sch_netem (${firstLine(e)})`;
    try {
      await startDelayer(o.rttMs);
      return { ...o, rttBy: "nfqueue", note: `${why}: RTT added by the NFQUEUE delayer` };
    } catch (e2) {
      return { ...o, rttBy: "none", note: `${why}, and the NFQUEUE delayer failed: ${firstLine(e2)}` };
    }
  }
}

/** The NFQUEUE delayer's binary (nfq-delay.c), built on first use. */
export function delayerBinary(): string {
  if (!existsSync(DELAYER)) {
    mkdirSync(resolve(DELAYER, ".."), { recursive: true });
    run("cc", ["-O2", "-Wall", "-Wextra", "-o", DELAYER, DELAYER_SOURCE, "-lnetfilter_queue", "-lnfnetlink"]);
  }
  return DELAYER;
}

/** Builds nfq-delay if needed, queues the client's outgoing packets to it, and waits until it runs. */
async function startDelayer(rttMs: number): Promise<void> {
  delayerBinary();
  // Its errors go to a log file: an inherited stderr would keep the caller's pipe open after `up`.
  const log = openSync(`${DELAYER}.log`, "a");
  const child = spawn("ip", ["netns", "exec", CLIENT_NS, DELAYER, "0", String(rttMs)], {
    stdio: ["ignore", "pipe", log],
    // Its own process group: a ^C meant for the lab's runner must not kill it before the cleanup.
    detached: true,
  });
  closeSync(log);
  delayer = child;
  await new Promise<void>((ready, fail) => {
    child.stdout?.setEncoding("utf8").once("data", () => ready());
    child.once("exit", (code) => fail(new Error(`nfq-delay exited with ${code}`)));
  });
  // Without --queue-bypass: were the delayer to die, packets stop rather than silently skip the delay.
  ns(CLIENT_NS, "iptables", ["-A", "OUTPUT", "-o", CLIENT_DEV, "-j", "NFQUEUE", "--queue-num", "0"]);
}

/**
 * Starts a process in a lab namespace, tracked so that labDown kills it (a deleted namespace does not).
 * stdout and stderr are piped, never inherited: a process that outlives the lab must not hold the
 * caller's pipes open.
 */
export function spawnIn(name: string, cmd: string, args: string[], env?: NodeJS.ProcessEnv): ChildProcess {
  const child = spawn("ip", ["netns", "exec", name, cmd, ...args], {
    stdio: ["ignore", "pipe", "pipe"],
    env: env && { ...env, PATH: env.PATH ?? process.env.PATH },
    // Its own process group, killed whole: `ip netns exec` becomes the command, which may fork (GNU
    // time runs the tool as its child), and a deleted namespace stops none of them.
    detached: true,
  });
  started.add(child);
  child.once("exit", () => started.delete(child));
  child.stdout?.setEncoding("utf8");
  child.stderr?.setEncoding("utf8");
  return child;
}

/** Signals a lab process and everything it started (its process group). */
export function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  try {
    if (child.pid !== undefined) process.kill(-child.pid, signal);
  } catch {
    // already gone
  }
}

/** Starts a command in the server namespace; resolves with the child once it prints a `ready` line. */
export function startInServer(
  cmd: string,
  args: string[],
  ready: RegExp,
): Promise<{ child: ChildProcess; line: string }> {
  return new Promise((resolveStart, reject) => {
    const child = spawnIn(SERVER_NS, cmd, args);
    child.stderr?.resume();
    let out = "";
    child.stdout?.on("data", (d: string) => {
      out += d;
      const line = out.split("\n").find((l) => ready.test(l));
      if (line) resolveStart({ child, line });
    });
    child.on("exit", (code) => reject(new Error(`${cmd} exited with ${code} before it was ready: ${out}`)));
  });
}

export interface Ran {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs a command to its end in a lab namespace (tracked, so a ^C or labDown kills it), with `env` as
 * its whole environment when given. Past `timeoutMs` it is killed.
 */
export function runIn(
  where: "server" | "client",
  cmd: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<Ran> {
  return new Promise((done) => {
    const child = spawnIn(where === "server" ? SERVER_NS : CLIENT_NS, cmd, args, opts.env);
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (d: string) => {
      stdout += d;
    });
    child.stderr?.on("data", (d: string) => {
      // Keep the tail only: a chatty tool must not grow the lab's memory.
      stderr = (stderr + d).slice(-16_384);
    });
    const timer = opts.timeoutMs ? setTimeout(() => killGroup(child, "SIGKILL"), opts.timeoutMs) : undefined;
    // "close", not "exit": the last of stdout (a seed's JSON line) may still be in the pipe at exit.
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      done({ code, signal, stdout, stderr });
    });
  });
}

interface Measured {
  connections: number;
  seconds: number;
  mbit: number;
  perConnectionMbit: number[];
}

/** Runs one of the lab's node scripts in the client namespace and parses the JSON it prints. */
async function inClient<T>(script: string, args: string[]): Promise<T> {
  const r = await runIn("client", process.execPath, [resolve(import.meta.dirname, script), ...args]);
  if (r.code !== 0)
    throw new Error(`${script} ended with ${r.code ?? r.signal}: ${r.stderr.trim().split("\n").pop() ?? ""}`);
  return JSON.parse(r.stdout) as T;
}

const measure = (url: string, connections: number, seconds: number) =>
  inClient<Measured>("measure.mjs", [url, String(connections), String(seconds)]);

/**
 * The lab checks its own shaping before anything is measured on it: one connection must get about the
 * per-connection cap, many must get about the link cap (within `tolerance`).
 */
export async function verifyShaping(
  state: LabState,
  tolerance = 0.15,
): Promise<{ ok: boolean; report: string[] }> {
  const { child, line } = await startInServer(
    process.execPath,
    [resolve(import.meta.dirname, "serve.mjs"), SERVER_IP, "8080"],
    /^listening /,
  );
  try {
    const url = `${line.slice("listening ".length)}/bytes?mib=64`;
    const many = Math.ceil((2 * state.linkMbit) / state.perConnectionMbit);
    const { rttMs: rtt } = await inClient<{ rttMs: number }>("rtt.mjs", [SERVER_IP, "8080"]);
    const one = await measure(url, 1, 6);
    const all = await measure(url, many, 8);
    const within = (got: number, want: number) => Math.abs(got - want) <= tolerance * want;
    const checks = [
      // An added RTT below ~1 ms is the veth's own; only check what was asked for.
      ...(state.rttBy === "none" ? [] : [{ what: "round trip ms", got: rtt, want: state.rttMs, unit: "ms" }]),
      { what: "1 connection", got: one.mbit, want: state.perConnectionMbit },
      { what: `${many} connections`, got: all.mbit, want: state.linkMbit },
    ];
    const report = checks.map(
      (c) =>
        `${c.what.padEnd(16)} ${c.got.toFixed(1).padStart(7)} ${"unit" in c ? c.unit : "Mbit/s"}, expected ${c.want} ± ${Math.round(tolerance * 100)}%: ${within(c.got, c.want) ? "ok" : "OFF"}`,
    );
    const spread = all.perConnectionMbit.filter((m) => m > 0);
    report.push(
      `per connection at ${many}: min ${Math.min(...spread).toFixed(1)}, max ${Math.max(...spread).toFixed(1)} Mbit/s (fair share ${(state.linkMbit / many).toFixed(1)})`,
    );
    return { ok: checks.every((c) => within(c.got, c.want)), report };
  } finally {
    killGroup(child, "SIGKILL");
  }
}

/** The lab in one line: "40 Mbit/s per connection, 400 Mbit/s link, 20 ms added RTT by nfqueue". */
export function describeLab(s: LabState): string {
  const rtt = s.rttBy === "none" ? "no added RTT" : `${s.rttMs} ms added RTT by ${s.rttBy}`;
  return `${s.perConnectionMbit} Mbit/s per connection, ${s.linkMbit} Mbit/s link, ${rtt}`;
}

function firstLine(e: unknown): string {
  const err = e as { stderr?: string; message?: string };
  return (err.stderr || err.message || String(e)).trim().split("\n")[0] ?? "";
}

const positive = (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0)
    throw new InvalidArgumentError(`expected a non-negative number, got ${v}`);
  return n;
};

export function labOptions(cmd: Command): LabOptions {
  const o = cmd.opts<{ perConnectionMbit: number; linkMbit: number; rttMs: number }>();
  return { perConnectionMbit: o.perConnectionMbit, linkMbit: o.linkMbit, rttMs: o.rttMs };
}

export function withLabFlags(cmd: Command, defaults: LabOptions = DEFAULTS): Command {
  return cmd
    .option(
      "--per-connection-mbit <n>",
      "cap of each client connection",
      positive,
      defaults.perConnectionMbit,
    )
    .option("--link-mbit <n>", "cap of the whole link (the NIC)", positive, defaults.linkMbit)
    .option("--rtt-ms <n>", "added round trip (needs sch_netem)", positive, defaults.rttMs);
}

/** Runs `fn`, then takes the lab down on every way out: return, throw, SIGINT, SIGTERM. */
export async function withLab<T>(fn: () => Promise<T>): Promise<T> {
  // A terminal's ^C reaches every process of the group (npm, tsx, this one), and tsx relays it too:
  // the handlers stay installed until exit, so a second signal cannot kill the cleanup half-way.
  let leaving = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (leaving) return;
    leaving = true;
    labDown();
    process.stderr.write(`netlab: ${sig}: lab removed\n`);
    process.exit(sig === "SIGINT" ? 130 : 143);
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    return await fn();
  } finally {
    // Down first, handlers off after: a ^C during the cleanup must find them still installed.
    labDown();
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const program = new Command("netlab").description("The benchmark lab's shaped network (root, Linux).");
  program.addCommand(
    withLabFlags(
      new Command("up").description("create the namespaces and the shaping, and leave them up"),
    ).action(async function (this: Command) {
      const state = await labUp(labOptions(this));
      process.stdout.write(`${JSON.stringify(state)}\n`);
      // The delayer must outlive this command for the lab to stay usable: let go of it.
      delayer?.stdout?.destroy();
      delayer?.unref();
    }),
  );
  program.addCommand(
    new Command("down").description("remove everything the lab made").action(() => labDown()),
  );
  program.addCommand(
    withLabFlags(
      new Command("verify").description("bring the lab up, check its shaping, take it down"),
    ).action(async function (this: Command) {
      const ok = await withLab(async () => {
        const state = await labUp(labOptions(this));
        process.stdout.write(`lab: ${describeLab(state)}${state.note ? ` (${state.note})` : ""}\n`);
        const { ok, report } = await verifyShaping(state);
        for (const l of report) process.stdout.write(`  ${l}\n`);
        return ok;
      });
      process.exitCode = ok ? 0 : 1;
    }),
  );
  await program.parseAsync(process.argv);
}
