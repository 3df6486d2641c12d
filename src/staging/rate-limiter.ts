import { setTimeout as sleep } from "node:timers/promises";

type Sleep = (ms: number, signal?: AbortSignal) => Promise<unknown>;

/**
 * A token bucket shared by every job: at most `bytesPerSecond` on average, with bursts up to one
 * second's worth. Readers await `take(n)` after each chunk they receive, so a throttled part stops
 * reading its socket and TCP flow control slows the sender; nothing is buffered.
 */
export class RateLimiter {
  readonly bytesPerSecond: number;
  #tokens: number;
  #last: number;
  /** Callers wait in order, so one fast reader cannot starve the others. */
  #queue: Promise<void> = Promise.resolve();
  readonly #now: () => number;
  readonly #sleep: Sleep;

  constructor(bytesPerSecond: number, clock: { now?: () => number; sleep?: Sleep } = {}) {
    this.bytesPerSecond = bytesPerSecond;
    this.#now = clock.now ?? (() => performance.now());
    this.#sleep = clock.sleep ?? ((ms, signal) => sleep(ms, undefined, signal ? { signal } : {}));
    this.#tokens = bytesPerSecond;
    this.#last = this.#now();
  }

  /** Resolves once `n` bytes may pass; rejects at once (tokens returned) when `signal` aborts. */
  take(n: number, signal?: AbortSignal): Promise<void> {
    const run = async () => {
      signal?.throwIfAborted();
      this.#refill();
      this.#tokens -= n;
      if (this.#tokens < 0) {
        // In debt: wait until the bucket is back at zero (n may exceed one second's worth). An abort
        // ends the wait and gives the tokens back, so takers queued behind do not pay for it.
        try {
          await this.#sleep(Math.ceil((-this.#tokens / this.bytesPerSecond) * 1000), signal);
        } catch (err) {
          this.#tokens += n;
          throw err;
        }
        this.#refill();
      }
    };
    const next = this.#queue.then(run);
    this.#queue = next.catch(() => {});
    return next;
  }

  #refill(): void {
    const now = this.#now();
    this.#tokens = Math.min(
      this.bytesPerSecond,
      this.#tokens + ((now - this.#last) / 1000) * this.bytesPerSecond,
    );
    this.#last = now;
  }
}
