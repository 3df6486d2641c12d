/**
 * deploy/components/scoped-tokens rendered with kustomize over the base and the mirror: the peer and
 * mirror Secrets mounted read-only beside the API's, at the paths the daemon's config then reads
 * (peers.tokenFile, mirror.tokenFile); the base alone still has the one API token. The rendered
 * DaemonSet validates against its schema, and what the component adds is compared whole, so no field
 * the schema lacks slips in.
 */
import { readFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config/load.js";
import { hasKubectl, kustomize } from "../support/deploy-render.js";

const root = resolve(import.meta.dirname, "../..");

// biome-ignore lint/suspicious/noExplicitAny: rendered manifests, read freely after kustomize built them
type Obj = Record<string, any>;

/** The daemon's config as the container gets it: the ConfigMap's settings and the container's env. */
function configOf(objs: Obj[]) {
  const c = objs.find((o) => o.kind === "DaemonSet")?.spec.template.spec.containers[0];
  const env = Object.fromEntries(
    (c.env as Obj[]).filter((e) => e.value !== undefined).map((e) => [e.name, e.value]),
  );
  const cm = objs.find((o) => o.kind === "ConfigMap");
  return loadConfig({ env: { ...cm?.data, ...env, NODE_NAME: "n" } });
}

describe.skipIf(!hasKubectl())("deploy/components/scoped-tokens", () => {
  it("mounts the peer and mirror Secrets read-only where peers.tokenFile and mirror.tokenFile point; the base keeps one token", async () => {
    const base = await kustomize<Obj>([]);
    const plain = configOf(base);
    expect([plain.daemon.tokenFile, plain.peers.tokenFile, plain.mirror.tokenFile]).toEqual([
      "/etc/coldstart/tokens/tokens",
      undefined,
      undefined,
    ]);

    const objs = await kustomize<Obj>(["oci-mirror", "scoped-tokens"]);
    const ds = objs.find((o) => o.kind === "DaemonSet");
    const { DaemonSet } = await import("kubernetes-models/apps/v1/DaemonSet");
    expect(() => new DaemonSet(ds as never).validate()).not.toThrow();
    const pod = ds?.spec.template.spec;
    const c = pod.containers[0];
    const config = configOf(objs);
    const secretOf = (path: string | undefined) => {
      const mount = (c.volumeMounts as Obj[]).find((m) => m.mountPath === dirname(path ?? ""));
      expect(mount?.readOnly, path).toBe(true);
      return (pod.volumes as Obj[]).find((v) => v.name === mount?.name);
    };
    expect(secretOf(config.daemon.tokenFile)).toEqual({
      name: "tokens",
      secret: { secretName: "coldstart-api-tokens", defaultMode: 0o400 },
    });
    expect(secretOf(config.peers.tokenFile)).toEqual({
      name: "peer-tokens",
      secret: { secretName: "coldstart-peer-tokens", defaultMode: 0o400 },
    });
    expect(secretOf(config.mirror.tokenFile)).toEqual({
      name: "mirror-tokens",
      secret: { secretName: "coldstart-mirror-tokens", defaultMode: 0o400 },
    });
    expect(config.mirror.listen).toBe("0.0.0.0:8477");
    // The docs say how to create each Secret the pods need.
    const doc = await readFile(join(root, "docs/deploy.md"), "utf8");
    for (const name of ["coldstart-api-tokens", "coldstart-peer-tokens", "coldstart-mirror-tokens"]) {
      expect(doc).toContain(`create secret generic ${name}`);
    }
  });
});
