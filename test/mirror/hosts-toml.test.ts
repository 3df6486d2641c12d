/**
 * Managed hosts.toml files on a real directory tree laid out as a node's /etc/containerd, and a real
 * daemon that writes them on start and puts the node's own files back on SIGTERM.
 */
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parse } from "smol-toml";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { checkContainerd } from "../../src/mirror/containerd-check.js";
import { manageHostsToml } from "../../src/mirror/hosts-toml.js";
import { type DaemonProcess, killDaemons, NO_GPU_FLAGS, startDaemonProcess } from "../support/processes.js";
import { useS3Fixture } from "../support/s3-fixture.js";
import { waitFor } from "../support/wait.js";

const fx = useS3Fixture("cs-hosts-");
let host: string;
beforeEach(async () => {
  host = await mkdtemp(join(tmpdir(), "cs-hosts-root-"));
  await mkdir(join(host, "etc/containerd/certs.d/nvcr.io"), { recursive: true });
  await writeFile(
    join(host, "etc/containerd/config.toml"),
    'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/containerd/certs.d"\n',
  );
});
const daemons: DaemonProcess[] = [];
afterEach(async () => {
  // A failed assertion leaves its daemon running: gone before its directory is.
  await killDaemons(daemons);
  await rm(host, { recursive: true, force: true });
});

/** A daemon that manages nvcr.io's hosts.toml under the fake host, with `tokenArgs` and `extra`. */
async function mirroringDaemon(tokenArgs: string[], extra: string[] = []): Promise<DaemonProcess> {
  const d = await startDaemonProcess(
    [
      "--root",
      join(host, "root"),
      "--socket",
      join(host, "d.sock"),
      ...tokenArgs,
      ...NO_GPU_FLAGS,
      "--host-root",
      host,
      "--mirror-listen",
      "127.0.0.1:0",
      "--mirror-content-dir",
      join(host, "content"),
      "--mirror-registry",
      "nvcr.io",
      "--mirror-manage-hosts-toml",
      ...extra,
    ],
    fx.s3,
  );
  daemons.push(d);
  return d;
}

const NODE_OWN =
  'server = "https://nvcr.io"\n\n[host."https://cache.internal"]\n  capabilities = ["pull", "resolve"]\n';

