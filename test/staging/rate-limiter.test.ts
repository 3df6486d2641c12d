import { describe, expect, it } from "vitest";
import { RateLimiter } from "../../src/staging/rate-limiter.js";
import { fakeClock, settles, waitFor } from "../support/wait.js";

describe("RateLimiter", () => {
  it("lets a one-second burst through, then holds the average to the cap", async () => {
    const clock = fakeClock();
    const limiter = new RateLimiter(1000, clock);
    for (let i = 0; i < 10; i++) await limiter.take(100); // the initial burst
    expect(clock.elapsed()).toBe(0);
    for (let i = 0; i < 30; i++) await limiter.take(100); // 3000 more bytes at 1000 B/s
    expect(clock.elapsed()).toBeGreaterThanOrEqual(2990);
    expect(clock.elapsed()).toBeLessThanOrEqual(3010);
  });

  it("shares one budget between concurrent takers", async () => {
    const clock = fakeClock();
    const limiter = new RateLimiter(1000, clock);
    await limiter.take(1000);
    await Promise.all([limiter.take(500), limiter.take(500), limiter.take(1000)]);
    expect(clock.elapsed()).toBeGreaterThanOrEqual(1990);
  });

  it("accepts a chunk larger than one second's worth", async () => {
    const clock = fakeClock();
    const limiter = new RateLimiter(100, clock);
    await limiter.take(100);
    await limiter.take(250);
    expect(clock.elapsed()).toBe(2500);
  });
});

/**
 * A clock that moves only when the test says: a sleep ends once advance() passes its end, or rejects
 * (as node's timers/promises does) when its signal aborts. Every sleep asked for is in `asked`.
 */
function manualClock() {
  let t = 0;
  const sleepers = new Set<{ until: number; wake: () => void }>();
  const asked: number[] = [];
  const sleep = (ms: number, signal?: AbortSignal) =>
    new Promise<void>((resolve, reject) => {
      asked.push(ms);
      const sleeper = { until: t + ms, wake: resolve };
      sleepers.add(sleeper);
      signal?.addEventListener(
        "abort",
        () => {
          sleepers.delete(sleeper);
          reject(
            Object.assign(new Error("The operation was aborted"), {
              name: "AbortError",
              cause: signal.reason,
            }),
          );
        },
        { once: true },
      );
    });
  const advance = (ms: number) => {
    t += ms;
    for (const s of [...sleepers]) {
      if (s.until > t) continue;
      sleepers.delete(s);
      s.wake();
    }
  };
  return { now: () => t, sleep, advance, asked };
}

describe("RateLimiter abort", () => {
  it("an aborted take rejects at once and gives its tokens back to the takers behind it", async () => {
    const clock = manualClock();
    const limiter = new RateLimiter(1_000_000, clock); // 1 MB/s
    await limiter.take(1_000_000); // empty the bucket
    const abort = new AbortController();
    const big = limiter.take(2_000_000, abort.signal);
    const rejected = expect(big).rejects.toMatchObject({
      name: "AbortError",
      cause: { message: "cancelled" },
    });
    await waitFor(() => clock.asked.length === 1, { what: "the big take to sleep" });
    expect(clock.asked).toEqual([2000]);
    // At once: the clock stands still, so only the abort can end that sleep.
    abort.abort(new Error("cancelled"));
    await settles(rejected, { what: "the aborted take" });
    // 10 ms later the bucket holds 10 kB again, as if the big take had never been: no sleep. Had it
    // kept its 2 MB of debt, this take would sleep for about 2 s.
    clock.advance(10);
    let passed = false;
    const small = limiter.take(10_000).then(() => {
      passed = true;
    });
    await waitFor(() => passed || clock.asked.length > 1, { what: "the small take to pass or sleep" });
    expect(clock.asked).toEqual([2000]);
    await small;
    // And no more than that came back: 20 kB after another 10 ms is 10 ms short.
    clock.advance(10);
    const next = limiter.take(20_000);
    await waitFor(() => clock.asked.length === 2, { what: "the next take to sleep" });
    expect(clock.asked).toEqual([2000, 10]);
    clock.advance(10);
    await settles(next, { what: "the next take, its sleep over" });
  });
});
