/**
 * The pure half of the daemon's view of ModelCache resources (src/kube/model-caches.ts): the label
 * selector a resource picks its nodes with, read with Kubernetes' semantics, and the validation a
 * raw object goes through before it reaches staging (the CRD's schema may be older, or absent for a
 * hand-made object). The informers themselves are exercised against a real API server in
 * test/kube/modelcache.test.ts.
 *
 * The reconciler's own check of what the API refuses (checkedSpec) is here too.
 *
 * Tier: unit
 */
import { describe, expect, it } from "vitest";
import { checkedSpec } from "../../src/daemon/model-caches.js";
import { type LabelSelector, type ModelCache, selects, toModelCache } from "../../src/kube/model-caches.js";

const LABELS = { "gpu.vendor": "nvidia", "topology.zone": "a", pool: "inference" } as const;

describe("selects", () => {
  it("selects every node without a selector, and with an empty one", () => {
    expect(selects(undefined, LABELS)).toBe(true);
    expect(selects({}, LABELS)).toBe(true);
    expect(selects({}, {})).toBe(true);
    expect(selects({ matchLabels: {}, matchExpressions: [] }, {})).toBe(true);
  });

  it("requires every matchLabels pair to match", () => {
    expect(selects({ matchLabels: { pool: "inference" } }, LABELS)).toBe(true);
    expect(selects({ matchLabels: { pool: "inference", "topology.zone": "a" } }, LABELS)).toBe(true);
    expect(selects({ matchLabels: { pool: "inference", "topology.zone": "b" } }, LABELS)).toBe(false);
    expect(selects({ matchLabels: { pool: "training" } }, LABELS)).toBe(false);
    expect(selects({ matchLabels: { missing: "x" } }, LABELS)).toBe(false);
    // An empty value matches a label with an empty value, not a missing label.
    expect(selects({ matchLabels: { flag: "" } }, { flag: "" })).toBe(true);
    expect(selects({ matchLabels: { flag: "" } }, {})).toBe(false);
  });

  it("reads In: the key is present with one of the values", () => {
    const zoneAB: LabelSelector = {
      matchExpressions: [{ key: "topology.zone", operator: "In", values: ["a", "b"] }],
    };
    expect(selects(zoneAB, LABELS)).toBe(true);
    expect(selects(zoneAB, { ...LABELS, "topology.zone": "c" })).toBe(false);
    expect(selects(zoneAB, { pool: "inference" })).toBe(false);
  });

  it("reads NotIn: the key is absent, or present with none of the values", () => {
    const notZoneA: LabelSelector = {
      matchExpressions: [{ key: "topology.zone", operator: "NotIn", values: ["a"] }],
    };
    expect(selects(notZoneA, LABELS)).toBe(false);
    expect(selects(notZoneA, { ...LABELS, "topology.zone": "b" })).toBe(true);
    expect(selects(notZoneA, { pool: "inference" })).toBe(true);
  });

  it("reads Exists and DoesNotExist by the key alone, whatever its value", () => {
    const exists: LabelSelector = { matchExpressions: [{ key: "gpu.vendor", operator: "Exists" }] };
    const absent: LabelSelector = {
      matchExpressions: [{ key: "gpu.vendor", operator: "DoesNotExist" }],
    };
    expect(selects(exists, LABELS)).toBe(true);
    expect(selects(exists, { "gpu.vendor": "" })).toBe(true);
    expect(selects(exists, { pool: "inference" })).toBe(false);
    expect(selects(absent, LABELS)).toBe(false);
    expect(selects(absent, { "gpu.vendor": "" })).toBe(false);
    expect(selects(absent, { pool: "inference" })).toBe(true);
  });

  it("takes a label key from the labels themselves, not from Object.prototype", () => {
    const exists: LabelSelector = { matchExpressions: [{ key: "toString", operator: "Exists" }] };
    const absent: LabelSelector = {
      matchExpressions: [{ key: "constructor", operator: "DoesNotExist" }],
    };
    expect(selects(exists, LABELS)).toBe(false);
    expect(selects(absent, LABELS)).toBe(true);
  });

  it("requires every expression to hold", () => {
    const selector: LabelSelector = {
      matchExpressions: [
        { key: "gpu.vendor", operator: "Exists" },
        { key: "topology.zone", operator: "In", values: ["a"] },
        { key: "drain", operator: "DoesNotExist" },
      ],
    };
    expect(selects(selector, LABELS)).toBe(true);
    expect(selects(selector, { ...LABELS, drain: "true" })).toBe(false);
    expect(selects(selector, { ...LABELS, "topology.zone": "b" })).toBe(false);
  });

  it("ANDs matchLabels with matchExpressions", () => {
    const selector: LabelSelector = {
      matchLabels: { pool: "inference" },
      matchExpressions: [{ key: "topology.zone", operator: "NotIn", values: ["b"] }],
    };
    expect(selects(selector, LABELS)).toBe(true);
    // The labels match, the expression does not.
    expect(selects(selector, { ...LABELS, "topology.zone": "b" })).toBe(false);
    // The expression holds, the labels do not.
    expect(selects(selector, { ...LABELS, pool: "training" })).toBe(false);
    expect(selects(selector, { "topology.zone": "a" })).toBe(false);
  });
});

