/**
 * Our objects of other projects' kinds against those projects' own CRDs, on a real API server (etcd
 * and kube-apiserver built pinned by scripts/go-tools.mjs, started once for this file): the
 * ServiceMonitor and PrometheusRule (the kustomize components, and the Helm chart's with its
 * monitoring toggles on) against the Prometheus Operator's CRDs, and deploy/examples/karpenter-gpu.yaml's
 * EC2NodeClass and NodePool against Karpenter's. The CRDs are vendored at pinned tags in
 * test/fixtures/crds (its README says where from). Each object is created as a dry run under strict
 * field validation, what `kubectl apply` sends, so an unknown field, a value the schema or a CEL rule
 * refuses, fails here rather than in a user's cluster; and per CRD family a broken copy of our object
 * is refused, naming the field, to show the validation bites. Without the binaries the tests skip,
 * except under CI, where they fail.
 *
 * Tier: integration
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { deploy, hasKubectl, kustomize, parseObjects } from "../support/deploy-render.js";
import { requireGoTool } from "../support/go-tools.js";
import {
  type KubeControlPlane,
  type KubeReply,
  kubeClient,
  useControlPlane,
} from "../support/kube-control-plane.js";
import { waitFor } from "../support/wait.js";

const root = resolve(import.meta.dirname, "../..");
const fixtures = join(root, "test/fixtures/crds");
const run = promisify(execFile);

const CRD_FILES = [
  "monitoring.coreos.com_servicemonitors.yaml",
  "monitoring.coreos.com_prometheusrules.yaml",
  "karpenter.sh_nodepools.yaml",
  "karpenter.k8s.aws_ec2nodeclasses.yaml",
];
const SERVICE_MONITOR = join(deploy, "components/servicemonitor/servicemonitor.yaml");
const PROMETHEUS_RULE = join(deploy, "components/prometheus-rules/prometheusrule.yaml");
const KARPENTER = join(deploy, "examples/karpenter-gpu.yaml");
const CRD_API = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
/** What `kubectl apply --dry-run=server` sends: unknown fields are errors, nothing is stored. */
const STRICT_DRY_RUN = "fieldValidation=Strict&dryRun=All";

interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string };
  // biome-ignore lint/suspicious/noExplicitAny: API objects, broken on purpose and read freely
  [key: string]: any;
}

/** Where a served kind's objects are created. */
interface Served {
  plural: string;
  namespaced: boolean;
}

const { plane } = useControlPlane();
let installing: Promise<Map<string, Served>> | undefined;

function api(p: KubeControlPlane, method: string, path: string, body?: unknown): Promise<KubeReply> {
  return kubeClient(p)(method, path, body);
}

async function load(file: string): Promise<K8sObject[]> {
  return parseObjects<K8sObject>(await readFile(file, "utf8"));
}

async function one(file: string): Promise<K8sObject> {
  const [obj, ...rest] = await load(file);
  expect(rest).toEqual([]);
  return obj as K8sObject;
}

/**
 * Posts one CRD as raw JSON (client-node's models would drop its `x-kubernetes-*` keys: the CEL rules,
 * int-or-string, list-map keys) and waits until it is Established and its kind served.
 */
async function installCrd(p: KubeControlPlane, crd: K8sObject): Promise<void> {
  const created = await api(p, "POST", CRD_API, crd);
  expect(created.status, `${crd.metadata.name}: ${JSON.stringify(created.body)}`).toBe(201);
  await waitFor(
    async () => {
      const got = await api(p, "GET", `${CRD_API}/${crd.metadata.name}`);
      const conditions = (got.body.status?.conditions ?? []) as { type: string; status: string }[];
      return conditions.some((c) => c.type === "Established" && c.status === "True");
    },
    { timeoutMs: 60_000, intervalMs: 100, what: `${crd.metadata.name} Established` },
  );
  const { group, names, versions } = crd.spec;
  for (const v of versions as { name: string; served: boolean }[]) {
    if (!v.served) continue;
    const list = `/apis/${group}/${v.name}/${names.plural}`;
    await waitFor(async () => (await api(p, "GET", list)).status === 200, {
      timeoutMs: 60_000,
      intervalMs: 100,
      what: `GET ${list}`,
    });
  }
}

