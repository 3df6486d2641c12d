import { setTimeout as sleep } from "node:timers/promises";
import { describe, expect, it } from "vitest";
import { SlotScheduler } from "../../src/staging/scheduler.js";

describe("SlotScheduler", () => {
  it("never runs more than `concurrency` tasks at once", async () => {
    const s = new SlotScheduler(3);
    const owner = { priority: 0 };
    let running = 0;
    let peak = 0;
    await Promise.all(
      Array.from({ length: 20 }, () =>
        s.run(owner, async () => {
          peak = Math.max(peak, ++running);
          await sleep(2);
          running--;
        }),
      ),
    );
    expect(peak).toBe(3);
  });

  it("lets a higher-priority owner overtake queued work, including after a priority raise", async () => {
    const s = new SlotScheduler(1);
    const prefetch = { priority: 0 };
    const waited = { priority: 0 };
    const order: string[] = [];
    const task = (name: string) => async () => {
      order.push(name);
      await sleep(1);
    };
    const all = [
      ...Array.from({ length: 4 }, (_, i) => s.run(prefetch, task(`p${i}`))),
      ...Array.from({ length: 2 }, (_, i) => s.run(waited, task(`w${i}`))),
    ];
    // A pod starts waiting for the second model while the first prefetch part runs.
    waited.priority = 10;
    await Promise.all(all);
    expect(order).toEqual(["p0", "w0", "w1", "p1", "p2", "p3"]);
  });

  it("passes results and errors through and keeps going after a failure", async () => {
    const s = new SlotScheduler(2);
    const o = { priority: 0 };
    await expect(s.run(o, async () => 42)).resolves.toBe(42);
    await expect(s.run(o, async () => Promise.reject(new Error("boom")))).rejects.toThrow("boom");
    await expect(s.run(o, async () => "after")).resolves.toBe("after");
    expect(s.running).toBe(0);
    expect(s.queued).toBe(0);
  });
});
