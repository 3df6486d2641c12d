/**
 * deploy/ against a real API server (test/support/kube-control-plane.ts: etcd and kube-apiserver built
 * pinned by scripts/go-tools.mjs, started once for this file). The ValidatingAdmissionPolicy of
 * deploy/admission-policy.yaml type-checks, and with the RBAC of deploy/rbac.yaml it lets a daemon's
 * pod-bound service account token change its own Node's coldstart.io/ labels and refuses the same
 * change to another Node. Without the binaries the tests skip, except under CI, where they fail.
 *
 * Tier: integration
 */
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import {
  ApiException,
  AuthenticationV1Api,
  CoreV1Api,
  KubeConfig,
  type KubernetesObject,
  KubernetesObjectApi,
  PatchStrategy,
  setHeaderOptions,
  VersionApi,
} from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";
import { modelLabelKey, NodeLabeler } from "../../src/kube/node-labels.js";
import { type KubeControlPlane, useControlPlane, writeKubeconfig } from "../support/kube-control-plane.js";
import { settles, waitFor } from "../support/wait.js";

const deploy = join(resolve(import.meta.dirname, "../.."), "deploy");
const NODE_A = "gpu-node-a";
const NODE_B = "gpu-node-b";
const NAMESPACE = "coldstart";
const SERVICE_ACCOUNT = "coldstart";
const POLICY = "coldstart-own-node-only";
const MERGE_PATCH = setHeaderOptions("Content-Type", PatchStrategy.MergePatch);

let scratch = "";