/** Installs the vendored CRDs once per file; resolves with group/kind → plural and scope. */
function crds(p: KubeControlPlane): Promise<Map<string, Served>> {
  installing ??= (async () => {
    const served = new Map<string, Served>();
    for (const file of CRD_FILES) {
      const crd = await one(join(fixtures, file));
      await installCrd(p, crd);
      served.set(`${crd.spec.group}/${crd.spec.names.kind}`, {
        plural: crd.spec.names.plural,
        namespaced: crd.spec.scope === "Namespaced",
      });
    }
    return served;
  })();
  return installing;
}

/** Creates the namespace for real (a dry run into a missing namespace is refused); 409 is fine. */
async function namespace(p: KubeControlPlane, name: string): Promise<void> {
  const r = await api(p, "POST", "/api/v1/namespaces", {
    apiVersion: "v1",
    kind: "Namespace",
    metadata: { name },
  });
  expect([201, 409], JSON.stringify(r.body)).toContain(r.status);
}

/** A dry-run create of `obj` under strict field validation, at the path its CRD serves it on. */
async function dryRunCreate(p: KubeControlPlane, obj: K8sObject): Promise<KubeReply> {
  const group = obj.apiVersion.split("/")[0];
  const served = (await crds(p)).get(`${group}/${obj.kind}`);
  if (!served) throw new Error(`no vendored CRD serves ${obj.apiVersion} ${obj.kind}`);
  let scope = "";
  if (served.namespaced) {
    const ns = obj.metadata.namespace;
    if (!ns) throw new Error(`${obj.kind} ${obj.metadata.name} names no namespace`);
    await namespace(p, ns);
    scope = `namespaces/${ns}/`;
  }
  return api(p, "POST", `/apis/${obj.apiVersion}/${scope}${served.plural}?${STRICT_DRY_RUN}`, obj);
}

async function expectAccepted(p: KubeControlPlane, obj: K8sObject): Promise<void> {
  const r = await dryRunCreate(p, obj);
  expect(r.status, `${obj.kind} ${obj.metadata.name}: ${JSON.stringify(r.body)}`).toBe(201);
  expect(r.body.metadata?.name).toBe(obj.metadata.name);
}

/**
 * `obj` is refused with `status` (400: an unknown field under strict validation; 422: the schema or
 * a CEL rule), and the message names `field` and says `because`.
 */
async function expectRefused(
  p: KubeControlPlane,
  obj: K8sObject,
  status: 400 | 422,
  field: string,
  because?: string,
): Promise<void> {
  const r = await dryRunCreate(p, obj);
  expect(r.status, `${field}: ${JSON.stringify(r.body)}`).toBe(status);
  const message = String(r.body.message);
  expect(message).toContain(field);
  if (because) expect(message).toContain(because);
}

const ofKind = (objs: K8sObject[], kind: string): K8sObject => {
  const found = objs.filter((o) => o.kind === kind);
  expect(
    found.map((o) => o.metadata.name),
    kind,
  ).toHaveLength(1);
  return found[0] as K8sObject;
};

describe("the vendored CRDs", () => {
  it("are the upstream files the fixtures README pins, byte for byte", async () => {
    const readme = await readFile(join(fixtures, "README.md"), "utf8");
    for (const file of CRD_FILES) {
      const row = readme.split("\n").find((l) => l.startsWith(`| \`${file}\``));
      expect(row, `README row for ${file}`).toBeDefined();
      const pinned = /`([0-9a-f]{64})`/.exec(row as string)?.[1];
      const actual = createHash("sha256")
        .update(await readFile(join(fixtures, file)))
        .digest("hex");
      expect(actual, file).toBe(pinned);
    }
  });

  it("install on the API server as raw JSON, become Established, and keep their x-kubernetes-* rules", async (ctx) => {
    const p = plane(ctx);
    const served = await crds(p);
    expect([...served.keys()].sort()).toEqual([
      "karpenter.k8s.aws/EC2NodeClass",
      "karpenter.sh/NodePool",
      "monitoring.coreos.com/PrometheusRule",
      "monitoring.coreos.com/ServiceMonitor",
    ]);
    // What the client-node serializer would have dropped is there as stored: the CEL rules the
    // Karpenter negatives below rely on, the Operator's int-or-string `expr`.
    const nodePools = await api(p, "GET", `${CRD_API}/nodepools.karpenter.sh`);
    expect(JSON.stringify(nodePools.body.spec)).toContain("x-kubernetes-validations");
    const rules = await api(p, "GET", `${CRD_API}/prometheusrules.monitoring.coreos.com`);
    expect(JSON.stringify(rules.body.spec)).toContain("x-kubernetes-int-or-string");
  });
});

