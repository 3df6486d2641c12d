import { setTimeout as sleep } from "node:timers/promises";

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
  readonly #sleep: (ms: number) => Promise<unknown>;

  constructor(
    bytesPerSecond: number,
    clock: { now?: () => number; sleep?: (ms: number) => Promise<unknown> } = {},
  ) {
    this.bytesPerSecond = bytesPerSecond;
    this.#now = clock.now ?? (() => performance.now());
    this.#sleep = clock.sleep ?? ((ms) => sleep(ms));
    this.#tokens = bytesPerSecond;
    this.#last = this.#now();
  }

  /** Resolves once `n` bytes may pass. */
  take(n: number, signal?: AbortSignal): Promise<void> {
    const run = async () => {
      this.#refill();
      this.#tokens -= n;
      if (this.#tokens < 0) {
        // In debt: wait until the bucket is back at zero (n may exceed one second's worth).
        await this.#sleep(Math.ceil((-this.#tokens / this.bytesPerSecond) * 1000));
        signal?.throwIfAborted();
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
