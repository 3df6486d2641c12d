/**
 * deploy/components/modelcache's RBAC and ValidatingAdmissionPolicy on a real API server (etcd and
 * kube-apiserver built pinned by scripts/go-tools.mjs, started once for this file). A daemon's
 * pod-bound service account token (it carries the pod's node) writes its own node's entry of a
 * ModelCache's status.nodes and the counts by server-side apply, and is refused another node's entry
 * (added, changed or dropped, whatever the field manager or force), the spec, and what RBAC does not
 * grant; its reads (ModelCaches, its own Node by field selector) and its events are allowed. A token
 * without the node claim is refused, and the policy stays within the CEL cost budget at the CRD's
 * 5000 entries. Without the binaries the tests skip, except under CI, where they fail.
 *
 * Tier: integration
 */
import { readFile } from "node:fs/promises";
import { request } from "node:https";
import { join, resolve } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";
import {
  type KubeClient,
  type KubeControlPlane,
  type KubeReply,
  kubeClient,
  useControlPlane,
} from "../support/kube-control-plane.js";
import { settles, waitFor } from "../support/wait.js";

const deploy = join(resolve(import.meta.dirname, "../.."), "deploy");
const component = join(deploy, "components/modelcache");
const NAMESPACE = "coldstart";
const SERVICE_ACCOUNT = "coldstart";
const NODE_A = "gpu-a";
const NODE_B = "gpu-b";
const POLICY = "coldstart-modelcache-own-entry";
const OWN_ENTRY_ONLY =
  "the coldstart daemon may only add, change or remove its own node's entry of status.nodes";
const NO_NODE_CLAIM = "the coldstart daemon's token must name its node";
const BASE = "/apis/coldstart.io/v1alpha1/modelcaches";
const CRD = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/modelcaches.coldstart.io";
const APPLY = { "content-type": "application/apply-patch+yaml" };
const MERGE = { "content-type": "application/merge-patch+json" };
const { plane, current } = useControlPlane();
let ca = "";

beforeAll(async () => {
  const cp = current();
  if (cp) ca = await readFile(cp.caFile, "utf8");
});

type Reply = KubeReply;
type Client = KubeClient;

function client(p: KubeControlPlane, token: string): Client {
  return kubeClient(p, token);
}

/**
 * The first event of a watch (`path` carries watch=true), then the stream is closed; or, when the
 * watch is refused, the status and the Status reply.
 */
function firstWatchEvent(
  p: KubeControlPlane,
  token: string,
  path: string,
): Promise<{ status: number; type?: string; name?: string; message?: string }> {
  const watching = new Promise<{ status: number; type?: string; name?: string; message?: string }>(
    (done, fail) => {
      const req = request(
        new URL(path, p.url),
        { method: "GET", ca, headers: { authorization: `Bearer ${token}`, accept: "application/json" } },
        (res) => {
          let text = "";
          res.setEncoding("utf8");
          res.on("data", (c: string) => {
            text += c;
            const end = text.indexOf("\n");
            if (res.statusCode !== 200 || end < 0) return;
            const event = JSON.parse(text.slice(0, end));
            req.destroy();
            done({ status: 200, type: event.type, name: event.object?.metadata?.name });
          });
          res.on("end", () => {
            let message = text;
            try {
              message = JSON.parse(text).message;
            } catch {
              // not a Status object: the text itself
            }
            done({ status: res.statusCode ?? 0, message });
          });
        },
      );
      // The destroy() after the first event ends the request with an error nobody waits for.
      req.on("error", fail);
      req.end();
    },
  );
  return settles(watching, { what: `the first event of ${path}` });
}

/** The collection a manifest's object is created in (the kinds the files here hold). */
function collection(o: { kind: string; metadata: { namespace?: string } }): string {
  const ns = o.metadata.namespace;
  const paths: Record<string, string> = {
    CustomResourceDefinition: "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
    ClusterRole: "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    ClusterRoleBinding: "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    Role: `/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/roles`,
    RoleBinding: `/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/rolebindings`,
    ValidatingAdmissionPolicy: "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies",
    ValidatingAdmissionPolicyBinding:
      "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings",
  };
  const path = paths[o.kind];
  if (!path) throw new Error(`no collection for ${o.kind}`);
  return path;
}

