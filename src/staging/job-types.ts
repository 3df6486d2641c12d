import type { Logger } from "pino";
import type { Metrics } from "../metrics/metrics.js";
import type { ObjectSource } from "../s3/object-source.js";
import type { RetryPolicy } from "../s3/retry.js";
import type { LowSpeed } from "./part-download.js";
import type { Filters } from "./plan.js";
import type { RateLimiter } from "./rate-limiter.js";
import type { SlotScheduler } from "./scheduler.js";
import type { PartRunner } from "./workers/pool.js";

export interface StageJobOptions {
  source: ObjectSource;
  bucket: string;
  prefix: string;
  /** Destination directory (created if missing). */
  dest: string;
  partSizeBytes: number;
  /**
   * The download budget the job's ranged GETs and HEADs run under. The daemon shares one across all
   * jobs; absent, the job makes its own of `concurrency` slots.
   */
  scheduler?: SlotScheduler;
  /** Slots of the job's own scheduler when none is given. */
  concurrency: number;
  /** Initial priority against other jobs on a shared scheduler (higher first); see `setPriority`. */
  priority?: number;
  /**
   * Called before the free-space check with the bytes the job still needs: the daemon evicts least
   * recently used models here, measuring free space itself (or throws CS_INSUFFICIENT_SPACE).
   */
  makeRoom?: (needBytes: number, signal: AbortSignal) => Promise<void>;
  filters: Filters;
  retry: RetryPolicy;
  requestTimeoutMs: number;
  /** The minimum-throughput rule per request (download.lowSpeed*); absent: off. */
  lowSpeed?: LowSpeed | undefined;
  signal?: AbortSignal;
  logger?: Logger;
  /** Bytes received, retries by reason, and per-stage durations. */
  metrics?: Metrics | undefined;
  /**
   * How long to wait for another holder's destination lock to go stale (a replaced daemon pod's
   * lock, heartbeat stopped) before failing with CS_DEST_LOCKED. The CLI fails at once.
   */
  lockWaitMs?: number;
  /**
   * Runs each part: the daemon's and the CLI's pool of worker threads (download.workers); absent,
   * on this thread (downloadPart).
   */
  runPart?: PartRunner | undefined;
  /** Throughput cap shared with other jobs (download.maxBytesPerSecond). */
  rateLimiter?: RateLimiter | undefined;
  /** Take the model's parts in a random order (set when peers are configured). */
  spreadParts?: boolean | undefined;
  /**
   * Which parts this node reads from S3 itself, in a cohort staging the model together
   * (src/peers/cohort.ts): those go first, the others are left to their owners for as long as
   * possible. The answer changes as members come and go (`version` counts the changes): the parts
   * not started yet are ordered again then.
   */
  ownership?: PartOwnership | undefined;
  /**
   * The staging root `dest` lies below (the daemon's): every directory between them must be a real
   * directory, never a symlink (CS_PATH_UNSAFE). The CLI's destination has none.
   */
  within?: string | undefined;
}

export interface StageProgress {
  /** downloading: parts in flight; verifying: every byte is in, last files being checked and committed. */
  phase: "listing" | "downloading" | "verifying" | "done" | "failed";
  filesTotal: number;
  filesDone: number;
  bytesTotal: number;
  /** Bytes in place: downloaded this run plus resumed. */
  bytesDone: number;
  /** Bytes not fetched again because a journal or the manifest already had them. */
  resumedBytes: number;
  retries: number;
  startedAt: number;
}

export interface StageResult {
  files: number;
  bytes: number;
  seconds: number;
  /** Bytes transferred this run per second of wall time (resumed bytes excluded). */
  bytesPerSecond: number;
  retries: number;
  resumedBytes: number;
}

/** What config.download decides for every staging job (mapped in src/wiring/staging.ts). */
export type StageSettings = Pick<
  StageJobOptions,
  "partSizeBytes" | "concurrency" | "retry" | "requestTimeoutMs" | "lowSpeed"
>;

/** Whether this node owns a part (the object's bytes from `start`), and how often that changed. */
export interface PartOwnership {
  owns(key: string, start: number): boolean;
  version(): number;
}
