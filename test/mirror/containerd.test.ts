/**
 * The image path end to end with real containerd (Debian's 1.6, each in a temporary root): an image
 * built offline is imported into containerd A; containerd B's hosts.toml points a registry that does
 * not exist at daemon B's mirror, and daemon B has daemon A (which reads A's content store) as its
 * peer. `ctr images pull` on B can then only succeed through the peer path.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import {
  buildOciImage,
  CONTAINERD_NOT_INSTALLED_MESSAGE,
  type Containerd,
  containerdAvailable,
  startContainerd,
  writeHostsToml,
} from "../support/containerd.js";
import {
  type DaemonProcess,
  daemonMetric,
  killDaemons,
  NO_GPU_FLAGS,
  startDaemonProcess,
} from "../support/processes.js";
import { useS3Fixture } from "../support/s3-fixture.js";

const fx = useS3Fixture("cs-ctrd-");
const available = containerdAvailable();
const TOKEN = "mirror-e2e-token";
const REGISTRY = "registry.invalid";
// Short: containerd's socket path must stay under 107 bytes.
const dir = mkdtempSync(join(tmpdir(), "ctm-"));
const running: Containerd[] = [];
const daemons: DaemonProcess[] = [];

afterEach(async () => {
  await killDaemons(daemons);
  for (const c of running.splice(0)) await c.stop();
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function daemon(name: string, contentDir: string, peers: string[], extra: string[] = []) {
  await writeFile(join(dir, "tokens"), `${TOKEN}\n`);
  const d = await startDaemonProcess(
    [
      "--root",
      join(dir, `${name}-root`),
      "--socket",
      join(dir, `${name}.sock`),
      "--token-file",
      join(dir, "tokens"),
      ...NO_GPU_FLAGS,
      "--mirror-listen",
      "127.0.0.1:0",
      "--mirror-content-dir",
      contentDir,
      "--mirror-registry",
      REGISTRY,
      ...peers.flatMap((p) => ["--peer", p]),
      // A peer slow to answer on a loaded machine must not turn a relay or a tag into a miss: no test
      // here waits for a peer to time out.
      ...(peers.length > 0 ? ["--peer-timeout", "30s"] : []),
      ...extra,
    ],
    fx.s3,
  );
  daemons.push(d);
  return { d, mirror: String(d.logs.find((l) => l.msg === "coldstart daemon ready")?.mirror) };
}

const metric = daemonMetric;

// Two containerds (30 s each to start), two daemons (30 s each) and ctr pulls (60 s each) per test:
// on a loaded machine more than the default test timeout allows.
describe(`image layers through the peer mirror, real containerd${available ? "" : ` [skipped: ${CONTAINERD_NOT_INSTALLED_MESSAGE}]`}`, {
  timeout: 180_000,
}, () => {
  it.skipIf(!available)(
    "ctr pull on B succeeds only through A's content store; a corrupt peer blob is caught",
    async () => {
      const a = await startContainerd(join(dir, "a"));
      running.push(a);
      const good = await buildOciImage(dir, {
        name: `${REGISTRY}/test/img`,
        tag: "good",
        layers: [Buffer.alloc(600_000, 1), Buffer.from("second layer")],
      });
      const bad = await buildOciImage(dir, {
        name: `${REGISTRY}/test/img`,
        tag: "bad",
        layers: [Buffer.alloc(500_000, 3)],
      });
      for (const img of [good, bad]) {
        const imported = await a.ctr(["images", "import", "--all-platforms", img.tarPath]);
        expect(imported.code, imported.stderr).toBe(0);
      }
      // Bit rot in A's store after containerd verified it: the blob no longer matches its name.
      const badLayer = bad.layerDigests[0] ?? "";
      const badPath = join(a.contentDir, "blobs", "sha256", badLayer.slice(7));
      const rotten = await readFile(badPath);
      rotten[100] = (rotten[100] ?? 0) ^ 0xff;
      await writeFile(badPath, rotten);

      const dA = await daemon("da", a.contentDir, []);
      const b = await startContainerd(join(dir, "b"));
      running.push(b);
      const dB = await daemon("db", b.contentDir, [dA.d.api]);
      const certs = join(dir, "certs.d");
      await writeHostsToml(certs, REGISTRY, dB.mirror, { Authorization: `Bearer ${TOKEN}` });

      const pulled = await b.ctr([
        "images",
        "pull",
        "--hosts-dir",
        certs,
        `${REGISTRY}/test/img@${good.manifestDigest}`,
      ]);
      expect(pulled.code, pulled.stderr).toBe(0);
      for (const [digest, bytes] of good.blobs) {
        expect(await readFile(join(b.contentDir, "blobs", "sha256", digest.slice(7)))).toEqual(bytes);
      }
      // Everything came from the peer: B's own store was empty and the registry does not exist.
      expect(await metric(dB.d, 'coldstart_mirror_requests_total{kind="blob",outcome="peer"}')).toBe(
        good.layerDigests.length + 1,
      );
      expect(
        await metric(dB.d, 'coldstart_mirror_requests_total{kind="manifest",outcome="peer"}'),
      ).toBeGreaterThan(0);

      const failed = await b.ctr([
        "images",
        "pull",
        "--hosts-dir",
        certs,
        `${REGISTRY}/test/img@${bad.manifestDigest}`,
      ]);
      expect(failed.code).not.toBe(0);
      expect(
        await metric(dB.d, 'coldstart_mirror_requests_total{kind="blob",outcome="corrupt"}'),
      ).toBeGreaterThan(0);
      // Nothing of the rotten blob was committed to B's store.
      await expect(readFile(join(b.contentDir, "blobs", "sha256", badLayer.slice(7)))).rejects.toMatchObject({
        code: "ENOENT",
      });
    },
  );

  it.skipIf(!available)(
    "a tag pulled on A resolves on B through the peer: ctr pull by tag, the registry never asked",
    async () => {
      const a = await startContainerd(join(dir, "ta"));
      running.push(a);
      const img = await buildOciImage(dir, {
        name: `${REGISTRY}/test/tagged`,
        tag: "v1",
        layers: [Buffer.alloc(300_000, 7)],
      });
      const imported = await a.ctr(["images", "import", "--all-platforms", img.tarPath]);
      expect(imported.code, imported.stderr).toBe(0);
      // A answers peers' tag questions from its containerd (its own mirror resolves no tags).
      const dA = await daemon("ta", a.contentDir, [], ["--mirror-containerd-socket", a.socket]);
      const b = await startContainerd(join(dir, "tb"));
      running.push(b);
      const dB = await daemon(
        "tb",
        b.contentDir,
        [dA.d.api],
        ["--mirror-resolve-tags", "--mirror-containerd-socket", b.socket],
      );
      const certs = join(dir, "certs-tags.d");
      await writeHostsToml(certs, REGISTRY, dB.mirror, { Authorization: `Bearer ${TOKEN}` }, [
        "pull",
        "resolve",
      ]);

      const pulled = await b.ctr(["images", "pull", "--hosts-dir", certs, `${REGISTRY}/test/tagged:v1`]);
      expect(pulled.code, pulled.stderr).toBe(0);
      for (const [digest, bytes] of img.blobs) {
        expect(await readFile(join(b.contentDir, "blobs", "sha256", digest.slice(7)))).toEqual(bytes);
      }
      expect(await metric(dB.d, 'coldstart_mirror_tag_resolutions_total{outcome="peer"}')).toBeGreaterThan(0);
      const listed = await b.ctr(["images", "ls", "-q"]);
      expect(listed.stdout.split("\n")).toContain(`${REGISTRY}/test/tagged:v1`);

      // Now B's own containerd knows the tag: its mirror answers it, with the manifest's digest.
      const ask = (tag: string) =>
        fetch(`${dB.mirror}/v2/test/tagged/manifests/${tag}?ns=${REGISTRY}`, {
          method: "HEAD",
          headers: { authorization: `Bearer ${TOKEN}` },
        });
      const head = await ask("v1");
      expect([head.status, head.headers.get("docker-content-digest")]).toEqual([200, img.manifestDigest]);
      expect(await metric(dB.d, 'coldstart_mirror_tag_resolutions_total{outcome="local"}')).toBe(1);
      // A tag no node knows: 404, and containerd asks the registry. One that is not a tag: 400
      // MANIFEST_INVALID, and it never reaches containerd.
      expect((await ask("v2")).status).toBe(404);
      expect((await ask("bad%21tag")).status).toBe(400);
      expect(await metric(dB.d, 'coldstart_mirror_tag_resolutions_total{outcome="miss"}')).toBe(1);
      // latest moves by convention: never answered from what nodes hold, even where one does.
      const latest = await buildOciImage(dir, {
        name: `${REGISTRY}/test/tagged`,
        tag: "latest",
        layers: [Buffer.alloc(1000, 9)],
      });
      expect((await b.ctr(["images", "import", "--all-platforms", latest.tarPath])).code).toBe(0);
      expect((await ask("latest")).status).toBe(404);
      expect(await metric(dB.d, 'coldstart_mirror_tag_resolutions_total{outcome="miss"}')).toBe(2);
    },
  );

  it.skipIf(!available)("the self-check sees whether containerd would use the mirror", async () => {
    const { checkContainerd } = await import("../../src/mirror/containerd-check.js");
    const host = join(dir, "host");
    const config = join(host, "etc/containerd/config.toml");
    await mkdir(join(host, "etc/containerd"), { recursive: true });
    // What the EKS AMI and the GPU Operator leave: no config_path, layers discarded.
    await writeFile(
      config,
      'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\n  discard_unpacked_layers = true\n',
    );
    const broken = await checkContainerd({ hostRoot: host, registries: [REGISTRY], mirrorPort: 8477 });
    expect(broken.problems.map((p) => p.code).sort()).toEqual([
      "config_path_unset",
      "discard_unpacked_layers",
    ]);

    await writeFile(
      config,
      'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/containerd/certs.d"\n',
    );
    const missing = await checkContainerd({ hostRoot: host, registries: [REGISTRY], mirrorPort: 8477 });
    expect(missing.problems.map((p) => p.code)).toEqual(["hosts_toml_missing"]);
    await writeHostsToml(join(host, "etc/containerd/certs.d"), REGISTRY, "http://10.0.0.5:9999");
    const other = await checkContainerd({ hostRoot: host, registries: [REGISTRY], mirrorPort: 8477 });
    expect(other.problems.map((p) => p.code)).toEqual(["hosts_toml_not_first"]);
    await writeHostsToml(join(host, "etc/containerd/certs.d"), REGISTRY, "http://10.0.0.5:8477");
    const ok = await checkContainerd({ hostRoot: host, registries: [REGISTRY], mirrorPort: 8477 });
    expect([ok.status, ok.problems]).toEqual(["ok", []]);

    // containerd 2.x keeps these under its images plugin.
    await writeFile(
      config,
      'version = 3\n[plugins."io.containerd.cri.v1.images"]\n  use_local_image_pull = false\n  [plugins."io.containerd.cri.v1.images".registry]\n    config_path = "/etc/containerd/certs.d"\n',
    );
    const v3 = await checkContainerd({ hostRoot: host, registries: [REGISTRY], mirrorPort: 8477 });
    expect(v3.problems.map((p) => p.code)).toEqual(["use_local_image_pull_off"]);
    // And the config containerd itself writes here parses.
    const c = await startContainerd(join(dir, "c"));
    running.push(c);
    const real = await checkContainerd({
      hostRoot: host,
      configFile: c.configPath,
      registries: [],
      mirrorPort: 8477,
    });
    expect(real.problems.map((p) => p.code)).toEqual(["config_path_unset"]);
    // Mirroring any registry needs containerd's catch-all hosts.toml.
    await writeFile(
      config,
      'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/containerd/certs.d"\n',
    );
    const any = await checkContainerd({ hostRoot: host, registries: [], mirrorPort: 8477 });
    expect(any.problems.map((p) => p.message)).toEqual([expect.stringContaining("_default/hosts.toml")]);
  });
});
