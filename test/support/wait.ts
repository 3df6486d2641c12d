/**
 * Time in tests (docs: STYLE.md): wait for a condition, never for a fixed time. The deadlines here are
 * generous, for a loaded 2-core CI machine; they only matter when the condition never comes, and then
 * the test fails with a message that says what it waited for instead of hanging to the test timeout.
 */

/** The deadline of {@link waitFor} and {@link settles} unless told otherwise. */
export const WAIT_DEADLINE_MS = 30_000;

export interface WaitOptions {
  /** Give up (throw) after this long. Default {@link WAIT_DEADLINE_MS}. */
  timeoutMs?: number;
  /** Between checks. Default 20 ms. */
  intervalMs?: number;
  /** What is awaited, for the error message. */
  what?: string;
}

/** What a truthy check leaves of `T`. */
export type Truthy<T> = Exclude<T, false | 0 | 0n | "" | null | undefined>;

/**
 * Resolves with the condition's first truthy value; checks it at once, then every `intervalMs`.
 * Throws once `timeoutMs` has passed without one. A condition that throws fails the wait at once.
 */
export async function waitFor<T>(
  condition: () => T | Promise<T>,
  { timeoutMs = WAIT_DEADLINE_MS, intervalMs = 20, what = "condition" }: WaitOptions = {},
): Promise<Truthy<T>> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const value = await condition();
    if (value) return value as Truthy<T>;
    if (performance.now() > deadline) throw new Error(`waitFor: ${what} not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/**
 * `promise`, or a rejection naming `what` if it has not settled within `timeoutMs`: for something that
 * must end (an abort honoured, a deadline kept) and would otherwise hang until the test times out.
 * Only a bound on failure, never a measurement: a slow machine passes as long as it gets there.
 */
export function settles<T>(
  promise: Promise<T>,
  { timeoutMs = WAIT_DEADLINE_MS, what = "promise" }: Omit<WaitOptions, "intervalMs"> = {},
): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`settles: ${what} still pending after ${timeoutMs} ms`)),
      timeoutMs,
    );
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** A promise the test resolves by hand: a gate a fault or a double waits on until the test opens it. */
export function gate(): { opened: Promise<void>; open: () => void } {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { opened, open };
}

/**
 * A clock for a RateLimiter on which sleeping advances time at once: a test measures the limiter's
 * arithmetic (how long the bytes had to wait), not the machine.
 */
export function fakeClock(): {
  now: () => number;
  sleep: (ms: number) => Promise<void>;
  elapsed: () => number;
} {
  let t = 0;
  const sleep = async (ms: number) => {
    t += ms;
  };
  return { now: () => t, sleep, elapsed: () => t };
}
