/**
 * The OCI mirror over HTTP, with content stores laid out as containerd keeps them
 * (`blobs/sha256/<hex>`): real daemons, one whose store holds an image and one that relays it from
 * the first as a peer. test/mirror/containerd.test.ts runs the same path with real containerd.
 */
import { createHash } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { type DaemonProcess, NO_GPU_FLAGS, startDaemonProcess } from "../support/processes.js";
import { useS3Fixture } from "../support/s3-fixture.js";

const fx = useS3Fixture("cs-mirror-");
const TOKEN = "mirror-token";
const auth = { authorization: `Bearer ${TOKEN}` };
const daemons: DaemonProcess[] = [];
afterEach(async () => {
  for (const d of daemons.splice(0)) {
    if (d.child.exitCode === null && d.child.signalCode === null) d.child.kill("SIGKILL");
    await d.exited.catch(() => {});
  }
});

const digestOf = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

async function store(
  name: string,
  blobs: Buffer[],
  lie?: { digest: string; bytes: Buffer },
): Promise<string> {
  const dir = join(fx.work, name, "content");
  await mkdir(join(dir, "blobs", "sha256"), { recursive: true });
  for (const b of blobs) await writeFile(join(dir, "blobs", "sha256", digestOf(b).slice(7)), b);
  if (lie) await writeFile(join(dir, "blobs", "sha256", lie.digest.slice(7)), lie.bytes);
  return dir;
}

async function daemon(name: string, content: string, peers: string[] = []) {
  await writeFile(join(fx.work, "tokens"), `${TOKEN}\n`);
  const d = await startDaemonProcess(
    [
      "--root",
      join(fx.work, name, "root"),
      "--socket",
      join(fx.work, `${name}.sock`),
      "--token-file",
      join(fx.work, "tokens"),
      ...NO_GPU_FLAGS,
      "--mirror-listen",
      "127.0.0.1:0",
      "--mirror-content-dir",
      content,
      "--mirror-registry",
      "registry.invalid",
      ...peers.flatMap((p) => ["--peer", p]),
    ],
    fx.s3,
  );
  daemons.push(d);
  const ready = d.logs.find((l) => l.msg === "coldstart daemon ready");
  return { d, mirror: String(ready?.mirror) };
}

function image() {
  const layer = Buffer.alloc(300_000, 7);
  const config = Buffer.from(JSON.stringify({ architecture: "amd64", os: "linux" }));
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: {
        mediaType: "application/vnd.oci.image.config.v1+json",
        digest: digestOf(config),
        size: config.length,
      },
      layers: [
        {
          mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
          digest: digestOf(layer),
          size: layer.length,
        },
      ],
    }),
  );
  return { layer, config, manifest };
}

async function metric(d: DaemonProcess, line: string): Promise<number> {
  const text = await (await fetch(`${d.metrics}/metrics`)).text();
  const found = text.split("\n").find((l) => l.startsWith(`${line} `));
  return found === undefined ? Number.NaN : Number(found.split(" ").at(-1));
}

describe("the OCI mirror", () => {
  it("serves the local content store by digest, with ranges; 404s tags, misses and other registries", async () => {
    const { layer, config, manifest } = image();
    const { mirror } = await daemon("a", await store("a", [layer, config, manifest]));
    const url = (p: string, ns = "registry.invalid") => `${mirror}/v2/test/img/${p}?ns=${ns}`;

    expect((await fetch(`${mirror}/v2/`)).status).toBe(401);
    expect((await fetch(`${mirror}/v2/`, { headers: auth })).status).toBe(200);

    const m = await fetch(url(`manifests/${digestOf(manifest)}`), { headers: auth });
    expect(m.status).toBe(200);
    expect(m.headers.get("content-type")).toBe("application/vnd.oci.image.manifest.v1+json");
    expect(m.headers.get("docker-content-digest")).toBe(digestOf(manifest));
    expect(Buffer.from(await m.arrayBuffer())).toEqual(manifest);

    const head = await fetch(url(`blobs/${digestOf(layer)}`), { method: "HEAD", headers: auth });
    expect([head.status, head.headers.get("content-length")]).toEqual([200, String(layer.length)]);
    const part = await fetch(url(`blobs/${digestOf(layer)}`), {
      headers: { ...auth, range: "bytes=100-199" },
    });
    expect([part.status, part.headers.get("content-range")]).toEqual([206, `bytes 100-199/${layer.length}`]);
    expect(Buffer.from(await part.arrayBuffer())).toEqual(layer.subarray(100, 200));
    const tail = await fetch(url(`blobs/${digestOf(layer)}`), { headers: { ...auth, range: "bytes=-10" } });
    expect([tail.status, tail.headers.get("content-range")]).toEqual([
      206,
      `bytes ${layer.length - 10}-${layer.length - 1}/${layer.length}`,
    ]);
    await tail.arrayBuffer();

    const tag = await fetch(url("manifests/latest"), { headers: auth });
    expect([tag.status, ((await tag.json()) as { errors: { code: string }[] }).errors[0]?.code]).toEqual([
      404,
      "MANIFEST_UNKNOWN",
    ]);
    const unknown = await fetch(url(`blobs/sha256:${"0".repeat(64)}`), { headers: auth });
    expect(unknown.status).toBe(404);
    const other = await fetch(url(`blobs/${digestOf(layer)}`, "docker.io"), { headers: auth });
    expect(other.status).toBe(404);
  });

  it("relays from a peer's store, verified; a peer's blob that is not its digest is cut off", async () => {
    const { layer, config, manifest } = image();
    const bad = Buffer.alloc(200_000, 9);
    const badDigest = digestOf(Buffer.alloc(200_000, 8));
    const a = await daemon(
      "a",
      await store("a", [layer, config, manifest], { digest: badDigest, bytes: bad }),
    );
    const b = await daemon("b", await store("b", []), [a.d.api]);
    const url = (p: string) => `${b.mirror}/v2/test/img/${p}?ns=registry.invalid`;

    const m = await fetch(url(`manifests/${digestOf(manifest)}`), { headers: auth });
    expect([m.status, m.headers.get("content-type")]).toEqual([
      200,
      "application/vnd.oci.image.manifest.v1+json",
    ]);
    expect(Buffer.from(await m.arrayBuffer())).toEqual(manifest);
    const l = await fetch(url(`blobs/${digestOf(layer)}`), { headers: auth });
    expect(l.status).toBe(200);
    expect(digestOf(Buffer.from(await l.arrayBuffer()))).toBe(digestOf(layer));
    expect(await metric(b.d, 'coldstart_mirror_requests_total{kind="blob",outcome="peer"}')).toBe(1);

    // A's store holds bytes under a digest they do not have: B must not hand them over whole.
    const res = await fetch(url(`blobs/${badDigest}`), { headers: auth });
    expect(res.status).toBe(200);
    // Cut off before its end: reading the body fails, it never completes.
    await expect(res.arrayBuffer()).rejects.toThrow();
    expect(await metric(b.d, 'coldstart_mirror_requests_total{kind="blob",outcome="corrupt"}')).toBe(1);
    // A range of a blob only a peer has is not relayed (it could not be checked): a 404, next host.
    const ranged = await fetch(url(`blobs/${digestOf(layer)}`), { headers: { ...auth, range: "bytes=0-9" } });
    expect(ranged.status).toBe(404);
  });
});
