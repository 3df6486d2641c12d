/**
 * What the loopback benches (bench:ceiling, bench:handshake) share about the machine they run on:
 * installing what is missing, a tmpfs that is unmounted on every way out, and the whole machine's
 * busy time, to wait for a quiet second before measuring.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmdirSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { Teardown } from "./teardown.js";

const MIB = 1024 * 1024;

/** Clock ticks per second of /proc's CPU times. */
export const CLK_TCK = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim());

export function log(line: string): void {
  process.stderr.write(`${line}\n`);
}

/**
 * Root on Linux, the binaries of `needs` ([binary, Debian package]) installed with apt-get where
 * missing, and coldstart built under `root`; otherwise says why and exits 2.
 */
export function preflight(bench: string, needs: [string, string][], root: string): void {
  if (process.platform !== "linux" || process.getuid?.() !== 0) {
    log(`${bench} needs root on Linux (it mounts a tmpfs and may apt-get install nginx-light)`);
    process.exit(2);
  }
  const has = (bin: string) => spawnSync("sh", ["-c", `command -v ${bin}`], { stdio: "ignore" }).status === 0;
  const pkgs = needs.filter(([bin]) => !has(bin)).map(([, pkg]) => pkg);
  if (pkgs.length) {
    log(`${bench}: apt-get install ${pkgs.join(" ")}`);
    const apt = (...args: string[]) =>
      spawnSync("apt-get", args, {
        stdio: "inherit",
        env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
      }).status === 0;
    const install = () => apt("install", "-y", "--no-install-recommends", ...pkgs);
    if (!install() && !(apt("update") && install())) {
      log(`${bench}: apt-get install ${pkgs.join(" ")} failed`);
      process.exit(2);
    }
  }
  if (!existsSync(join(root, "dist/cli/bin.js"))) {
    log(`${bench}: coldstart is not built: \`npm run build\` (npm run ${bench} does it)`);
    process.exit(2);
  }
}

/**
 * Mounts a tmpfs of `sizeBytes` on a fresh directory in `work` (named `<name>-XXXXXX`), refusing
 * when less than `needBytes` of memory is available; unmounted and removed by `teardown`.
 */
export function mountTmpfs(
  teardown: Teardown,
  o: { work: string; name: string; sizeBytes: number; needBytes: number },
): string {
  const available =
    Number(/^MemAvailable:\s+(\d+) kB$/m.exec(readFileSync("/proc/meminfo", "utf8"))?.[1]) * 1024;
  if (available < o.needBytes)
    throw new Error(
      `a ${Math.ceil(o.sizeBytes / MIB)} MiB tmpfs needs ${Math.ceil(o.needBytes / MIB)} MiB available, have ${Math.floor(available / MIB)} MiB`,
    );
  mkdirSync(o.work, { recursive: true });
  const dir = mkdtempSync(join(o.work, `${o.name}-`));
  teardown.add(`remove ${dir}`, () => rmdirSync(dir));
  const sizeMib = Math.ceil(o.sizeBytes / MIB);
  execFileSync("mount", ["-t", "tmpfs", "-o", `size=${sizeMib}m,mode=0700`, "tmpfs", dir]);
  teardown.add(`unmount ${dir}`, () => unmount(dir));
  return dir;
}

function unmount(dir: string): void {
  const pause = new Int32Array(new SharedArrayBuffer(4));
  for (let i = 0; i < 8; i++) {
    if (spawnSync("umount", [dir], { stdio: "ignore" }).status === 0) return;
    Atomics.wait(pause, 0, 0, 250);
  }
  // Busy: after a signal, most likely a file this process had open (a digest check's read stream),
  // closed as it exits; the lazy unmount frees the memory then.
  execFileSync("umount", ["-l", dir]);
  log(`${dir} was busy: unmounted lazily`);
}

/**
 * Waits (up to `maxSeconds`) for a second in which the whole machine is under 0.2 busy cores, and
 * answers the busy cores of the last second looked at.
 */
export async function settle(tag: string, maxSeconds: number): Promise<number> {
  const deadline = Date.now() + maxSeconds * 1000;
  for (let waited = false; ; waited = true) {
    const before = machineBusySeconds();
    await sleep(1000);
    const busy = machineBusySeconds() - before;
    if (busy < 0.2 || Date.now() > deadline) {
      if (waited) log(`${tag}: ${busy < 0.2 ? "idle" : `still ${busy.toFixed(2)} busy cores: going on`}`);
      return busy;
    }
    if (!waited) log(`${tag}: the machine is busy (${busy.toFixed(2)} cores) with something else: waiting`);
  }
}

/** CPU-seconds the whole machine spent busy (not idle, not waiting for I/O), from /proc/stat. */
export function machineBusySeconds(): number {
  const [, ...ticks] = (readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "").trim().split(/\s+/);
  const [user, nice, system, , , irq, softirq, steal] = ticks.map(Number);
  return ((user ?? 0) + (nice ?? 0) + (system ?? 0) + (irq ?? 0) + (softirq ?? 0) + (steal ?? 0)) / CLK_TCK;
}
