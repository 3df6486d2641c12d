/**
 * The Helm chart (deploy/helm/coldstart) against the kustomize base it mirrors: `helm lint` passes,
 * and `helm template` renders the same objects as `kubectl kustomize` for the default settings, and
 * for the toggles on, the same as the base plus the matching components. Objects are matched by kind,
 * namespace and name, then compared deeply after normalising only what legitimately differs:
 * - Helm's standard labels (helm.sh/chart, app.kubernetes.io/managed-by, app.kubernetes.io/instance,
 *   app.kubernetes.io/version) are dropped from metadata.labels;
 * - the ConfigMap's content hash suffix (kustomize's configMapGenerator hash, the chart's SHA-256 of
 *   the data) becomes `coldstart-config-<hash>` wherever the name appears (the ConfigMap and the
 *   DaemonSet's envFrom);
 * - on objects a component adds (not in the base render), the chart's app.kubernetes.io/part-of:
 *   the base's `labels` transformer does not reach component resources, the chart labels everything.
 * - blank lines inside multi-line strings (kustomize adds one to a folded scalar's more-indented line).
 * Both renders are parsed as YAML 1.1, as the API server reads them (`defaultMode: 0400` is octal).
 * The token Secrets the chart generates are checked too. Then the chart is packaged
 * (scripts/helm-package.sh) and installed into a real API server (etcd and kube-apiserver from
 * scripts/go-tools.mjs), the way docs/deploy.md, "Helm", says; an upgrade keeps the generated tokens.
 * values.schema.json has its own file, helm-values.test.ts.
 * Tier: integration (helm is built from the Go module proxy by scripts/go-tools.mjs).
 */
import { execFile } from "node:child_process";
import { lstat, mkdtemp, readdir, readFile, realpath, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { deploy, hasKubectl, kustomize, parseObjects } from "../support/deploy-render.js";
import { requireGoTool } from "../support/go-tools.js";
import { startKubeControlPlane } from "../support/kube-control-plane.js";

const root = resolve(import.meta.dirname, "../..");
const chart = join(deploy, "helm", "coldstart");
const run = promisify(execFile);

interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  // biome-ignore lint/suspicious/noExplicitAny: rendered manifests are compared as plain data
  [key: string]: any;
}

const HELM_LABELS = [
  "helm.sh/chart",
  "app.kubernetes.io/managed-by",
  "app.kubernetes.io/instance",
  "app.kubernetes.io/version",
];
const CONFIG_NAME = /^coldstart-config-[0-9a-z]{10}$/;

/**
 * Every string equal to a ConfigMap name with its hash, with the hash replaced; and blank lines in
 * multi-line strings collapsed (kustomize re-serialises a folded `>-` scalar that has a more-indented
 * line with one line break too many before it, as in the CEL of admission-policy.yaml: Python's and
 * the yaml package's parse of the source file agree with Helm's).
 */
function unhash(v: unknown): unknown {
  if (typeof v === "string")
    return CONFIG_NAME.test(v) ? "coldstart-config-<hash>" : v.replace(/\n{2,}/g, "\n");
  if (Array.isArray(v)) return v.map(unhash);
  if (v && typeof v === "object")
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, unhash(x)]));
  return v;
}

/** kind/namespace/name, the ConfigMap's hash normalised. */
const key = (o: K8sObject) => `${o.kind}/${o.metadata.namespace ?? ""}/${unhash(o.metadata.name)}`;

function normalise(o: K8sObject, dropPartOf = false): K8sObject {
  const out = unhash(structuredClone(o)) as K8sObject;
  const labels = out.metadata.labels ?? {};
  for (const l of HELM_LABELS) delete labels[l];
  if (dropPartOf) delete labels["app.kubernetes.io/part-of"];
  if (Object.keys(labels).length === 0) delete out.metadata.labels;
  else out.metadata.labels = labels;
  return out;
}

