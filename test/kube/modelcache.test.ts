/**
 * The ModelCache resource end to end: real daemons (own roots and ports, one fake Node each) against
 * a real API server (etcd and kube-apiserver built pinned by scripts/go-tools.mjs), one real S3
 * server (RGW) behind the fault proxy that counts what S3 served. The daemons watch the resources
 * through client-node's informer, stage what selects their node, pin it while selected, and write
 * their own entries of the status by server-side apply. The API server runs without its watch cache,
 * so that a watch resumed from a compacted revision gets `410 Gone` from etcd itself.
 * Without the binaries the tests skip, except under CI, where they fail.
 *
 * Tier: integration
 */
import { once } from "node:events";
import { readFile, writeFile } from "node:fs/promises";
import { connect, createServer, type Server, type Socket } from "node:net";
import { join, resolve } from "node:path";
import {
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  type KubernetesObject,
  KubernetesObjectApi,
  PatchStrategy,
  setHeaderOptions,
} from "@kubernetes/client-node";
import { afterEach, beforeAll, describe, expect, it, type TestContext } from "vitest";
import { parse, parseAllDocuments } from "yaml";
import { callDaemon } from "../../src/api/client.js";
import { modelLabelKey } from "../../src/kube/node-labels.js";
import {
  type KubeControlPlane,
  kubeClient,
  useControlPlane,
  writeKubeconfig,
} from "../support/kube-control-plane.js";
import {
  type DaemonProcess,
  freePort,
  killDaemons,
  NO_GPU_FLAGS,
  startDaemonProcess,
} from "../support/processes.js";
import { freshBucket, putFiles } from "../support/s3.js";
import { useS3Fixture } from "../support/s3-fixture.js";
import { digests, expectedDigests } from "../support/stage.js";
import { type SyntheticFile, syntheticModel } from "../support/synthetic-model.js";
import { gate, waitFor } from "../support/wait.js";

const DEPLOY = join(resolve(import.meta.dirname, "../.."), "deploy");
const NAMESPACE = "coldstart";
const CRD_FILE = join(
  resolve(import.meta.dirname, "../.."),
  "deploy/components/modelcache/modelcache-crd.yaml",
);
const GROUP = { group: "coldstart.io", version: "v1alpha1", plural: "modelcaches" };
/** Where Events about a cluster-scoped object go. */
const EVENTS_NAMESPACE = "default";
const TOKEN = "modelcache-test-token";
const MiB = 1024 * 1024;
/** Several daemons and a control plane on two loaded cores: conditions, generously bounded. */
const SLOW = { timeoutMs: 120_000, intervalMs: 100 };
const MERGE = setHeaderOptions("Content-Type", PatchStrategy.MergePatch);

const fx = useS3Fixture("cs-modelcache-");
const daemons: DaemonProcess[] = [];
const controlPlane = useControlPlane({ apiServerArgs: ["--watch-cache=false"] });
let admin: KubeConfig;
let core: CoreV1Api;
let custom: CustomObjectsApi;

beforeAll(async () => {
  const cp = controlPlane.current();
  if (!cp) return;
  admin = new KubeConfig();
  admin.loadFromFile(cp.kubeconfig);
  core = admin.makeApiClient(CoreV1Api);
  custom = admin.makeApiClient(CustomObjectsApi);
  // The daemons run as the DaemonSet's service account, under deploy/'s RBAC and admission policies
  // and the component's: what they need is exactly what is granted.
  await core.createNamespace({ body: { metadata: { name: NAMESPACE } } });
  await core.createNamespacedServiceAccount({
    namespace: NAMESPACE,
    body: { metadata: { name: "coldstart" } },
  });
  const objects = admin.makeApiClient(KubernetesObjectApi);
  for (const file of [
    "rbac.yaml",
    "admission-policy.yaml",
    "components/modelcache/modelcache-rbac.yaml",
    "components/modelcache/modelcache-admission-policy.yaml",
  ]) {
    for (const doc of parseAllDocuments(await readFile(join(DEPLOY, file), "utf8"))) {
      await objects.create(doc.toJS() as KubernetesObject);
    }
  }
  const crd = parse(await readFile(CRD_FILE, "utf8"));
  // As JSON, not through client-node's typed model, whose serializer drops "x-kubernetes-*" keys.
  const created = await kubeClient(cp)(
    "POST",
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
    crd,
  );
  expect(created.status, "the CRD is created").toBe(201);
  await waitFor(async () => {
    try {
      await custom.listClusterCustomObject(GROUP);
      return true;
    } catch {
      return false;
    }
  }, SLOW);
}, 300_000);

