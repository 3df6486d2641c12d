import { readdir, readFile } from "node:fs/promises";
import { join, relative } from "node:path";
import { callDaemon, type DaemonEndpoint } from "../../src/api/client.js";
import type { StageJobOptions, StageResult } from "../../src/staging/job-types.js";
import type { RateLimiter } from "../../src/staging/rate-limiter.js";
import { StageJob } from "../../src/staging/stage-job.js";
import { type PartRunner, PartWorkers } from "../../src/staging/workers/pool.js";
import { type S3Endpoint, testSource } from "./s3.js";
import { type SyntheticFile, sha256 } from "./synthetic-model.js";

export interface StageArgs {
  bucket: string;
  prefix: string;
  dest: string;
  /** Defaults to the S3 server itself; pass a fault proxy's URL to inject faults. */
  endpoint?: string;
  partSizeBytes?: number;
  concurrency?: number;
  include?: string[];
  exclude?: string[];
  maxAttempts?: number;
  /**
   * The client's inactivity timeout. Default 30 s: far above any wait a loaded machine makes, so a slow
   * answer is never retried (counts of retries and requests stay exact); a test that wants a stall
   * caught passes a short one.
   */
  requestTimeoutMs?: number;
  /** download.maxBytesPerSecond's limiter (a test gives it a fake clock). */
  rateLimiter?: RateLimiter;
  signal?: AbortSignal;
  /** Runs each part; default: the file's runner (see useStageRunner). */
  runPart?: PartRunner;
}

/** Where `stage` runs each part: the worker threads the daemon and the CLI use, or the main thread. */
export type StageRunner = "workers" | "main";
let runner: StageRunner = "workers";
let pool: PartWorkers | undefined;

/** For suites that run every test on both byte paths. */
export function useStageRunner(r: StageRunner): void {
  runner = r;
}

/** The runner `stage` uses now: one pool of two threads for the whole test file (idle threads are unref'd). */
export function stageRunner(): PartRunner | undefined {
  if (runner === "main") return undefined;
  pool ??= new PartWorkers({ size: 2 });
  return pool.run;
}

/** Runs the staging engine in-process (credentials from the environment, as in production). */
export async function stage(s3: S3Endpoint, args: StageArgs): Promise<StageResult> {
  const concurrency = args.concurrency ?? 8;
  const requestTimeoutMs = args.requestTimeoutMs ?? 30_000;
  const source = testSource(s3, {
    ...(args.endpoint ? { endpoint: args.endpoint } : {}),
    maxSockets: concurrency + 4,
    requestTimeoutMs,
  });
  const options: StageJobOptions = {
    source,
    bucket: args.bucket,
    prefix: args.prefix,
    dest: args.dest,
    partSizeBytes: args.partSizeBytes ?? 1024 * 1024,
    concurrency,
    filters: { include: args.include ?? [], exclude: args.exclude ?? [] },
    retry: { maxAttempts: args.maxAttempts ?? 10, baseDelayMs: 5, maxDelayMs: 50 },
    requestTimeoutMs,
    runPart: args.runPart ?? stageRunner(),
    ...(args.rateLimiter ? { rateLimiter: args.rateLimiter } : {}),
    ...(args.signal ? { signal: args.signal } : {}),
  };
  try {
    return await new StageJob(options).run();
  } finally {
    source.close();
  }
}

/** Every file under `dir` (relative paths), the state directory excluded unless asked. */
export async function listTree(dir: string, withState = false): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!e.isFile() && !e.isSymbolicLink()) continue;
    const rel = relative(dir, join(e.parentPath, e.name));
    if (!withState && rel.startsWith(".coldstart")) continue;
    out.push(rel);
  }
  return out.sort();
}

/** Asserts helper: SHA-256 of every expected file under dest, keyed by relative path. */
export async function digests(dest: string, files: SyntheticFile[]): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of files) out[f.relPath] = sha256(await readFile(join(dest, f.relPath)));
  return out;
}

export function expectedDigests(files: SyntheticFile[]): Record<string, string> {
  return Object.fromEntries(files.map((f) => [f.relPath, f.sha256]));
}

/** PUT /v1/models/{id} with `body` on a daemon, then its ready long-poll: throws unless both succeed. */
export async function stageThroughApi(
  ep: DaemonEndpoint,
  id: string,
  body: Record<string, unknown>,
): Promise<void> {
  const path = `/v1/models/${encodeURIComponent(id)}`;
  // Thrown, not expect()ed: the benchmarks import this file outside vitest.
  const put = await callDaemon(ep, "PUT", path, body);
  if (put.status >= 300) throw new Error(`PUT ${path} answered ${put.status}: ${JSON.stringify(put.body)}`);
  const ready = await callDaemon(ep, "GET", `${path}/ready?timeoutSeconds=120`, undefined, {
    timeoutMs: 125_000,
  });
  if (ready.status !== 200)
    throw new Error(`${path} not ready: ${ready.status} ${JSON.stringify(ready.body)}`);
}
