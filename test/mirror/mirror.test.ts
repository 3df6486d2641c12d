/**
 * The OCI mirror over HTTP, with content stores laid out as containerd keeps them
 * (`blobs/sha256/<hex>`): real daemons, one whose store holds an image and one that relays it from
 * the first as a peer. test/mirror/containerd.test.ts runs the same path with real containerd.
 */
import { createHash } from "node:crypto";
import { mkdir, readdir, readlink, rm, symlink, writeFile } from "node:fs/promises";
import { type IncomingHttpHeaders, request } from "node:http";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import {
  type DaemonProcess,
  daemonMetric,
  killDaemons,
  NO_GPU_FLAGS,
  startDaemonProcess,
} from "../support/processes.js";
import { useS3Fixture } from "../support/s3-fixture.js";

const fx = useS3Fixture("cs-mirror-");
const TOKEN = "mirror-token";
const auth = { authorization: `Bearer ${TOKEN}` };
const daemons: DaemonProcess[] = [];
afterEach(async () => {
  await killDaemons(daemons);
});

const digestOf = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

/** A content store laid out as containerd's; `lies` are bytes kept under a digest they do not have. */
async function store(
  name: string,
  blobs: Buffer[],
  lies: { digest: string; bytes: Buffer }[] = [],
): Promise<string> {
  const dir = join(fx.work, name, "content");
  await mkdir(join(dir, "blobs", "sha256"), { recursive: true });
  for (const b of blobs) await writeFile(join(dir, "blobs", "sha256", digestOf(b).slice(7)), b);
  for (const lie of lies) await writeFile(join(dir, "blobs", "sha256", lie.digest.slice(7)), lie.bytes);
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
      // A peer slow to answer on a loaded machine must not turn a relay into a miss (404).
      ...(peers.length > 0 ? ["--peer-timeout", "30s"] : []),
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

const metric = daemonMetric;

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
      await store("a", [layer, config, manifest], [{ digest: badDigest, bytes: bad }]),
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

interface RawResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
  /** Whether the whole body arrived (false: the server cut the response). */
  complete: boolean;
}

/**
 * A request whose target is sent exactly as written: fetch() (WHATWG URL) resolves `..` and
 * `%2e%2e` segments before sending, so it cannot send the paths an attacker would.
 */
function raw(
  base: string,
  target: string,
  options: { method?: string; headers?: Record<string, string> } = {},
): Promise<RawResponse> {
  const { hostname, port } = new URL(base);
  return new Promise((resolve, reject) => {
    const req = request(
      {
        hostname,
        port,
        path: target,
        method: options.method ?? "GET",
        headers: options.headers ?? auth,
        agent: false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("error", () => {});
        res.on("close", () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(chunks),
            complete: res.complete,
          }),
        );
      },
    );
    req.on("error", reject);
    req.end();
  });
}

/** The body as JSON, or a note of what it was instead (a failed assertion then says so). */
function json(body: Buffer): unknown {
  try {
    return JSON.parse(body.toString());
  } catch {
    return `not JSON: ${body.length} bytes`;
  }
}

function ociCode(body: Buffer): string | undefined {
  return (json(body) as { errors?: { code: string }[] }).errors?.[0]?.code;
}

/** How many of the daemon's file descriptors are open on `path`. */
async function openOn(pid: number, path: string): Promise<number> {
  const fds = await readdir(`/proc/${pid}/fd`);
  const targets = await Promise.all(fds.map((fd) => readlink(`/proc/${pid}/fd/${fd}`).catch(() => "")));
  return targets.filter((t) => t === path).length;
}

const WARN = 40;

