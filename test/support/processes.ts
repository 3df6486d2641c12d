import { type ChildProcess, spawn } from "node:child_process";
import { type AddressInfo, createServer } from "node:net";
import { resolve } from "node:path";
import type { S3Endpoint } from "./s3.js";

const root = resolve(import.meta.dirname, "../..");

/** Daemon flags that pin node facts to "no GPU, GDS off" whatever machine runs the test. */
export const NO_GPU_FLAGS = [
  "--gds",
  "off",
  "--nvml-library",
  "/nonexistent",
  "--nvidia-smi",
  "/nonexistent",
];

export interface SpawnOptions {
  /** Run the built CLI (bin/coldstart.js, dist/) instead of the TypeScript sources through tsx. */
  built?: boolean;
  stdio?: "pipe" | "inherit";
}

/** The real `coldstart` command as a child process. */
export function coldstart(
  args: string[],
  s3: S3Endpoint,
  env: Record<string, string> = {},
  options: SpawnOptions = {},
): ChildProcess {
  // "--": Node would otherwise read `wait --env-file PATH` as its own flag (see bin/coldstart.js).
  const entry = options.built
    ? ["--", resolve(root, "bin/coldstart.js")]
    : ["--import", "tsx", "--", resolve(root, "src/cli/bin.ts")];
  return spawn(process.execPath, [...entry, ...args], {
    cwd: root,
    env: {
      PATH: process.env.PATH ?? "",
      HOME: process.env.HOME ?? "/root",
      AWS_ACCESS_KEY_ID: s3.accessKeyId,
      AWS_SECRET_ACCESS_KEY: s3.secretAccessKey,
      AWS_REGION: s3.region,
      ...env,
    },
    stdio: ["ignore", options.stdio ?? "pipe", options.stdio ?? "pipe"],
  });
}

export interface Outcome {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Date.now() when the process exited. */
  exitedAt: number;
}

export function finish(child: ChildProcess): Promise<Outcome> {
  let stdout = "";
  let stderr = "";
  child.stdout?.on("data", (d) => (stdout += d));
  child.stderr?.on("data", (d) => (stderr += d));
  return new Promise((done) =>
    child.on("close", (code, signal) => done({ code, signal, stdout, stderr, exitedAt: Date.now() })),
  );
}

export interface DaemonProcess {
  child: ChildProcess;
  /** http://127.0.0.1:PORT of the API. */
  api: string;
  metrics: string;
  /** Every JSON log line so far. */
  logs: Record<string, unknown>[];
  exited: Promise<Outcome>;
}

export interface DaemonStartOptions extends Pick<SpawnOptions, "built"> {
  /**
   * How long the daemon may take to log that it is ready before the start fails (default 120 s: it
   * only bounds a failure; a loaded CI machine has taken 10 s for one).
   */
  readyTimeoutMs?: number;
}

/** Starts `coldstart daemon` and resolves once it logs that it is ready (or rejects if it exits). */
export async function startDaemonProcess(
  args: string[],
  s3: S3Endpoint,
  env: Record<string, string> = {},
  options: DaemonStartOptions = {},
): Promise<DaemonProcess> {
  const readyTimeoutMs = options.readyTimeoutMs ?? 120_000;
  const child = coldstart(
    ["daemon", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", ...args],
    s3,
    env,
    options,
  );
  const logs: Record<string, unknown>[] = [];
  const exited = finish(child);
  let buffered = "";
  const ready = new Promise<{ api: string; metrics: string }>((resolveReady, reject) => {
    child.stdout?.on("data", (d: Buffer) => {
      buffered += d.toString();
      const lines = buffered.split("\n");
      buffered = lines.pop() ?? "";
      for (const line of lines) {
        try {
          const entry = JSON.parse(line) as Record<string, unknown>;
          logs.push(entry);
          if (entry.msg === "coldstart daemon ready")
            resolveReady({ api: String(entry.api), metrics: String(entry.metrics) });
        } catch {
          // not a log line
        }
      }
    });
    exited.then((o) => reject(new Error(`daemon exited ${o.code ?? o.signal} before ready: ${o.stderr}`)));
    setTimeout(
      () => reject(new Error(`daemon not ready after ${readyTimeoutMs} ms; logs: ${JSON.stringify(logs)}`)),
      readyTimeoutMs,
    ).unref();
  });
  const { api, metrics } = await ready;
  return { child, api, metrics, logs, exited };
}

/** SIGKILLs every daemon of `daemons` still running and waits for each to exit; empties the list. */
export async function killDaemons(daemons: DaemonProcess[]): Promise<void> {
  for (const d of daemons.splice(0)) {
    if (d.child.exitCode === null && d.child.signalCode === null) d.child.kill("SIGKILL");
    await d.exited.catch(() => {});
  }
}

/** A loopback port free now, so daemons can be told each other's address before they start. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** The JSON lines a child has printed so far (whole lines only: a pipe read may end mid-line). */
export function jsonLines(child: ChildProcess): () => Record<string, unknown>[] {
  const lines: Record<string, unknown>[] = [];
  let partial = "";
  child.stdout?.on("data", (b: Buffer) => {
    const parts = (partial + b.toString()).split("\n");
    partial = parts.pop() ?? "";
    for (const line of parts) {
      try {
        lines.push(JSON.parse(line));
      } catch {
        // not a JSON line
      }
    }
  });
  return () => lines;
}

/** One series' value from a daemon's /metrics (`name{labels}` as exported); NaN when it is absent. */
export async function daemonMetric(d: Pick<DaemonProcess, "metrics">, series: string): Promise<number> {
  const text = await (await fetch(`${d.metrics}/metrics`)).text();
  const found = text.split("\n").find((l) => l.startsWith(`${series} `));
  return found === undefined ? Number.NaN : Number(found.split(" ").at(-1));
}
