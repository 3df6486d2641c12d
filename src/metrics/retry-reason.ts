/**
 * The `reason` label of `coldstart_s3_retries_total`, apart from the metrics: the staging engine
 * classifies its retries without loading prom-client (a `coldstart pull` has no registry to fill).
 */
/** Values of `reason` on `coldstart_s3_retries_total`; see {@link retryReason}. */
export const RETRY_REASONS = [
  "slowdown",
  "server_error",
  "throttled",
  "reset",
  "truncated",
  "stall",
  "low_speed",
  "timeout",
  "other",
] as const;
export type RetryReason = (typeof RETRY_REASONS)[number];

const RESET_CODES = new Set([
  "ECONNRESET",
  "EPIPE",
  "ECONNABORTED",
  "UND_ERR_SOCKET",
  "ERR_STREAM_PREMATURE_CLOSE",
]);

/**
 * Classifies an error thrown by an S3 call or a body stream into the `reason` label of
 * `coldstart_s3_retries_total`. Shapes are those of src/s3/retry.ts: SDK errors carry
 * `$metadata.httpStatusCode` and `name`/`Code`; socket errors carry `code`; the engine's own
 * `TransientError` says "stall" or "body ended after" in its message.
 */
export function retryReason(err: unknown): RetryReason {
  const e = (typeof err === "object" && err !== null ? err : {}) as {
    $metadata?: { httpStatusCode?: unknown };
    name?: unknown;
    Code?: unknown;
    code?: unknown;
    message?: unknown;
  };
  const name = typeof e.name === "string" ? e.name : "";
  const sdkCode = typeof e.Code === "string" ? e.Code : name;
  const code = typeof e.code === "string" ? e.code : "";
  const message = typeof e.message === "string" ? e.message : typeof err === "string" ? err : "";
  const status = typeof e.$metadata?.httpStatusCode === "number" ? e.$metadata.httpStatusCode : undefined;

  if (status !== undefined) {
    if (status === 503 && (sdkCode === "SlowDown" || name === "SlowDown")) return "slowdown";
    if (status === 429) return "throttled";
    if (status >= 500) return "server_error";
    // 408, and S3's 400 RequestTimeout (the client was too slow to send).
    if (status === 408 || sdkCode === "RequestTimeout") return "timeout";
  }
  if (name === "TransientError") {
    if (message.includes("(low speed)")) return "low_speed";
    if (message.includes("stall")) return "stall";
    if (message.includes("body ended after") || message.includes("(truncated)")) return "truncated";
  }
  if (sdkCode === "SlowDown") return "slowdown";
  if (name === "TimeoutError" || code === "ETIMEDOUT" || sdkCode === "RequestTimeout") return "timeout";
  if (RESET_CODES.has(code)) return "reset";
  // A user's cancel is an AbortError ("This operation was aborted"): never a retry, never "reset".
  if (
    name !== "AbortError" &&
    /socket hang up|\baborted\b|premature close|other side closed/i.test(message)
  ) {
    return "reset";
  }
  return "other";
}