afterEach(async () => {
  await killDaemons(daemons);
  if (!controlPlane.current()) return;
  // Each test starts from no resources and no Nodes.
  for (const mc of await listCaches())
    await custom.deleteClusterCustomObject({ ...GROUP, name: mc.metadata.name });
  for (const n of (await core.listNode()).items) await core.deleteNode({ name: n.metadata?.name ?? "" });
  await core.deleteCollectionNamespacedPod({ namespace: NAMESPACE, gracePeriodSeconds: 0 });
});

function plane(ctx: TestContext): KubeControlPlane {
  // On failure, also the resources' status and each daemon's reconciler lines and warnings.
  return controlPlane.plane(ctx, async () => {
    let out = "";
    for (const mc of await listCaches().catch(() => [])) out += `${JSON.stringify(mc.status)}\n`;
    for (const d of daemons) {
      const lines = d.logs.filter((l) => l.component === "modelcaches" || (l.level as number) >= 40);
      out += `--- daemon ${d.api} ---\n${lines
        .slice(-40)
        .map((l) => JSON.stringify(l))
        .join("\n")}\n`;
    }
    return out;
  });
}

interface Entry {
  node: string;
  state: string;
  peer?: string;
  bytesDone?: number;
  bytesTotal?: number;
  message?: string;
}
interface Cache {
  metadata: { name: string; uid: string };
  status?: { nodes?: Entry[]; readyNodes?: number; selectedNodes?: number };
}

async function listCaches(): Promise<Cache[]> {
  return ((await custom.listClusterCustomObject(GROUP)) as { items: Cache[] }).items;
}

async function getCache(name: string): Promise<Cache> {
  return (await custom.getClusterCustomObject({ ...GROUP, name })) as Cache;
}

async function createCache(name: string, spec: Record<string, unknown>): Promise<void> {
  await custom.createClusterCustomObject({
    ...GROUP,
    body: { apiVersion: "coldstart.io/v1alpha1", kind: "ModelCache", metadata: { name }, spec },
  });
}

async function createNode(name: string, labels: Record<string, string>): Promise<void> {
  await core.createNode({ body: { metadata: { name, labels } } });
}

async function setLabels(name: string, labels: Record<string, string | null>): Promise<void> {
  await core.patchNode({ name, body: { metadata: { labels } } }, MERGE);
}

/** The nodes of the resource's status, by name, with their states. */
async function entries(name: string): Promise<Record<string, string>> {
  const mc = await getCache(name);
  return Object.fromEntries((mc.status?.nodes ?? []).map((e) => [e.node, e.state]));
}

async function seed(
  shards: number,
  shardBytes: number,
): Promise<{ source: string; files: SyntheticFile[]; bytes: number }> {
  const bucket = await freshBucket(fx.client, "mc");
  const files = syntheticModel({ shards, shardBytes });
  await putFiles(fx.client, bucket, "m/", files);
  return { source: `s3://${bucket}/m/`, files, bytes: files.reduce((n, f) => n + f.body.length, 0) };
}

interface Node {
  name: string;
  root: string;
  daemon: DaemonProcess;
}

/** A daemon for Node `name`, reaching the API server at `apiUrl` (default: directly). */
async function daemon(
  name: string,
  o: { port?: number; peers?: string[]; apiUrl?: string; extra?: string[] } = {},
): Promise<Node> {
  const p = controlPlane.current() as KubeControlPlane;
  const kubeconfig = join(fx.work, `${name}.kubeconfig`);
  await writeKubeconfig(kubeconfig, {
    url: o.apiUrl ?? p.url,
    caFile: p.caFile,
    token: await daemonToken(name),
    user: name,
  });
  const tokens = join(fx.work, "tokens");
  await writeFile(tokens, `${TOKEN}\n`);
  const root = join(fx.work, name);
  const d = await startDaemonProcess(
    [
      "--root",
      root,
      "--socket",
      join(fx.work, `${name}.sock`),
      "--token-file",
      tokens,
      "--allow-source",
      "s3://mc-*/**",
      "--endpoint",
      fx.proxy.url,
      "--path-style",
      "--node-name",
      name,
      "--kubeconfig",
      kubeconfig,
      "--node-labels",
      "on",
      "--model-caches",
      "on",
      // Peers here are processes on one loaded machine: a slow answer must not count as a dead peer.
      "--peer-timeout",
      "30s",
      ...NO_GPU_FLAGS,
      ...(o.port ? ["--listen", `127.0.0.1:${o.port}`] : []),
      ...(o.peers ?? []).flatMap((u) => ["--peer", u]),
      ...(o.extra ?? []),
    ],
    fx.s3,
    {},
    { readyTimeoutMs: 90_000 },
  );
  daemons.push(d);
  return { name, root, daemon: d };
}

