/**
 * deploy/ offline: every manifest and example parses and validates against the Kubernetes API schemas
 * (kubernetes-models, generated from the API server's OpenAPI) with no field the schema does not
 * define, the kustomizations name files that exist, the RBAC grants exactly what docs/deploy.md
 * says, the wiring the docs promise (paths, ports, probes, labels) is what the YAML holds, the host
 * views the DaemonSet mounts are all the node probes need, and the NetworkPolicy admits what the
 * docs say.
 */
import { lstat, mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { join, relative, resolve } from "node:path";
import * as k8s from "@kubernetes/client-node";
import { evaluate as celEvaluate } from "@marcbachmann/cel-js";
import { describe, expect, it } from "vitest";
import { parse, parseAllDocuments } from "yaml";
import { loadConfig } from "../../src/config/load.js";
import { modelLabelKey } from "../../src/kube/node-labels.js";
import { readIommu, readNvidiaFs } from "../../src/node/host-facts.js";
import { memoryRoom } from "../../src/node/memory.js";
import { probePlacement } from "../../src/node/placement.js";
import { deploy, hasKubectl, type K8sObject, kustomize } from "../support/deploy-render.js";
import { type FakeScenario, scenarios } from "../support/fake-host.js";

const root = resolve(import.meta.dirname, "../..");

async function yamlFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    // The Helm chart's templates are not YAML until rendered: test/deploy/helm.test.ts renders them.
    if (e.isDirectory()) {
      if (p !== join(deploy, "helm")) out.push(...(await yamlFiles(p)));
    } else if (/\.ya?ml$/.test(e.name)) out.push(p);
  }
  return out.sort();
}

async function load(file: string): Promise<K8sObject[]> {
  const docs = parseAllDocuments(await readFile(file, "utf8"));
  return docs.map((d) => {
    expect(d.errors, `${relative(root, file)}: YAML errors`).toEqual([]);
    return d.toJS() as K8sObject;
  });
}

/** The kubernetes-models class for apiVersion/kind (core "v1", "apps/v1", CRDs from their package). */
async function modelFor(apiVersion: string, kind: string) {
  const module =
    apiVersion === "monitoring.coreos.com/v1"
      ? `@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/${kind}`
      : `kubernetes-models/${apiVersion}/${kind}`;
  const m = (await import(module)) as Record<string, new (o: unknown) => { validate(): void }>;
  const Model = m[kind];
  if (!Model) throw new Error(`no schema for ${apiVersion} ${kind}`);
  return Model;
}

const isKustomization = (o: K8sObject) => o.apiVersion?.startsWith("kustomize.config.k8s.io/");
/** Karpenter's API groups (karpenter.sh, karpenter.k8s.aws). */
const KARPENTER = /^karpenter\.(sh|k8s\.aws)\//;

/** An object's path as ajv reports it (`instancePath`): a JSON pointer. */
const pointer = (path: (string | number)[]) =>
  path.map((p) => `/${String(p).replaceAll("~", "~0").replaceAll("/", "~1")}`).join("");

type AttributeTypeMap = { baseName: string; type: string }[];
const clientModels = k8s as unknown as Record<string, { getAttributeTypeMap?: () => AttributeTypeMap }>;
const LEAF_TYPES = new Set(["string", "number", "boolean", "Date", "IntOrString"]);

/**
 * The type of a field that the client models call `any` because the API says "one of": a CRD schema's
 * `items` (JSONSchemaPropsOrArray), `additionalProperties` and `additionalItems` (JSONSchemaPropsOrBool).
 * Left `any`, every nested schema of a CRD would go unchecked.
 */
function oneOfType(owner: string, field: string, value: unknown): string | undefined {
  if (owner !== "V1JSONSchemaProps" || typeof value !== "object" || value === null) return undefined;
  if (field === "items") return Array.isArray(value) ? "Array<V1JSONSchemaProps>" : "V1JSONSchemaProps";
  if (field === "additionalProperties" || field === "additionalItems") return "V1JSONSchemaProps";
  return undefined;
}

/**
 * Walks `value` against the Kubernetes client's model of `type` (@kubernetes/client-node: every
 * field of every built-in kind, by its wire name, generated from the API's OpenAPI) and collects the
 * fields the model does not have. Free-form fields (`any`: a CRD schema's defaults and examples,
 * RawExtension) are not looked into; types and required fields are validate()'s job.
 */
function unknownByModel(type: string, value: unknown, path: (string | number)[], out: string[]): void {
  if (value === null || value === undefined || LEAF_TYPES.has(type) || type === "any" || type === "object")
    return;
  const array = /^Array<(.+)>$/.exec(type);
  if (array) {
    if (Array.isArray(value))
      for (const [i, v] of value.entries()) unknownByModel(array[1] as string, v, [...path, i], out);
    return;
  }
  const map = /^\{ \[key: string\]: (.+); \}$/.exec(type);
  if (map) {
    if (typeof value === "object")
      for (const [k, v] of Object.entries(value)) unknownByModel(map[1] as string, v, [...path, k], out);
    return;
  }
  const attributes = clientModels[type]?.getAttributeTypeMap?.();
  if (!attributes) throw new Error(`no client model ${type} (at ${pointer(path) || "/"})`);
  if (typeof value !== "object" || Array.isArray(value)) return;
  const fields = new Map(attributes.map((a) => [a.baseName, a.type]));
  for (const [k, v] of Object.entries(value)) {
    const t = fields.get(k);
    if (t === undefined) out.push(pointer([...path, k]));
    else unknownByModel(oneOfType(type, k, v) ?? t, v, [...path, k], out);
  }
}

/**
 * For kinds the client has no model of (CRD-defined: the Prometheus Operator's), the
 * kubernetes-models schema is asked field by field: each field in turn is replaced by a value no
 * schema admits (a Symbol). A field the schema defines then fails at its own path; one it does not
 * define passes, because the generated schemas ignore what they do not name. That is also why
 * validate() alone accepts `imagePullPolicyy`.
 */
function unknownByProbe(Model: new (o: unknown) => { validate(): void }, obj: K8sObject): string[] {
  const root = structuredClone(obj);
  const out: string[] = [];
  const errorsAt = (path: string) => {
    try {
      new Model(root).validate();
      return false;
    } catch (e) {
      const errors = (e as { errors?: { instancePath: string }[] }).errors;
      if (!errors) throw e;
      return errors.some((x) => x.instancePath === path || x.instancePath.startsWith(`${path}/`));
    }
  };
  const visit = (node: unknown, path: (string | number)[]) => {
    if (Array.isArray(node)) for (const [i, v] of node.entries()) visit(v, [...path, i]);
    else if (node !== null && typeof node === "object") {
      const o = node as Record<string, unknown>;
      for (const key of Object.keys(o)) {
        const saved = o[key];
        o[key] = Symbol("unknown-field probe");
        const known = errorsAt(pointer([...path, key]));
        o[key] = saved;
        if (known) visit(saved, [...path, key]);
        else out.push(pointer([...path, key]));
      }
    }
  };
  visit(root, []);
  return out;
}

/**
 * Fields of `obj` that its kind's schema does not define, as JSON pointers: what the API server's
 * strict field validation (kubectl's default) refuses, and what validate() lets through. Built-in
 * kinds are walked against the client's models rather than probed, because kubernetes-models'
 * generated schemas drop every property named `description` and most of a CRD's nested schema:
 * probed, real fields there would look unknown.
 */
async function unknownFields(obj: K8sObject): Promise<string[]> {
  const version = String(obj.apiVersion).split("/").at(-1) as string;
  const type = `${version.charAt(0).toUpperCase()}${version.slice(1)}${obj.kind}`;
  if (clientModels[type]?.getAttributeTypeMap) {
    const out: string[] = [];
    unknownByModel(type, obj, [], out);
    return out;
  }
  return unknownByProbe(await modelFor(obj.apiVersion, obj.kind), obj);
}

/** validate() against the kind's schema, and no field the schema does not define. */
async function expectValid(obj: K8sObject, label: string): Promise<void> {
  const Model = await modelFor(obj.apiVersion, obj.kind);
  expect(() => new Model(obj).validate(), label).not.toThrow();
  expect(await unknownFields(obj), `${label}: fields its schema does not define`).toEqual([]);
}

