/**
 * The fan-out lab's network (root, Linux): N nodes, each in its own network namespace with its own
 * S3-like path to one S3 server, and a LAN between the nodes. It reuses the two-namespace lab's
 * shaping (shaping.ts) and delayer (netlab.ts), per node, and leaves that lab's namespaces alone.
 *
 *                 cs-fan-s: RGW on its loopback, behind a byte-counting proxy on 10.78.0.1
 *                 10.78.1.1            10.78.2.1          …   each veth shaped on this side: link cap,
 *                     │ veth               │ veth                per-connection cap; added RTT
 *                 10.78.1.2 "s3"       10.78.2.2 "s3"
 *   cs-fan-n1 (node 1: a daemon)    cs-fan-n2 (node 2)     …
 *                 10.79.0.11 "lan"     10.79.0.12 "lan"
 *                     │ veth               │ veth
 *                     └─────── br0 in cs-fan-lan ───────  …   the LAN: unshaped, or --lan-mbit
 *
 * Each node reaches S3 only through its own veth to the server namespace, shaped on the server's side
 * of it exactly as the two-namespace lab shapes its client link: real nodes each have their own NIC
 * and their own per-connection S3 limits. The added round trip is netem on each node's S3 veth where
 * the kernel has it, else one NFQUEUE delayer in the server namespace holding every packet that
 * arrives for the S3 address (requests and ACKs). Node-to-node traffic goes over the bridge, never
 * through the S3 shaping. `down` (and every exit path of `verify` and of fanout.ts) kills every
 * process left in these namespaces and deletes them.
 *
 *   npx tsx bench/lab/fanout-net.ts verify [--nodes 4] [--per-connection-mbit 10] [--link-mbit 60]
 *                                          [--rtt-ms 20] [--lan-mbit 0]
 *   npx tsx bench/lab/fanout-net.ts down
 */