/** The refused request's message, after checking it names the policy and was refused as invalid. */
function denied(r: Reply): string {
  expect(r.status, JSON.stringify(r.body)).toBe(422);
  const message = String(r.body.message);
  expect(message).toContain(`ValidatingAdmissionPolicy '${POLICY}'`);
  return message;
}

/** A ModelCache as server-side apply takes it: only the fields the manager means to own. */
function applied(name: string, status: Record<string, unknown>) {
  return { apiVersion: "coldstart.io/v1alpha1", kind: "ModelCache", metadata: { name }, status };
}

interface Entry {
  node: string;
  state: string;
  bytesDone?: number;
  bytesTotal?: number;
}

const entry = (node: string, state: string, bytesDone = 1): Entry => ({
  node,
  state,
  bytesDone,
  bytesTotal: 10,
});

/** `…/status?fieldManager=…` (and force=true when asked). */
function statusPath(name: string, fieldManager: string, force = false, dryRun = false): string {
  const q = new URLSearchParams({ fieldManager });
  if (force) q.set("force", "true");
  if (dryRun) q.set("dryRun", "All");
  return `${BASE}/${name}/status?${q}`;
}

interface Cluster {
  admin: Client;
  /** The tokens of daemons A and B (pod-bound: they carry the node), and one without the claim. */
  tokens: { a: string; b: string; unbound: string };
  daemonA: Client;
  daemonB: Client;
}

let cluster: Promise<Cluster> | undefined;

/**
 * Once per file: the base RBAC and the component's CRD, RBAC and policy as an operator applies them;
 * two Nodes, a Pod of the daemon's service account bound to each (it never runs: there is no
 * scheduler or kubelet; the token request only needs the binding) and a token for each; and the
 * policy in effect.
 */
function setUp(p: KubeControlPlane): Promise<Cluster> {
  cluster ??= (async () => {
    const admin = client(p, p.adminToken);
    const created = async (path: string, body: unknown) => {
      const r = await admin("POST", path, body);
      expect(r.status, `POST ${path}: ${JSON.stringify(r.body)}`).toBe(201);
      return r.body;
    };
    await created("/api/v1/namespaces", { metadata: { name: NAMESPACE } });
    await created(`/api/v1/namespaces/${NAMESPACE}/serviceaccounts`, { metadata: { name: SERVICE_ACCOUNT } });
    for (const file of [
      join(deploy, "rbac.yaml"),
      join(component, "modelcache-crd.yaml"),
      join(component, "modelcache-rbac.yaml"),
      join(component, "modelcache-admission-policy.yaml"),
    ]) {
      for (const doc of parseAllDocuments(await readFile(file, "utf8"))) {
        const o = doc.toJS();
        await created(collection(o), o);
      }
    }
    // (The API server refuses a policy whose CEL does not compile, so the create above is that much of
    // a check; status.typeChecking stays empty: the controller manager writes it, and there is none.)
    await waitFor(
      async () => {
        const crd = await admin("GET", CRD);
        const conditions: { type: string; status: string }[] = crd.body.status?.conditions ?? [];
        return conditions.some((c) => c.type === "Established" && c.status === "True");
      },
      { timeoutMs: 60_000, intervalMs: 100, what: "the ModelCache CRD Established" },
    );

    const tokenFor = async (pod?: { name: string; uid: string }) => {
      const r = await created(`/api/v1/namespaces/${NAMESPACE}/serviceaccounts/${SERVICE_ACCOUNT}/token`, {
        apiVersion: "authentication.k8s.io/v1",
        kind: "TokenRequest",
        spec: {
          audiences: [],
          expirationSeconds: 3600,
          ...(pod ? { boundObjectRef: { apiVersion: "v1", kind: "Pod", ...pod } } : {}),
        },
      });
      return String(r.status.token);
    };
    const tokens: Record<string, string> = {};
    for (const node of [NODE_A, NODE_B]) {
      await created("/api/v1/nodes", { metadata: { name: node } });
      const pod = await created(`/api/v1/namespaces/${NAMESPACE}/pods`, {
        metadata: { name: `coldstart-${node}` },
        spec: {
          nodeName: node,
          serviceAccountName: SERVICE_ACCOUNT,
          containers: [{ name: "coldstart", image: "coldstart:test" }],
        },
      });
      tokens[node] = await tokenFor({ name: pod.metadata.name, uid: pod.metadata.uid });
    }
    const unbound = await tokenFor();

    await created(BASE, {
      apiVersion: "coldstart.io/v1alpha1",
      kind: "ModelCache",
      metadata: { name: "m" },
      spec: { model: "m", source: "s3://models/m/" },
    });

    // RBAC and the policy take effect once the API server's informers have them: wait for the
    // policy's refusal of an entry for a third node, with dry runs (admitted or not, nothing changes).
    const daemonA = client(p, tokens[NODE_A] as string);
    await waitFor(
      async () => {
        const r = await daemonA(
          "PATCH",
          statusPath("m", `coldstart-node/${NODE_A}`, false, true),
          applied("m", { nodes: [entry("gpu-z", "ready")] }),
          APPLY,
        );
        return r.status === 422 && String(r.body.message).includes(POLICY);
      },
      { timeoutMs: 60_000, intervalMs: 200, what: `the policy ${POLICY} in effect` },
    );
    return {
      admin,
      tokens: { a: tokens[NODE_A] as string, b: tokens[NODE_B] as string, unbound },
      daemonA,
      daemonB: client(p, tokens[NODE_B] as string),
    };
  })();
  return cluster;
}

