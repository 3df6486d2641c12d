import { setTimeout as sleep } from "node:timers/promises";
import { ColdstartError } from "../errors.js";
import { backoffDelayMs } from "../lib/backoff.js";

/** HTTP status of an SDK error, if it carries one. */
export function statusOf(err: unknown): number | undefined {
  const meta = (err as { $metadata?: { httpStatusCode?: number } } | null)?.$metadata;
  return meta?.httpStatusCode;
}

function nameOf(err: unknown): string {
  const e = err as { name?: string; Code?: string; code?: string } | null;
  return String(e?.Code ?? e?.name ?? "");
}

const RETRYABLE_NET = new Set([
  "ECONNRESET",
  "ECONNREFUSED",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "EAI_AGAIN",
  "ENOTFOUND",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ERR_STREAM_PREMATURE_CLOSE",
  "UND_ERR_SOCKET",
]);

/** A failure of one attempt that a fresh attempt may not repeat (the engine's own, not from S3). */
export class TransientError extends Error {
  override readonly name = "TransientError";
  /**
   * The attempt brought bytes but too few to count as progress (a body below the low-speed limit):
   * it counts against maxAttempts, or a drip of one byte a second would be retried forever.
   */
  readonly noProgress: boolean;

  constructor(message: string, options: { cause?: unknown; noProgress?: boolean } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.noProgress = options.noProgress ?? false;
  }
}

export function isRetryable(err: unknown): boolean {
  if (err instanceof TransientError) return true;
  if (err instanceof ColdstartError) return false;
  const status = statusOf(err);
  if (status !== undefined) {
    if (status >= 500 || status === 429 || status === 408) return true;
    // S3 answers 400 RequestTimeout when the client was too slow to send; retry on a fresh socket.
    return status === 400 && nameOf(err) === "RequestTimeout";
  }
  const code = String((err as { code?: string } | null)?.code ?? "");
  const name = nameOf(err);
  if (RETRYABLE_NET.has(code)) return true;
  if (name === "TimeoutError" || name === "RequestTimeout" || name === "SlowDown") return true;
  const msg = err instanceof Error ? err.message : "";
  return /socket hang up|aborted|premature close|other side closed/i.test(msg) && name !== "AbortError";
}

/**
 * Maps a permanent S3 failure to the catalog. 403 and 404 fail fast; 412 (If-Match) and 416 (range
 * beyond a now shorter object) both mean the object changed under us.
 */
export function toS3Error(err: unknown, key: string, what: string): ColdstartError {
  if (err instanceof ColdstartError) return err;
  const status = statusOf(err);
  const name = nameOf(err);
  // The first line only: the SDK appends advice about its own hidden fields on a second.
  const message = (err instanceof Error ? err.message : String(err)).split("\n")[0]?.trim() ?? "";
  const reason = `${status ?? ""} ${name} ${message}`.trim();
  const opts = { cause: err, details: { key } };
  if ((err as { name?: string } | null)?.name === "AbortError") {
    return new ColdstartError("CS_ABORTED", `${what} ${key} was cancelled`, opts);
  }
  if (name === "CredentialsProviderError") {
    return new ColdstartError(
      "CS_S3_ACCESS_DENIED",
      `${what} ${key}: no AWS credentials (${message}). The SDK's chain looked at, in order: the ` +
        "environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), the shared config and credentials " +
        "files (AWS_PROFILE, ~/.aws), IRSA web identity (AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN), " +
        "EKS Pod Identity (AWS_CONTAINER_CREDENTIALS_FULL_URI) and the instance's metadata service; set " +
        "one of them (in a pod: its service account's IRSA annotation or Pod Identity association)",
      opts,
    );
  }
  if (status === 403)
    return new ColdstartError("CS_S3_ACCESS_DENIED", `${what} ${key}: access denied (${reason})`, opts);
  if (status === 404)
    return new ColdstartError("CS_S3_NOT_FOUND", `${what} ${key}: not found (${reason})`, opts);
  if (status === 412 || status === 416) {
    return new ColdstartError(
      "CS_OBJECT_CHANGED",
      `${what} ${key}: the object changed during download (${reason})`,
      opts,
    );
  }
  return new ColdstartError("CS_S3_REQUEST_FAILED", `${what} ${key} failed: ${reason}`, opts);
}

export interface RetryPolicy {
  maxAttempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
}

/**
 * Runs `attempt` until it succeeds, a permanent error occurs, or the budget is spent. `onRetry` is
 * told of each retry (for counters and logs). Abort cancels the backoff sleep too.
 */
export async function withRetry<T>(
  policy: RetryPolicy,
  what: { key: string; action: string },
  attempt: (n: number) => Promise<T>,
  hooks: {
    signal?: AbortSignal;
    onRetry?: (err: unknown, n: number) => void;
    /** A counter of work done (bytes written): an attempt that advanced it resets the budget. */
    progress?: () => number;
    /** When it returns an error, a failed attempt is not retried: that error is thrown instead. */
    halted?: (() => Error | undefined) | undefined;
  } = {},
): Promise<T> {
  // `failed` counts consecutive attempts that made no progress; `n` every attempt (for backoff).
  for (let n = 0, failed = 0; ; n++) {
    const before = hooks.progress?.();
    try {
      return await attempt(n);
    } catch (err) {
      if (hooks.signal?.aborted) throw toS3Error(hooks.signal.reason ?? err, what.key, what.action);
      if (!isRetryable(err)) throw toS3Error(err, what.key, what.action);
      const halt = hooks.halted?.();
      if (halt) throw halt;
      const advanced =
        hooks.progress !== undefined &&
        hooks.progress() !== before &&
        !(err instanceof TransientError && err.noProgress);
      failed = advanced ? 0 : failed + 1;
      if (failed >= policy.maxAttempts) {
        throw new ColdstartError(
          "CS_RETRIES_EXHAUSTED",
          `${what.action} ${what.key} failed ${policy.maxAttempts} times in a row without progress; last error: ${describe(err)}`,
          { cause: err, details: { key: what.key } },
        );
      }
      hooks.onRetry?.(err, n + 1);
      await sleep(
        backoffDelayMs(policy, failed, "full"),
        undefined,
        hooks.signal ? { signal: hooks.signal } : {},
      ).catch(() => {
        throw toS3Error(hooks.signal?.reason, what.key, what.action);
      });
      // Stopped while backing off: the next attempt would be a new request.
      const halted = hooks.halted?.();
      if (halted) throw halted;
    }
  }
}

export function describe(err: unknown): string {
  const status = statusOf(err);
  const e = err as { code?: string; name?: string; message?: string } | null;
  return [status, e?.code, e?.name, e?.message].filter((x) => x !== undefined && x !== "").join(" ");
}