describe("the OCI mirror: names, references and local bytes (defect 5)", () => {
  it("regression: a name outside the distribution grammar is 400 NAME_INVALID, raw or percent-encoded; a bad reference 400", async () => {
    const { layer, config, manifest } = image();
    const { mirror } = await daemon("a", await store("a", [layer, config, manifest]));
    const blob = `blobs/${digestOf(layer)}?ns=registry.invalid`;

    // Each of these was answered 200 with the layer: the name was never looked at.
    for (const name of [
      "../../../etc",
      "%2e%2e/%2e%2e",
      "library/..%2F..%2Fx",
      "library/%2e%2e",
      "test%2Fimg",
      "test/img/..",
      "./test",
      "test//img",
      "Test/img",
      "test/img-",
      "a".repeat(256),
    ]) {
      const res = await raw(mirror, `/v2/${name}/${blob}`);
      expect([name, res.status, json(res.body)]).toEqual([
        name,
        400,
        { errors: [{ code: "NAME_INVALID", message: expect.any(String), detail: { name } }] },
      ]);
    }
    const m = await raw(mirror, `/v2/../x/manifests/${digestOf(manifest)}?ns=registry.invalid`);
    expect([m.status, ociCode(m.body)]).toEqual([400, "NAME_INVALID"]);
    // The grammar's separators are names like any other.
    for (const name of ["test/img", "a__b/c-d--e/f.g_h", "library/ubuntu"]) {
      const ok = await raw(mirror, `/v2/${name}/${blob}`);
      expect([name, ok.status, digestOf(ok.body)]).toEqual([name, 200, digestOf(layer)]);
    }

    // References: a blob's is a digest; a manifest's a digest or a tag; nothing else.
    const hex = digestOf(layer).slice(7);
    for (const [path, code] of [
      ["blobs/latest", "DIGEST_INVALID"],
      [`blobs/sha256:${hex.toUpperCase()}`, "DIGEST_INVALID"],
      [`blobs/sha256:${hex.slice(1)}`, "DIGEST_INVALID"],
      [`blobs/sha256%3A${hex}`, "DIGEST_INVALID"],
      ["blobs/%2e%2e", "DIGEST_INVALID"],
      ["manifests/sha256:xyz", "DIGEST_INVALID"],
      [`manifests/sha256:${hex}%2F..`, "DIGEST_INVALID"],
      ["manifests/.hidden", "MANIFEST_INVALID"],
      ["manifests/a%2Fb", "MANIFEST_INVALID"],
      ["manifests/%zz", "MANIFEST_INVALID"],
      [`manifests/${"v".repeat(129)}`, "MANIFEST_INVALID"],
    ] as const) {
      const res = await raw(mirror, `/v2/test/img/${path}?ns=registry.invalid`);
      expect([path, res.status, ociCode(res.body)]).toEqual([path, 400, code]);
    }
    // Valid but not here: 404, so containerd tries the next host.
    const sha512 = await raw(mirror, `/v2/test/img/blobs/sha512:${"a".repeat(128)}?ns=registry.invalid`);
    expect([sha512.status, ociCode(sha512.body)]).toEqual([404, "BLOB_UNKNOWN"]);
    const tag = await raw(mirror, "/v2/test/img/manifests/v1.2_3-rc?ns=registry.invalid");
    expect([tag.status, ociCode(tag.body)]).toEqual([404, "MANIFEST_UNKNOWN"]);
    // The token is checked first, whatever the target.
    expect((await raw(mirror, `/v2/../../../etc/${blob}`, { headers: {} })).status).toBe(401);
    expect((await raw(mirror, "/v2/test/img/manifests/%zz", { headers: {} })).status).toBe(401);
    // An absolute-form target is no way around it.
    const absolute = await raw(mirror, `http://x/v2/../../etc/${blob}`);
    expect(absolute.status).not.toBe(200);
  });

  it("regression: a local blob that is not its digest is cut off, counted and logged with its path; ranges only of verified blobs", async () => {
    const { layer, config, manifest } = image();
    const rotten = { digest: digestOf(Buffer.alloc(300_000, 8)), bytes: Buffer.alloc(300_000, 9) };
    const rottenRanged = { digest: digestOf(Buffer.alloc(300_000, 6)), bytes: Buffer.alloc(300_000, 5) };
    const rottenSmall = { digest: digestOf(Buffer.alloc(1000, 4)), bytes: Buffer.alloc(1000, 3) };
    const notThatManifest = { digest: digestOf(Buffer.from("another manifest")), bytes: manifest };
    const content = await store(
      "a",
      [layer, config, manifest],
      [rotten, rottenRanged, rottenSmall, notThatManifest],
    );
    const { d, mirror } = await daemon("a", content);
    const url = (p: string) => `${mirror}/v2/test/img/${p}?ns=registry.invalid`;
    const mismatches = () => metric(d, 'coldstart_mirror_digest_mismatches_total{source="local"}');

    // Served whole today; now its end is held back and the response cut: it never completes.
    const res = await fetch(url(`blobs/${rotten.digest}`), { headers: auth });
    expect(res.status).toBe(200);
    await expect(res.arrayBuffer()).rejects.toThrow();
    await expect.poll(mismatches, { timeout: 20_000 }).toBe(1);
    const path = join(content, "blobs", "sha256", rotten.digest.slice(7));
    await expect
      .poll(
        () =>
          d.logs.some((l) => (l.level as number) >= WARN && l.path === path && l.digest === rotten.digest),
        {
          timeout: 20_000,
        },
      )
      .toBe(true);
    expect(await metric(d, 'coldstart_mirror_requests_total{kind="blob",outcome="corrupt"}')).toBe(1);
    // Known bad now (same file): a 404, so containerd goes to the next host instead of failing again.
    const head = await fetch(url(`blobs/${rotten.digest}`), { method: "HEAD", headers: auth });
    expect(head.status).toBe(404);
    const again = await fetch(url(`blobs/${rotten.digest}`), { headers: auth });
    expect([again.status, ociCode(Buffer.from(await again.arrayBuffer()))]).toEqual([404, "BLOB_UNKNOWN"]);

    // One smaller than a read is found wrong before its first byte goes out: a plain 404.
    const small = await fetch(url(`blobs/${rottenSmall.digest}`), { headers: auth });
    expect([small.status, ociCode(Buffer.from(await small.arrayBuffer()))]).toEqual([404, "BLOB_UNKNOWN"]);
    expect(await mismatches()).toBe(2);

    // A range of a blob not verified yet: the whole blob is verified first; a wrong one is a 404.
    const ranged = await fetch(url(`blobs/${rottenRanged.digest}`), {
      headers: { ...auth, range: "bytes=0-99" },
    });
    expect(ranged.status).toBe(404);
    await ranged.arrayBuffer();
    expect(await mismatches()).toBe(3);
    // A good one is verified by its first range and served.
    const part = await fetch(url(`blobs/${digestOf(layer)}`), { headers: { ...auth, range: "bytes=5-9" } });
    expect([part.status, Buffer.from(await part.arrayBuffer())]).toEqual([206, layer.subarray(5, 10)]);
    const whole = await fetch(url(`blobs/${digestOf(layer)}`), { headers: auth });
    expect(digestOf(Buffer.from(await whole.arrayBuffer()))).toBe(digestOf(layer));

    // A manifest under a digest it does not have: never served (it is read whole, so a 404).
    const m = await fetch(url(`manifests/${notThatManifest.digest}`), { headers: auth });
    expect([m.status, ociCode(Buffer.from(await m.arrayBuffer()))]).toEqual([404, "MANIFEST_UNKNOWN"]);
    expect(await mismatches()).toBe(4);
    expect(await metric(d, 'coldstart_mirror_digest_mismatches_total{source="peer"}')).toBe(0);
  });

  it("regression: nothing is read through a symlink at blobs, sha256 or the blob, even bytes that match", async () => {
    const { layer } = image();
    const digest = digestOf(layer);
    const hex = digest.slice(7);
    // Outside the content store, the very bytes asked for: only the guard stands in the way.
    const outside = join(fx.work, "outside");
    await mkdir(join(outside, "blobs", "sha256"), { recursive: true });
    await writeFile(join(outside, "blobs", "sha256", hex), layer);
    const content = join(fx.work, "a", "content");
    await mkdir(content, { recursive: true });
    await symlink(join(outside, "blobs"), join(content, "blobs"));
    const { d, mirror } = await daemon("a", content);
    const url = `${mirror}/v2/test/img/blobs/${digest}?ns=registry.invalid`;

    const blobPath = join(content, "blobs", "sha256", hex);
    const refusals = () =>
      d.logs.filter((l) => l.level === WARN && l.path === blobPath && l.digest === digest).length;

    const layouts: [string, () => Promise<void>][] = [
      ["blobs", async () => {}],
      [
        "sha256",
        async () => {
          await rm(join(content, "blobs"));
          await mkdir(join(content, "blobs"));
          await symlink(join(outside, "blobs", "sha256"), join(content, "blobs", "sha256"));
        },
      ],
      [
        "the blob",
        async () => {
          await rm(join(content, "blobs", "sha256"));
          await mkdir(join(content, "blobs", "sha256"));
          await symlink(join(outside, "blobs", "sha256", hex), blobPath);
        },
      ],
    ];
    for (const [i, [at, plant]] of layouts.entries()) {
      await plant();
      const whole = await fetch(url, { headers: auth });
      const body = Buffer.from(await whole.arrayBuffer());
      expect([at, whole.status, ociCode(body)]).toEqual([at, 404, "BLOB_UNKNOWN"]);
      const head = await fetch(url, { method: "HEAD", headers: auth });
      expect([at, head.status]).toEqual([at, 404]);
      const part = await fetch(url, { headers: { ...auth, range: "bytes=0-9" } });
      expect([at, part.status]).toEqual([at, 404]);
      await part.arrayBuffer();
      // The peer route reads the same store (src/api/app.ts): refused there too.
      const peer = await fetch(`${d.api}/v1/peer/blob/${digest}`, { headers: auth });
      const peerBody = Buffer.from(await peer.arrayBuffer());
      expect([at, peer.status, peerBody.equals(layer)]).toEqual([at, 403, false]);
      // Each refusal logged at warn with the path, so whoever runs the node can find what was planted.
      await expect.poll(refusals, { timeout: 20_000 }).toBe(3 * (i + 1));
    }
    expect(await metric(d, 'coldstart_mirror_requests_total{kind="blob",outcome="unsafe"}')).toBe(9);
  });

  it("a client that goes away mid-blob leaves no file open in the daemon", async () => {
    const big = Buffer.alloc(32 * 1024 * 1024, 3);
    const content = await store("a", [big]);
    const { d, mirror } = await daemon("a", content);
    const pid = d.child.pid as number;
    const path = join(content, "blobs", "sha256", digestOf(big).slice(7));
    const url = `${mirror}/v2/test/img/blobs/${digestOf(big)}?ns=registry.invalid`;

    const gone = new AbortController();
    const res = await fetch(url, { headers: auth, signal: gone.signal });
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    await reader.read();
    // Not reading on: the daemon is held by backpressure with the file open.
    await expect.poll(() => openOn(pid, path), { timeout: 20_000 }).toBe(1);
    gone.abort();
    await expect.poll(() => openOn(pid, path), { timeout: 20_000 }).toBe(0);
    // And the blob is whole, verified, for the next client.
    const next = await fetch(url, { headers: auth });
    expect(digestOf(Buffer.from(await next.arrayBuffer()))).toBe(digestOf(big));
    await expect.poll(() => openOn(pid, path), { timeout: 20_000 }).toBe(0);
  });
});