describe("components/modelcache on a real API server: RBAC and the own-entry admission policy", () => {
  it("lets each daemon write only its own node's status entry and the counts", async (ctx) => {
    const p = plane(ctx);
    const { admin, daemonA, daemonB, tokens } = await setUp(p);
    const asNode = (daemon: Client, manager: string, status: Record<string, unknown>, force = false) =>
      daemon("PATCH", statusPath("m", manager, force), applied("m", status), APPLY);

    // Each daemon its own entry, under its own field manager.
    const a = await asNode(daemonA, `coldstart-node/${NODE_A}`, { nodes: [entry(NODE_A, "staging")] });
    expect(a.status, JSON.stringify(a.body)).toBe(200);
    const b = await asNode(daemonB, `coldstart-node/${NODE_B}`, { nodes: [entry(NODE_B, "staging")] });
    expect(b.status, JSON.stringify(b.body)).toBe(200);
    // And changes it.
    const moved = await asNode(daemonA, `coldstart-node/${NODE_A}`, { nodes: [entry(NODE_A, "ready", 10)] });
    expect(moved.status, JSON.stringify(moved.body)).toBe(200);

    // B's entry from A: server-side apply alone only catches a conflicting value (409, B's manager
    // owns it); with force=true it would take it over, and the policy refuses.
    const other = { nodes: [entry(NODE_A, "ready", 10), entry(NODE_B, "failed")] };
    expect((await asNode(daemonA, `coldstart-node/${NODE_A}`, other)).status).toBe(409);
    expect(denied(await asNode(daemonA, `coldstart-node/${NODE_A}`, other, true))).toContain(OWN_ENTRY_ONLY);
    // Under B's field manager (no conflict to force), dropping B's entry: refused all the same.
    expect(denied(await asNode(daemonA, `coldstart-node/${NODE_B}`, { nodes: [] }))).toContain(
      OWN_ENTRY_ONLY,
    );
    // An entry for a node that has none yet.
    const added = { nodes: [entry(NODE_A, "ready", 10), entry("gpu-c", "ready")] };
    expect(denied(await asNode(daemonA, `coldstart-node/${NODE_A}`, added))).toContain(OWN_ENTRY_ONLY);
    // A merge patch replaces the whole list: one with only A's entry drops B's.
    const merge = await daemonA(
      "PATCH",
      `${BASE}/m/status`,
      { status: { nodes: [entry(NODE_A, "ready", 10)] } },
      MERGE,
    );
    expect(denied(merge)).toContain(OWN_ENTRY_ONLY);

    // The counts: any daemon, one shared manager, forced.
    const counts = await asNode(daemonA, "coldstart-aggregate", { selectedNodes: 2, readyNodes: 1 }, true);
    expect(counts.status, JSON.stringify(counts.body)).toBe(200);
    const recount = await asNode(daemonB, "coldstart-aggregate", { selectedNodes: 2, readyNodes: 1 }, true);
    expect(recount.status, JSON.stringify(recount.body)).toBe(200);

    // A token without the node claim (not bound to a pod): refused, even for an entry that would be
    // its node's (fail closed).
    const unbound = client(p, tokens.unbound);
    expect(
      denied(await asNode(unbound, `coldstart-node/${NODE_A}`, { nodes: [entry(NODE_A, "failed")] })),
    ).toContain(NO_NODE_CLAIM);

    // The spec through the status subresource: admitted, and ignored (the API server keeps the stored
    // spec; that is why the policy's spec check never fires today).
    const specViaStatus = await daemonA("PATCH", `${BASE}/m/status`, { spec: { pin: false } }, MERGE);
    expect(specViaStatus.status, JSON.stringify(specViaStatus.body)).toBe(200);

    // Both entries intact, the counts set, the spec the operator's.
    const got = await admin("GET", `${BASE}/m`);
    expect(got.body.spec).toMatchObject({ model: "m", source: "s3://models/m/", pin: true });
    expect(got.body.status.selectedNodes).toBe(2);
    expect(got.body.status.readyNodes).toBe(1);
    const nodes = (got.body.status.nodes as Entry[]).map((e) => [e.node, e.state, e.bytesDone]);
    expect(nodes.sort()).toEqual([
      [NODE_A, "ready", 10],
      [NODE_B, "staging", 1],
    ]);
  }, 180_000); // bounds a failure only: each wait inside gives up after 60 s

  it("grants the daemon its reads and events, and nothing more (RBAC)", async (ctx) => {
    const p = plane(ctx);
    const { admin, daemonA, tokens } = await setUp(p);

    // ModelCaches: read, list, watch (the informer).
    expect((await daemonA("GET", `${BASE}/m`)).status).toBe(200);
    const list = await daemonA("GET", BASE);
    expect(list.status, JSON.stringify(list.body)).toBe(200);
    expect(list.body.items.map((o: { metadata: { name: string } }) => o.metadata.name)).toContain("m");
    expect(await firstWatchEvent(p, tokens.a, `${BASE}?watch=true&timeoutSeconds=30`)).toEqual({
      status: 200,
      type: "ADDED",
      name: "m",
    });
    // Its own Node, by field selector: list and watch.
    const own = `fieldSelector=${encodeURIComponent(`metadata.name=${NODE_A}`)}`;
    const nodes = await daemonA("GET", `/api/v1/nodes?${own}`);
    expect(nodes.status, JSON.stringify(nodes.body)).toBe(200);
    expect(nodes.body.items.map((o: { metadata: { name: string } }) => o.metadata.name)).toEqual([NODE_A]);
    expect(await firstWatchEvent(p, tokens.a, `/api/v1/nodes?${own}&watch=true&timeoutSeconds=30`)).toEqual({
      status: 200,
      type: "ADDED",
      name: NODE_A,
    });

    // Never the spec, never create, replace or delete, never a PUT of the status (it would replace
    // every node's entry).
    const forbidden = async (
      method: string,
      path: string,
      body?: unknown,
      headers?: Record<string, string>,
    ) => {
      const r = await daemonA(method, path, body, headers);
      expect(r.status, `${method} ${path}: ${JSON.stringify(r.body)}`).toBe(403);
    };
    await forbidden("PATCH", `${BASE}/m`, { spec: { pin: false } }, MERGE);
    const current = (await admin("GET", `${BASE}/m`)).body;
    await forbidden("PUT", `${BASE}/m`, current);
    await forbidden("PUT", `${BASE}/m/status`, current);
    await forbidden("DELETE", `${BASE}/m`);
    await forbidden("POST", BASE, {
      apiVersion: "coldstart.io/v1alpha1",
      kind: "ModelCache",
      metadata: { name: "mine" },
      spec: { model: "mine", source: "s3://models/mine/" },
    });
    await forbidden("DELETE", `/api/v1/nodes/${NODE_B}`);
    await forbidden("GET", `/api/v1/namespaces/${NAMESPACE}/secrets`);

    // Events about a ModelCache. It is cluster-scoped, and the API server keeps such events in
    // `default` (core/v1 validation: an involved object without a namespace needs an event in ""
    // or default; client-go's recorder does the same): refused in coldstart even for the admin.
    const event = (namespace: string) => ({
      apiVersion: "v1",
      kind: "Event",
      metadata: { generateName: "m.", namespace },
      involvedObject: {
        apiVersion: "coldstart.io/v1alpha1",
        kind: "ModelCache",
        name: "m",
        uid: current.metadata.uid,
      },
      reason: "Staged",
      message: `m staged on ${NODE_A}`,
      type: "Normal",
      source: { component: "coldstart", host: NODE_A },
      firstTimestamp: new Date().toISOString(),
      lastTimestamp: new Date().toISOString(),
      count: 1,
    });
    const inColdstart = await admin("POST", `/api/v1/namespaces/${NAMESPACE}/events`, event(NAMESPACE));
    expect(inColdstart.status).toBe(422);
    expect(String(inColdstart.body.message)).toContain("does not match event.namespace");
    const inDefault = await daemonA("POST", "/api/v1/namespaces/default/events", event("default"));
    expect(inDefault.status, JSON.stringify(inDefault.body)).toBe(201);
    // Only create, and only there.
    await forbidden("POST", "/api/v1/namespaces/kube-system/events", event("kube-system"));
    await forbidden("GET", "/api/v1/namespaces/default/events");
    await forbidden("DELETE", `/api/v1/namespaces/default/events/${inDefault.body.metadata.name}`);
  }, 120_000);

  it("stays within the CEL cost budget with the CRD's 5000 entries", async (ctx) => {
    const p = plane(ctx);
    const { admin, daemonA } = await setUp(p);
    const created = await admin("POST", BASE, {
      apiVersion: "coldstart.io/v1alpha1",
      kind: "ModelCache",
      metadata: { name: "big" },
      spec: { model: "big", source: "s3://models/big/" },
    });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    // 4999 other nodes' entries (as the admin, whom the policy does not police), then A's is the 5000th.
    const others = Array.from({ length: 4999 }, (_, i) =>
      entry(`node-${String(i).padStart(4, "0")}`, "ready"),
    );
    const seeded = await admin("PATCH", statusPath("big", "seed"), applied("big", { nodes: others }), APPLY);
    expect(seeded.status, JSON.stringify(seeded.body).slice(0, 2000)).toBe(200);

    const own = await daemonA(
      "PATCH",
      statusPath("big", `coldstart-node/${NODE_A}`),
      applied("big", { nodes: [entry(NODE_A, "staging")] }),
      APPLY,
    );
    expect(own.status, JSON.stringify(own.body).slice(0, 2000)).toBe(200);
    // The last entry changed: refused by the rule, not by the cost limit.
    const last = { ...(others.at(-1) as Entry), state: "failed" };
    const theirs = await daemonA(
      "PATCH",
      statusPath("big", `coldstart-node/${NODE_A}`, true),
      applied("big", { nodes: [entry(NODE_A, "staging"), last] }),
      APPLY,
    );
    expect(denied(theirs)).toContain(OWN_ENTRY_ONLY);
    expect(String(theirs.body.message)).not.toMatch(/cost/i);
    const got = await admin("GET", `${BASE}/big`);
    expect(got.body.status.nodes).toHaveLength(5000);
  }, 120_000);
});