describe("our Prometheus Operator objects against its CRDs (v0.93.0)", () => {
  it.skipIf(!hasKubectl())(
    "accepts the ServiceMonitor and PrometheusRule that kustomize renders (base + both components)",
    async (ctx) => {
      const p = plane(ctx);
      const rendered = await kustomize<K8sObject>(["servicemonitor", "prometheus-rules"]);
      await expectAccepted(p, ofKind(rendered, "ServiceMonitor"));
      await expectAccepted(p, ofKind(rendered, "PrometheusRule"));
    },
  );

  it("accepts the ones the Helm chart renders with its monitoring toggles on", async (ctx) => {
    const p = plane(ctx);
    const helm = requireGoTool("helm", ctx.skip);
    const { stdout } = await run(
      helm,
      [
        "template",
        "coldstart",
        join(deploy, "helm/coldstart"),
        "--namespace",
        "coldstart",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.prometheusRule.enabled=true",
      ],
      { maxBuffer: 64 << 20 },
    );
    const rendered = parseObjects<K8sObject>(stdout);
    await expectAccepted(p, ofKind(rendered, "ServiceMonitor"));
    await expectAccepted(p, ofKind(rendered, "PrometheusRule"));
  });

  it("refuses a ServiceMonitor with a misspelt field or a malformed interval, naming the field", async (ctx) => {
    const p = plane(ctx);
    const sm = await one(SERVICE_MONITOR);
    await expectAccepted(p, sm);

    const misspelt = structuredClone(sm);
    misspelt.spec.endpoints[0].intervall = misspelt.spec.endpoints[0].interval;
    delete misspelt.spec.endpoints[0].interval;
    await expectRefused(p, misspelt, 400, "spec.endpoints[0].intervall", "unknown field");

    const malformed = structuredClone(sm);
    malformed.spec.endpoints[0].interval = "30 seconds";
    await expectRefused(p, malformed, 422, "spec.endpoints[0].interval", "should match");
  });

  it("refuses a PrometheusRule with a rule missing expr or carrying an unknown field, naming it", async (ctx) => {
    const p = plane(ctx);
    const rule = await one(PROMETHEUS_RULE);
    await expectAccepted(p, rule);

    const noExpr = structuredClone(rule);
    delete noExpr.spec.groups[0].rules[0].expr;
    await expectRefused(p, noExpr, 422, "spec.groups[0].rules[0].expr", "Required value");

    const unknown = structuredClone(rule);
    unknown.spec.groups[0].rules[0].severity = "warning";
    await expectRefused(p, unknown, 400, "spec.groups[0].rules[0].severity", "unknown field");
  });
});

describe("deploy/examples/karpenter-gpu.yaml against Karpenter's CRDs (v1.14.1)", () => {
  it("accepts its EC2NodeClass and NodePool (cluster-scoped) as they are", async (ctx) => {
    const p = plane(ctx);
    const objs = await load(KARPENTER);
    expect(objs.map((o) => `${o.apiVersion} ${o.kind}`)).toEqual([
      "karpenter.k8s.aws/v1 EC2NodeClass",
      "karpenter.sh/v1 NodePool",
    ]);
    for (const o of objs) await expectAccepted(p, o);
  });

  it("refuses an EC2NodeClass or NodePool the schema, its enums or its CEL rules refuse, naming the field", async (ctx) => {
    const p = plane(ctx);
    const objs = await load(KARPENTER);
    const nodeClass = ofKind(objs, "EC2NodeClass");
    const nodePool = ofKind(objs, "NodePool");

    const raid1 = structuredClone(nodeClass);
    raid1.spec.instanceStorePolicy = "RAID1";
    await expectRefused(p, raid1, 422, "spec.instanceStorePolicy", 'supported values: "RAID0"');

    const misspelt = structuredClone(nodePool);
    misspelt.spec.disruption.consolidateAfterr = misspelt.spec.disruption.consolidateAfter;
    await expectRefused(p, misspelt, 400, "spec.disruption.consolidateAfterr", "unknown field");

    // A CEL rule (x-kubernetes-validations): only there because the CRD went in as raw JSON.
    const noValues = structuredClone(nodePool);
    noValues.spec.template.spec.requirements[0].values = [];
    await expectRefused(
      p,
      noValues,
      422,
      "spec.template.spec.requirements",
      "requirements with operator 'In' must have a value defined",
    );
  });
});
