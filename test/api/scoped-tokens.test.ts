/**
 * Scoped credentials (docs/api.md, "Scoped credentials"), over HTTP with real daemons, the real S3
 * server and content stores laid out as containerd keeps them: a peer token reaches the peer routes
 * only, a mirror token the mirror only, the API token everything; two daemons whose API tokens differ
 * share pieces and relay blobs with the peer token alone. Without the scoped files nothing changes
 * (every other daemon test runs that way).
 */
import { createHash } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { callDaemon } from "../../src/api/client.js";
import {
  coldstart,
  type DaemonProcess,
  daemonMetric,
  finish,
  killDaemons,
  NO_GPU_FLAGS,
  startDaemonProcess,
} from "../support/processes.js";
import { freshBucket, putFiles } from "../support/s3.js";
import { useS3Fixture } from "../support/s3-fixture.js";
import { digests, expectedDigests, stageThroughApi } from "../support/stage.js";
import { syntheticModel } from "../support/synthetic-model.js";

const fx = useS3Fixture("cs-scoped-");
const MiB = 1024 * 1024;
const PEER = "peer-token-shared-by-the-daemonset";
const MIRROR = "mirror-token-in-hosts-toml";
const MODEL = "org/scoped";
const daemons: DaemonProcess[] = [];
afterEach(async () => {
  await killDaemons(daemons);
});

const digestOf = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

/** A daemon with its own API token and the shared peer and mirror tokens, serving the mirror. */
async function node(name: string, apiToken: string, blobs: Buffer[], peers: string[] = []) {
  const dir = join(fx.work, name);
  const content = join(dir, "content");
  await mkdir(join(content, "blobs", "sha256"), { recursive: true });
  for (const b of blobs) await writeFile(join(content, "blobs", "sha256", digestOf(b).slice(7)), b);
  await writeFile(join(dir, "api-tokens"), `${apiToken}\n`);
  await writeFile(join(dir, "peer-tokens"), `# the DaemonSet's peer Secret\n${PEER}\n`);
  await writeFile(join(dir, "mirror-tokens"), `${MIRROR}\n`);
  const d = await startDaemonProcess(
    [
      "--root",
      join(dir, "root"),
      "--socket",
      join(fx.work, `${name}.sock`),
      "--token-file",
      join(dir, "api-tokens"),
      "--peer-token-file",
      join(dir, "peer-tokens"),
      "--mirror-token-file",
      join(dir, "mirror-tokens"),
      "--allow-source",
      "s3://scoped-*/**",
      "--endpoint",
      fx.proxy.url,
      "--path-style",
      "--part-size",
      "1MiB",
      ...NO_GPU_FLAGS,
      "--mirror-listen",
      "127.0.0.1:0",
      "--mirror-content-dir",
      content,
      "--mirror-registry",
      "registry.invalid",
      ...peers.flatMap((p) => ["--peer", p]),
      // A peer slow to answer on a loaded machine must not count as a dead one.
      "--peer-timeout",
      "30s",
    ],
    fx.s3,
    {},
    { readyTimeoutMs: 90_000 },
  );
  daemons.push(d);
  const mirror = String(d.logs.find((l) => l.msg === "coldstart daemon ready")?.mirror);
  return { d, mirror, root: join(dir, "root") };
}

function stage(api: string, token: string, source: string): Promise<void> {
  return stageThroughApi({ url: api, token }, MODEL, { source });
}

const metric = daemonMetric;

const code = (r: { body: unknown }) => (r.body as { error?: { code?: string } }).error?.code;

