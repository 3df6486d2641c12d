/**
 * The ModelCache CRD (deploy/components/modelcache) on a real API server (etcd and kube-apiserver
 * built pinned by scripts/go-tools.mjs, started once for this file): its schema and CEL rules refuse
 * what they should, naming the field; defaults apply; the printer columns show what kubectl shows;
 * and status written by server-side apply, one field manager per node, never loses another node's
 * entry. Without the binaries the tests skip, except under CI, where they fail.
 *
 * Tier: integration
 */
import { readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { parse, parseAllDocuments } from "yaml";
import { toModelCache } from "../../src/kube/model-caches.js";
import {
  type KubeControlPlane,
  type KubeReply,
  kubeClient,
  useControlPlane,
} from "../support/kube-control-plane.js";
import { waitFor } from "../support/wait.js";

const CRD_FILE = join(
  resolve(import.meta.dirname, "../.."),
  "deploy/components/modelcache/modelcache-crd.yaml",
);
const EXAMPLES_FILE = join(resolve(import.meta.dirname, "../.."), "deploy/examples/modelcache.yaml");
const BASE = "/apis/coldstart.io/v1alpha1/modelcaches";

const { plane } = useControlPlane();

/** One API request as the admin; the body is JSON (or YAML for an apply). */
function api(
  p: KubeControlPlane,
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<KubeReply> {
  return kubeClient(p)(method, path, body, headers);
}

const APPLY = { "content-type": "application/apply-patch+yaml" };

function modelCache(name: string, spec: Record<string, unknown>) {
  return { apiVersion: "coldstart.io/v1alpha1", kind: "ModelCache", metadata: { name }, spec };
}

describe("the ModelCache CRD on a real API server", () => {
  it("is accepted, served, and refuses what its schema and rules refuse, naming the field", async (ctx) => {
    const p = plane(ctx);
    const crd = parse(await readFile(CRD_FILE, "utf8"));
    const created = await api(p, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd);
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    await waitFor(async () => (await api(p, "GET", BASE)).status === 200);

    const ok = await api(
      p,
      "POST",
      BASE,
      modelCache("llama", { model: "meta/llama-3.1-8b", source: "s3://models/llama/" }),
    );
    expect(ok.status, JSON.stringify(ok.body)).toBe(201);
    // Defaults: pinned, priority 0.
    expect(ok.body.spec).toMatchObject({ pin: true, priority: 0 });

    // 422 for what the schema refuses; 400 for an unknown field under strict field validation
    // (what kubectl apply sends by default): the field is named either way.
    const refused = async (name: string, spec: Record<string, unknown>, field: string, status = 422) => {
      const r = await api(p, "POST", `${BASE}?fieldValidation=Strict`, modelCache(name, spec));
      expect(r.status, `${name}: ${JSON.stringify(r.body)}`).toBe(status);
      expect(String(r.body.message)).toContain(field);
    };
    await refused("bad-source", { model: "m", source: "https://models/llama/" }, "spec.source");
    await refused("dotdot", { model: "org/../etc", source: "s3://models/x/" }, "spec.model");
    await refused("no-source", { model: "m" }, "spec.source");
    await refused("priority", { model: "m", source: "s3://models/x/", priority: 1000 }, "spec.priority");
    await refused("typo", { model: "m", source: "s3://models/x/", pinned: true }, "spec.pinned", 400);
    await refused(
      "operator",
      {
        model: "m",
        source: "s3://models/x/",
        nodeSelector: { matchExpressions: [{ key: "a", operator: "Has" }] },
      },
      "spec.nodeSelector.matchExpressions[0].operator",
    );

    // The model id is immutable: another model is another resource.
    const current = await api(p, "GET", `${BASE}/llama`);
    const changed = { ...current.body, spec: { ...(current.body.spec as object), model: "meta/other" } };
    const update = await api(p, "PUT", `${BASE}/llama`, changed);
    expect(update.status).toBe(422);
    expect(String(update.body.message)).toContain("model is immutable");
  });

  it("accepts deploy/examples/modelcache.yaml as it is, under strict field validation", async (ctx) => {
    const p = plane(ctx);
    await waitFor(async () => (await api(p, "GET", BASE)).status === 200);
    const examples = parseAllDocuments(await readFile(EXAMPLES_FILE, "utf8")).map((d) => d.toJS());
    expect(examples.length).toBeGreaterThan(0);
    for (const example of examples) {
      const r = await api(p, "POST", `${BASE}?fieldValidation=Strict&dryRun=All`, example);
      expect(r.status, JSON.stringify(r.body)).toBe(201);
      // And the daemon's own check of the spec agrees.
      expect(toModelCache(example).spec).not.toHaveProperty("invalid");
    }
  });

  it("keeps each node's status entry its own under server-side apply, and shows the printer columns", async (ctx) => {
    const p = plane(ctx);
    await waitFor(async () => (await api(p, "GET", BASE)).status === 200);
    await api(p, "POST", BASE, modelCache("shared", { model: "shared", source: "s3://models/shared/" }));
    const entry = (node: string, state: string, bytesDone: number) => ({
      apiVersion: "coldstart.io/v1alpha1",
      kind: "ModelCache",
      metadata: { name: "shared" },
      status: { nodes: [{ node, state, bytesDone, bytesTotal: 100 }] },
    });
    const apply = (node: string, body: unknown) =>
      api(p, "PATCH", `${BASE}/shared/status?fieldManager=coldstart-node/${node}`, body, APPLY);
    // Three daemons write at once, each only its own entry.
    const writes = await Promise.all([
      apply("a", entry("a", "staging", 10)),
      apply("b", entry("b", "staging", 20)),
      apply("c", entry("c", "ready", 100)),
    ]);
    for (const w of writes) expect(w.status, JSON.stringify(w.body)).toBe(200);
    // a moves on; b and c keep theirs.
    expect((await apply("a", entry("a", "ready", 100))).status).toBe(200);
    // b's daemon stops being selected: it applies without its entry, which removes only its own.
    expect((await apply("b", { ...entry("b", "ready", 0), status: { nodes: [] } })).status).toBe(200);
    const got = await api(p, "GET", `${BASE}/shared`);
    const nodes = (got.body.status as { nodes: { node: string; state: string }[] }).nodes;
    expect(nodes.map((n) => [n.node, n.state]).sort()).toEqual([
      ["a", "ready"],
      ["c", "ready"],
    ]);

    // The aggregate counts, applied by whoever saw the entries last (one shared manager, forced).
    const counts = await api(
      p,
      "PATCH",
      `${BASE}/shared/status?fieldManager=coldstart-aggregate&force=true`,
      {
        apiVersion: "coldstart.io/v1alpha1",
        kind: "ModelCache",
        metadata: { name: "shared" },
        status: { selectedNodes: 2, readyNodes: 2 },
      },
      APPLY,
    );
    expect(counts.status, JSON.stringify(counts.body)).toBe(200);
    const table = await api(p, "GET", `${BASE}/shared`, undefined, {
      accept: "application/json;as=Table;g=meta.k8s.io;v=v1",
    });
    const columns = (table.body.columnDefinitions as { name: string }[]).map((c) => c.name);
    expect(columns).toEqual(["Name", "Model", "Ready", "Selected", "Pinned", "Age"]);
    const row = (table.body.rows as { cells: unknown[] }[])[0]?.cells;
    expect(row?.slice(0, 5)).toEqual(["shared", "shared", 2, 2, true]);
  });
});