/**
 * A token of the daemon's service account bound to a Pod on `node` (which never runs: there is no
 * scheduler or kubelet), so that it carries the node-name claim the admission policies check.
 */
async function daemonToken(node: string): Promise<string> {
  const name = `coldstart-${node}`;
  const pod = await core.createNamespacedPod({
    namespace: NAMESPACE,
    body: {
      metadata: { name },
      spec: {
        nodeName: node,
        serviceAccountName: "coldstart",
        containers: [{ name: "coldstart", image: "coldstart:test" }],
      },
    },
  });
  const request = await core.createNamespacedServiceAccountToken({
    name: "coldstart",
    namespace: NAMESPACE,
    body: {
      spec: {
        audiences: [],
        expirationSeconds: 3600,
        boundObjectRef: { apiVersion: "v1", kind: "Pod", name, uid: pod.metadata?.uid },
      },
    },
  });
  return request.status?.token ?? "";
}

/** What the API server refused a daemon (RBAC or admission): the grants must cover every write. */
function refusals(): unknown[] {
  return daemons.flatMap((d) =>
    d.logs
      .filter((l) => [401, 403, 422].includes(l.status as number))
      .map((l) => ({ msg: l.msg, reason: l.reason ?? l.err })),
  );
}

async function model(n: Node, id: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const r = await callDaemon(
    { url: n.daemon.api, token: TOKEN },
    "GET",
    `/v1/models/${encodeURIComponent(id)}`,
  );
  return { status: r.status, body: r.body as Record<string, unknown> };
}

const modelDir = (n: Node, id: string) => join(n.root, "models", ...id.split("/"));

async function events(name: string): Promise<{ reason: string; message: string }[]> {
  const list = await core.listNamespacedEvent({ namespace: EVENTS_NAMESPACE });
  return list.items
    .filter((e) => e.involvedObject.kind === "ModelCache" && e.involvedObject.name === name)
    .map((e) => ({ reason: e.reason ?? "", message: e.message ?? "" }));
}

/** Three daemons with free ports, each told the other two as static peers. */
async function pool(names: string[], extra: string[] = []): Promise<Node[]> {
  const ports = await Promise.all(names.map(() => freePort()));
  const urls = ports.map((p) => `http://127.0.0.1:${p}`);
  return Promise.all(
    names.map((name, i) => daemon(name, { port: ports[i], peers: urls.filter((_, j) => j !== i), extra })),
  );
}

