import { describe, expect, it } from "vitest";
import { owner, PRESETS, type SimParams, simulate } from "../../bench/fleet-sim.js";

/** The lab preset (the fan-out lab's network), a smaller model so the test is quick. */
const LAB: Omit<SimParams, "nodes"> = { ...PRESETS.lab, modelBytes: 128 * 2 ** 20, seed: 1 };

describe("the fleet simulation (bench:fleet-sim)", () => {
  it("accounts for every byte: each node ends with the model, from S3 or from peers", () => {
    for (const policy of ["independent", "today", "cooperative"] as const) {
      const r = simulate(policy, { ...LAB, nodes: 4 });
      expect(r.s3Models + r.peerModels, policy).toBeCloseTo(4, 6);
      expect(r.allReadySeconds, policy).toBeGreaterThan(0);
    }
    expect(simulate("independent", { ...LAB, nodes: 3 }).s3Models).toBeCloseTo(3, 6);
  });

  it("reads a model about once from S3 with the cooperative first wave, more with today's", () => {
    const today = simulate("today", { ...LAB, nodes: 4 });
    const cooperative = simulate("cooperative", { ...LAB, nodes: 4 });
    expect(cooperative.s3Models).toBeLessThanOrEqual(1.1);
    expect(today.s3Models).toBeGreaterThan(cooperative.s3Models);
  });

  it("answers SlowDown past the prefix's request rate", () => {
    const r = simulate("independent", { ...LAB, nodes: 4, prefixGetsPerSecond: 20 });
    expect(r.slowDowns).toBeGreaterThan(0);
    expect(r.s3GetsPerSecondPeak).toBeLessThanOrEqual(20);
    expect(r.s3Models).toBeCloseTo(4, 6);
  });

  it("spreads parts' owners over the nodes (rendezvous hashing)", () => {
    const counts = new Map<number, number>();
    for (let p = 0; p < 800; p++) counts.set(owner(p, 8), (counts.get(owner(p, 8)) ?? 0) + 1);
    expect(counts.size).toBe(8);
    for (const n of counts.values()) expect(n).toBeGreaterThan(60);
    // Adding a node moves only the parts the new node wins.
    let moved = 0;
    for (let p = 0; p < 800; p++) if (owner(p, 9) !== owner(p, 8)) moved++;
    expect(moved).toBeLessThan(800 / 9 + 40);
  });
});