async function all(): Promise<{ file: string; obj: K8sObject }[]> {
  const out: { file: string; obj: K8sObject }[] = [];
  for (const file of await yamlFiles(deploy)) for (const obj of await load(file)) out.push({ file, obj });
  return out;
}

function find(objs: { obj: K8sObject }[], kind: string, name?: string): K8sObject {
  const o = objs.find((x) => x.obj.kind === kind && (name === undefined || x.obj.metadata.name === name));
  if (!o) throw new Error(`no ${kind} ${name ?? ""}`);
  return o.obj;
}

/** KEY=VALUE lines, # comments: the file kustomize's configMapGenerator reads. */
function parseEnv(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const m = /^([A-Z_][A-Z0-9_]*)=(.*)$/.exec(line.trim());
    if (m) out[m[1] as string] = m[2] as string;
  }
  return out;
}

/** The Docker-link variables the kubelet injects for each non-headless Service (enableServiceLinks). */
function serviceLinks(services: K8sObject[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const s of services) {
    if (s.spec.clusterIP === "None") continue;
    const n = (s.metadata.name as string).toUpperCase().replaceAll("-", "_");
    out[`${n}_SERVICE_HOST`] = "10.100.0.7";
    for (const p of s.spec.ports as { name?: string; port: number; protocol?: string }[]) {
      const proto = p.protocol ?? "TCP";
      out[`${n}_SERVICE_PORT`] = String(p.port);
      if (p.name) out[`${n}_SERVICE_PORT_${p.name.toUpperCase().replaceAll("-", "_")}`] = String(p.port);
      out[`${n}_PORT`] = `${proto.toLowerCase()}://10.100.0.7:${p.port}`;
      out[`${n}_PORT_${p.port}_${proto}`] = out[`${n}_PORT`] as string;
      out[`${n}_PORT_${p.port}_${proto}_PROTO`] = proto.toLowerCase();
      out[`${n}_PORT_${p.port}_${proto}_PORT`] = String(p.port);
      out[`${n}_PORT_${p.port}_${proto}_ADDR`] = "10.100.0.7";
    }
  }
  return out;
}

/**
 * A ValidatingAdmissionPolicy evaluated offline, as the API server would (cel-js): for an update by
 * `user` with `extra` claims, the failed validations' messages; [] when admitted or when the policy's
 * match conditions leave the request alone.
 */
function admitter<T>(policy: K8sObject) {
  return (user: string, extra: Record<string, string[]>, object: T, oldObject: T): string[] => {
    const request = { userInfo: { username: user, extra } };
    const base = { request, object, oldObject };
    if (!policy.matchConditions.every((c: K8sObject) => celEvaluate(c.expression, base) === true)) return [];
    const variables: Record<string, unknown> = {};
    for (const v of policy.variables) variables[v.name] = celEvaluate(v.expression, { ...base, variables });
    return policy.validations
      .filter((v: K8sObject) => celEvaluate(v.expression, { ...base, variables }) !== true)
      .map((v: K8sObject) => v.message);
  };
}