describe("scoped credentials", { timeout: 240_000 }, () => {
  it("a peer token reaches /v1/peer/* only, a mirror token the mirror only, the API token everything; peers share with the peer token", async () => {
    const bucket = await freshBucket(fx.client, "scoped");
    const files = syntheticModel({ shards: 2, shardBytes: 2 * MiB });
    await putFiles(fx.client, bucket, "m/", files);
    const source = `s3://${bucket}/m/`;
    const bytes = files.reduce((n, f) => n + f.body.length, 0);
    const layer = Buffer.alloc(300_000, 7);

    const a = await node("a", "api-token-of-a", [layer]);
    await stage(a.d.api, "api-token-of-a", source);
    const first = files[0];
    if (!first) throw new Error("no file");
    const manifest = (
      await readFile(join(a.root, "models", "org", "scoped", ".coldstart", "manifest.jsonl"), "utf8")
    )
      .split("\n")
      .filter(Boolean)
      .slice(1)
      .map((l) => JSON.parse(l) as { path: string; file: { etag: string } });
    const etag = manifest.find((l) => l.path === first.relPath)?.file.etag ?? "";
    const q = new URLSearchParams({ bucket, key: `m/${first.relPath}`, etag }).toString();
    const as = (token: string) => ({ url: a.d.api, token });
    const id = encodeURIComponent(MODEL);
    const blob = `${a.mirror}/v2/test/img/blobs/${digestOf(layer)}?ns=registry.invalid`;
    const pull = (token: string) => fetch(blob, { headers: { authorization: `Bearer ${token}` } });

    // The peer token: a piece, what the node holds, a tag lookup; nothing else.
    const object = await callDaemon(as(PEER), "GET", `/v1/peer/object?${q}`);
    expect([object.status, object.body]).toMatchObject([200, { size: first.body.length, complete: true }]);
    const piece = await fetch(`${a.d.api}/v1/peer/piece?${q}&piece=0`, {
      headers: { authorization: `Bearer ${PEER}` },
    });
    expect(piece.status).toBe(200);
    expect(Buffer.from(await piece.arrayBuffer())).toEqual(
      first.body.subarray(0, Number(piece.headers.get("content-length"))),
    );
    const tag = await callDaemon(as(PEER), "GET", "/v1/peer/tag?ref=registry.invalid/test/img:v1");
    expect([tag.status, code(tag)]).toEqual([404, "CS_PEER_NOT_HELD"]);
    for (const [method, path, body] of [
      ["PUT", "/v1/models/org%2Fother", { source }],
      ["PATCH", `/v1/models/${id}`, { pin: true }],
      ["DELETE", `/v1/models/${id}`, undefined],
      ["GET", "/v1/models", undefined],
      ["GET", "/v1/node", undefined],
      ["DELETE", "/v1/compile-caches/x", undefined],
    ] as const) {
      const r = await callDaemon(as(PEER), method, path, body);
      expect([method, path, r.status, code(r)]).toEqual([method, path, 403, "CS_FORBIDDEN"]);
    }
    const refused = await callDaemon(as(PEER), "DELETE", `/v1/models/${id}`);
    expect((refused.body as { error: { message: string } }).error.message).toMatch(
      /peer token reaches \/v1\/peer\/\* only; DELETE \/v1\/models\/\* needs an API token \(daemon\.tokenFile\)/,
    );
    const peerOnMirror = await pull(PEER);
    expect(peerOnMirror.status).toBe(403);
    expect(((await peerOnMirror.json()) as { errors: { code: string }[] }).errors[0]?.code).toBe("DENIED");

    // The mirror token: pulls through the mirror; the API and the peer routes refuse it.
    const pulled = await pull(MIRROR);
    expect(pulled.status).toBe(200);
    expect(digestOf(Buffer.from(await pulled.arrayBuffer()))).toBe(digestOf(layer));
    for (const [method, path] of [
      ["DELETE", `/v1/models/${id}`],
      ["PUT", "/v1/models/org%2Fother"],
      ["GET", `/v1/peer/object?${q}`],
    ] as const) {
      const r = await callDaemon(as(MIRROR), method, path, method === "PUT" ? { source } : undefined);
      expect([method, path, r.status, code(r)]).toEqual([method, path, 403, "CS_FORBIDDEN"]);
    }

    // A token nobody issued: 401 everywhere, as before.
    for (const path of [`/v1/models/${id}`, `/v1/peer/object?${q}`]) {
      const r = await callDaemon(as("made-up"), "GET", path);
      expect([r.status, code(r)]).toEqual([401, "CS_UNAUTHORIZED"]);
    }
    expect((await pull("made-up")).status).toBe(401);
    // The public routes stay public whatever token comes with them.
    expect((await callDaemon(as(MIRROR), "GET", "/livez")).status).toBe(200);

    // A second node with another API token: it takes the pieces (and relays the blob) from A with
    // the peer token alone; its own API token means nothing to A.
    const b = await node("b", "api-token-of-b", [], [a.d.api]);
    expect(
      (await callDaemon({ url: a.d.api, token: "api-token-of-b" }, "GET", `/v1/peer/object?${q}`)).status,
    ).toBe(401);
    const fromS3 = fx.proxy.bytesServed().total;
    await stage(b.d.api, "api-token-of-b", source);
    expect(await digests(join(b.root, "models", "org", "scoped"), files)).toEqual(expectedDigests(files));
    expect(await metric(b.d, 'coldstart_peer_bytes_total{direction="in"}')).toBe(bytes);
    expect(fx.proxy.bytesServed().total - fromS3).toBeLessThan(bytes * 0.1);
    const relayed = await fetch(`${b.mirror}/v2/test/img/blobs/${digestOf(layer)}?ns=registry.invalid`, {
      headers: { authorization: `Bearer ${MIRROR}` },
    });
    expect(relayed.status).toBe(200);
    expect(digestOf(Buffer.from(await relayed.arrayBuffer()))).toBe(digestOf(layer));
    expect(await metric(b.d, 'coldstart_mirror_requests_total{kind="blob",outcome="peer"}')).toBe(1);

    // The API token reaches everything: the peer routes, the mirror, and deleting the model.
    expect((await callDaemon(as("api-token-of-a"), "GET", `/v1/peer/object?${q}`)).status).toBe(200);
    const api = await pull("api-token-of-a");
    expect(api.status).toBe(200);
    await api.arrayBuffer();
    // And the model calls a peer's token was refused: they reach the model manager (the ready wait
    // above counts as a hand-over, so the model is in use for a while and a DELETE is a 409).
    const pin = await callDaemon(as("api-token-of-a"), "PATCH", `/v1/models/${id}`, { pin: true });
    expect(pin.status, JSON.stringify(pin.body)).toBe(200);
    const del = await callDaemon(as("api-token-of-a"), "DELETE", `/v1/models/${id}`);
    expect([del.status, code(del)]).toEqual([409, "CS_MODEL_PINNED"]);
  });

  it("a scoped token file that cannot be read, or one with daemon.auth none, stops the start naming its option", async () => {
    await writeFile(join(fx.work, "api-tokens"), "api\n");
    const start = (args: string[]) =>
      finish(
        coldstart(
          [
            "daemon",
            "--root",
            join(fx.work, "root"),
            "--socket",
            join(fx.work, "d.sock"),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            ...NO_GPU_FLAGS,
            ...args,
          ],
          fx.s3,
        ),
      );
    const missing = await start([
      "--token-file",
      join(fx.work, "api-tokens"),
      "--peer-token-file",
      join(fx.work, "no-such-file"),
    ]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/CS_CONFIG_INVALID: peers\.tokenFile .*no-such-file cannot be read/);
    await writeFile(join(fx.work, "empty"), "# rotated away by mistake\n");
    const empty = await start([
      "--token-file",
      join(fx.work, "api-tokens"),
      "--mirror-token-file",
      join(fx.work, "empty"),
    ]);
    expect(empty.code).toBe(2);
    expect(empty.stderr).toMatch(/CS_CONFIG_INVALID: mirror\.tokenFile .*empty holds no token/);
    const none = await start(["--auth", "none", "--peer-token-file", join(fx.work, "api-tokens")]);
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(
      /CS_CONFIG_INVALID: peers\.tokenFile needs daemon\.auth token, got daemon\.auth none/,
    );
  });
});
