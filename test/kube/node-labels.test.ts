import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { KubeConfig } from "@kubernetes/client-node";
import { pino } from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  LABEL_PREFIX,
  loadKubeConfig,
  MODEL_LABEL_PREFIX,
  MODELS_ANNOTATION,
  modelHash,
  modelLabelKey,
  NodeLabeler,
} from "../../src/kube/node-labels.js";
import { expectColdstartError, expectRejection, thrownBy } from "../support/expect-error.js";
import { KubeApiServerDouble, TOKEN } from "../support/kube-api-double.js";
import { gate } from "../support/wait.js";

const NODE = "gpu-node-1";
const FAST_RETRY = { baseDelayMs: 20, maxDelayMs: 200 };

function kubeConfigFor(server: string): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: "double", server, skipTLSVerify: true }],
    users: [{ name: "daemon", token: TOKEN }],
    contexts: [{ name: "double", cluster: "double", user: "daemon" }],
    currentContext: "double",
  });
  return kc;
}

/** A pino logger whose JSON lines land in `lines`. */
function captureLogger(): { logger: pino.Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString("utf8").split("\n")) if (line) lines.push(JSON.parse(line));
      cb();
    },
  });
  return { logger: pino({ level: "debug" }, stream), lines };
}

const OTHER_LABELS = {
  "kubernetes.io/hostname": NODE,
  "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
  "coldstart.io/gds": "true",
  "example.com/model.abc": "ready",
};

const annotationFor = (ids: string[]) =>
  JSON.stringify(
    Object.fromEntries(ids.map((id) => [modelHash(id), id] as const).sort(([a], [b]) => (a < b ? -1 : 1))),
  );

const modelLabels = (labels: Record<string, string>) =>
  Object.fromEntries(Object.entries(labels).filter(([k]) => k.startsWith(MODEL_LABEL_PREFIX)));

const readyLabels = (ids: string[]) => Object.fromEntries(ids.map((id) => [modelLabelKey(id), "ready"]));

