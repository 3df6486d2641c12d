// Running helper programs from tests (ceph, containerd, ctr): node built-ins only.
import { spawn } from "node:child_process";
import { accessSync, constants } from "node:fs";
import { delimiter, join } from "node:path";

/** Whether `bin` is an executable on PATH (or in the usual sbin directories). */
export function onPath(bin: string): boolean {
  const dirs = (process.env.PATH ?? "").split(delimiter).filter(Boolean);
  for (const d of [...dirs, "/usr/bin", "/usr/sbin", "/bin", "/sbin"]) {
    try {
      accessSync(join(d, bin), constants.X_OK);
      return true;
    } catch {
      // keep looking
    }
  }
  return false;
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

/** Runs a command to its end, capturing its output; SIGKILLed after `timeoutMs`. */
export function runCommand(
  cmd: string,
  args: string[],
  timeoutMs: number,
  env: Record<string, string> = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env } });
    let stdout = "";
    let stderr = "";
    let timedOut = false;
    child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, timeoutMs);
    child.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, timedOut });
    });
  });
}

/** The last `lines` lines of a program's output, for an error message. */
export function tail(s: string, lines = 60): string {
  return s.trimEnd().split("\n").slice(-lines).join("\n");
}