const { plane: controlPlane } = useControlPlane();
beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), "control-plane-test-"));
});
afterAll(async () => {
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

function kubeConfig(path: string): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromFile(path);
  return kc;
}

/** A KubeConfig that reaches the control plane with `token`, through a kubeconfig file. */
async function kubeConfigFor(plane: KubeControlPlane, name: string, token: string): Promise<KubeConfig> {
  const path = join(scratch, `${name}.kubeconfig`);
  await writeKubeconfig(path, { url: plane.url, caFile: plane.caFile, token, user: name });
  return kubeConfig(path);
}

/** The status and message of a refused request (fails if it succeeded). */
async function refusal(request: Promise<unknown>): Promise<{ code: number; message: string }> {
  try {
    await request;
  } catch (err) {
    if (!(err instanceof ApiException)) throw err;
    let body: unknown = err.body;
    try {
      if (typeof body === "string") body = JSON.parse(body);
    } catch {
      // not a Status object: the exception's own message below
    }
    return { code: err.code, message: String((body as { message?: string })?.message ?? err.message) };
  }
  throw new Error("the request was admitted");
}

function labelPatch(key: string, value: string | null) {
  return { metadata: { labels: { [key]: value } } };
}

describe("real control plane (etcd + kube-apiserver)", () => {
  it("serves the pinned Kubernetes version and stores a Node", async (ctx) => {
    const plane = controlPlane(ctx);
    const admin = kubeConfig(plane.kubeconfig);
    const version = await admin.makeApiClient(VersionApi).getCode();
    expect(version.gitVersion).toBe("v1.37.2");
    const core = admin.makeApiClient(CoreV1Api);
    const name = "smoke-node";
    await core.createNode({ body: { metadata: { name, labels: { "kubernetes.io/os": "linux" } } } });
    const node = await core.readNode({ name });
    expect(node.metadata?.uid).toBeTruthy();
    expect(node.metadata?.labels).toEqual({ "kubernetes.io/os": "linux" });
  });

  it("keeps a coldstart daemon to its own Node's coldstart.io/ labels (deploy/admission-policy.yaml)", async (ctx) => {
    const plane = controlPlane(ctx);
    const admin = kubeConfig(plane.kubeconfig);
    const core = admin.makeApiClient(CoreV1Api);
    const objects = admin.makeApiClient(KubernetesObjectApi);

    // deploy/'s RBAC and admission policy, as an operator applies them.
    for (const file of ["rbac.yaml", "admission-policy.yaml"]) {
      const docs = parseAllDocuments(await readFile(join(deploy, file), "utf8"));
      for (const doc of docs) await objects.create(doc.toJS() as KubernetesObject);
    }
    // (The policy's status.typeChecking stays empty here: kube-controller-manager's status controller
    // writes it, and there is none. The API server itself refuses a policy whose CEL does not compile,
    // so the create above is that much of a check.)

    // Two Nodes, the daemon's service account, and a Pod of it bound to node A (it never runs: there
    // is no scheduler or kubelet; the token request only needs the binding).
    for (const name of [NODE_A, NODE_B]) await core.createNode({ body: { metadata: { name } } });
    await core.createNamespace({ body: { metadata: { name: NAMESPACE } } });
    await core.createNamespacedServiceAccount({
      namespace: NAMESPACE,
      body: { metadata: { name: SERVICE_ACCOUNT } },
    });
    const pod = await core.createNamespacedPod({
      namespace: NAMESPACE,
      body: {
        metadata: { name: "coldstart-a" },
        spec: {
          nodeName: NODE_A,
          serviceAccountName: SERVICE_ACCOUNT,
          containers: [{ name: "coldstart", image: "coldstart:test" }],
        },
      },
    });
    const tokenRequest = await core.createNamespacedServiceAccountToken({
      name: SERVICE_ACCOUNT,
      namespace: NAMESPACE,
      body: {
        spec: {
          audiences: [],
          expirationSeconds: 3600,
          boundObjectRef: { apiVersion: "v1", kind: "Pod", name: "coldstart-a", uid: pod.metadata?.uid },
        },
      },
    });
    const daemon = await kubeConfigFor(plane, "daemon-a", tokenRequest.status?.token ?? "");

    // The API server put the pod's node into the token: the user the policy sees carries it.
    const review = await daemon.makeApiClient(AuthenticationV1Api).createSelfSubjectReview({
      body: { apiVersion: "authentication.k8s.io/v1", kind: "SelfSubjectReview" },
    });
    expect(review.status?.userInfo?.username).toBe(`system:serviceaccount:${NAMESPACE}:${SERVICE_ACCOUNT}`);
    expect(review.status?.userInfo?.extra?.["authentication.kubernetes.io/node-name"]).toEqual([NODE_A]);

    // The policy takes effect once the API server's admission has loaded it (its informer): wait for
    // the refusal with dry runs, which go through admission and change nothing.
    const asDaemon = daemon.makeApiClient(CoreV1Api);
    const label = "coldstart.io/model.x";
    const denied = await waitFor(
      () =>
        refusal(
          asDaemon.patchNode({ name: NODE_B, body: labelPatch(label, "ready"), dryRun: "All" }, MERGE_PATCH),
        )
          .then((r) => (r.message.includes(POLICY) ? r : undefined))
          .catch(() => undefined),
      { timeoutMs: 60_000, intervalMs: 200, what: `the policy refusing ${NODE_B}` },
    );
    expect(denied.message).toContain("the coldstart daemon may only update the Node it runs on");

    // Its own Node: admitted and stored.
    await asDaemon.patchNode({ name: NODE_A, body: labelPatch(label, "ready") }, MERGE_PATCH);
    expect((await core.readNode({ name: NODE_A })).metadata?.labels?.[label]).toBe("ready");

    // Another Node: refused with the policy's message, and nothing stored.
    const refused = await refusal(
      asDaemon.patchNode({ name: NODE_B, body: labelPatch(label, "ready") }, MERGE_PATCH),
    );
    expect(refused.code).toBe(422);
    expect(refused.message).toMatch(
      new RegExp(
        `ValidatingAdmissionPolicy '${POLICY}' .*denied request: the coldstart daemon may only update the Node it runs on`,
      ),
    );
    expect((await core.readNode({ name: NODE_B })).metadata?.labels?.[label]).toBeUndefined();

    // Its own Node, but a label that is not coldstart's: refused by the second rule.
    const foreign = await refusal(
      asDaemon.patchNode({ name: NODE_A, body: labelPatch("team", "ml") }, MERGE_PATCH),
    );
    expect(foreign.message).toContain(
      "the coldstart daemon may only add, change or remove coldstart.io/ labels",
    );

    // The daemon's own code through the same token: NodeLabeler's GET and merge patch are admitted.
    const labeler = new NodeLabeler({
      nodeName: NODE_A,
      kubeConfig: daemon,
      retry: { baseDelayMs: 50, maxDelayMs: 500 },
    });
    try {
      labeler.set(["org/model-1"]);
      // A refused patch would be retried for ever: bound the wait so the failure names it.
      await settles(labeler.flush(), { timeoutMs: 60_000, what: "NodeLabeler's patch of its own Node" });
    } finally {
      labeler.close();
    }
    const labels = (await core.readNode({ name: NODE_A })).metadata?.labels ?? {};
    expect(labels[modelLabelKey("org/model-1")]).toBe("ready");
    // The sync removed the model label it does not want (model.x) on its own node.
    expect(labels[label]).toBeUndefined();
  }, 180_000); // bounds a failure only: each wait inside gives up after 60 s
});