// A broken labeler retries forever and flush() never settles: fail sooner than at the 60 s default
// (still generous for a loaded machine: a passing test here takes well under a second).
describe("NodeLabeler against a Kubernetes API server double", { timeout: 30_000 }, () => {
  let api: KubeApiServerDouble;
  let server: string;
  const labelers: NodeLabeler[] = [];

  beforeEach(async () => {
    api = new KubeApiServerDouble();
    server = await api.start();
    api.addNode(NODE, { ...OTHER_LABELS }, { "node.alpha.kubernetes.io/ttl": "0" });
  });

  afterEach(async () => {
    for (const l of labelers.splice(0)) l.close();
    await api.stop();
  });

  function labeler(extra: Partial<ConstructorParameters<typeof NodeLabeler>[0]> = {}): NodeLabeler {
    const l = new NodeLabeler({
      nodeName: NODE,
      kubeConfig: kubeConfigFor(server),
      retry: FAST_RETRY,
      ...extra,
    });
    labelers.push(l);
    return l;
  }

  it("first sync: GET the node, then one merge PATCH that adds the labels and the annotation", async () => {
    const l = labeler();
    l.set(["meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B"]);
    await l.flush();

    expect(api.requests.map((r) => [r.method, r.path])).toEqual([
      ["GET", `/api/v1/nodes/${NODE}`],
      ["PATCH", `/api/v1/nodes/${NODE}`],
    ]);
    for (const r of api.requests) expect(r.authorization).toBe(`Bearer ${TOKEN}`);
    const [, patch] = api.requests;
    expect(patch?.contentType).toBe("application/merge-patch+json");
    expect(patch?.body).toEqual({
      metadata: {
        labels: readyLabels(["meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B"]),
        annotations: {
          [MODELS_ANNOTATION]: annotationFor(["meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B"]),
        },
      },
    });
    expect(api.labelsOf(NODE)).toEqual({
      ...OTHER_LABELS,
      ...readyLabels(["meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B"]),
    });
  });

  it("removal: labels no longer desired are set to null, and an empty set removes the annotation", async () => {
    const l = labeler();
    l.set(["org/a", "org/b"]);
    await l.flush();
    l.set(["org/a"]);
    await l.flush();
    expect(api.patches()[1]?.body).toEqual({
      metadata: {
        labels: { [modelLabelKey("org/b")]: null },
        annotations: { [MODELS_ANNOTATION]: annotationFor(["org/a"]) },
      },
    });
    expect(modelLabels(api.labelsOf(NODE))).toEqual(readyLabels(["org/a"]));

    l.set([]);
    await l.flush();
    expect(api.patches()[2]?.body).toEqual({
      metadata: { labels: { [modelLabelKey("org/a")]: null }, annotations: { [MODELS_ANNOTATION]: null } },
    });
    expect(api.labelsOf(NODE)).toEqual(OTHER_LABELS);
    expect(api.annotationsOf(NODE)).toEqual({ "node.alpha.kubernetes.io/ttl": "0" });
  });

  it("a restarted labeler removes the labels of models no longer ready, from what the node holds", async () => {
    // What a previous daemon left behind, plus a model label it never recorded in the annotation.
    api.addNode(
      NODE,
      { ...OTHER_LABELS, ...readyLabels(["org/a", "org/b", "org/c"]) },
      { [MODELS_ANNOTATION]: annotationFor(["org/a", "org/b"]) },
    );
    const l = labeler();
    l.set(["org/b"]);
    await l.flush();

    expect(api.patches()).toHaveLength(1);
    expect(api.patches()[0]?.body).toEqual({
      metadata: {
        labels: { [modelLabelKey("org/a")]: null, [modelLabelKey("org/c")]: null },
        annotations: { [MODELS_ANNOTATION]: annotationFor(["org/b"]) },
      },
    });
    expect(api.labelsOf(NODE)).toEqual({ ...OTHER_LABELS, ...readyLabels(["org/b"]) });
  });

  it("fact labels before the ready models are known leave the model labels alone (restart regression)", async () => {
    // A daemon restarting on a node whose models are still staged: the facts are ready before the
    // model manager has said which models are. Stripping the labels here made every rollout drop them.
    api.addNode(
      NODE,
      { ...OTHER_LABELS, ...readyLabels(["org/a"]) },
      { [MODELS_ANNOTATION]: annotationFor(["org/a"]) },
    );
    const l = labeler();
    l.setFacts({ "coldstart.io/gds": "enabled", "coldstart.io/gpu-product": "NVIDIA-H100-80GB-HBM3" });
    await l.flush();
    expect(api.patches().map((p) => p.body)).toEqual([
      {
        metadata: {
          labels: { "coldstart.io/gds": "enabled", "coldstart.io/gpu-product": "NVIDIA-H100-80GB-HBM3" },
        },
      },
    ]);
    expect(modelLabels(api.labelsOf(NODE))).toEqual(readyLabels(["org/a"]));
    expect(api.annotationsOf(NODE)[MODELS_ANNOTATION]).toBe(annotationFor(["org/a"]));

    // The same facts again cost nothing; a null removes the label.
    l.setFacts({ "coldstart.io/gds": "enabled", "coldstart.io/gpu-product": "NVIDIA-H100-80GB-HBM3" });
    await l.flush();
    expect(api.requests).toHaveLength(2);
    l.setFacts({ "coldstart.io/gds": "unavailable", "coldstart.io/gpu-product": null });
    l.set(["org/a"]);
    await l.flush();
    expect(api.patches()[1]?.body).toEqual({
      metadata: { labels: { "coldstart.io/gds": "unavailable", "coldstart.io/gpu-product": null } },
    });
    expect(() => l.setFacts({ "coldstart.io/model.abc": "ready" })).toThrow(/not a node-fact label key/);
  });

  it("never touches labels or annotations of other owners", async () => {
    const foreign = {
      ...OTHER_LABELS,
      "coldstart.io/modelx": "keep",
      "coldstart.io/models": "keep",
      "coldstart.io/peer": "10.0.0.7",
    };
    api.addNode(NODE, { ...foreign, ...readyLabels(["org/old"]) }, { "other.io/note": "keep" });
    const l = labeler();
    l.set(["org/new"]);
    await l.flush();

    const body = api.patches()[0]?.body as { metadata: Record<string, Record<string, unknown>> };
    expect(Object.keys(body.metadata)).toEqual(["labels", "annotations"]);
    for (const key of Object.keys(body.metadata.labels ?? {}))
      expect(key.startsWith(MODEL_LABEL_PREFIX)).toBe(true);
    expect(Object.keys(body.metadata.annotations ?? {})).toEqual([MODELS_ANNOTATION]);
    expect(api.labelsOf(NODE)).toEqual({ ...foreign, ...readyLabels(["org/new"]) });
    expect(api.annotationsOf(NODE)["other.io/note"]).toBe("keep");
  });

  it("sends no PATCH when the node is already in step", async () => {
    const l = labeler();
    l.set(["org/a"]);
    await l.flush();
    l.set(["org/a", "org/a"]);
    await l.flush();
    expect(api.requests.map((r) => r.method)).toEqual(["GET", "PATCH", "GET"]);
  });

  it("coalesces: 10 rapid set() calls give at most 2 PATCHes and the last state wins", async () => {
    const l = labeler();
    for (let i = 0; i < 10; i++) l.set([`org/m${i}`, "org/common"]);
    await l.flush();
    expect(api.patches().length).toBeLessThanOrEqual(2);
    expect(modelLabels(api.labelsOf(NODE))).toEqual(readyLabels(["org/m9", "org/common"]));
    expect(api.annotationsOf(NODE)[MODELS_ANNOTATION]).toBe(annotationFor(["org/m9", "org/common"]));
  });

  it("coalesces calls made while a request is in flight, and serialises the patches", async () => {
    const l = labeler();
    api.responseDelayMs = 30;
    let burst = false;
    api.onRequest = () => {
      if (burst) return;
      burst = true;
      for (let i = 1; i < 10; i++) l.set([`org/m${i}`]);
    };
    l.set(["org/m0"]);
    await l.flush();
    expect(api.patches().length).toBeLessThanOrEqual(2);
    expect(modelLabels(api.labelsOf(NODE))).toEqual(readyLabels(["org/m9"]));
    // Serialised: each request starts after the previous one was answered.
    for (let i = 1; i < api.requests.length; i++) {
      expect(api.requests[i]?.at ?? 0).toBeGreaterThanOrEqual((api.requests[i - 1]?.at ?? 0) + 25);
    }
  });

  it("retries after a 500 and applies the state", async () => {
    const { logger, lines } = captureLogger();
    const l = labeler({ logger });
    api.faults.push({ status: 500, message: "etcdserver: leader changed" });
    l.set(["org/a"]);
    await l.flush();
    expect(api.requests.map((r) => r.method)).toEqual(["GET", "GET", "PATCH"]);
    expect(modelLabels(api.labelsOf(NODE))).toEqual(readyLabels(["org/a"]));
    expect(lines.find((x) => x.status === 500)?.reason).toBe("etcdserver: leader changed");
  });

  it("retries a failed PATCH", async () => {
    const l = labeler();
    // onRequest runs before the double consults its faults, so this fails the first PATCH only.
    let failedOnce = false;
    api.onRequest = (r) => {
      if (r.method === "PATCH" && !failedOnce) {
        failedOnce = true;
        api.faults.push({ status: 503, message: "overloaded" });
      }
    };
    l.set(["org/a"]);
    await l.flush();
    expect(api.requests.map((r) => r.method)).toEqual(["GET", "PATCH", "GET", "PATCH"]);
    expect(modelLabels(api.labelsOf(NODE))).toEqual(readyLabels(["org/a"]));
  });

  it("403: logs with an RBAC hint, retries with growing backoff, does not throw, applies once allowed", async () => {
    const { logger, lines } = captureLogger();
    const l = labeler({ logger });
    for (let i = 0; i < 4; i++) {
      api.faults.push({ status: 403, message: `nodes "${NODE}" is forbidden: User cannot get resource` });
    }
    expect(() => l.set(["org/a"])).not.toThrow();
    await l.flush();

    const gets = api.requests.filter((r) => r.method === "GET");
    expect(gets).toHaveLength(5);
    // Equal jitter: the n-th wait is at least half of min(max, base * 2^(n-1)).
    for (let n = 1; n < gets.length; n++) {
      const floor = Math.min(FAST_RETRY.maxDelayMs, FAST_RETRY.baseDelayMs * 2 ** (n - 1)) / 2;
      expect((gets[n]?.at ?? 0) - (gets[n - 1]?.at ?? 0)).toBeGreaterThanOrEqual(floor - 2);
    }
    const warnings = lines.filter((x) => x.level === 40 && x.status === 403);
    expect(warnings).toHaveLength(4);
    expect(warnings.map((w) => w.attempt)).toEqual([1, 2, 3, 4]);
    expect(String(warnings[0]?.msg)).toContain("get and patch on nodes");
    expect(warnings[0]?.component).toBe("node-labels");
    expect(modelLabels(api.labelsOf(NODE))).toEqual(readyLabels(["org/a"]));
  });

  it("a newer state set during backoff is what the retry applies", async () => {
    // The backoff lasts until the test ends it, so the second set() lands inside it on any machine.
    const backingOff = gate();
    const backoffOver = gate();
    const l = labeler({
      sleep: async () => {
        backingOff.open();
        await backoffOver.opened;
      },
    });
    api.faults.push({ status: 500 });
    l.set(["org/old"]);
    await backingOff.opened;
    l.set(["org/new"]);
    backoffOver.open();
    await l.flush();
    expect(api.patches()).toHaveLength(1);
    expect(modelLabels(api.labelsOf(NODE))).toEqual(readyLabels(["org/new"]));
  });

  it("abandons a request the API server never answers, after requestTimeoutMs, and retries", async () => {
    // Only the hung request may run into the deadline; the others get a loaded machine's margin.
    const l = labeler({ requestTimeoutMs: 1000 });
    api.faults.push({ hang: true });
    l.set(["org/a"]);
    await l.flush();
    // Hung GET, abandoned (the double saw its connection closed), then a fresh sync. (Should the
    // machine be slow enough for another request to miss the deadline, it is retried too.)
    const methods = api.requests.map((r) => r.method);
    expect(methods.slice(0, 2)).toEqual(["GET", "GET"]);
    expect(methods.at(-1)).toBe("PATCH");
    expect(api.closedHung).toBe(1);
    expect(modelLabels(api.labelsOf(NODE))).toEqual(readyLabels(["org/a"]));
  });

  it("an unknown node (404) is retried, not thrown", async () => {
    const { logger, lines } = captureLogger();
    const l = new NodeLabeler({
      nodeName: "no-such-node",
      kubeConfig: kubeConfigFor(server),
      logger,
      retry: FAST_RETRY,
    });
    labelers.push(l);
    l.set(["org/a"]);
    await expect.poll(() => api.requests.length, { timeout: 20_000 }).toBeGreaterThanOrEqual(2);
    expect(lines.some((x) => x.status === 404)).toBe(true);
  });

  it("close(): pending and later flush() reject with CS_ABORTED, an in-flight request is aborted, set() is ignored", async () => {
    const l = labeler();
    api.faults.push({ hang: true });
    l.set(["org/a"]);
    const pending = l.flush();
    await expect.poll(() => api.requests.length, { timeout: 20_000 }).toBe(1);
    l.close();
    await expectRejection(pending, "CS_ABORTED");
    await expectRejection(l.flush(), "CS_ABORTED");
    await expect.poll(() => api.closedHung, { timeout: 20_000 }).toBe(1);
    l.set(["org/b"]);
    await new Promise((r) => setTimeout(r, 50));
    expect(api.requests).toHaveLength(1);
  });

  it("flush() with nothing set resolves at once without a request", async () => {
    await labeler().flush();
    expect(api.requests).toHaveLength(0);
  });
});

