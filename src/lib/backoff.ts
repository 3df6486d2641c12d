/** Exponential backoff: the ceiling doubles from `baseDelayMs` per failure, up to `maxDelayMs`. */
export interface Backoff {
  baseDelayMs: number;
  maxDelayMs: number;
}

/**
 * The wait after `failures` failures (0: after the first), with jitter (AWS Architecture Blog,
 * "Exponential Backoff And Jitter"), so that a DaemonSet's pods never retry in lockstep:
 * - "full": uniform(0, ceiling). For bounded retries of one request (S3 GETs), where the spread
 *   matters most and an early retry is cheap.
 * - "equal": ceiling/2 + uniform(0, ceiling/2). For a loop that retries until it succeeds (the node
 *   label sync), where a floor that grows keeps a long outage from being polled at once.
 */
export function backoffDelayMs(
  b: Backoff,
  failures: number,
  jitter: "full" | "equal",
  random: () => number = Math.random,
): number {
  const ceiling = Math.min(b.maxDelayMs, b.baseDelayMs * 2 ** Math.min(failures, 30));
  return jitter === "full"
    ? Math.floor(random() * ceiling)
    : Math.round(ceiling / 2 + (random() * ceiling) / 2);
}