async function helm(bin: string, args: string[]): Promise<string> {
  const { stdout } = await run(bin, args, { maxBuffer: 64 << 20 });
  return stdout;
}

async function helmTemplate(bin: string, set: string[] = [], namespace = "coldstart"): Promise<K8sObject[]> {
  const sets = set.flatMap((s) => ["--set", s]);
  return parseObjects<K8sObject>(
    await helm(bin, ["template", "coldstart", chart, "--namespace", namespace, ...sets]),
  );
}

/** Object by object: the same set of kind/namespace/name, then each one deeply equal. */
async function expectSameObjects(fromHelm: K8sObject[], fromKustomize: K8sObject[]): Promise<void> {
  const base = new Set((await kustomize<K8sObject>()).map(key));
  const h = new Map(fromHelm.map((o) => [key(o), o]));
  const k = new Map(fromKustomize.map((o) => [key(o), o]));
  expect([...h.keys()].sort()).toEqual([...k.keys()].sort());
  for (const [id, o] of k) {
    const mine = h.get(id);
    if (!mine) throw new Error(`helm did not render ${id}`);
    expect(normalise(mine, !base.has(id)), id).toEqual(normalise(o));
  }
}

/** The Secrets the chart generates when no existing ones are named, API token first. */
const TOKEN_SECRETS = ["coldstart-api-tokens", "coldstart-peer-tokens", "coldstart-mirror-tokens"];

const find = (objs: K8sObject[], kind: string, name?: string) => {
  const o = objs.find((x) => x.kind === kind && (name === undefined || x.metadata.name === name));
  if (!o) throw new Error(`no ${kind} ${name ?? ""}`);
  return o;
};