describe("modelLabelKey", () => {
  const NAME = /^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$/;

  it("is a valid label key for a 200-character id, and stable", () => {
    const id = `org/${"Very-Long_model.name".repeat(10)}`.slice(0, 200);
    expect(id).toHaveLength(200);
    const key = modelLabelKey(id);
    expect(key.startsWith(MODEL_LABEL_PREFIX)).toBe(true);
    const name = key.slice(LABEL_PREFIX.length);
    expect(name.length).toBeLessThanOrEqual(63);
    expect(name).toMatch(NAME);
    expect(modelLabelKey(id)).toBe(key);
    expect(modelLabelKey(`${id.slice(0, 199)}X`)).not.toBe(key);
  });

  it("pins the scheme: first 56 hex digits of SHA-256 of the id's UTF-8 bytes", () => {
    expect(modelLabelKey("meta-llama/Llama-3.1-8B-Instruct")).toBe(
      `coldstart.io/model.${createHash("sha256").update("meta-llama/Llama-3.1-8B-Instruct").digest("hex").slice(0, 56)}`,
    );
    expect(modelLabelKey("")).toBe(
      `coldstart.io/model.${"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b"}`,
    );
  });

  describe("matches the shell one-liner in docs/node-labels.md", async () => {
    const doc = await readFile(new URL("../../docs/node-labels.md", import.meta.url), "utf8");
    const block = /<!-- label-key-one-liner -->\s*```sh\n([\s\S]*?)```/.exec(doc)?.[1] ?? "";
    const line = block.split("\n").find((l) => l.includes("sha256sum")) ?? "";
    const ids = ["meta-llama/Llama-3.1-8B-Instruct", "org/a", `org/${"x".repeat(196)}`, "a_b.c-d/e"];

    it("the doc shows the one-liner", () => {
      expect(line).toContain("sha256sum");
      expect(line).toContain("$MODEL_ID");
    });

    it("its algorithm, as the doc describes it, computed in TypeScript", () => {
      const cut = /cut -c1-(\d+)/.exec(line);
      expect(cut).not.toBeNull();
      const chars = Number(cut?.[1]);
      for (const id of ids) {
        const digest = createHash("sha256").update(Buffer.from(id, "utf8")).digest("hex").slice(0, chars);
        expect(`coldstart.io/model.${digest}`).toBe(modelLabelKey(id));
      }
    });

    it.runIf(hasShellTools())("the one-liner itself, run by sh", () => {
      for (const id of ids) {
        const out = execFileSync("sh", ["-c", line], {
          env: { PATH: process.env.PATH, MODEL_ID: id },
          stdio: ["ignore", "pipe", "pipe"],
        });
        expect(out.toString("utf8").trim()).toBe(modelLabelKey(id));
      }
    });
  });
});