describe("the ModelCache resource on a real API server", { timeout: 300_000 }, () => {
  it("stages on the nodes it selects only, follows a label change, unpins on deletion, and reaches a node added later", async (ctx) => {
    plane(ctx);
    const { source, files } = await seed(2, 2 * MiB);
    const id = "org/llama";
    await createNode("gpu-1", { pool: "a" });
    await createNode("gpu-2", { pool: "a" });
    await createNode("gpu-3", { pool: "b" });
    const [n1, n2, n3] = (await pool(["gpu-1", "gpu-2", "gpu-3"])) as [Node, Node, Node];
    await createCache("llama", { model: id, source, nodeSelector: { matchLabels: { pool: "a" } } });

    // Two of three: staged, verified, pinned on gpu-1 and gpu-2; nothing on gpu-3.
    await waitFor(
      async () => {
        const mc = await getCache("llama");
        return mc.status?.readyNodes === 2 && mc.status.selectedNodes === 2;
      },
      { ...SLOW, what: "2 of 2 ready" },
    );
    expect(await entries("llama")).toEqual({ "gpu-1": "ready", "gpu-2": "ready" });
    for (const n of [n1, n2]) {
      expect(await digests(modelDir(n, id), files)).toEqual(expectedDigests(files));
      expect((await model(n, id)).body).toMatchObject({
        state: "ready",
        pinned: true,
        pinnedBy: ["modelcache/llama"],
      });
    }
    expect((await model(n3, id)).status).toBe(404);
    // Node labels keep working: the scheduler can prefer the nodes that hold it.
    await waitFor(
      async () => (await core.readNode({ name: "gpu-1" })).metadata?.labels?.[modelLabelKey(id)] === "ready",
      SLOW,
    );
    // An Event per node that staged it.
    await waitFor(
      async () => (await events("llama")).filter((e) => e.reason === "Staged").length === 2,
      SLOW,
    );
    // A model the API asks for is the same model: joined, not staged again.
    const put = await callDaemon(
      { url: n1.daemon.api, token: TOKEN },
      "PUT",
      `/v1/models/${encodeURIComponent(id)}`,
      { source },
    );
    expect(put.status).toBe(200);

    // The selection moves: gpu-2 leaves pool a, gpu-3 joins it.
    await setLabels("gpu-2", { pool: "b" });
    await setLabels("gpu-3", { pool: "a" });
    await waitFor(
      async () => {
        const e = await entries("llama");
        return (
          e["gpu-3"] === "ready" &&
          !("gpu-2" in e) &&
          JSON.stringify(Object.keys(e).sort()) === '["gpu-1","gpu-3"]'
        );
      },
      { ...SLOW, what: "gpu-3 in, gpu-2 out" },
    );
    expect(await digests(modelDir(n3, id), files)).toEqual(expectedDigests(files));
    // gpu-2 keeps the bytes, unpinned: eviction's to take, not the resource's to delete.
    expect((await model(n2, id)).body).toMatchObject({ state: "ready", pinned: false, pinnedBy: [] });
    await waitFor(async () => (await getCache("llama")).status?.readyNodes === 2, SLOW);

    // A node added later (Karpenter, an hour on) gets it without anyone acting.
    await createNode("gpu-4", { pool: "a" });
    const n4 = await daemon("gpu-4");
    await waitFor(async () => (await entries("llama"))["gpu-4"] === "ready", {
      ...SLOW,
      what: "gpu-4 ready",
    });
    expect(await digests(modelDir(n4, id), files)).toEqual(expectedDigests(files));
    await waitFor(async () => {
      const mc = await getCache("llama");
      return mc.status?.readyNodes === 3 && mc.status.selectedNodes === 3;
    }, SLOW);

    expect(refusals()).toEqual([]);

    // An admin's update of the status drops gpu-1's entry: gpu-1 writes it again, though nothing changed.
    await custom.patchClusterCustomObjectStatus(
      {
        ...GROUP,
        name: "llama",
        body: {
          status: { nodes: (await getCache("llama")).status?.nodes?.filter((n) => n.node !== "gpu-1") },
        },
      },
      MERGE,
    );
    await waitFor(async () => (await entries("llama"))["gpu-1"] === "ready", {
      ...SLOW,
      what: "gpu-1's entry written again",
    });

    // Deleted: every node unpins, and keeps the bytes for eviction to take.
    await custom.deleteClusterCustomObject({ ...GROUP, name: "llama" });
    for (const n of [n1, n3, n4]) {
      await waitFor(async () => (await model(n, id)).body.pinned === false, {
        ...SLOW,
        what: `${n.name} unpinned`,
      });
      expect((await model(n, id)).body.state).toBe("ready");
    }
  });

  it("three nodes starting one model together read it from S3 about once, and finish byte-identical when one is killed", async (ctx) => {
    plane(ctx);
    // Default settings: 8 MiB parts, the default concurrency; 12 parts of 8 MiB.
    const { source, files, bytes } = await seed(3, 32 * MiB);
    for (const name of ["gpu-a", "gpu-b", "gpu-c"]) await createNode(name, {});
    const nodes = await pool(["gpu-a", "gpu-b", "gpu-c"]);
    fx.proxy.resetStats();
    await createCache("wave", { model: "org/wave", source });
    await waitFor(async () => (await getCache("wave")).status?.readyNodes === 3, {
      ...SLOW,
      what: "3 ready",
    });
    for (const n of nodes)
      expect(await digests(modelDir(n, "org/wave"), files)).toEqual(expectedDigests(files));
    const fromS3 = fx.proxy.bytesServed().total;
    await ctx.annotate(`S3 served ${(fromS3 / bytes).toFixed(2)} models for 3 nodes`);
    expect(fromS3).toBeGreaterThanOrEqual(bytes);
    expect(fromS3).toBeLessThanOrEqual(1.1 * bytes);

    // Again, and one node killed mid-transfer: S3 holds every part until gpu-c has GETs of its own
    // in flight, so it dies with its share started and not delivered; the other two finish,
    // byte-identical.
    const second = await seed(3, 16 * MiB);
    const s3Held = gate();
    fx.proxy.addRule({
      match: { method: "GET", hasRange: true },
      action: { kind: "hook", fn: () => s3Held.opened },
    });
    await createCache("wave-2", { model: "org/wave-2", source: second.source });
    const [a, b, c] = nodes as [Node, Node, Node];
    try {
      await waitFor(
        async () => {
          const text = await (await fetch(`${c.daemon.metrics}/metrics`)).text();
          return Number(/^coldstart_s3_requests_in_flight (\S+)$/m.exec(text)?.[1] ?? 0) > 0;
        },
        { ...SLOW, what: "gpu-c reading its share from S3" },
      );
      c.daemon.child.kill("SIGKILL");
      await c.daemon.exited;
    } finally {
      s3Held.open();
    }
    await waitFor(
      async () => {
        const e = await entries("wave-2");
        return e["gpu-a"] === "ready" && e["gpu-b"] === "ready";
      },
      { ...SLOW, what: "a and b ready" },
    );
    for (const n of [a, b])
      expect(await digests(modelDir(n, "org/wave-2"), second.files)).toEqual(expectedDigests(second.files));
  });

  it("the informer resumes after a broken watch and relists after 410 Gone from a compacted revision", async (ctx) => {
    const p = plane(ctx);
    const { source } = await seed(1, 1 * MiB);
    await createNode("gpu-w", {});
    const tunnel = await tcpTunnel(new URL(p.url));
    try {
      const n = await daemon("gpu-w", { apiUrl: `https://127.0.0.1:${tunnel.port}` });
      await createCache("first", { model: "org/first", source });
      await waitFor(async () => (await entries("first"))["gpu-w"] === "ready", SLOW);
      const relists = () =>
        n.daemon.logs.filter(
          (l) =>
            l.component === "modelcaches" && l.what === "modelcaches" && String(l.msg).startsWith("listing"),
        ).length;
      expect(relists()).toBe(1);

      // The connection breaks; meanwhile one resource goes and another comes, and etcd compacts
      // past the revision the daemon's watch would resume from.
      tunnel.cut();
      await custom.deleteClusterCustomObject({ ...GROUP, name: "first" });
      await createCache("second", { model: "org/second", source });
      await compact(p.etcdUrl);
      tunnel.restore();

      // It relisted (the resumed watch was answered 410 Gone), unpinned what was deleted, staged the new one.
      await waitFor(async () => (await entries("second"))["gpu-w"] === "ready", {
        ...SLOW,
        what: "second ready",
      });
      await waitFor(async () => (await model(n, "org/first")).body.pinned === false, SLOW);
      expect(relists()).toBeGreaterThanOrEqual(2);
    } finally {
      await tunnel.close();
    }
  });
});