describe("deploy/", () => {
  it("every manifest and example validates against the Kubernetes schemas, with no unknown field", async () => {
    const objs = await all();
    expect(objs.length).toBeGreaterThan(12);
    for (const { file, obj } of objs) {
      if (isKustomization(obj)) continue;
      // Our own kind has no model here: the real API server checks it against the CRD
      // (test/kube/modelcache-crd.test.ts, the examples included).
      if (String(obj.apiVersion).startsWith("coldstart.io/")) continue;
      // Karpenter's kinds (examples/karpenter-gpu.yaml) have no model here either: the recipe's test
      // below checks them against the DaemonSet they serve.
      if (KARPENTER.test(String(obj.apiVersion))) continue;
      await expectValid(obj, `${relative(root, file)}: ${obj.kind} ${obj.metadata.name}`);
    }
  });

  it("the validation has teeth: a wrong type, a missing required field or an unknown field is refused", async () => {
    const objs = await all();
    const ds = find(objs, "DaemonSet", "coldstart");
    const Model = await modelFor("apps/v1", "DaemonSet");
    const broken = structuredClone(ds);
    broken.spec.template.spec.containers[0].ports[0].containerPort = "8476";
    expect(() => new Model(broken).validate()).toThrow(/containerPort/);
    const noSelector = structuredClone(ds);
    delete noSelector.spec.selector;
    expect(() => new Model(noSelector).validate()).toThrow(/selector/);

    // A misspelt field: validate() alone lets it through (the generated schemas ignore what they do
    // not name), the strict check names it, wherever it is.
    const typo = structuredClone(ds);
    typo.spec.template.spec.containers[0].imagePullPolicyy = "Always";
    typo.spec.template.spec.hostNetwrok = true;
    typo.spec.template.spec.volumes[0].hostPath.typ = "Directory";
    expect(() => new Model(typo).validate()).not.toThrow();
    expect((await unknownFields(typo)).sort()).toEqual([
      "/spec/template/spec/containers/0/imagePullPolicyy",
      "/spec/template/spec/hostNetwrok",
      "/spec/template/spec/volumes/0/hostPath/typ",
    ]);
    await expect(expectValid(typo, "typo")).rejects.toThrow(/typo: fields its schema does not define/);
    // Maps take any key: labels, annotations, a ConfigMap's data are not fields.
    const labelled = structuredClone(ds);
    labelled.metadata.labels = { ...labelled.metadata.labels, "example.com/anything": "x" };
    labelled.spec.template.metadata.annotations = { "example.com/whatever": "y" };
    expect(await unknownFields(labelled)).toEqual([]);

    // Inside a CRD's schema (nested schemas under items and properties), and in a kind the client
    // has no model of (the Prometheus Operator's ServiceMonitor, asked field by field).
    const crd = structuredClone(find(objs, "CustomResourceDefinition", "modelcaches.coldstart.io"));
    const spec = crd.spec.versions[0].schema.openAPIV3Schema.properties.spec;
    spec.properties.model["x-kubernetes-validation"] = [];
    spec.properties.include.items.minLenght = 1;
    expect((await unknownFields(crd)).sort()).toEqual([
      "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/include/items/minLenght",
      "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/model/x-kubernetes-validation",
    ]);
    const monitor = structuredClone(find(objs, "ServiceMonitor", "coldstart"));
    monitor.spec.endpoints[0].intervall = "30s";
    monitor.spec.selektor = {};
    expect((await unknownFields(monitor)).sort()).toEqual(["/spec/endpoints/0/intervall", "/spec/selektor"]);
  });

  it("the base kustomization lists every base manifest, and each kustomization names files that exist", async () => {
    for (const file of await yamlFiles(deploy)) {
      if (!/kustomization\.yaml$/.test(file)) continue;
      const [k] = await load(file);
      for (const r of k?.resources ?? []) {
        await expect(readFile(join(file, "..", r)), `${relative(root, file)} → ${r}`).resolves.toBeDefined();
      }
    }
    const [base] = await load(join(deploy, "kustomization.yaml"));
    const top = (await readdir(deploy)).filter((f) => f.endsWith(".yaml") && f !== "kustomization.yaml");
    expect([...(base?.resources ?? [])].sort()).toEqual(top.sort());
    // No namespace transformer (it would stamp the cluster-scoped admission policy): every namespaced
    // object names coldstart itself, and the cluster-scoped ones name none.
    expect(base?.namespace).toBeUndefined();
    const clusterScoped = new Set([
      "Namespace",
      "ClusterRole",
      "ClusterRoleBinding",
      "ValidatingAdmissionPolicy",
      "ValidatingAdmissionPolicyBinding",
    ]);
    for (const f of top) {
      for (const o of await load(join(deploy, f))) {
        expect(o.metadata.namespace, `${f}: ${o.kind}`).toBe(
          clusterScoped.has(o.kind) ? undefined : "coldstart",
        );
      }
    }
  });

  it("RBAC grants exactly what docs/deploy.md says, and nothing else asks for more", async () => {
    const objs = await all();
    // The base's; a component's grants come with the component (components/modelcache: its own test).
    const roles = objs
      .filter((o) => !o.file.startsWith(join(deploy, "components")))
      .filter((o) => o.obj.kind === "ClusterRole" || o.obj.kind === "Role")
      .map((o) => o.obj);
    expect(roles.map((r) => r.metadata.name)).toEqual(["coldstart-node-labels"]);
    const granted = roles.flatMap((r) =>
      (r.rules as { apiGroups: string[]; resources: string[]; verbs: string[] }[]).flatMap((rule) =>
        rule.apiGroups.flatMap((g) =>
          rule.resources.flatMap((res) => rule.verbs.map((v) => `${g || "core"} ${res} ${v}`)),
        ),
      ),
    );
    // The table in docs/deploy.md "## Permissions": | API group | resource | verbs | why |
    const doc = await readFile(join(root, "docs/deploy.md"), "utf8");
    const start = doc.indexOf("## Permissions");
    const section = doc.slice(start, doc.indexOf("\n## ", start + 1));
    const documented = [...section.matchAll(/^\| `([^`]*)` +\| `([^`]+)` +\| ([^|]+)\|/gm)].flatMap((m) =>
      (m[3] as string)
        .split(",")
        .map((v) => v.trim().replaceAll("`", ""))
        .map((v) => `${m[1] === "" ? "core" : m[1]} ${m[2]} ${v}`),
    );
    expect(granted.sort()).toEqual(documented.sort());
    expect(granted.sort()).toEqual(["core nodes get", "core nodes patch"]);

    const binding = find(objs, "ClusterRoleBinding", "coldstart-node-labels");
    expect(binding.subjects).toEqual([{ kind: "ServiceAccount", name: "coldstart", namespace: "coldstart" }]);
    expect(find(objs, "ValidatingAdmissionPolicyBinding", "coldstart-own-node-only").spec).toEqual({
      policyName: "coldstart-own-node-only",
      validationActions: ["Deny"],
    });
  });

  it("the DaemonSet: GPU nodes, critical priority, hostPaths as documented, probes, grace, hardening", async () => {
    const objs = await all();
    const ds = find(objs, "DaemonSet", "coldstart");
    const pod = ds.spec.template.spec;
    const c = pod.containers[0];
    expect(pod.priorityClassName).toBe("system-node-critical");
    expect(pod.tolerations).toContainEqual({
      key: "nvidia.com/gpu",
      operator: "Exists",
      effect: "NoSchedule",
    });
    expect(pod.serviceAccountName).toBe("coldstart");
    expect(ds.spec.updateStrategy.type).toBe("RollingUpdate");

    const hostPaths = Object.fromEntries(
      pod.volumes.filter((v: K8sObject) => v.hostPath).map((v: K8sObject) => [v.name, v.hostPath]),
    );
    // Of the host's proc and sys, only what the node probes read ("the host views" test below), and
    // only paths every node has: never a type that would let the kubelet create one.
    expect(hostPaths).toEqual({
      staging: { path: "/var/lib/coldstart", type: "DirectoryOrCreate" },
      "socket-dir": { path: "/run/coldstart", type: "DirectoryOrCreate" },
      "host-proc-modules": { path: "/proc/modules", type: "File" },
      "host-proc-cmdline": { path: "/proc/cmdline", type: "File" },
      "host-proc-meminfo": { path: "/proc/meminfo", type: "File" },
      "host-proc-init-mountinfo": { path: "/proc/1/mountinfo", type: "File" },
      "host-proc-driver": { path: "/proc/driver", type: "Directory" },
      "host-sys-devices": { path: "/sys/devices", type: "Directory" },
      "host-sys-dev-block": { path: "/sys/dev/block", type: "Directory" },
      "host-sys-class-block": { path: "/sys/class/block", type: "Directory" },
      "host-sys-class-iommu": { path: "/sys/class/iommu", type: "Directory" },
      "host-sys-iommu-groups": { path: "/sys/kernel/iommu_groups", type: "Directory" },
    });
    const mounts = Object.fromEntries(c.volumeMounts.map((m: K8sObject) => [m.name, m]));
    for (const [name, hostPath] of Object.entries(hostPaths) as [string, { path: string }][]) {
      if (!/^\/(proc|sys)\//.test(hostPath.path)) continue;
      // At its own place under the host root, so the code reads the paths it always read.
      expect(mounts[name], name).toMatchObject({ mountPath: `/host${hostPath.path}`, readOnly: true });
      expect(mounts[name].mountPropagation, name).toBeUndefined();
    }
    expect(pod.enableServiceLinks).toBe(false);
    // Every hostPath is justified in the docs.
    const doc = await readFile(join(root, "docs/deploy.md"), "utf8");
    for (const p of Object.values(hostPaths) as { path: string }[]) expect(doc).toContain(`\`${p.path}\``);

    // The config the container gets is valid for the daemon (same schema, same names).
    const env: Record<string, string> = {};
    for (const e of c.env as { name: string; value?: string }[])
      if (e.value !== undefined) env[e.name] = e.value;
    const settings = parseEnv(await readFile(join(deploy, "coldstart.env"), "utf8"));
    // Even with service links on (a copy of the manifest without enableServiceLinks: false), the
    // variables the kubelet would add for coldstart's own Services do not stop the daemon.
    const links = serviceLinks(objs.filter((o) => o.obj.kind === "Service").map((o) => o.obj));
    expect(Object.keys(links)).toContain("COLDSTART_API_SERVICE_HOST");
    const config = loadConfig({ env: { ...settings, ...env, ...links, NODE_NAME: "node-1" } });
    expect(config.sources.allow).toEqual(["s3://my-models-bucket/models/**"]);
    expect(config.compileCache.remote).toBe("s3://my-models-bucket/compile-cache/");
    // Peers: the headless Service's records, without this pod's own address.
    const peersService = find(objs, "Service", "coldstart-peers");
    expect(peersService.spec.clusterIP).toBe("None");
    expect(config.peers.dns).toBe(
      `coldstart-peers.coldstart.svc.cluster.local:${peersService.spec.ports[0].port}`,
    );
    expect(config.kube.nodeName).toBe("node-1");
    expect(config.daemon.root).toBe(mounts.staging.mountPath);
    expect(config.daemon.socketPath.startsWith(`${mounts["socket-dir"].mountPath}/`)).toBe(true);
    expect(config.daemon.tokenFile?.startsWith(`${mounts.tokens.mountPath}/`)).toBe(true);
    expect(config.node.hostRoot).toBe("/host");
    expect(config.daemon.listen).toBe("0.0.0.0:8476");
    expect(config.daemon.metricsListen).toBe("0.0.0.0:9476");
    // The drain fits in the termination grace period.
    expect(config.daemon.shutdownGraceMs).toBeLessThan(pod.terminationGracePeriodSeconds * 1000);

    const ports = Object.fromEntries(c.ports.map((p: K8sObject) => [p.name, p.containerPort]));
    expect(ports).toEqual({ api: 8476, metrics: 9476 });
    expect(c.readinessProbe.httpGet).toEqual({ path: "/readyz", port: "metrics" });
    expect(c.livenessProbe.httpGet).toEqual({ path: "/livez", port: "metrics" });
    expect(c.securityContext).toEqual({
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ["ALL"] },
    });
    expect(c.resources.requests).toBeDefined();
    expect(c.resources.limits.memory).toBeDefined();
    const downward = c.env
      .filter((e: K8sObject) => e.valueFrom?.fieldRef)
      .map((e: K8sObject) => [e.name, e.valueFrom.fieldRef.fieldPath]);
    expect(downward).toEqual([
      ["NODE_NAME", "spec.nodeName"],
      ["HOST_IP", "status.hostIP"],
      ["POD_IP", "status.podIP"],
    ]);
    // The namespace admits the hostPaths, and says why.
    expect(find(objs, "Namespace", "coldstart").metadata.labels?.["pod-security.kubernetes.io/enforce"]).toBe(
      "privileged",
    );
  });

  it("the host views: the node probes find on the mounted paths alone what they find on the whole host", async () => {
    const c = find(await all(), "DaemonSet", "coldstart").spec.template.spec.containers[0];
    const hostRoot = c.env.find((e: K8sObject) => e.name === "COLDSTART_HOST_ROOT").value as string;
    // What the pod sees of the host's proc and sys, relative to the host root: "proc/modules", ...
    const views = (c.volumeMounts as { mountPath: string }[])
      .map((m) => relative(hostRoot, m.mountPath))
      .filter((r) => /^(proc|sys)\//.test(r));
    expect(views.length).toBeGreaterThan(0);
    const covers = (rel: string) => views.some((v) => rel === v || rel.startsWith(`${v}/`));
    // The facts src/node gathers under the host root, without the notes on what could not be read.
    const facts = async (s: FakeScenario) =>
      JSON.parse(
        JSON.stringify(
          {
            nvidiaFs: await readNvidiaFs(s.hostRoot),
            iommu: await readIommu(s.hostRoot),
            placement: await probePlacement(s),
            memory: await memoryRoom(s.hostRoot, join(s.hostRoot, "no-cgroup")),
          },
          (key, value) => (key === "notes" ? undefined : value),
        ),
      );
    const write = async (top: string, rel: string, text: string) => {
      await mkdir(join(top, rel, ".."), { recursive: true });
      await writeFile(join(top, rel), text);
    };
    /** Removes every path under `top` that no kept path is, is inside, or leads to (no symlink followed). */
    const prune = async (top: string, keep: string[], rel = ""): Promise<void> => {
      for (const e of await readdir(join(top, rel), { withFileTypes: true })) {
        const r = rel ? `${rel}/${e.name}` : e.name;
        if (keep.some((k) => r === k || r.startsWith(`${k}/`))) continue;
        if (e.isDirectory() && keep.some((k) => k.startsWith(`${r}/`))) await prune(top, keep, r);
        else await rm(join(top, r), { recursive: true, force: true });
      }
    };
    // Besides the library's hosts: IOMMU units with every group passthrough by the kernel's default
    // (nothing on the command line says so; sys/kernel/iommu_groups does).
    const iommuPassthroughByDefault = async () => {
      const s = await scenarios.gdsReady();
      await mkdir(join(s.hostRoot, "sys/class/iommu/dmar0"), { recursive: true });
      for (const g of ["0", "1"]) await write(s.hostRoot, `sys/kernel/iommu_groups/${g}/type`, "identity\n");
      return s;
    };
    const hosts = { ...scenarios, iommuPassthroughByDefault };
    const pruned: Record<string, K8sObject> = {};
    for (const [name, make] of Object.entries(hosts)) {
      const s = await make();
      try {
        // A fuller host: memory, and what must stay out of view (a process's command line and
        // environment, firmware tables, debugfs, cgroups).
        await write(
          s.hostRoot,
          "proc/meminfo",
          "MemTotal:       2097152000 kB\nMemAvailable:   1887436800 kB\n",
        );
        const hidden = [
          "proc/4242/cmdline",
          "proc/4242/environ",
          "sys/firmware/dmi/tables/DMI",
          "sys/kernel/debug/x",
          "sys/fs/cgroup/cpu.max",
        ];
        for (const h of hidden) await write(s.hostRoot, h, "secret\n");
        const whole = await facts(s);
        // The DaemonSet's hosts see nothing of the host but the views. The others stand for a host
        // whose staging root lies under the host root: their files stay, their proc and sys are cut
        // to the views, and their dev goes (the pod has no view of the host's /dev: a device-mapper
        // volume is found by number in sys/dev/block, not by its /dev/mapper name). The container's
        // own mount table stays too (the real pod reads its /proc/self/mountinfo, the same table): a
        // test cannot fake this process's.
        const rest = name.startsWith("daemonSet")
          ? []
          : (await readdir(s.hostRoot)).filter((e) => !["proc", "sys", "dev"].includes(e));
        await prune(s.hostRoot, [...views, "proc/self/mountinfo", ...rest]);
        for (const h of hidden) {
          expect(covers(h), h).toBe(false);
          await expect(lstat(join(s.hostRoot, h)), h).rejects.toThrow();
        }
        const seen = await facts(s);
        expect(seen, name).toEqual(whole);
        pruned[name] = seen;
      } finally {
        await s.cleanup();
      }
    }
    // The comparison saw real facts, not two empty answers.
    expect(pruned.daemonSetOnInstanceStore?.placement).toMatchObject({
      placement: "nvme-instance-store",
      sharesRootVolume: false,
    });
    expect(pruned.daemonSetOnRootVolume?.placement.placement).toBe("root-volume");
    // placement.require auto sees the EKS AMI's instance-store RAID0 through the same views.
    expect(pruned.daemonSetOnRootVolumeBesideInstanceStore?.placement.instanceStore).toMatchObject({
      mounts: [{ mountPoint: "/mnt/k8s-disks/0", device: "md127", disks: ["nvme1n1", "nvme2n1"] }],
      spare: ["nvme1n1", "nvme2n1"],
    });
    expect(pruned.lvmOverPartitions?.placement.disks.length).toBeGreaterThan(0);
    expect(pruned.gdsReady?.nvidiaFs).toEqual({
      loaded: true,
      version: { major: 2, minor: 17 },
      devcount: 2,
    });
    expect(pruned.iommuOn?.iommu).toMatchObject({ enabled: true, units: ["dmar0", "dmar1"] });
    expect(pruned.iommuPassthroughByDefault?.iommu).toMatchObject({ enabled: false, passthrough: true });
    expect(pruned.gdsReady?.memory.hostAvailable).toBe(1887436800 * 1024);
  });

  it("the NetworkPolicy: the daemon's pods; the API (and peers) from this namespace or one let in, metrics from anywhere, the mirror from its node only", async () => {
    const objs = await all();
    const policy = find(objs, "NetworkPolicy", "coldstart");
    const template = find(objs, "DaemonSet", "coldstart").spec.template;
    expect(policy.metadata.namespace).toBe("coldstart");
    expect(selects(policy.spec.podSelector, template.metadata.labels)).toBe(true);
    expect(policy.spec.policyTypes).toEqual(["Ingress"]);
    const ports: Record<string, number> = Object.fromEntries(
      template.spec.containers[0].ports.map((p: K8sObject) => [p.name, p.containerPort]),
    );
    // The mirror's port, from the component that opens it.
    const [mirrorComponent] = await load(join(deploy, "components/oci-mirror/kustomization.yaml"));
    const mirror = (parse(mirrorComponent?.patches[0].patch) as K8sObject[]).find((op) =>
      String(op.path).endsWith("/ports/-"),
    )?.value.containerPort as number;
    expect([ports.api, ports.metrics, mirror]).toEqual([8476, 9476, 8477]);
    // Exactly these ports appear, each by number; no address blocks.
    const listed = (policy.spec.ingress as K8sObject[]).flatMap((r) =>
      (r.ports as K8sObject[]).map((p) => `${p.protocol}/${p.port}`),
    );
    expect(listed.sort()).toEqual(["TCP/8476", "TCP/9476"]);
    expect(JSON.stringify(policy.spec)).not.toContain("ipBlock");

    const ns = (name: string, labels: Record<string, string> = {}) => ({
      namespace: name,
      namespaceLabels: { "kubernetes.io/metadata.name": name, ...labels },
    });
    const prefetch = find(objs, "Job");
    expect(prefetch.metadata.generateName).toBe("coldstart-prefetch-");
    const sources: Record<string, Source> = {
      // Another daemon, as the coldstart-peers records name it.
      peer: { ...ns("coldstart"), podLabels: template.metadata.labels },
      // examples/prefetch-job.yaml, in its namespace, with the labels the Job controller gives it.
      prefetchJob: {
        ...ns(prefetch.metadata.namespace as string),
        podLabels: { "batch.kubernetes.io/job-name": "x" },
      },
      inferencePod: { ...ns("inference"), podLabels: { app: "vllm" } },
      letInNamespace: { ...ns("ml-ops", { "coldstart.io/api-client": "true" }), podLabels: {} },
      // Another node (its containerd, its host-network pods) or anything outside the cluster's pods.
      otherAddress: { ip: "10.0.7.12" },
    };
    const peersService = find(objs, "Service", "coldstart-peers");
    expect(selects({ matchLabels: peersService.spec.selector }, template.metadata.labels)).toBe(true);
    const admitted = Object.fromEntries(
      Object.entries(sources).map(([name, src]) => [
        name,
        [ports.api, ports.metrics, mirror].filter((port) => admits(policy, src, port as number, ports)),
      ]),
    );
    // The pod's own node is admitted to every port whatever the policy says (containerd to the
    // mirror, the kubelet's probes): not modelled here, and nothing else reaches the mirror.
    expect(admitted).toEqual({
      peer: [8476, 9476],
      prefetchJob: [8476, 9476],
      inferencePod: [9476],
      letInNamespace: [8476, 9476],
      otherAddress: [9476],
    });
  });

  it("the vLLM example waits over the socket directory, sources the env file, and prefers nodes with its model", async () => {
    const objs = await load(join(deploy, "examples/vllm-deployment.yaml"));
    const pod = find(
      objs.map((obj) => ({ obj })),
      "Deployment",
    ).spec.template.spec;
    const init = pod.initContainers[0];
    const modelId = init.args[1];
    expect(init.args[0]).toBe("wait");
    expect(init.args).toEqual(
      expect.arrayContaining(["--env-file", "/coldstart/env", "--socket", "/run/coldstart/coldstart.sock"]),
    );
    const socket = pod.volumes.find((v: K8sObject) => v.name === "coldstart-socket");
    expect(socket.hostPath.path).toBe("/run/coldstart");
    const main = pod.containers[0];
    expect(main.args[0]).toContain('--load-format "$COLDSTART_LOAD_FORMAT"');
    expect(main.args[0]).toContain('vllm serve "$COLDSTART_MODEL_PATH"');
    expect(main.args[0]).toMatch(/^set -a; \. \/coldstart\/env; set \+a$/m);
    // The models mount is at the daemon's path, so COLDSTART_MODEL_PATH resolves inside vLLM too.
    expect(main.volumeMounts).toContainEqual({
      name: "coldstart-models",
      mountPath: "/var/lib/coldstart",
      readOnly: true,
    });
    // The compile cache: restored by the init container, written by vLLM at the daemon's path.
    expect(init.args).toContain("--compile-cache");
    expect(main.volumeMounts).toContainEqual({
      name: "coldstart-compile-cache",
      mountPath: "/var/lib/coldstart/compile-cache",
    });
    const cacheVolume = pod.volumes.find((v: K8sObject) => v.name === "coldstart-compile-cache");
    expect(cacheVolume.hostPath.path).toBe("/var/lib/coldstart/compile-cache");
    const preferred = pod.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution;
    expect(preferred[0].preference.matchExpressions[0]).toEqual({
      key: modelLabelKey(modelId),
      operator: "In",
      values: ["ready"],
    });
  });

  it("the examples ask for one model id with one source and one set of filters (else CS_MODEL_SOURCE_CONFLICT)", async () => {
    /** `--flag value` pairs of a `coldstart wait` command line, repeatable ones gathered. */
    const flags = (args: string[], name: string) =>
      args.flatMap((a, i) => (a === name && args[i + 1] !== undefined ? [args[i + 1] as string] : []));
    const asks = new Map<string, { where: string; source: string; include: string[]; exclude: string[] }[]>();
    const ask = (where: string, id: string, source: string, include: string[] = [], exclude: string[] = []) =>
      asks.set(id, [
        ...(asks.get(id) ?? []),
        { where, source, include: [...include].sort(), exclude: [...exclude].sort() },
      ]);
    for (const file of [
      "vllm-deployment.yaml",
      "vllm-csi-restricted.yaml",
      "modelcache.yaml",
      "prefetch-job.yaml",
    ]) {
      for (const obj of await load(join(deploy, "examples", file))) {
        if (obj.kind === "ModelCache") {
          ask(file, obj.spec.model, obj.spec.source, obj.spec.include, obj.spec.exclude);
          continue;
        }
        const pod = obj.spec?.template?.spec?.template?.spec ?? obj.spec?.template?.spec;
        for (const c of [...(pod?.initContainers ?? []), ...(pod?.containers ?? [])]) {
          const args: string[] = c.args ?? [];
          if (args[0] !== "wait" || !flags(args, "--source")[0]) continue;
          ask(
            file,
            args[1] as string,
            flags(args, "--source")[0] as string,
            flags(args, "--include"),
            flags(args, "--exclude"),
          );
        }
        for (const v of pod?.volumes ?? []) {
          const a = v.csi?.driver === "models.coldstart.io" ? v.csi.volumeAttributes : undefined;
          if (!a?.model) continue;
          const list = (s?: string) => (s ? (JSON.parse(s) as string[]) : []);
          ask(file, a.model, a.source, list(a.include), list(a.exclude));
        }
      }
    }
    const llama = asks.get("meta-llama/Llama-3.1-8B-Instruct") ?? [];
    expect(llama.map((a) => a.where).sort()).toEqual([
      "modelcache.yaml",
      "vllm-csi-restricted.yaml",
      "vllm-deployment.yaml",
    ]);
    for (const [id, all] of asks) {
      const [first, ...rest] = all;
      for (const a of rest)
        expect({ ...a, where: "" }, `${id} in ${a.where}`).toEqual({ ...first, where: "" });
    }
  });

  it.skipIf(!hasKubectl())(
    "renders with kustomize: the base, and an overlay with both components",
    async () => {
      const objs = await kustomize();
      const cm = objs.find((o) => o.kind === "ConfigMap");
      expect(cm?.metadata.name).toMatch(/^coldstart-config-[a-z0-9]{10}$/);
      const ds = objs.find((o) => o.kind === "DaemonSet");
      expect(ds?.spec.template.spec.containers[0].envFrom).toEqual([
        { configMapRef: { name: cm?.metadata.name } },
      ]);
      expect(ds?.spec.template.spec.containers[0].image).toBe("ghcr.io/coldstart-dev/coldstart:0.1.0");
      expect(objs.find((o) => o.kind === "ValidatingAdmissionPolicy")?.metadata.namespace).toBeUndefined();
      for (const o of objs) {
        if (isKustomization(o)) continue;
        await expectValid(o, `rendered ${o.kind} ${o.metadata.name}`);
      }

      const rendered = await kustomize([
        "servicemonitor",
        "host-cufile-json",
        "oci-mirror",
        "oci-mirror-tags",
      ]);
      expect(rendered.map((o) => o.kind)).toContain("ServiceMonitor");
      const pod = rendered.find((o) => o.kind === "DaemonSet")?.spec.template.spec;
      expect(pod.volumes).toContainEqual({
        name: "host-cufile-json",
        hostPath: { path: "/etc/cufile.json", type: "File" },
      });
      expect(pod.containers[0].volumeMounts).toContainEqual({
        name: "host-cufile-json",
        mountPath: "/host/etc/cufile.json",
        readOnly: true,
      });
      // The mirror: a host port for containerd, and the content store and config read-only where
      // the daemon's defaults look for them under node.hostRoot.
      const c = pod.containers[0];
      expect(c.ports).toContainEqual({
        name: "mirror",
        containerPort: 8477,
        hostPort: 8477,
        protocol: "TCP",
      });
      const env = Object.fromEntries(
        c.env.filter((e: K8sObject) => e.value).map((e: K8sObject) => [e.name, e.value]),
      );
      const config = loadConfig({ env: { ...env, NODE_NAME: "n" } });
      expect(config.mirror.listen).toBe("0.0.0.0:8477");
      expect(c.volumeMounts).toContainEqual({
        name: "containerd-content",
        mountPath: `${config.node.hostRoot}/var/lib/containerd/io.containerd.content.v1.content`,
        readOnly: true,
      });
      expect(c.volumeMounts).toContainEqual({
        name: "containerd-config",
        mountPath: `${config.node.hostRoot}/etc/containerd`,
        readOnly: true,
      });
      // Tags: containerd's socket, where the config looks for it.
      expect(config.mirror.resolveTags).toBe(true);
      expect(c.volumeMounts).toContainEqual({
        name: "containerd-socket",
        mountPath: config.mirror.containerdSocket,
      });
      expect(pod.volumes).toContainEqual({
        name: "containerd-socket",
        hostPath: { path: "/run/containerd/containerd.sock", type: "Socket" },
      });
      for (const o of rendered) {
        if (isKustomization(o)) continue;
        await expectValid(o, `rendered ${o.kind} ${o.metadata.name}`);
      }
    },
  );

  it.skipIf(!hasKubectl())(
    "the CSI component: the CSIDriver for inline volumes, the kubelet's directories, the daemon's config",
    async () => {
      const rendered = await kustomize(["csi-driver"]);
      for (const o of rendered) await expectValid(o, `rendered ${o.kind} ${o.metadata.name}`);
      const driver = rendered.find((o) => o.kind === "CSIDriver");
      expect(driver?.metadata.name).toBe("models.coldstart.io");
      expect(driver?.spec).toEqual({
        attachRequired: false,
        podInfoOnMount: true,
        volumeLifecycleModes: ["Ephemeral"],
        fsGroupPolicy: "None",
        requiresRepublish: false,
      });
      const pod = rendered.find((o) => o.kind === "DaemonSet")?.spec.template.spec;
      const c = pod.containers[0];
      const env = Object.fromEntries(
        c.env.filter((e: K8sObject) => e.value).map((e: K8sObject) => [e.name, e.value]),
      );
      const cm = rendered.find((o) => o.kind === "ConfigMap");
      const config = loadConfig({ env: { ...cm?.data, ...env, NODE_NAME: "n" } });
      // The socket and the registration directory where the kubelet looks, at the same paths inside.
      expect(config.csi.socketPath).toBe("/var/lib/kubelet/plugins/models.coldstart.io/csi.sock");
      expect(config.csi.registrationDir).toBe("/var/lib/kubelet/plugins_registry");
      expect(config.csi.allow.length).toBeGreaterThan(0);
      const mountOf = (path: string) => c.volumeMounts.find((m: K8sObject) => m.mountPath === path);
      const hostPathOf = (name: string) =>
        pod.volumes.find((v: K8sObject) => v.name === name)?.hostPath?.path;
      for (const path of [
        "/var/lib/kubelet/plugins/models.coldstart.io",
        "/var/lib/kubelet/plugins_registry",
        "/var/lib/kubelet/pods",
      ]) {
        expect(hostPathOf(mountOf(path)?.name), path).toBe(path);
      }
      // The daemon's mounts reach the pods only with Bidirectional propagation, which needs privileged.
      expect(mountOf("/var/lib/kubelet/pods").mountPropagation).toBe("Bidirectional");
      expect(c.securityContext).toMatchObject({ privileged: true, readOnlyRootFilesystem: true });
    },
  );

  it("the Karpenter recipe: RAID0 instance store, GPU nodes with local NVMe the DaemonSet selects and tolerates", async () => {
    const objs = await all();
    const recipe = await load(join(deploy, "examples/karpenter-gpu.yaml"));
    const nodeClass = recipe.find((o) => o.kind === "EC2NodeClass");
    const pool = recipe.find((o) => o.kind === "NodePool");
    expect([nodeClass?.apiVersion, pool?.apiVersion]).toEqual(["karpenter.k8s.aws/v1", "karpenter.sh/v1"]);
    expect(nodeClass?.spec.instanceStorePolicy).toBe("RAID0");
    expect(nodeClass?.spec.amiSelectorTerms).toEqual([{ alias: "al2023@latest" }]);
    const template = pool?.spec.template;
    expect(template.spec.nodeClassRef).toEqual({
      group: "karpenter.k8s.aws",
      kind: "EC2NodeClass",
      name: nodeClass?.metadata.name,
    });
    const requirement = (key: string) =>
      (template.spec.requirements as { key: string; values?: string[] }[]).find((r) => r.key === key);
    expect(requirement("karpenter.k8s.aws/instance-local-nvme")).toEqual({
      key: "karpenter.k8s.aws/instance-local-nvme",
      operator: "Gt",
      values: ["0"],
    });
    expect(requirement("karpenter.k8s.aws/instance-gpu-manufacturer")?.values).toEqual(["nvidia"]);
    expect(pool?.spec.disruption.consolidateAfter).toBeDefined();
    // The DaemonSet lands on these nodes: one of its node selector terms matches the pool's labels,
    // and it tolerates every taint the pool sets.
    const pod = find(objs, "DaemonSet", "coldstart").spec.template.spec;
    const terms = pod.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms;
    expect(terms.some((t: LabelSelector) => selects(t, template.metadata.labels))).toBe(true);
    for (const taint of template.spec.taints as { key: string; value?: string; effect: string }[]) {
      const tolerated = (
        pod.tolerations as { key?: string; operator?: string; value?: string; effect?: string }[]
      ).some(
        (t) =>
          (t.key === undefined || t.key === taint.key) &&
          (t.operator === "Exists" || t.value === taint.value) &&
          (t.effect === undefined || t.effect === taint.effect),
      );
      expect(tolerated, `${taint.key}:${taint.effect}`).toBe(true);
    }
    // The inference examples tolerate them too.
    for (const file of ["vllm-deployment.yaml", "vllm-csi-restricted.yaml"]) {
      const [workload] = (await load(join(deploy, "examples", file))).filter((o) => o.kind === "Deployment");
      expect(workload?.spec.template.spec.tolerations, file).toContainEqual({
        key: "nvidia.com/gpu",
        operator: "Exists",
        effect: "NoSchedule",
      });
    }
  });

  it.skipIf(!hasKubectl())(
    "the instance-store component: the staging hostPath on the EKS AMI's RAID0, and nvme-instance-store required",
    async () => {
      const rendered = await kustomize(["instance-store"]);
      for (const o of rendered) await expectValid(o, `rendered ${o.kind} ${o.metadata.name}`);
      const pod = rendered.find((o) => o.kind === "DaemonSet")?.spec.template.spec;
      const c = pod.containers[0];
      expect(pod.volumes.find((v: K8sObject) => v.name === "staging")).toEqual({
        name: "staging",
        hostPath: { path: "/mnt/k8s-disks/0/coldstart", type: "DirectoryOrCreate" },
      });
      // The container path, and so every model path pods are told, stays the base's.
      expect(c.volumeMounts.find((m: K8sObject) => m.name === "staging")?.mountPath).toBe(
        "/var/lib/coldstart",
      );
      const env = Object.fromEntries(
        c.env.filter((e: K8sObject) => "value" in e).map((e: K8sObject) => [e.name, e.value]),
      );
      const cm = rendered.find((o) => o.kind === "ConfigMap");
      // The base's config says auto; the container's own variable wins over the ConfigMap's.
      expect(loadConfig({ env: { ...cm?.data, NODE_NAME: "n" } }).placement.require).toEqual(["auto"]);
      const config = loadConfig({ env: { ...cm?.data, ...env, NODE_NAME: "n" } });
      expect(config.placement.require).toEqual(["nvme-instance-store"]);
      expect(config.daemon.root).toBe("/var/lib/coldstart");
      // The array is the kubelet's too: models are evicted before its image GC (85% used) starts.
      expect([config.eviction.highWatermarkPercent, config.eviction.lowWatermarkPercent]).toEqual([75, 65]);
      // Nothing else of the base changed.
      const baseObjs = await kustomize();
      expect(rendered.map((o) => `${o.kind} ${o.metadata.name}`)).toEqual(
        baseObjs.map((o) => `${o.kind} ${o.metadata.name}`),
      );
    },
  );

  it("the admission policy, evaluated as the API server would (CEL), confines each daemon to its own Node", async () => {
    const objs = await all();
    const policy = find(objs, "ValidatingAdmissionPolicy", "coldstart-own-node-only").spec;
    expect(find(objs, "ValidatingAdmissionPolicyBinding", "coldstart-own-node-only").spec).toEqual({
      policyName: "coldstart-own-node-only",
      validationActions: ["Deny"],
    });
    const DAEMON = "system:serviceaccount:coldstart:coldstart";
    type NodeObject = { metadata: Record<string, unknown>; spec: Record<string, unknown> };
    const node = (
      labels: Record<string, string>,
      extra: Record<string, unknown> = {},
      spec = {},
    ): NodeObject => ({
      metadata: { name: "gpu-1", labels, ...extra },
      spec: { podCIDR: "10.0.1.0/24", ...spec },
    });
    const old = node({
      "kubernetes.io/hostname": "gpu-1",
      [`coldstart.io/model.${"a".repeat(56)}`]: "ready",
    });
    const claim = { "authentication.kubernetes.io/node-name": ["gpu-1"] };
    const admit = admitter<NodeObject>(policy);
    const own = (o: NodeObject) => admit(DAEMON, claim, o, old);

    // What the daemon really sends: coldstart.io/ labels and the models annotation on its own node.
    expect(
      own(
        node(
          { "kubernetes.io/hostname": "gpu-1", "coldstart.io/gds": "enabled" },
          { annotations: { "coldstart.io/models": "{}" } },
        ),
      ),
    ).toEqual([]);
    // Its own node, but anything outside coldstart.io/ is refused, as are spec and finalizers.
    expect(own(node({ "kubernetes.io/hostname": "evil" }))).toEqual([
      "the coldstart daemon may only add, change or remove coldstart.io/ labels",
    ]);
    expect(
      own({ ...old, metadata: { ...old.metadata, annotations: { "node.alpha.kubernetes.io/ttl": "0" } } }),
    ).toEqual(["the coldstart daemon may only add, change or remove coldstart.io/ annotations"]);
    expect(own({ ...old, spec: { ...old.spec, unschedulable: true } })).toEqual([
      "the coldstart daemon may not change a Node's spec (taints, unschedulable, podCIDR)",
    ]);
    expect(own({ ...old, metadata: { ...old.metadata, finalizers: ["x/block"] } })).toEqual([
      "the coldstart daemon may not change a Node's finalizers or owner references",
    ]);
    // Another node, or a token without the node-name claim: denied (fail closed).
    const other = { ...old, metadata: { ...old.metadata, name: "gpu-2" } };
    expect(admit(DAEMON, claim, other, other)).toEqual([
      "the coldstart daemon may only update the Node it runs on",
    ]);
    expect(admit(DAEMON, {}, old, old)).toEqual(["the coldstart daemon may only update the Node it runs on"]);
    // Moved to another namespace, still policed; anyone else is not this policy's business.
    expect(admit("system:serviceaccount:kube-system:coldstart", claim, other, other)).toHaveLength(1);
    expect(admit("system:serviceaccount:kube-system:node-problem-detector", {}, other, old)).toEqual([]);
  });
  it("the ModelCache component: its kustomization lists its files, and its RBAC grants its daemon's reads, status patches and events, nothing more", async () => {
    const dir = join(deploy, "components/modelcache");
    const [k] = await load(join(dir, "kustomization.yaml"));
    const files = (await readdir(dir)).filter((f) => f.endsWith(".yaml") && f !== "kustomization.yaml");
    expect([...(k?.resources ?? [])].sort()).toEqual(files.sort());

    const everything = await all();
    const objs = everything.filter((o) => o.file.startsWith(`${dir}/`));
    const roles = objs.filter((o) => o.obj.kind === "ClusterRole" || o.obj.kind === "Role").map((o) => o.obj);
    expect(roles.map((r) => `${r.kind} ${r.metadata.namespace ?? ""}/${r.metadata.name}`)).toEqual([
      "ClusterRole /coldstart-modelcaches",
      "Role default/coldstart-modelcache-events",
    ]);
    const granted = (role: K8sObject) =>
      (role.rules as { apiGroups: string[]; resources: string[]; verbs: string[] }[]).flatMap((rule) =>
        rule.apiGroups.flatMap((g) =>
          rule.resources.flatMap((res) => rule.verbs.map((v) => `${g || "core"} ${res} ${v}`)),
        ),
      );
    // Read ModelCaches (the informer), patch their status (server-side apply), list and watch Nodes
    // (its own, by field selector, which RBAC cannot narrow): never the spec, never a PUT of the status.
    expect(granted(roles[0] as K8sObject).sort()).toEqual([
      "coldstart.io modelcaches get",
      "coldstart.io modelcaches list",
      "coldstart.io modelcaches watch",
      "coldstart.io modelcaches/status patch",
      "core nodes list",
      "core nodes watch",
    ]);
    // Events about a cluster-scoped ModelCache live in default (test/kube/modelcache-admission.test.ts).
    expect(granted(roles[1] as K8sObject)).toEqual(["core events create"]);
    const daemon = [{ kind: "ServiceAccount", name: "coldstart", namespace: "coldstart" }];
    const clusterBinding = find(objs, "ClusterRoleBinding", "coldstart-modelcaches");
    expect(clusterBinding.roleRef).toEqual({
      apiGroup: "rbac.authorization.k8s.io",
      kind: "ClusterRole",
      name: "coldstart-modelcaches",
    });
    expect(clusterBinding.subjects).toEqual(daemon);
    const binding = find(objs, "RoleBinding", "coldstart-modelcache-events");
    expect(binding.metadata.namespace).toBe("default");
    expect(binding.roleRef).toEqual({
      apiGroup: "rbac.authorization.k8s.io",
      kind: "Role",
      name: "coldstart-modelcache-events",
    });
    expect(binding.subjects).toEqual(daemon);
    for (const { obj } of objs) {
      if (isKustomization(obj) || obj.kind === "Role" || obj.kind === "RoleBinding") continue;
      expect(obj.metadata.namespace, `${obj.kind} ${obj.metadata.name}`).toBeUndefined();
    }

    const policy = find(objs, "ValidatingAdmissionPolicy", "coldstart-modelcache-own-entry").spec;
    expect(policy.failurePolicy).toBe("Fail");
    expect(policy.matchConstraints.resourceRules).toEqual([
      {
        apiGroups: ["coldstart.io"],
        apiVersions: ["v1alpha1"],
        operations: ["UPDATE"],
        resources: ["modelcaches/status"],
      },
    ]);
    // The same daemon as the base's Node policy.
    const nodePolicy = find(everything, "ValidatingAdmissionPolicy", "coldstart-own-node-only");
    expect(policy.matchConditions).toEqual(nodePolicy.spec.matchConditions);
    expect(find(objs, "ValidatingAdmissionPolicyBinding", "coldstart-modelcache-own-entry").spec).toEqual({
      policyName: "coldstart-modelcache-own-entry",
      validationActions: ["Deny"],
    });
  });

  it("the ModelCache admission policy, evaluated as the API server would (CEL), keeps each daemon to its own status entry", async () => {
    const policy = find(await all(), "ValidatingAdmissionPolicy", "coldstart-modelcache-own-entry").spec;
    const DAEMON = "system:serviceaccount:coldstart:coldstart";
    const OWN_ENTRY_ONLY =
      "the coldstart daemon may only add, change or remove its own node's entry of status.nodes";
    const NO_CLAIM =
      "the coldstart daemon's token must name its node (a pod-bound service account token carries authentication.kubernetes.io/node-name)";
    const SPEC = "the coldstart daemon may not change a ModelCache's spec or metadata";
    type Entry = { node: string; state: string; bytesDone?: number };
    type ModelCache = { metadata: Record<string, unknown>; spec: Record<string, unknown>; status?: object };
    const mc = (status?: { nodes?: Entry[]; selectedNodes?: number; readyNodes?: number }): ModelCache => ({
      metadata: { name: "m", labels: { team: "ml" } },
      spec: { model: "m", source: "s3://models/m/", pin: true, priority: 0 },
      ...(status ? { status } : {}),
    });
    const a = (state: string): Entry => ({ node: "gpu-a", state, bytesDone: 1 });
    const b = (state: string): Entry => ({ node: "gpu-b", state, bytesDone: 2 });
    const old = mc({ nodes: [a("staging"), b("staging")], selectedNodes: 2, readyNodes: 0 });
    const claimA = { "authentication.kubernetes.io/node-name": ["gpu-a"] };
    const policyAdmits = admitter<ModelCache>(policy);
    const admit = (user: string, extra: Record<string, string[]>, object: ModelCache, oldObject = old) =>
      policyAdmits(user, extra, object, oldObject);
    const asA = (object: ModelCache, oldObject?: ModelCache) => admit(DAEMON, claimA, object, oldObject);

    // Its own entry: changed, removed, added; the counts; and a first status on a new ModelCache.
    expect(asA(mc({ nodes: [a("ready"), b("staging")], selectedNodes: 2, readyNodes: 0 }))).toEqual([]);
    expect(asA(mc({ nodes: [b("staging")], selectedNodes: 2, readyNodes: 0 }))).toEqual([]);
    expect(asA(mc({ nodes: [b("staging"), a("pending")] }), mc({ nodes: [b("staging")] }))).toEqual([]);
    expect(asA(mc({ nodes: [a("staging"), b("staging")], selectedNodes: 2, readyNodes: 2 }))).toEqual([]);
    expect(asA(mc({ nodes: [a("pending")] }), mc())).toEqual([]);
    // Another node's entry: changed, dropped, added.
    expect(asA(mc({ nodes: [a("staging"), b("failed")], selectedNodes: 2, readyNodes: 0 }))).toEqual([
      OWN_ENTRY_ONLY,
    ]);
    expect(asA(mc({ nodes: [a("staging")], selectedNodes: 2, readyNodes: 0 }))).toEqual([OWN_ENTRY_ONLY]);
    expect(asA(mc({ nodes: [a("staging"), b("staging"), { node: "gpu-c", state: "ready" }] }))).toEqual([
      OWN_ENTRY_ONLY,
    ]);
    expect(asA(mc())).toEqual([OWN_ENTRY_ONLY]);
    // No node claim (fail closed): no entry is its own, and the claim's absence is named.
    expect(admit(DAEMON, {}, mc({ nodes: [a("staging"), b("staging")], selectedNodes: 3 }))).toEqual([
      NO_CLAIM,
    ]);
    expect(admit(DAEMON, {}, mc({ nodes: [a("ready"), b("staging")] }))).toEqual([NO_CLAIM, OWN_ENTRY_ONLY]);
    // Spec and metadata (the status subresource resets them before admission; belt and braces).
    const unpinned = { ...old, spec: { ...old.spec, pin: false } };
    expect(asA(unpinned)).toEqual([SPEC]);
    expect(asA({ ...old, metadata: { ...old.metadata, finalizers: ["x/block"] } })).toEqual([SPEC]);
    // Moved to another namespace, still policed; anyone else is not this policy's business.
    expect(admit("system:serviceaccount:kube-system:coldstart", claimA, mc())).toEqual([OWN_ENTRY_ONLY]);
    expect(admit("system:serviceaccount:ops:controller", {}, mc())).toEqual([]);

    // The CRD's 5000 entries: linear (filter, list equality), the rule holds at the far end.
    const others = Array.from({ length: 4999 }, (_, i) => ({ node: `n-${i}`, state: "ready" }));
    const full = mc({ nodes: [...others, a("staging")] });
    expect(asA(mc({ nodes: [...others, a("ready")] }), full)).toEqual([]);
    const lastChanged = [...others.slice(0, -1), { node: "n-4998", state: "failed" }, a("staging")];
    expect(asA(mc({ nodes: lastChanged }), full)).toEqual([OWN_ENTRY_ONLY]);
  });

  it.skipIf(!hasKubectl())(
    "the ModelCache component renders: the CRD, its RBAC and policy, and the daemon's switch and namespace",
    async () => {
      const rendered = await kustomize(["modelcache"]);
      for (const o of rendered) await expectValid(o, `rendered ${o.kind} ${o.metadata.name}`);
      const names = rendered.map((o) => `${o.kind} ${o.metadata.name}`);
      expect(names).toEqual(
        expect.arrayContaining([
          "CustomResourceDefinition modelcaches.coldstart.io",
          "ClusterRole coldstart-modelcaches",
          "ClusterRoleBinding coldstart-modelcaches",
          "Role coldstart-modelcache-events",
          "RoleBinding coldstart-modelcache-events",
          "ValidatingAdmissionPolicy coldstart-modelcache-own-entry",
          "ValidatingAdmissionPolicyBinding coldstart-modelcache-own-entry",
          // The base's, untouched.
          "ClusterRole coldstart-node-labels",
          "ValidatingAdmissionPolicy coldstart-own-node-only",
        ]),
      );
      const c = rendered.find((o) => o.kind === "DaemonSet")?.spec.template.spec.containers[0];
      expect(c.name).toBe("coldstart");
      expect(c.env).toContainEqual({ name: "COLDSTART_MODEL_CACHES", value: "on" });
      const downward = c.env
        .filter((e: K8sObject) => e.valueFrom?.fieldRef)
        .map((e: K8sObject) => [e.name, e.valueFrom.fieldRef.fieldPath]);
      expect(downward).toEqual([
        ["NODE_NAME", "spec.nodeName"],
        ["HOST_IP", "status.hostIP"],
        ["POD_IP", "status.podIP"],
      ]);
      // The daemon takes the component's settings.
      const env = Object.fromEntries(
        c.env.filter((e: K8sObject) => "value" in e).map((e: K8sObject) => [e.name, e.value]),
      );
      expect(loadConfig({ env: { ...env, NODE_NAME: "n" } }).kube.modelCaches).toBe("on");
    },
  );
});

interface LabelSelector {
  matchLabels?: Record<string, string>;
  matchExpressions?: { key: string; operator: string; values?: string[] }[];
}

/** A label selector (matchLabels, matchExpressions) against a set of labels, as the API defines it. */
function selects(selector: LabelSelector | undefined, labels: Record<string, string> = {}): boolean {
  if (!selector) return true;
  const exact = Object.entries(selector.matchLabels ?? {}).every(([k, v]) => labels[k] === v);
  const expressions = (selector.matchExpressions ?? []).every((e) => {
    const has = e.key in labels;
    const value = labels[e.key] as string;
    if (e.operator === "In") return has && (e.values ?? []).includes(value);
    if (e.operator === "NotIn") return !has || !(e.values ?? []).includes(value);
    if (e.operator === "Exists") return has;
    if (e.operator === "DoesNotExist") return !has;
    throw new Error(`selector operator ${e.operator}`);
  });
  return exact && expressions;
}

/** Where a connection comes from: a pod (its namespace, that namespace's labels, its labels), or an address that is no pod. */
type Source =
  | { namespace: string; namespaceLabels: Record<string, string>; podLabels: Record<string, string> }
  | { ip: string };

/**
 * Whether a NetworkPolicy's ingress rules admit a TCP connection from `source` to `port` of a pod it
 * selects, by the API's rules: a rule admits when its ports (none: all) and its peers (none: all) both
 * match; a peer with only a podSelector means pods of the policy's namespace, a namespaceSelector
 * without a podSelector every pod of the matching namespaces. Address blocks are not evaluated.
 */
function admits(policy: K8sObject, source: Source, port: number, named: Record<string, number>): boolean {
  return ((policy.spec.ingress ?? []) as K8sObject[]).some((rule) => {
    const ports = (rule.ports ?? []) as K8sObject[];
    const portOk =
      ports.length === 0 ||
      ports.some(
        (p) =>
          (p.protocol ?? "TCP") === "TCP" &&
          (typeof p.port === "number" ? p.port : named[p.port]) === port &&
          p.endPort === undefined,
      );
    const from = (rule.from ?? []) as K8sObject[];
    const fromOk =
      from.length === 0 ||
      from.some((peer) => {
        if (peer.ipBlock) throw new Error("ipBlock is not evaluated here");
        if ("ip" in source) return false;
        const nsOk = peer.namespaceSelector
          ? selects(peer.namespaceSelector, source.namespaceLabels)
          : source.namespace === policy.metadata.namespace;
        return nsOk && selects(peer.podSelector, source.podLabels);
      });
    return portOk && fromOk;
  });
}
