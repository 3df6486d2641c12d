/**
 * deploy/ offline: every manifest and example parses and validates against the Kubernetes API schemas
 * (kubernetes-models, generated from the API server's OpenAPI), the kustomizations name files that
 * exist, the RBAC grants exactly what docs/deploy.md says, and the wiring the docs promise (paths,
 * ports, probes, labels) is what the YAML holds.
 */
import { readdir, readFile } from "node:fs/promises";
import { join, relative, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";
import { loadConfig } from "../../src/config/load.js";
import { modelLabelKey } from "../../src/kube/node-labels.js";

const root = resolve(import.meta.dirname, "../..");
const deploy = join(root, "deploy");

interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name?: string; generateName?: string; namespace?: string; labels?: Record<string, string> };
  // biome-ignore lint/suspicious/noExplicitAny: manifests are checked against the schemas, then read freely
  [key: string]: any;
}

async function yamlFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await yamlFiles(p)));
    else if (/\.ya?ml$/.test(e.name)) out.push(p);
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

describe("deploy/", () => {
  it("every manifest and example validates against the Kubernetes schemas", async () => {
    const objs = await all();
    expect(objs.length).toBeGreaterThan(12);
    for (const { file, obj } of objs) {
      if (isKustomization(obj)) continue;
      const Model = await modelFor(obj.apiVersion, obj.kind);
      expect(
        () => new Model(obj).validate(),
        `${relative(root, file)}: ${obj.kind} ${obj.metadata.name}`,
      ).not.toThrow();
    }
  });

  it("the validation has teeth: a wrong type or a missing required field is refused", async () => {
    const ds = find(await all(), "DaemonSet", "coldstart");
    const Model = await modelFor("apps/v1", "DaemonSet");
    const broken = structuredClone(ds);
    broken.spec.template.spec.containers[0].ports[0].containerPort = "8476";
    expect(() => new Model(broken).validate()).toThrow(/containerPort/);
    const noSelector = structuredClone(ds);
    delete noSelector.spec.selector;
    expect(() => new Model(noSelector).validate()).toThrow(/selector/);
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
    expect(base?.namespace).toBe("coldstart");
  });

  it("RBAC grants exactly what docs/deploy.md says, and nothing else asks for more", async () => {
    const objs = await all();
    const roles = objs.filter((o) => o.obj.kind === "ClusterRole" || o.obj.kind === "Role").map((o) => o.obj);
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
    // The admission policy matches the same service account the binding grants.
    const vap = find(objs, "ValidatingAdmissionPolicy", "coldstart-own-node-only");
    expect(vap.spec.matchConditions[0].expression).toContain('"system:serviceaccount:coldstart:coldstart"');
    expect(find(objs, "ValidatingAdmissionPolicyBinding").spec).toEqual({
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
    expect(hostPaths).toEqual({
      staging: { path: "/var/lib/coldstart", type: "DirectoryOrCreate" },
      "socket-dir": { path: "/run/coldstart", type: "DirectoryOrCreate" },
      host: { path: "/", type: "Directory" },
    });
    const mounts = Object.fromEntries(c.volumeMounts.map((m: K8sObject) => [m.name, m]));
    expect(mounts.host).toMatchObject({ mountPath: "/host", readOnly: true });
    // Every hostPath is justified in the docs.
    const doc = await readFile(join(root, "docs/deploy.md"), "utf8");
    for (const p of Object.values(hostPaths) as { path: string }[]) expect(doc).toContain(`\`${p.path}\``);

    // The config the container gets is valid for the daemon (same schema, same names).
    const env: Record<string, string> = {};
    for (const e of c.env as { name: string; value?: string }[])
      if (e.value !== undefined) env[e.name] = e.value;
    const cm = find(objs, "ConfigMap", "coldstart-config");
    const config = loadConfig({ env: { ...cm.data, ...env, NODE_NAME: "node-1" } });
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
    ]);
    // The namespace admits the hostPaths, and says why.
    expect(find(objs, "Namespace", "coldstart").metadata.labels?.["pod-security.kubernetes.io/enforce"]).toBe(
      "privileged",
    );
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
    const preferred = pod.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution;
    expect(preferred[0].preference.matchExpressions[0]).toEqual({
      key: modelLabelKey(modelId),
      operator: "In",
      values: ["ready"],
    });
  });
});