/** A raw ModelCache as the informer would hold it. */
function raw(spec: unknown, status?: unknown): Parameters<typeof toModelCache>[0] {
  return {
    apiVersion: "coldstart.io/v1alpha1",
    kind: "ModelCache",
    metadata: { name: "llama", uid: "uid-1", resourceVersion: "42" },
    spec,
    ...(status === undefined ? {} : { status }),
  } as Parameters<typeof toModelCache>[0];
}

const VALID = { model: "llama-3-8b", source: "s3://weights/models/llama/" };

function invalidOf(cache: ModelCache): string {
  expect(cache.spec).toHaveProperty("invalid");
  return (cache.spec as { invalid: string }).invalid;
}

describe("toModelCache", () => {
  it("keeps the metadata and gives a valid spec its defaults", () => {
    const cache = toModelCache(raw(VALID));
    expect(cache).toMatchObject({ name: "llama", uid: "uid-1", resourceVersion: "42" });
    expect(cache.spec).toEqual({ ...VALID, pin: true, priority: 0 });
  });

  it("keeps every field a full spec sets", () => {
    const spec = {
      ...VALID,
      include: ["*.safetensors", "*.json"],
      exclude: ["original/**"],
      nodeSelector: {
        matchLabels: { pool: "inference" },
        matchExpressions: [{ key: "topology.zone", operator: "In", values: ["a"] }],
      },
      pin: false,
      priority: -100,
      compileCaches: [{ torch: "2.7.0", vllm: "0.9.1", extra: { gpu: "h100" } }],
    };
    expect(toModelCache(raw(spec)).spec).toEqual(spec);
    expect(toModelCache(raw({ ...VALID, priority: 100 })).spec).toMatchObject({ priority: 100 });
  });

  it("refuses an unknown field, naming it", () => {
    expect(invalidOf(toModelCache(raw({ ...VALID, replicas: 3 })))).toContain("replicas");
    const nested = invalidOf(
      toModelCache(raw({ ...VALID, compileCaches: [{ torch: "2.7.0", cuda: "12.8" }] })),
    );
    expect(nested).toMatch(/^spec\.compileCaches\.0\b/);
    expect(nested).toContain("cuda");
  });

  it("names an unknown field by its path, and a spec that is no object as spec", () => {
    expect(invalidOf(toModelCache(raw({ ...VALID, replicas: 3 })))).toBe("spec.replicas: unknown field");
    const notObject = invalidOf(toModelCache(raw("llama")));
    expect(notObject).toMatch(/^spec: /);
  });

  it("refuses a priority out of range, naming spec.priority", () => {
    for (const priority of [1000, 101, -101, 1.5]) {
      expect(invalidOf(toModelCache(raw({ ...VALID, priority })))).toMatch(/^spec\.priority: /);
    }
  });

  it("refuses a field of the wrong type, naming its path", () => {
    expect(invalidOf(toModelCache(raw({ ...VALID, pin: "yes" })))).toMatch(/^spec\.pin: /);
    expect(invalidOf(toModelCache(raw({ ...VALID, priority: "5" })))).toMatch(/^spec\.priority: /);
    expect(invalidOf(toModelCache(raw({ ...VALID, nodeSelector: { matchLabels: { pool: 1 } } })))).toMatch(
      /^spec\.nodeSelector\.matchLabels\.pool: /,
    );
    expect(
      invalidOf(
        toModelCache(
          raw({
            ...VALID,
            nodeSelector: { matchExpressions: [{ key: "zone", operator: "Within" }] },
          }),
        ),
      ),
    ).toMatch(/^spec\.nodeSelector\.matchExpressions\.0\.operator: /);
  });

  it("refuses, by the reconciler's check, what the API would: a .. segment in the model, no s3:// source", () => {
    expect(checkedSpec(toModelCache(raw(VALID)))).toEqual({ ...VALID, pin: true, priority: 0 });
    expect(
      invalidOf({ spec: checkedSpec(toModelCache(raw({ ...VALID, model: "a/../b" }))) } as ModelCache),
    ).toBe('spec.model: model id "a/../b" must not have a ".." segment');
    expect(
      invalidOf({
        spec: checkedSpec(toModelCache(raw({ ...VALID, source: "https://weights/llama/" }))),
      } as ModelCache),
    ).toMatch(/^spec\.source: .*https:\/\/weights\/llama\//);
    // The schema's own reason comes first, as it was.
    expect(invalidOf({ spec: checkedSpec(toModelCache(raw({ ...VALID, replicas: 3 }))) } as ModelCache)).toBe(
      "spec.replicas: unknown field",
    );
  });

  it("refuses a spec without a source, naming spec.source", () => {
    const invalid = invalidOf(toModelCache(raw({ model: "llama-3-8b" })));
    expect(invalid).toMatch(/^spec\.source: /);
    expect(invalid).not.toContain("spec.model");
  });

  it("refuses a missing spec, naming each required field", () => {
    for (const spec of [undefined, null]) {
      const invalid = invalidOf(toModelCache(raw(spec)));
      expect(invalid).toContain("spec.model: ");
      expect(invalid).toContain("spec.source: ");
    }
  });

  it("keeps the reason short however many fields are wrong", () => {
    const include = Array.from({ length: 200 }, () => "");
    const invalid = invalidOf(toModelCache(raw({ ...VALID, include })));
    expect(invalid.length).toBeLessThanOrEqual(900);
    expect(invalid).toMatch(/^spec\.include\b/);
  });

  it("drops status entries without a string node, keeping the rest and the counts", () => {
    const status = {
      nodes: [
        { node: "node-a", state: "ready", bytesDone: 10, bytesTotal: 10 },
        { state: "staging" },
        null,
        { node: 7, state: "ready" },
        "node-c",
        { node: "node-b", state: "staging", peer: "http://10.0.0.2:5000" },
      ],
      selectedNodes: 3,
      readyNodes: 1,
    };
    const cache = toModelCache(raw(VALID, status));
    expect(cache.nodes).toEqual([
      { node: "node-a", state: "ready", bytesDone: 10, bytesTotal: 10 },
      { node: "node-b", state: "staging", peer: "http://10.0.0.2:5000" },
    ]);
    expect(cache.selectedNodes).toBe(3);
    expect(cache.readyNodes).toBe(1);
  });

  it("reads a missing status, or one without a list of nodes, as no nodes and no counts", () => {
    for (const status of [undefined, {}, { nodes: "node-a" }, { nodes: { node: "node-a" } }]) {
      const cache = toModelCache(raw(VALID, status));
      expect(cache.nodes).toEqual([]);
      expect(cache.selectedNodes).toBeUndefined();
      expect(cache.readyNodes).toBeUndefined();
    }
  });

  it("reads missing metadata as empty strings", () => {
    const cache = toModelCache({ spec: VALID } as Parameters<typeof toModelCache>[0]);
    expect(cache).toMatchObject({ name: "", uid: "", resourceVersion: "", nodes: [] });
    expect(cache.spec).toEqual({ ...VALID, pin: true, priority: 0 });
  });
});
