/**
 * The benchmark lab's network as real namespaces, veths and qdiscs (root only: skipped, and said so,
 * where the kernel refuses a network namespace). What is asserted is that the lab always cleans up,
 * on success and on a ^C to its whole process group; whether its shaping is exact is the lab's own
 * self-check and the unit tests of the tc batch, since other tests share these cores.
 *
 * Tier: integration (root, kernel network namespaces, the lab's processes).
 */
import { execFileSync, spawn } from "node:child_process";
import { resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { CLIENT_NS, SERVER_NS } from "../../bench/lab/netlab.js";
import { waitFor } from "../support/wait.js";

const NETLAB = resolve(import.meta.dirname, "../../bench/lab/netlab.ts");
// The tsx command, as `npm run bench:lab:net` runs it: a parent that relays signals to the lab.
const TSX = resolve(import.meta.dirname, "../../node_modules/.bin/tsx");

function namespacesPermitted(): boolean {
  const probe = `cs-test-${process.pid}`;
  try {
    execFileSync("ip", ["netns", "add", probe], { stdio: "ignore" });
    execFileSync("ip", ["netns", "del", probe], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

const labNamespaces = () =>
  execFileSync("ip", ["netns", "list"], { encoding: "utf8" })
    .split("\n")
    .map((l) => l.split(" ")[0])
    .filter((n) => n === SERVER_NS || n === CLIENT_NS);

/** The lab as a user runs it: its own process group, as a terminal would start it. */
function netlab(args: string[]) {
  const child = spawn(TSX, [NETLAB, ...args], {
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout?.on("data", (d) => {
    out += d;
  });
  child.stderr?.on("data", (d) => {
    out += d;
  });
  const exited = new Promise<number | null>((done) => child.once("exit", (code) => done(code)));
  return { child, output: () => out, exited };
}

// No added RTT: the NFQUEUE delayer needs libnetfilter-queue, which the tests do not install.
const LAB = ["--rtt-ms", "0", "--per-connection-mbit", "40", "--link-mbit", "200"];

/** Whether a process whose command line contains `pattern` runs (pgrep -f). */
const running = (pattern: string) => {
  try {
    execFileSync("pgrep", ["-f", pattern], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
};

// A verify measures for 14 s of fixed time, plus the lab's start on a loaded machine.
describe.skipIf(!namespacesPermitted())("the lab network (root)", { timeout: 180_000 }, () => {
  it("verify brings the lab up, reports its checks, and removes every namespace", async () => {
    const lab = netlab(["verify", ...LAB]);
    const code = await lab.exited;
    // 0 or 1: whether the shaping was exact on cores shared with other tests is not the point here.
    expect([0, 1], lab.output()).toContain(code);
    expect(lab.output()).toMatch(/^lab: 40 Mbit\/s per connection, 200 Mbit\/s link, no added RTT/m);
    expect(lab.output()).toMatch(/^ {2}1 connection +[\d.]+ Mbit\/s, expected 40 ± 15%/m);
    expect(lab.output()).toMatch(/^ {2}10 connections +[\d.]+ Mbit\/s, expected 200 ± 15%/m);
    expect(labNamespaces()).toEqual([]);
  });

  it("a ^C to the whole process group mid-measurement still removes everything", async () => {
    const lab = netlab(["verify", ...LAB]);
    // Wait until the lab is up and measuring, then interrupt as a terminal does: every process of
    // the group at once, and tsx relays it to the lab once more.
    await waitFor(() => /^lab: /m.test(lab.output()), { timeoutMs: 60_000, what: "the lab up" });
    expect(labNamespaces().sort()).toEqual([CLIENT_NS, SERVER_NS].sort());
    // Measuring: its first measurement (6 s of fixed time) has started in the client namespace.
    await waitFor(() => running("bench/lab/measure.mjs"), { timeoutMs: 60_000, what: "a measurement" });
    process.kill(-(lab.child.pid as number), "SIGINT");
    const code = await lab.exited;
    expect(code).toBe(130);
    expect(lab.output()).toMatch(/netlab: SIGINT: lab removed/);
    expect(labNamespaces()).toEqual([]);
    // Nothing the lab started in its namespaces is left running.
    expect(running("bench/lab/serve.mjs")).toBe(false);
  });
});
