/**
 * The cooperative first wave's split of a model between the nodes staging it together
 * (src/peers/cohort.ts): rendezvous hashing gives every part one owner that every member computes
 * alike, spreads the parts fairly, and moves only a leaving member's parts; Cohorts keeps which
 * members stage which source and answers who reads a part from S3.
 *
 * Tier: unit
 */
import { describe, expect, it } from "vitest";
import { Cohorts, rendezvous } from "../../src/peers/cohort.js";

const A = "http://10.0.0.1:5000";
const B = "http://10.0.0.2:5000";
const C = "http://10.0.0.3:5000";
const MEMBERS = [A, B, C];
const PART = 64 * 1024 * 1024;

/** 3000 parts as Cohorts names them: `bucket/key@start`, over a few shards of one model. */
const ITEMS = Array.from(
  { length: 3000 },
  (_, i) => `weights/models/llama/model-0000${i % 7}.safetensors@${Math.floor(i / 7) * PART}`,
);

function countOwners(members: readonly string[], items: readonly string[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const item of items) {
    const owner = rendezvous(members, item);
    if (owner !== undefined) counts.set(owner, (counts.get(owner) ?? 0) + 1);
  }
  return counts;
}

describe("rendezvous", () => {
  it("gives no owner without members, and the only member with one", () => {
    expect(rendezvous([], "b/k@0")).toBeUndefined();
    expect(rendezvous([A], "b/k@0")).toBe(A);
  });

  it("is deterministic and does not depend on the order the members are listed in", () => {
    const orders = [MEMBERS, [C, B, A], [B, C, A], [C, A, B]];
    for (const item of ITEMS.slice(0, 500)) {
      const owners = new Set(orders.map((o) => rendezvous(o, item)));
      expect(owners.size).toBe(1);
      expect(rendezvous(MEMBERS, item)).toBe(rendezvous(MEMBERS, item));
    }
  });

  it("gives every member a fair share of the parts", () => {
    const counts = countOwners(MEMBERS, ITEMS);
    expect([...counts.keys()].sort()).toEqual([...MEMBERS].sort());
    expect([...counts.values()].reduce((a, b) => a + b, 0)).toBe(ITEMS.length);
    for (const m of MEMBERS) {
      const share = (counts.get(m) ?? 0) / ITEMS.length;
      expect(share, m).toBeGreaterThan(0.25);
      expect(share, m).toBeLessThan(0.42);
    }
  });

  it("moves only the parts of a member that leaves; the others keep their owner", () => {
    const survivors = [A, C];
    let moved = 0;
    for (const item of ITEMS) {
      const before = rendezvous(MEMBERS, item);
      const after = rendezvous(survivors, item);
      expect(survivors).toContain(after);
      if (before === B) moved++;
      else expect(after, item).toBe(before);
    }
    // B's parts spread over both survivors, not all onto one of them.
    const inherited = countOwners(
      survivors,
      ITEMS.filter((i) => rendezvous(MEMBERS, i) === B),
    );
    expect(moved).toBeGreaterThan(0);
    for (const m of survivors) expect(inherited.get(m) ?? 0, m).toBeGreaterThan(moved * 0.3);
  });

  it("keeps every part of the others when a member joins", () => {
    const D = "http://10.0.0.4:5000";
    for (const item of ITEMS) {
      const after = rendezvous([...MEMBERS, D], item);
      if (after !== D) expect(after, item).toBe(rendezvous(MEMBERS, item));
    }
  });
});

