/**
 * A child process with a hard deadline, for anything that talks to the GPU driver (the native probes,
 * nvidia-smi). At the deadline, or on abort, the child is SIGKILLed and the call returns at once: it
 * does not wait for the exit, because a process stuck in an uninterruptible driver call does not die
 * on SIGKILL, and a helper it forked can hold the pipes open long after.
 */
import { spawn } from "node:child_process";

export interface BoundedRun {
  stdout: string;
  stderr: string;
  code: number | null;
  signal: NodeJS.Signals | null;
  /** The deadline passed before the child exited or produced a complete result. */
  timedOut: boolean;
  /** The caller's signal aborted the run. */
  aborted: boolean;
  /** spawn() itself failed (e.g. ENOENT). */
  error: NodeJS.ErrnoException | null;
}

export interface BoundedOptions {
  timeoutMs: number;
  env?: NodeJS.ProcessEnv | undefined;
  signal?: AbortSignal | undefined;
  /** Returns true once stdout holds a complete result; the run then ends without waiting for exit. */
  doneWhen?: (stdout: string) => boolean;
}

const MAX_OUTPUT_CHARS = 1024 * 1024;
/** After a complete result, how long a child may take to exit before it is killed. */
const EXIT_GRACE_MS = 2000;

export function runBounded(file: string, args: readonly string[], o: BoundedOptions): Promise<BoundedRun> {
  return new Promise((resolve) => {
    let stdout = "";
    let stderr = "";
    let settled = false;
    const child = spawn(file, args, { stdio: ["ignore", "pipe", "pipe"], ...(o.env ? { env: o.env } : {}) });

    const settle = (r: Partial<BoundedRun>) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      o.signal?.removeEventListener("abort", onAbort);
      resolve({
        stdout,
        stderr,
        code: null,
        signal: null,
        timedOut: false,
        aborted: false,
        error: null,
        ...r,
      });
    };
    /** Kill, let go of the pipes and of the event loop: nothing of the child may hold the caller. */
    const abandon = () => {
      child.kill("SIGKILL");
      child.stdout.destroy();
      child.stderr.destroy();
      child.unref();
    };
    const onAbort = () => {
      abandon();
      settle({ aborted: true });
    };
    const timer = setTimeout(() => {
      abandon();
      settle({ timedOut: true });
    }, o.timeoutMs);
    if (o.signal?.aborted) return onAbort();
    o.signal?.addEventListener("abort", onAbort, { once: true });

    child.stdout.setEncoding("utf8").on("data", (d: string) => {
      if (stdout.length < MAX_OUTPUT_CHARS) stdout += d;
      if (!settled && o.doneWhen?.(stdout)) {
        settle({});
        // Give it a moment to exit on its own (a library's exit handlers), then make sure.
        setTimeout(abandon, EXIT_GRACE_MS).unref();
        child.once("exit", () => child.unref());
      }
    });
    child.stderr.setEncoding("utf8").on("data", (d: string) => {
      if (stderr.length < MAX_OUTPUT_CHARS) stderr += d;
    });
    child.on("error", (error: NodeJS.ErrnoException) => settle({ error }));
    child.on("close", (code, signal) => settle({ code, signal }));
  });
}
