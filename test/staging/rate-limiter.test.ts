import { describe, expect, it } from "vitest";
import { RateLimiter } from "../../src/staging/rate-limiter.js";

/** A fake clock: sleeping advances time, so the test measures the limiter's arithmetic, not the machine. */
function fakeClock() {
  let t = 0;
  const sleep = async (ms: number) => {
    t += ms;
  };
  return { now: () => t, sleep, elapsed: () => t };
}

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

describe("RateLimiter abort", () => {
  it("an aborted take rejects at once and gives its tokens back to the takers behind it", async () => {
    const limiter = new RateLimiter(1_000_000); // real clock: 1 MB/s
    await limiter.take(1_000_000); // empty the bucket
    const abort = new AbortController();
    const started = Date.now();
    const big = limiter.take(2_000_000, abort.signal);
    setTimeout(() => abort.abort(new Error("cancelled")), 50);
    await expect(big).rejects.toMatchObject({ name: "AbortError" });
    expect(Date.now() - started).toBeLessThan(1000);
    const small = Date.now();
    await limiter.take(1000);
    expect(Date.now() - small).toBeLessThan(500);
  });
});