describe("managed hosts.toml", () => {
  it("puts the mirror first, keeps the node's own hosts after it, and restores the file exactly", async () => {
    const certs = join(host, "etc/containerd/certs.d");
    const own = join(certs, "nvcr.io", "hosts.toml");
    await writeFile(own, NODE_OWN);
    const managed = await manageHostsToml({
      certsDir: certs,
      registries: ["nvcr.io", "docker.io"],
      mirrorUrl: "http://10.0.0.5:8477",
      token: "t0k",
    });
    const doc = parse(await readFile(own, "utf8")) as {
      server: string;
      host: Record<string, Record<string, unknown>>;
    };
    expect(doc.server).toBe("https://nvcr.io");
    expect(Object.keys(doc.host)).toEqual(["http://10.0.0.5:8477", "https://cache.internal"]);
    expect(doc.host["http://10.0.0.5:8477"]).toEqual({
      capabilities: ["pull"],
      header: { Authorization: ["Bearer t0k"] },
    });
    // It holds the token: owner-only.
    expect((await stat(own)).mode & 0o777).toBe(0o600);
    const ok = await checkContainerd({
      hostRoot: host,
      registries: ["nvcr.io", "docker.io"],
      mirrorPort: 8477,
    });
    expect([ok.status, ok.problems]).toEqual(["ok", []]);
    // Tags on, but the file gives the mirror pull only: containerd would never ask it for a tag.
    const noResolve = await checkContainerd({
      hostRoot: host,
      registries: ["nvcr.io"],
      mirrorPort: 8477,
      resolveTags: true,
    });
    expect(noResolve.problems.map((p) => p.code)).toEqual(["hosts_toml_no_resolve"]);

    // A second start (the first daemon was killed) finds its own files and keeps the original backup;
    // with mirror.resolveTags, containerd may ask the mirror for tags too.
    const again = await manageHostsToml({
      certsDir: certs,
      registries: ["nvcr.io", "docker.io"],
      mirrorUrl: "http://10.0.0.5:8477",
      token: "t0k",
      resolve: true,
    });
    const resolving = parse(await readFile(own, "utf8")) as {
      host: Record<string, { capabilities: string[] }>;
    };
    expect(resolving.host["http://10.0.0.5:8477"]?.capabilities).toEqual(["pull", "resolve"]);
    const tagsOk = await checkContainerd({
      hostRoot: host,
      registries: ["nvcr.io", "docker.io"],
      mirrorPort: 8477,
      resolveTags: true,
    });
    expect(tagsOk.problems).toEqual([]);
    await again.restore();
    expect(await readFile(own, "utf8")).toBe(NODE_OWN);
    expect(await readdir(join(certs, "docker.io"))).toEqual([]);
    expect(await readdir(join(certs, "nvcr.io"))).toEqual(["hosts.toml"]);
    await managed.restore();
    expect(await readFile(own, "utf8")).toBe(NODE_OWN);
  });

  it("a daemon with mirror.manageHostsToml writes them on start and restores them on SIGTERM", async () => {
    await writeFile(join(host, "etc/containerd/certs.d/nvcr.io/hosts.toml"), NODE_OWN);
    const tokens = join(host, "tokens");
    await writeFile(tokens, "mirror-tok\n");
    const d = await mirroringDaemon(["--token-file", tokens], ["--mirror-host", "10.0.0.5"]);
    const mirror = String(d.logs.find((l) => l.msg === "coldstart daemon ready")?.mirror);
    const port = mirror.slice(mirror.lastIndexOf(":") + 1);
    const written = parse(
      await readFile(join(host, "etc/containerd/certs.d/nvcr.io/hosts.toml"), "utf8"),
    ) as {
      host: Record<string, { header?: unknown }>;
    };
    expect(Object.keys(written.host)[0]).toBe(`http://10.0.0.5:${port}`);
    // Without mirror.tokenFile, containerd sends the API token, as before scoped tokens existed.
    expect(written.host[`http://10.0.0.5:${port}`]?.header).toEqual({ Authorization: ["Bearer mirror-tok"] });
    const node = (await (
      await fetch(`${d.api}/v1/node`, { headers: { authorization: "Bearer mirror-tok" } })
    ).json()) as {
      mirror: { status: string };
    };
    expect(node.mirror.status).toBe("ok");
    // And as readiness detail (not a condition).
    expect(await (await fetch(`${d.metrics}/readyz`)).json()).toEqual({
      ready: true,
      mirror: { status: "ok", problems: [] },
    });
    d.child.kill("SIGTERM");
    expect((await d.exited).code).toBe(0);
    expect(await readFile(join(host, "etc/containerd/certs.d/nvcr.io/hosts.toml"), "utf8")).toBe(NODE_OWN);
  });

  it("with mirror.tokenFile, hosts.toml carries the mirror token, never the API token, and follows its rotation", async () => {
    const file = join(host, "etc/containerd/certs.d/nvcr.io/hosts.toml");
    await writeFile(file, NODE_OWN);
    await writeFile(join(host, "api-tokens"), "api-tok-that-can-delete\n");
    await writeFile(join(host, "mirror-tokens"), "mirror-tok-1\n");
    const d = await mirroringDaemon([
      "--token-file",
      join(host, "api-tokens"),
      "--mirror-token-file",
      join(host, "mirror-tokens"),
    ]);
    const mirror = String(d.logs.find((l) => l.msg === "coldstart daemon ready")?.mirror);
    const headerOf = async () => {
      const doc = parse(await readFile(file, "utf8")) as { host: Record<string, { header?: unknown }> };
      return Object.values(doc.host)[0]?.header;
    };
    expect(await headerOf()).toEqual({ Authorization: ["Bearer mirror-tok-1"] });
    expect(await readFile(file, "utf8")).not.toContain("api-tok-that-can-delete");
    // What containerd sends is what the mirror takes; the API refuses it.
    const sent = { authorization: "Bearer mirror-tok-1" };
    expect((await fetch(`${mirror}/v2/`, { headers: sent })).status).toBe(200);
    const del = await fetch(`${d.api}/v1/models/org%2Fm`, { method: "DELETE", headers: sent });
    expect([del.status, ((await del.json()) as { error: { code: string } }).error.code]).toEqual([
      403,
      "CS_FORBIDDEN",
    ]);
    // Rotation: the new token first, the old one kept while containerd moves over; the file follows.
    await writeFile(join(host, "mirror-tokens"), "mirror-tok-2\nmirror-tok-1\n");
    await waitFor(async () => JSON.stringify(await headerOf()).includes("mirror-tok-2"), {
      what: "hosts.toml rewritten with the rotated mirror token",
    });
    expect(await headerOf()).toEqual({ Authorization: ["Bearer mirror-tok-2"] });
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect((await fetch(`${mirror}/v2/`, { headers: { authorization: "Bearer mirror-tok-2" } })).status).toBe(
      200,
    );
    d.child.kill("SIGTERM");
    expect((await d.exited).code).toBe(0);
    expect(await readFile(file, "utf8")).toBe(NODE_OWN);
  });
});