function hasShellTools(): boolean {
  try {
    execFileSync("sh", ["-c", "command -v sha256sum && command -v cut"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

describe("loadKubeConfig", { timeout: 30_000 }, () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "coldstart-kube-"));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function serviceAccount(): Promise<string> {
    const sa = join(dir, "serviceaccount");
    await mkdir(sa);
    await writeFile(join(sa, "token"), "in-cluster-token");
    await writeFile(join(sa, "ca.crt"), "-----BEGIN CERTIFICATE-----\n");
    return sa;
  }

  it("is undefined outside a pod and without a kubeconfig path", () => {
    expect(loadKubeConfig({}, undefined, join(dir, "missing"))).toBeUndefined();
  });

  it("is undefined in a pod without a mounted service account token", () => {
    const env = { KUBERNETES_SERVICE_HOST: "10.96.0.1", KUBERNETES_SERVICE_PORT: "443" };
    expect(loadKubeConfig(env, undefined, join(dir, "missing"))).toBeUndefined();
  });

  it("in a pod: https to the service host and port, the CA file, the token file", async () => {
    const sa = await serviceAccount();
    const kc = loadKubeConfig(
      { KUBERNETES_SERVICE_HOST: "10.96.0.1", KUBERNETES_SERVICE_PORT: "443" },
      undefined,
      sa,
    );
    expect(kc?.getCurrentCluster()).toMatchObject({
      server: "https://10.96.0.1:443",
      caFile: join(sa, "ca.crt"),
      skipTLSVerify: false,
    });
    expect(kc?.getCurrentUser()?.authProvider).toEqual({
      name: "tokenFile",
      config: { tokenFile: join(sa, "token") },
    });
    const opts = { headers: {} as Record<string, string> };
    await kc?.applyToHTTPSOptions(opts);
    expect(opts.headers.Authorization).toBe("Bearer in-cluster-token");
  });

  it("in a pod with an IPv6 service host: brackets the address", async () => {
    const sa = await serviceAccount();
    const kc = loadKubeConfig(
      { KUBERNETES_SERVICE_HOST: "fd00::1", KUBERNETES_SERVICE_PORT: "6443" },
      undefined,
      sa,
    );
    expect(kc?.getCurrentCluster()?.server).toBe("https://[fd00::1]:6443");
  });

  it("an explicit kubeconfig path wins, and drives a labeler end to end", async () => {
    const api = new KubeApiServerDouble();
    const server = await api.start();
    try {
      api.addNode(NODE);
      const path = join(dir, "kubeconfig");
      await writeFile(
        path,
        [
          "apiVersion: v1",
          "kind: Config",
          "clusters: [{name: double, cluster: {server: 'SERVER', insecure-skip-tls-verify: true}}]",
          `users: [{name: daemon, user: {token: ${TOKEN}}}]`,
          "contexts: [{name: double, context: {cluster: double, user: daemon}}]",
          "current-context: double",
        ]
          .join("\n")
          .replace("SERVER", server),
      );
      const sa = await serviceAccount();
      const kc = loadKubeConfig(
        { KUBERNETES_SERVICE_HOST: "10.96.0.1", KUBERNETES_SERVICE_PORT: "443" },
        path,
        sa,
      );
      expect(kc?.getCurrentCluster()?.server).toBe(server);
      const l = new NodeLabeler({ nodeName: NODE, kubeConfig: kc as KubeConfig });
      try {
        l.set(["org/a"]);
        await l.flush();
      } finally {
        l.close();
      }
      expect(api.patches()[0]?.authorization).toBe(`Bearer ${TOKEN}`);
      expect(modelLabels(api.labelsOf(NODE))).toEqual(readyLabels(["org/a"]));
    } finally {
      await api.stop();
    }
  });

  it("an unreadable kubeconfig path is CS_CONFIG_INVALID", () => {
    const err = expectColdstartError(
      thrownBy(() => loadKubeConfig({}, join(dir, "nope"))),
      "CS_CONFIG_INVALID",
    );
    expect(err.message).toContain(join(dir, "nope"));
  });
});