/** Compacts etcd at its current revision (etcd's JSON gateway): every older revision is gone. */
async function compact(etcdUrl: string): Promise<void> {
  const range = await fetch(`${etcdUrl}/v3/kv/range`, {
    method: "POST",
    body: JSON.stringify({ key: Buffer.from("/").toString("base64") }),
  });
  const revision = ((await range.json()) as { header: { revision: string } }).header.revision;
  const r = await fetch(`${etcdUrl}/v3/kv/compaction`, {
    method: "POST",
    body: JSON.stringify({ revision, physical: true }),
  });
  expect(r.status, await r.text()).toBe(200);
}

/**
 * A TCP tunnel to the API server that a test can cut (every connection reset, new ones refused)
 * and restore: the watch breaks the way a network does, TLS and all.
 */
async function tcpTunnel(
  target: URL,
): Promise<{ port: number; cut: () => void; restore: () => void; close: () => Promise<void> }> {
  const sockets = new Set<Socket>();
  let down = false;
  const server: Server = createServer((client) => {
    if (down) {
      client.resetAndDestroy();
      return;
    }
    const upstream = connect(Number(target.port), target.hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {});
    }
    client.pipe(upstream);
    upstream.pipe(client);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const port = (server.address() as { port: number }).port;
  return {
    port,
    cut: () => {
      down = true;
      for (const s of sockets) s.resetAndDestroy();
    },
    restore: () => {
      down = false;
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((done) => server.close(() => done()));
    },
  };
}