import { type ChildProcess, execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { Command, InvalidArgumentError } from "commander";
import {
  delayerBinary,
  killGroup,
  type LabOptions,
  labOptions,
  onLabDown,
  spawnIn,
  withLab,
  withLabFlags,
} from "./netlab.js";
import { PORT_BASE, PORT_WINDOW, shapingBatch } from "./shaping.js";

export const SERVER_NS = "cs-fan-s";
const LAN_NS = "cs-fan-lan";
/** The S3 server's address, on the server namespace's loopback, reached by each node over its own link. */
export const S3_IP = "10.78.0.1";
/** Enough for the runs this machine can carry; node i's addresses use i as an octet. */
export const MAX_NODES = 16;
const NS_PREFIX = "cs-fan-";
const VERIFY_PORT = 8080;

export const nodeNs = (i: number) => `${NS_PREFIX}n${i}`;
/** Node i's address on the LAN, where its daemon listens for peers (1-based). */
export const lanIp = (i: number) => `10.79.0.${10 + i}`;
/** Node i's S3 link: the server's side, which carries the downloads and their shaping. */
const serverDev = (i: number) => `${NS_PREFIX}s${i}`;
const lanDev = (i: number) => `${NS_PREFIX}l${i}`;

/** Defaults that N = 4 nodes at once keep within what this 2-core machine serves (see verify). */
export const FANOUT_DEFAULTS: LabOptions = { perConnectionMbit: 10, linkMbit: 60, rttMs: 20 };

export interface FanoutOptions extends LabOptions {
  nodes: number;
  /** Cap of each node's LAN port (0: none). */
  lanMbit: number;
}

export interface FanoutState extends FanoutOptions {
  /** How the S3 round trip is added: netem, the NFQUEUE delayer, or not at all. */
  rttBy: "netem" | "nfqueue" | "none";
  note: string | null;
}

function run(cmd: string, args: string[], input?: string): string {
  return execFileSync(cmd, args, { encoding: "utf8", input, stdio: ["pipe", "pipe", "pipe"] });
}
const ns = (name: string, cmd: string, args: string[], input?: string) =>
  run("ip", ["netns", "exec", name, cmd, ...args], input);

/** This lab's namespaces that exist now, whatever a killed run left. */
function ourNamespaces(): string[] {
  return run("ip", ["netns", "list"])
    .split("\n")
    .map((l) => l.split(" ")[0] ?? "")
    .filter((n) => n.startsWith(NS_PREFIX));
}

/**
 * Removes everything this lab made: every process still in its namespaces (daemons, RGW's daemons,
 * the delayer, the proxy; a deleted namespace stops none of them), then the namespaces, and with them
 * the veths, the bridge, the qdiscs and the iptables rule. Idempotent.
 */
export function fanoutDown(): void {
  for (const name of ourNamespaces()) {
    let pids: string[] = [];
    try {
      pids = run("ip", ["netns", "pids", name]).split("\n").filter(Boolean);
    } catch {
      // gone meanwhile
    }
    for (const pid of pids) {
      try {
        process.kill(Number(pid), "SIGKILL");
      } catch {
        // exited meanwhile
      }
    }
    try {
      run("ip", ["netns", "del", name]);
    } catch (e) {
      process.stderr.write(`fanout-net: could not delete ${name}: ${firstLine(e)}\n`);
    }
  }
}

/**
 * CPU time (user + system, in clock ticks as /proc/stat counts them) of every process now in this
 * lab's namespaces: what the lab itself costs the machine, apart from its other tenants. Kernel work
 * done in softirq (the veths, the bridge, the shaping) is no process's and is not in it.
 */
export function labCpuTicks(): number {
  let ticks = 0;
  for (const name of ourNamespaces()) {
    let pids: string[] = [];
    try {
      pids = run("ip", ["netns", "pids", name]).split("\n").filter(Boolean);
    } catch {
      continue;
    }
    for (const pid of pids) {
      try {
        // The fields after the command's name, which may hold spaces and parentheses.
        const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
        const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
        ticks += Number(f[11]) + Number(f[12]);
      } catch {
        // exited meanwhile
      }
    }
  }
  return ticks;
}

/** Creates the server, LAN and node namespaces, their links, addresses and shaping. */
export async function fanoutUp(o: FanoutOptions): Promise<FanoutState> {
  if (!Number.isInteger(o.nodes) || o.nodes < 1 || o.nodes > MAX_NODES)
    throw new RangeError(`nodes must be a whole number from 1 to ${MAX_NODES}, got ${o.nodes}`);
  fanoutDown();
  // A hook of the shared lab's cleanup (withLab): fanout.ts's every way out takes this lab down too.
  onLabDown(fanoutDown);
  for (const name of [SERVER_NS, LAN_NS]) run("ip", ["netns", "add", name]);
  ns(SERVER_NS, "ip", ["link", "set", "lo", "up"]);
  ns(SERVER_NS, "ip", ["addr", "add", `${S3_IP}/32`, "dev", "lo"]);
  ns(LAN_NS, "ip", ["link", "add", "br0", "type", "bridge"]);
  ns(LAN_NS, "ip", ["link", "set", "br0", "up"]);
  for (let i = 1; i <= o.nodes; i++) {
    const node = nodeNs(i);
    run("ip", ["netns", "add", node]);
    ns(node, "ip", ["link", "set", "lo", "up"]);
    // The S3 link: node i's "s3" ── the server's cs-fan-s<i>, a /24 of its own.
    run("ip", [
      ...["link", "add", "s3", "netns", node, "type", "veth"],
      ...["peer", "name", serverDev(i), "netns", SERVER_NS],
    ]);
    ns(SERVER_NS, "ip", ["addr", "add", `10.78.${i}.1/24`, "dev", serverDev(i)]);
    ns(SERVER_NS, "ip", ["link", "set", serverDev(i), "up"]);
    ns(node, "ip", ["addr", "add", `10.78.${i}.2/24`, "dev", "s3"]);
    ns(node, "ip", ["link", "set", "s3", "up"]);
    ns(node, "ip", ["route", "add", `${S3_IP}/32`, "via", `10.78.${i}.1`, "dev", "s3"]);
    // The LAN: node i's "lan" ── a port of the bridge.
    run("ip", [
      ...["link", "add", "lan", "netns", node, "type", "veth"],
      ...["peer", "name", lanDev(i), "netns", LAN_NS],
    ]);
    ns(LAN_NS, "ip", ["link", "set", lanDev(i), "master", "br0"]);
    ns(LAN_NS, "ip", ["link", "set", lanDev(i), "up"]);
    ns(node, "ip", ["addr", "add", `${lanIp(i)}/24`, "dev", "lan"]);
    ns(node, "ip", ["link", "set", "lan", "up"]);
    // The node's connections use exactly the port window the shaping has a class for.
    ns(node, "sysctl", [
      "-q",
      "-w",
      `net.ipv4.ip_local_port_range=${PORT_BASE} ${PORT_BASE + PORT_WINDOW - 1}`,
    ]);
    ns(
      SERVER_NS,
      "tc",
      ["-batch", "-"],
      `${shapingBatch({ dev: serverDev(i), perConnectionMbit: o.perConnectionMbit, linkMbit: o.linkMbit }).join("\n")}\n`,
    );
    if (o.lanMbit > 0) {
      // What the node sends on the LAN (the pieces it serves), and so what each peer receives from it.
      ns(node, "tc", [
        ...["qdisc", "add", "dev", "lan", "root", "tbf"],
        ...["rate", `${o.lanMbit}mbit`, "burst", "256kb", "latency", "50ms"],
      ]);
    }
  }
  if (o.rttMs === 0) return { ...o, rttBy: "none", note: null };
  try {
    for (let i = 1; i <= o.nodes; i++)
      ns(nodeNs(i), "tc", ["qdisc", "add", "dev", "s3", "root", "netem", "delay", `${o.rttMs}ms`]);
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

/** One delayer for every node: it holds each packet that arrives at the server for the S3 address. */
async function startDelayer(rttMs: number): Promise<void> {
  const child = spawnIn(SERVER_NS, delayerBinary(), ["0", String(rttMs)]);
  child.stderr?.resume();
  await new Promise<void>((ready, fail) => {
    child.stdout?.once("data", () => ready());
    child.once("exit", (code) => fail(new Error(`nfq-delay exited with ${code}`)));
  });
  // Without --queue-bypass: were the delayer to die, packets stop rather than silently skip the delay.
  ns(SERVER_NS, "iptables", [
    ...["-A", "INPUT", "-d", `${S3_IP}/32`, "!", "-i", "lo"],
    ...["-j", "NFQUEUE", "--queue-num", "0"],
  ]);
}

export interface Ran {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to its end in one of this lab's namespaces (killed by the lab's cleanup). */
export function runInNs(name: string, cmd: string, args: string[], env?: NodeJS.ProcessEnv): Promise<Ran> {
  return new Promise((done) => {
    const child = spawnIn(name, cmd, args, env);
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (d: string) => {
      stdout += d;
    });
    child.stderr?.on("data", (d: string) => {
      stderr = (stderr + d).slice(-16_384);
    });
    child.once("close", (code, signal) => done({ code, signal, stdout, stderr }));
  });
}

/** Starts a command in one of this lab's namespaces; resolves once it prints a line matching `ready`. */
export function startInNs(
  name: string,
  cmd: string,
  args: string[],
  ready: RegExp,
  env?: NodeJS.ProcessEnv,
): Promise<{ child: ChildProcess; line: string }> {
  return new Promise((resolveStart, reject) => {
    const child = spawnIn(name, cmd, args, env);
    let err = "";
    child.stderr?.on("data", (d: string) => {
      err = (err + d).slice(-4096);
    });
    let out = "";
    const onData = (d: string) => {
      out = (out + d).slice(-65_536);
      const line = out.split("\n").find((l) => ready.test(l));
      if (!line) return;
      // Later output is the caller's to read (or to drop: a pipe nobody reads stalls the process).
      child.stdout?.off("data", onData);
      resolveStart({ child, line });
    };
    child.stdout?.on("data", onData);
    child.on("exit", (code) =>
      reject(new Error(`${cmd} exited with ${code} before it was ready: ${err.trim() || out.trim()}`)),
    );
  });
}

/** Runs one of the lab's node scripts in a namespace and parses the JSON line it prints. */
async function script<T>(name: string, file: string, args: string[]): Promise<T> {
  const r = await runInNs(name, process.execPath, [resolve(import.meta.dirname, file), ...args]);
  if (r.code !== 0)
    throw new Error(`${file} in ${name} ended with ${r.code ?? r.signal}: ${firstLine(r.stderr)}`);
  return JSON.parse(r.stdout) as T;
}

interface Measured {
  mbit: number;
  perConnectionMbit: number[];
}

/**
 * Checks the network before anything is measured on it: every node's round trip to S3 is the added
 * RTT; one connection gets the per-connection cap; every node at once, with many connections each,
 * gets its own link cap (each node's path is its own, and this machine carries all of them at once);
 * every node reaches the others over the LAN in well under a millisecond, and a LAN transfer is not
 * held to the S3 link (or gets the LAN cap, when one is set).
 */
export async function verifyFanout(
  state: FanoutState,
  tolerance = 0.15,
): Promise<{ ok: boolean; report: string[] }> {
  const servers: ChildProcess[] = [];
  const serve = async (name: string, ip: string) => {
    const { child, line } = await startInNs(
      name,
      process.execPath,
      [resolve(import.meta.dirname, "serve.mjs"), ip, String(VERIFY_PORT)],
      /^listening /,
    );
    servers.push(child);
    return `${line.slice("listening ".length).trim()}/bytes?mib=64`;
  };
  try {
    const s3Url = await serve(SERVER_NS, S3_IP);
    const nodes = Array.from({ length: state.nodes }, (_, i) => i + 1);
    const checks: { what: string; got: number; ok: boolean; expected: string; unit: string }[] = [];
    const within = (got: number, want: number) => Math.abs(got - want) <= tolerance * want;
    const pct = `± ${Math.round(tolerance * 100)}%`;

    const rtts: number[] = [];
    for (const i of nodes)
      rtts.push((await script<{ rttMs: number }>(nodeNs(i), "rtt.mjs", [S3_IP, String(VERIFY_PORT)])).rttMs);
    if (state.rttBy !== "none") {
      const worst = rtts.reduce((w, r) => (Math.abs(r - state.rttMs) > Math.abs(w - state.rttMs) ? r : w));
      checks.push({
        what: `S3 round trip, worst of ${nodes.length} node(s)`,
        got: worst,
        ok: rtts.every((r) => within(r, state.rttMs)),
        expected: `${state.rttMs} ${pct}`,
        unit: "ms",
      });
    }
    const one = await script<Measured>(nodeNs(1), "measure.mjs", [s3Url, "1", "6"]);
    checks.push({
      what: "1 connection",
      got: one.mbit,
      ok: within(one.mbit, state.perConnectionMbit),
      expected: `${state.perConnectionMbit} ${pct}`,
      unit: "Mbit/s",
    });
    const many = Math.ceil((2 * state.linkMbit) / state.perConnectionMbit);
    const all = await Promise.all(
      nodes.map((i) => script<Measured>(nodeNs(i), "measure.mjs", [s3Url, String(many), "8"])),
    );
    const rates = all.map((m) => m.mbit);
    checks.push({
      what: `${many} connections on each of ${nodes.length} node(s) at once, slowest node`,
      got: Math.min(...rates),
      ok: rates.every((r) => within(r, state.linkMbit)),
      expected: `${state.linkMbit} ${pct} each`,
      unit: "Mbit/s",
    });

    const report: string[] = [];
    if (state.nodes > 1) {
      const target = state.nodes;
      const lanUrl = await serve(nodeNs(target), lanIp(target));
      const lanRtts: number[] = [];
      for (const i of nodes.slice(0, -1))
        lanRtts.push(
          (await script<{ rttMs: number }>(nodeNs(i), "rtt.mjs", [lanIp(target), String(VERIFY_PORT)])).rttMs,
        );
      checks.push({
        what: `LAN round trip to node ${target}, worst of ${lanRtts.length}`,
        got: Math.max(...lanRtts),
        ok: lanRtts.every((r) => r < 2),
        expected: "< 2",
        unit: "ms",
      });
      const lan = await script<Measured>(nodeNs(1), "measure.mjs", [lanUrl, "4", "4"]);
      checks.push(
        state.lanMbit > 0
          ? {
              what: "LAN, 4 connections",
              got: lan.mbit,
              ok: within(lan.mbit, state.lanMbit),
              expected: `${state.lanMbit} ${pct}`,
              unit: "Mbit/s",
            }
          : {
              what: "LAN, 4 connections",
              got: lan.mbit,
              ok: lan.mbit >= 2 * state.linkMbit,
              expected: `≥ 2 × the S3 link (${2 * state.linkMbit})`,
              unit: "Mbit/s",
            },
      );
    }
    report.unshift(
      ...checks.map(
        (c) =>
          `${c.what}: ${c.got.toFixed(c.unit === "ms" ? 2 : 1)} ${c.unit}, expected ${c.expected}: ${c.ok ? "ok" : "OFF"}`,
      ),
    );
    report.push(
      `S3 round trip per node: ${rtts.map((r) => r.toFixed(1)).join(", ")} ms; S3 link per node at once: ${rates.map((r) => r.toFixed(1)).join(", ")} Mbit/s`,
    );
    return { ok: checks.every((c) => c.ok), report };
  } finally {
    for (const c of servers) killGroup(c, "SIGKILL");
  }
}

/** The lab in one line. */
export function describeFanout(s: FanoutState): string {
  const rtt = s.rttBy === "none" ? "no added RTT" : `${s.rttMs} ms added RTT by ${s.rttBy}`;
  const lan = s.lanMbit > 0 ? `a ${s.lanMbit} Mbit/s LAN port each` : "an unshaped LAN (veths on a bridge)";
  return `${s.nodes} node(s), each with its own S3 link of ${s.linkMbit} Mbit/s, ${s.perConnectionMbit} Mbit/s per connection, ${rtt}; ${lan}`;
}

export function firstLine(e: unknown): string {
  if (typeof e === "string") return e.trim().split("\n")[0] ?? "";
  const err = e as { stderr?: string; message?: string };
  return (err.stderr || err.message || String(e)).trim().split("\n")[0] ?? "";
}

export const whole = (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`expected a whole number, got ${v}`);
  return n;
};

/** The fan-out lab's own flags on top of the shared lab's. */
export function withFanoutFlags(cmd: Command): Command {
  return withLabFlags(cmd, FANOUT_DEFAULTS).option(
    "--lan-mbit <n>",
    "cap of each node's LAN port (0: none)",
    whole,
    0,
  );
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const program = new Command("fanout-net").description("The fan-out lab's network (root, Linux).");
  program.addCommand(
    new Command("down").description("remove everything this lab made").action(() => fanoutDown()),
  );
  program.addCommand(
    withFanoutFlags(new Command("verify").description("bring the lab up, check it, take it down"))
      .option("--nodes <n>", "node namespaces", whole, 4)
      .action(async function (this: Command) {
        const o = this.opts<{ nodes: number; lanMbit: number }>();
        const ok = await withLab(async () => {
          const state = await fanoutUp({ ...labOptions(this), nodes: o.nodes, lanMbit: o.lanMbit });
          process.stdout.write(`lab: ${describeFanout(state)}${state.note ? ` (${state.note})` : ""}\n`);
          const { ok, report } = await verifyFanout(state);
          for (const l of report) process.stdout.write(`  ${l}\n`);
          return ok;
        });
        process.exitCode = ok ? 0 : 1;
      }),
  );
  await program.parseAsync(process.argv);
}