describe("Cohorts", () => {
  it("forms no cohort with fewer than two members", () => {
    const cohorts = new Cohorts(A);
    cohorts.set("mc", "weights", "models/llama/", [A]);
    expect(cohorts.of("weights", "models/llama/model.safetensors")).toBeUndefined();
    expect(cohorts.owner("weights", "models/llama/model.safetensors", 0)).toBeUndefined();
    expect(cohorts.owns("weights", "models/llama/model.safetensors", 0)).toBe(true);
    expect(cohorts.others()).toEqual([]);
  });

  it("counts a member listed twice once", () => {
    const cohorts = new Cohorts(A);
    cohorts.set("mc", "weights", "models/llama/", [A, A]);
    expect(cohorts.of("weights", "models/llama/model.safetensors")).toBeUndefined();
  });

  it("forms no cohort that does not include this node, nor one for a node with no peer URL", () => {
    const outside = new Cohorts(A);
    outside.set("mc", "weights", "models/llama/", [B, C]);
    const anonymous = new Cohorts(undefined);
    anonymous.set("mc", "weights", "models/llama/", [A, B, C]);
    for (const cohorts of [outside, anonymous]) {
      expect(cohorts.of("weights", "models/llama/model.safetensors")).toBeUndefined();
      expect(cohorts.others()).toEqual([]);
      for (let i = 0; i < 50; i++) {
        expect(cohorts.owns("weights", "models/llama/model.safetensors", i * PART)).toBe(true);
      }
    }
  });

  it("drops a cohort when its membership is set again below two", () => {
    const cohorts = new Cohorts(A);
    cohorts.set("mc", "weights", "models/llama/", [A, B]);
    expect(cohorts.of("weights", "models/llama/model.safetensors")?.members).toEqual([A, B]);
    cohorts.set("mc", "weights", "models/llama/", [A]);
    expect(cohorts.of("weights", "models/llama/model.safetensors")).toBeUndefined();
  });

  it("lists the members sorted and deduplicated", () => {
    const cohorts = new Cohorts(B);
    cohorts.set("mc", "weights", "models/llama/", [C, A, B, A]);
    expect(cohorts.of("weights", "models/llama/model.safetensors")?.members).toEqual([A, B, C]);
  });

  it("finds the cohort with the longest prefix covering the object, in the same bucket only", () => {
    const cohorts = new Cohorts(A);
    cohorts.set("all", "weights", "models/", [A, B]);
    cohorts.set("llama", "weights", "models/llama/", [A, C]);
    cohorts.set("other-bucket", "mirror", "models/llama/shards/", [A, B, C]);

    expect(cohorts.of("weights", "models/llama/model.safetensors")?.members).toEqual([A, C]);
    expect(cohorts.of("weights", "models/llama/shards/x.safetensors")?.members).toEqual([A, C]);
    expect(cohorts.of("weights", "models/qwen/model.safetensors")?.members).toEqual([A, B]);
    expect(cohorts.of("mirror", "models/llama/shards/x.safetensors")?.members).toEqual([A, B, C]);
    expect(cohorts.of("mirror", "models/llama/model.safetensors")).toBeUndefined();
    expect(cohorts.of("weights", "datasets/x.parquet")).toBeUndefined();
    expect(cohorts.of("elsewhere", "models/llama/model.safetensors")).toBeUndefined();
  });

  it("gives every member the same owner for every part, and exactly one member owns each", () => {
    const views = MEMBERS.map((self, i) => {
      const cohorts = new Cohorts(self);
      // Each node lists the members in its own order; the owners must not depend on it.
      cohorts.set("mc", "weights", "models/llama/", [...MEMBERS.slice(i), ...MEMBERS.slice(0, i)]);
      return cohorts;
    });
    for (let start = 0; start < 300 * PART; start += PART) {
      const key = "models/llama/model-00001.safetensors";
      const owners = new Set(views.map((v) => v.owner("weights", key, start)));
      expect(owners.size).toBe(1);
      const [owner] = owners;
      expect(MEMBERS).toContain(owner);
      expect(owner).toBe(rendezvous(MEMBERS, `weights/${key}@${start}`));
      const owning = views.filter((v) => v.owns("weights", key, start));
      expect(owning.map((v) => v.self)).toEqual([owner]);
    }
  });

  it("gives no owner outside every cohort, and reads such parts from S3 itself", () => {
    const cohorts = new Cohorts(A);
    cohorts.set("mc", "weights", "models/llama/", [A, B, C]);
    expect(cohorts.owner("weights", "models/qwen/model.safetensors", 0)).toBeUndefined();
    expect(cohorts.owns("weights", "models/qwen/model.safetensors", 0)).toBe(true);
  });

  it("owns exactly the parts whose owner is this node", () => {
    const cohorts = new Cohorts(B);
    cohorts.set("mc", "weights", "models/llama/", MEMBERS);
    const key = "models/llama/model.safetensors";
    let owned = 0;
    for (let start = 0; start < 600 * PART; start += PART) {
      const owner = cohorts.owner("weights", key, start);
      expect(cohorts.owns("weights", key, start)).toBe(owner === B);
      if (owner === B) owned++;
    }
    expect(owned).toBeGreaterThan(600 * 0.25);
    expect(owned).toBeLessThan(600 * 0.42);
  });

  it("skips members that are not live, moving only their parts", () => {
    const cohorts = new Cohorts(A);
    cohorts.set("mc", "weights", "models/llama/", MEMBERS);
    const key = "models/llama/model.safetensors";
    const notB = (url: string) => url !== B;
    let movedFromB = 0;
    for (let start = 0; start < 600 * PART; start += PART) {
      const all = cohorts.owner("weights", key, start);
      const live = cohorts.owner("weights", key, start, notB);
      expect(live).not.toBe(B);
      if (all === B) {
        movedFromB++;
        expect([A, C]).toContain(live);
      } else {
        expect(live).toBe(all);
      }
    }
    expect(movedFromB).toBeGreaterThan(0);
  });

  it("never skips this node, even when `live` rejects it", () => {
    const cohorts = new Cohorts(A);
    cohorts.set("mc", "weights", "models/llama/", MEMBERS);
    const key = "models/llama/model.safetensors";
    const seen: string[] = [];
    for (let start = 0; start < 50 * PART; start += PART) {
      // Nobody is live, this node included: it still owns every part itself.
      expect(cohorts.owner("weights", key, start, () => false)).toBe(A);
      expect(
        cohorts.owner("weights", key, start, (url) => {
          seen.push(url);
          return url === B;
        }),
      ).toBe(rendezvous([A, B], `weights/${key}@${start}`));
    }
    expect(seen).not.toContain(A);
  });

  it("lists every member of every cohort but this node, once each", () => {
    const D = "http://10.0.0.4:5000";
    const cohorts = new Cohorts(A);
    cohorts.set("llama", "weights", "models/llama/", [A, B, C]);
    cohorts.set("qwen", "weights", "models/qwen/", [C, A, D, B]);
    cohorts.set("not-mine", "weights", "models/mistral/", [B, "http://10.0.0.9:5000"]);
    const others = cohorts.others();
    expect(others).toHaveLength(new Set(others).size);
    expect([...others].sort()).toEqual([B, C, D]);
  });

  it("forgets a deleted cohort", () => {
    const cohorts = new Cohorts(A);
    cohorts.set("llama", "weights", "models/llama/", [A, B]);
    cohorts.set("qwen", "weights", "models/qwen/", [A, C]);
    cohorts.delete("llama");
    expect(cohorts.of("weights", "models/llama/model.safetensors")).toBeUndefined();
    expect(cohorts.owns("weights", "models/llama/model.safetensors", 0)).toBe(true);
    expect(cohorts.others()).toEqual([C]);
    cohorts.delete("qwen");
    cohorts.delete("never-set");
    expect(cohorts.others()).toEqual([]);
  });
});