describe("the Helm chart", () => {
  it("has the package's version and appVersion, and passes helm lint --strict", async (ctx) => {
    const bin = requireGoTool("helm", ctx.skip);
    const pkg = JSON.parse(await readFile(join(root, "package.json"), "utf8")) as { version: string };
    const meta = parse(await readFile(join(chart, "Chart.yaml"), "utf8")) as Record<string, string>;
    expect(meta.version).toBe(pkg.version);
    expect(meta.appVersion).toBe(pkg.version);
    const out = await helm(bin, ["lint", "--strict", chart]);
    expect(out).toMatch(/1 chart\(s\) linted, 0 chart\(s\) failed/);
  });

  it("shares the PrometheusRule, dashboard, CRD, RBAC, policies and NetworkPolicy with deploy/ through links, not copies", async () => {
    const files = join(chart, "files");
    const names = (await readdir(files)).sort();
    expect(names.length).toBeGreaterThan(0);
    for (const name of names) {
      const p = join(files, name);
      expect((await lstat(p)).isSymbolicLink(), `${name} is a link`).toBe(true);
      const target = await realpath(p);
      expect(target.startsWith(`${deploy}/`) && !target.startsWith(`${chart}/`), `${name} → ${target}`).toBe(
        true,
      );
    }
    expect(names).toContain("prometheusrule.yaml");
    expect(names).toContain("coldstart-dashboard.json");
    expect(names).toEqual(
      expect.arrayContaining(["networkpolicy.yaml", "rbac.yaml", "modelcache-rbac.yaml"]),
    );
  });

  it.skipIf(!hasKubectl())(
    "renders the same objects as the kustomize base with the default values",
    async (ctx) => {
      const bin = requireGoTool("helm", ctx.skip);
      const fromHelm = await helmTemplate(bin);
      const base = await kustomize<K8sObject>();
      await expectSameObjects(fromHelm, base);
      // The normalised hash is there on both sides and the DaemonSet names the ConfigMap it renders.
      const cm = find(fromHelm, "ConfigMap");
      expect(cm.metadata.name).toMatch(CONFIG_NAME);
      expect(find(fromHelm, "DaemonSet").spec.template.spec.containers[0].envFrom).toEqual([
        { configMapRef: { name: cm.metadata.name } },
      ]);
      expect(find(fromHelm, "DaemonSet").spec.template.spec.containers[0].image).toBe(
        "ghcr.io/coldstart-dev/coldstart:0.1.0",
      );
    },
  );

  it.skipIf(!hasKubectl())(
    "with the monitoring toggles on, renders the base plus servicemonitor, prometheus-rules and grafana-dashboard",
    async (ctx) => {
      const bin = requireGoTool("helm", ctx.skip);
      const fromHelm = await helmTemplate(bin, [
        "metrics.serviceMonitor.enabled=true",
        "metrics.prometheusRule.enabled=true",
        "metrics.grafanaDashboard.enabled=true",
      ]);
      await expectSameObjects(
        fromHelm,
        await kustomize<K8sObject>(["servicemonitor", "prometheus-rules", "grafana-dashboard"]),
      );
      // The alerts' own {{ $labels.node }} reach the PrometheusRule untouched (data, not a template).
      const rule = find(fromHelm, "PrometheusRule");
      expect(JSON.stringify(rule.spec)).toContain("{{ $labels.node }}");
    },
  );

  it.skipIf(!hasKubectl())(
    "with every DaemonSet toggle on, renders the base plus every component that patches it",
    async (ctx) => {
      const bin = requireGoTool("helm", ctx.skip);
      const fromHelm = await helmTemplate(bin, [
        "csi.enabled=true",
        "modelCache.enabled=true",
        "mirror.enabled=true",
        "mirror.resolveTags=true",
        "gds.hostCufileJson=true",
        "tokens.scoped.enabled=true",
        "stagingRoot.instanceStore.enabled=true",
      ]);
      await expectSameObjects(
        fromHelm,
        await kustomize<K8sObject>([
          "csi-driver",
          "modelcache",
          "oci-mirror",
          "oci-mirror-tags",
          "host-cufile-json",
          "scoped-tokens",
          "instance-store",
        ]),
      );
    },
  );

  it.skipIf(!hasKubectl())(
    "with scoped tokens and no existing Secrets, generates the API, peer and mirror tokens where scoped-tokens mounts them",
    async (ctx) => {
      const bin = requireGoTool("helm", ctx.skip);
      const fromHelm = await helmTemplate(bin, [
        "tokens.existingSecret=",
        "tokens.scoped.enabled=true",
        "tokens.scoped.peerExistingSecret=",
        "tokens.scoped.mirrorExistingSecret=",
      ]);
      const secrets = fromHelm.filter((o) => o.kind === "Secret");
      expect(secrets.map((o) => o.metadata.name).sort()).toEqual(TOKEN_SECRETS.toSorted());
      const tokens = secrets.map((o) => {
        expect(o.metadata.namespace, o.metadata.name).toBe("coldstart");
        expect(o.type, o.metadata.name).toBe("Opaque");
        expect(Object.keys(o.data), o.metadata.name).toEqual(["tokens"]);
        const token = Buffer.from(o.data.tokens, "base64").toString();
        expect(token, o.metadata.name).toMatch(/^[0-9a-f]{64}$/);
        return token;
      });
      expect(new Set(tokens).size).toBe(3);
      // Apart from the Secrets (kustomize leaves them to the user), the base plus components/scoped-tokens:
      // the DaemonSet mounts exactly the generated Secrets, where the component mounts its own.
      await expectSameObjects(
        fromHelm.filter((o) => o.kind !== "Secret"),
        await kustomize<K8sObject>(["scoped-tokens"]),
      );
      const volumes = find(fromHelm, "DaemonSet").spec.template.spec.volumes as {
        name: string;
        secret?: { secretName: string };
      }[];
      expect(volumes.flatMap((v) => (v.secret ? [[v.name, v.secret.secretName]] : []))).toEqual([
        ["tokens", "coldstart-api-tokens"],
        ["peer-tokens", "coldstart-peer-tokens"],
        ["mirror-tokens", "coldstart-mirror-tokens"],
      ]);
    },
  );

  it("packages into a chart that renders as the directory does, the linked files inside it", async (ctx) => {
    const bin = requireGoTool("helm", ctx.skip);
    const dist = await mkdtemp(join(tmpdir(), "cs-helm-dist-"));
    try {
      const { stdout } = await run("bash", [join(root, "scripts", "helm-package.sh")], {
        env: { ...process.env, DIST: dist, HELM: bin, REGISTRY: "registry.example.com/platform" },
      });
      const tgz = join(dist, "coldstart-0.1.0.tgz");
      expect(stdout).toContain(`${bin} push ${tgz} oci://registry.example.com/platform/charts`);
      const set = [
        "metrics.prometheusRule.enabled=true",
        "metrics.grafanaDashboard.enabled=true",
        "modelCache.enabled=true",
      ];
      const sets = set.flatMap((s) => ["--set", s]);
      const packaged = parseObjects(
        await helm(bin, ["template", "coldstart", tgz, "-n", "coldstart", ...sets]),
      );
      expect(packaged).toEqual(await helmTemplate(bin, set));
    } finally {
      await rm(dist, { recursive: true, force: true });
    }
  });

  it("renders what the values say: namespace, generated token, peers off, sources, extra env", async (ctx) => {
    const bin = requireGoTool("helm", ctx.skip);
    const objs = await helmTemplate(
      bin,
      [
        "tokens.existingSecret=",
        "peers.enabled=false",
        "sources.allow={s3://a/models/**,s3://b/**}",
        "extraEnv[0].name=COLDSTART_LOG_LEVEL",
        "extraEnv[0].value=debug",
        "image.tag=9.9.9",
        "image.pullPolicy=Always",
      ],
      "ml-infra",
    );
    for (const o of objs) {
      if (o.metadata.namespace !== undefined && o.kind !== "Role" && o.kind !== "RoleBinding") {
        expect(o.metadata.namespace, key(o)).toBe("ml-infra");
      }
    }
    expect(find(objs, "Namespace").metadata.name).toBe("ml-infra");
    expect(find(objs, "ClusterRoleBinding").subjects[0].namespace).toBe("ml-infra");
    const secret = find(objs, "Secret", "coldstart-api-tokens");
    expect(Buffer.from(secret.data.tokens, "base64").toString()).toMatch(/^[0-9a-f]{64}$/);
    expect(objs.find((o) => o.metadata.name === "coldstart-peers")).toBeUndefined();
    const cm = find(objs, "ConfigMap");
    expect(cm.data.COLDSTART_PEER_DNS).toBeUndefined();
    expect(cm.data.COLDSTART_SOURCES_ALLOW).toBe("s3://a/models/**,s3://b/**");
    const container = find(objs, "DaemonSet").spec.template.spec.containers[0];
    expect(container.env.at(-1)).toEqual({ name: "COLDSTART_LOG_LEVEL", value: "debug" });
    expect(container.image).toBe("ghcr.io/coldstart-dev/coldstart:9.9.9");
    expect(container.imagePullPolicy).toBe("Always");

    // With peers on, the peers' DNS name follows the namespace; a settings edit renames the ConfigMap.
    const withPeers = find(await helmTemplate(bin, [], "ml-infra"), "ConfigMap");
    expect(withPeers.data.COLDSTART_PEER_DNS).toBe("coldstart-peers.ml-infra.svc.cluster.local:8476");
    const edited = find(await helmTemplate(bin, ["config.logLevel=debug"], "ml-infra"), "ConfigMap");
    expect(edited.metadata.name).not.toBe(withPeers.metadata.name);

    // Objects linked from deploy/ follow the release too: deploy/'s namespace in metadata and in RBAC
    // subjects becomes the release's, while the ModelCache Events Role stays where Events go.
    const modelCache = await helmTemplate(bin, ["modelCache.enabled=true"], "ml-infra");
    expect(find(modelCache, "NetworkPolicy").metadata.namespace).toBe("ml-infra");
    for (const o of modelCache.filter((x) => x.subjects)) {
      expect(
        o.subjects.map((x: { namespace?: string }) => x.namespace),
        key(o),
      ).toEqual(["ml-infra"]);
    }
    expect(find(modelCache, "Role", "coldstart-modelcache-events").metadata.namespace).toBe("default");
    expect(find(modelCache, "RoleBinding", "coldstart-modelcache-events").metadata.namespace).toBe("default");
  });

  it.skipIf(!hasKubectl())(
    "installs into a real API server as docs/deploy.md says: the chart's Namespace onto --create-namespace's",
    async (ctx) => {
      const bin = requireGoTool("helm", ctx.skip);
      const etcd = requireGoTool("etcd", ctx.skip);
      const kubeApiServer = requireGoTool("kube-apiserver", ctx.skip);
      const cp = await startKubeControlPlane({ etcd, kubeApiServer });
      try {
        const kc = ["--kubeconfig", cp.kubeconfig];
        // A namespace made before the install is not the release's: Helm refuses it (namespace.create=false).
        await run("kubectl", [...kc, "create", "namespace", "made-before"]);
        await expect(
          helm(bin, ["install", "coldstart", chart, "--namespace", "made-before", ...kc]),
        ).rejects.toThrow(/Namespace "made-before" .*exists/);
        await helm(bin, [
          "install",
          "coldstart",
          chart,
          "--namespace",
          "coldstart",
          "--create-namespace",
          "--set",
          "tokens.existingSecret=",
          "--set",
          "tokens.scoped.enabled=true",
          "--set",
          "tokens.scoped.peerExistingSecret=",
          "--set",
          "tokens.scoped.mirrorExistingSecret=",
          "--set",
          "modelCache.enabled=true",
          ...kc,
        ]);
        const get = async (args: string[]) =>
          JSON.parse((await run("kubectl", [...kc, "get", "-o", "json", ...args])).stdout) as K8sObject;
        const ns = await get(["namespace", "coldstart"]);
        expect(ns.metadata.labels).toMatchObject({
          "pod-security.kubernetes.io/enforce": "privileged",
          "app.kubernetes.io/managed-by": "Helm",
        });
        const ds = await get(["-n", "coldstart", "daemonset", "coldstart"]);
        expect(ds.spec.template.spec.containers[0].image).toBe("ghcr.io/coldstart-dev/coldstart:0.1.0");
        const secrets = async () =>
          Promise.all(
            TOKEN_SECRETS.map(async (name) => (await get(["-n", "coldstart", "secret", name])).data),
          );
        const installed = await secrets();
        const tokens = installed.map((d) => Buffer.from(d?.tokens ?? "", "base64").toString());
        for (const t of tokens) expect(t).toMatch(/^[0-9a-f]{64}$/);
        expect(new Set(tokens).size).toBe(3);
        // An upgrade keeps the generated tokens (lookup), and the ConfigMap the DaemonSet names exists.
        await helm(bin, [
          "upgrade",
          "coldstart",
          chart,
          "-n",
          "coldstart",
          "--reuse-values",
          "--set",
          "config.logLevel=debug",
          ...kc,
        ]);
        expect(await secrets()).toEqual(installed);
        const cm = (await get(["-n", "coldstart", "daemonset", "coldstart"])).spec.template.spec.containers[0]
          .envFrom[0].configMapRef.name;
        expect((await get(["-n", "coldstart", "configmap", cm])).data.COLDSTART_LOG_LEVEL).toBe("debug");
        expect(cm).not.toBe(ds.spec.template.spec.containers[0].envFrom[0].configMapRef.name);
      } finally {
        await cp.stop();
      }
    },
    300_000,
  );
});
