/**
 * Model pieces between nodes: real daemons (own roots and ports) on one machine, the real S3 server
 * (RGW) behind the fault proxy, which counts the bytes S3 served. A second fault proxy in front of a
 * peer's API lets a test kill that peer in the middle of a transfer.
 */
import { createHash } from "node:crypto";
import { open, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { HeadObjectCommand } from "@aws-sdk/client-s3";
import { afterEach, describe, expect, it } from "vitest";
import { callDaemon } from "../../src/api/client.js";
import { type FaultProxy, type RecordedRequest, startFaultProxy } from "../support/fault-proxy.js";
import {
  type DaemonProcess,
  daemonMetric,
  freePort,
  killDaemons,
  NO_GPU_FLAGS,
  startDaemonProcess,
} from "../support/processes.js";
import { freshBucket, putFiles } from "../support/s3.js";
import { useS3Fixture } from "../support/s3-fixture.js";
import { digests, expectedDigests, stageThroughApi } from "../support/stage.js";
import { type SyntheticFile, syntheticModel } from "../support/synthetic-model.js";
import { gate, settles, waitFor } from "../support/wait.js";

const fx = useS3Fixture("cs-peers-");
const MiB = 1024 * 1024;
const TOKEN = "peer-shared-token";
const MODEL = "org/shared";
const daemons: DaemonProcess[] = [];
const proxies: FaultProxy[] = [];

afterEach(async () => {
  await killDaemons(daemons);
  for (const p of proxies.splice(0)) await p.close();
});

interface Node {
  root: string;
  daemon: DaemonProcess;
}

async function node(name: string, peers: string[] = [], extra: string[] = []): Promise<Node> {
  const tokens = join(fx.work, "tokens");
  await writeFile(tokens, `${TOKEN}\n`);
  const root = join(fx.work, name);
  const daemon = await startDaemonProcess(
    [
      "--root",
      root,
      "--socket",
      join(fx.work, `${name}.sock`),
      "--token-file",
      tokens,
      "--allow-source",
      "s3://peer-*/**",
      "--endpoint",
      fx.proxy.url,
      "--path-style",
      "--part-size",
      "1MiB",
      "--concurrency",
      "4",
      // Peers here are processes on one loaded machine: a slow answer must not count as a dead peer
      // (tests that kill or leave out a peer get a refused connection, at once).
      "--peer-timeout",
      "30s",
      ...NO_GPU_FLAGS,
      ...peers.flatMap((p) => ["--peer", p]),
      ...extra,
    ],
    fx.s3,
    {},
    // Up to three daemons start at once here, beside the S3 server, on two loaded cores.
    { readyTimeoutMs: 90_000 },
  );
  daemons.push(daemon);
  return { root, daemon };
}

async function seed(
  shardBytes = 4 * MiB,
): Promise<{ source: string; files: SyntheticFile[]; bytes: number }> {
  const bucket = await freshBucket(fx.client, "peer");
  const files = syntheticModel({ shards: 3, shardBytes });
  await putFiles(fx.client, bucket, "m/", files);
  return { source: `s3://${bucket}/m/`, files, bytes: files.reduce((n, f) => n + f.body.length, 0) };
}

/** Stages the model on a node through its API and waits until it is ready (or failed). */
function stage(n: Node, source: string, cohort?: string[]): Promise<void> {
  return stageThroughApi({ url: n.daemon.api, token: TOKEN }, MODEL, {
    source,
    ...(cohort ? { cohort } : {}),
  });
}

const metric = (n: Node, series: string) => daemonMetric(n.daemon, series);

/** S3's ETag of each file, by relative path: what peers are asked about. */
async function etagsOf(bucket: string, files: SyntheticFile[]): Promise<Map<string, string>> {
  const etags = new Map<string, string>();
  for (const f of files) {
    const head = await fx.client.send(new HeadObjectCommand({ Bucket: bucket, Key: `m/${f.relPath}` }));
    etags.set(f.relPath, head.ETag ?? "");
  }
  return etags;
}

const modelDir = (n: Node) => join(n.root, "models", ...MODEL.split("/"));

// Several daemons, each staging through the real S3 server, on a loaded CI machine: generous.
describe("model pieces from peers", { timeout: 180_000 }, () => {
  it("the first node stages from S3, the next two mostly from peers: S3 serves about one model", async () => {
    const { source, files, bytes } = await seed();
    const a = await node("a");
    await stage(a, source);
    const fromS3First = fx.proxy.bytesServed().total;
    expect(fromS3First).toBeGreaterThanOrEqual(bytes);

    const b = await node("b", [a.daemon.api]);
    await stage(b, source);
    const c = await node("c", [a.daemon.api, b.daemon.api]);
    await stage(c, source);

    for (const n of [a, b, c]) expect(await digests(modelDir(n), files)).toEqual(expectedDigests(files));
    // Three nodes staged, S3 served one model's worth (plus nothing more than a few small files).
    expect(fx.proxy.bytesServed().total).toBeLessThan(bytes * 1.1);
    expect(await metric(b, 'coldstart_peer_bytes_total{direction="in"}')).toBe(bytes);
    expect(await metric(c, 'coldstart_peer_bytes_total{direction="in"}')).toBe(bytes);
    // coldstart_download_bytes_total counts S3's bytes only: B took none from S3.
    const bucket = source.slice(5).split("/")[0] ?? "";
    // (No series at all: nothing was ever counted for that bucket on B.)
    expect((await metric(b, `coldstart_download_bytes_total{source="${bucket}"}`)) || 0).toBe(0);
    expect(await metric(a, `coldstart_download_bytes_total{source="${bucket}"}`)).toBe(bytes);
    expect(await metric(a, 'coldstart_peer_bytes_total{direction="out"}')).toBeGreaterThan(0);
    expect(await metric(b, 'coldstart_peer_fallbacks_total{reason="unaligned"}')).toBe(0);
  });

  it("nodes that start together fetch each piece from S3 about once and the rest from each other", async () => {
    // 36 pieces: with 4 parts in flight per node, the first parts the nodes pick rarely coincide.
    const { source, files, bytes } = await seed(12 * MiB);
    // S3 slower than a neighbour, as it is on a real network: every GET waits 150 ms.
    fx.proxy.addRule({ match: { method: "GET" }, action: { kind: "delay", ms: 150 } });
    const ports = await Promise.all([freePort(), freePort(), freePort()]);
    const urls = ports.map((p) => `http://127.0.0.1:${p}`);
    const nodes = await Promise.all(
      ["a", "b", "c"].map((name, i) =>
        node(
          name,
          urls.filter((_, j) => j !== i),
          ["--listen", `127.0.0.1:${ports[i]}`],
        ),
      ),
    );
    fx.proxy.resetStats();
    await Promise.all(nodes.map((n) => stage(n, source)));

    for (const n of nodes) expect(await digests(modelDir(n), files)).toEqual(expectedDigests(files));
    const fromPeers = (
      await Promise.all(nodes.map((n) => metric(n, 'coldstart_peer_bytes_total{direction="in"}')))
    ).reduce((a, b) => a + b, 0);
    const fromS3 = fx.proxy.bytesServed().total;
    // Every byte of the three copies came from S3 or a peer. Three independent nodes would have
    // read 3 models from S3; each takes the parts in its own random order and waits for pieces a peer
    // is fetching, so S3 serves about one (small single-part files are read by each node).
    // (S3's count also has its LIST answers: a few KiB.)
    expect(fromS3 + fromPeers - 3 * bytes).toBeGreaterThanOrEqual(0);
    expect(fromS3 + fromPeers - 3 * bytes).toBeLessThan(64 * 1024);
    expect(fromS3).toBeLessThan(1.5 * bytes);
  });

  it("nodes given one cohort read each part from S3 once (the first wave without a resource), and a bad cohort is refused", async () => {
    const { source, files, bytes } = await seed(12 * MiB);
    const ports = await Promise.all([freePort(), freePort(), freePort()]);
    const urls = ports.map((p) => `http://127.0.0.1:${p}`);
    const nodes = await Promise.all(
      ["a", "b", "c"].map((name, i) =>
        node(
          name,
          urls.filter((_, j) => j !== i),
          ["--listen", `127.0.0.1:${ports[i]}`, "--peer-self", "127.0.0.1"],
        ),
      ),
    );
    const [a] = nodes as [Node];
    const path = `/v1/models/${encodeURIComponent(MODEL)}`;
    // Refused, naming the field, and nothing registered: a cohort without this node, a URL that is
    // none, and a cohort over the handshake socket without the token.
    const withoutSelf = await callDaemon({ url: a.daemon.api, token: TOKEN }, "PUT", path, {
      source,
      cohort: urls.slice(1),
    });
    expect(withoutSelf.status).toBe(400);
    expect(withoutSelf.body).toMatchObject({
      error: { code: "CS_REQUEST_INVALID", details: { field: "cohort" } },
    });
    expect(JSON.stringify(withoutSelf.body)).toContain(urls[0]);
    const notUrl = await callDaemon({ url: a.daemon.api, token: TOKEN }, "PUT", path, {
      source,
      cohort: [urls[0], "10.0.0.9:8476"],
    });
    expect(notUrl.body).toMatchObject({
      error: { code: "CS_REQUEST_INVALID", details: { value: "10.0.0.9:8476" } },
    });
    const socket = await callDaemon({ socketPath: join(fx.work, "a.sock") }, "PUT", path, {
      source,
      cohort: urls,
    });
    expect(socket.status).toBe(401);
    expect((await callDaemon({ url: a.daemon.api, token: TOKEN }, "GET", path)).status).toBe(404);

    fx.proxy.resetStats();
    await Promise.all(nodes.map((n) => stage(n, source, urls)));
    for (const n of nodes) expect(await digests(modelDir(n), files)).toEqual(expectedDigests(files));
    // Each of the 36 parts has one owner among the three, which alone reads it from S3 (the LIST
    // answers and the small single-part files, read by every node, are a few KiB).
    const fromS3 = fx.proxy.bytesServed().total;
    expect(fromS3).toBeGreaterThanOrEqual(bytes);
    expect(fromS3).toBeLessThan(1.05 * bytes);
  });

  it("a node staging a model serves the parts it has, waits for one it fetches from S3, and no other", async () => {
    const { source, files } = await seed();
    // One part at a time, each held by S3 until the test opens the gate, and a peer that is never
    // there (so parts go through the peer-aware source, which tells S3 bytes from peer bytes).
    const s3Held = gate();
    fx.proxy.addRule({
      match: { method: "GET", hasRange: true },
      action: {
        kind: "hook",
        fn: () => s3Held.opened,
      },
    });
    const a = await node("a", ["http://127.0.0.1:9"], ["--concurrency", "1"]);
    await callDaemon({ url: a.daemon.api, token: TOKEN }, "PUT", `/v1/models/${encodeURIComponent(MODEL)}`, {
      source,
    });
    const bucket = source.slice(5).split("/")[0] ?? "";
    const shards = files.filter((f) => f.relPath.endsWith(".safetensors"));
    const etags = await etagsOf(bucket, shards);
    type Described = {
      size: number;
      bounds: number[];
      pieces: (string | null)[];
      complete: boolean;
      fetching: number[];
    };
    const ask = (f: SyntheticFile, path: "object" | "piece", extra: Record<string, string> = {}) =>
      callDaemon(
        { url: a.daemon.api, token: TOKEN },
        "GET",
        `/v1/peer/${path}?${new URLSearchParams({ bucket, key: `m/${f.relPath}`, etag: etags.get(f.relPath) ?? "", ...extra })}`,
        undefined,
        { timeoutMs: 40_000 },
      );
    // Find a shard with a part in flight from S3 (held there by the gate until the test opens it).
    const { f, d } = await waitFor(
      async () => {
        for (const f of shards) {
          const r = await ask(f, "object");
          const d = r.body as Described;
          if (r.status === 200 && d.fetching?.length) return { f, d };
        }
        return undefined;
      },
      { intervalMs: 100, what: "a part in flight from S3" },
    );
    expect(d.complete).toBe(false);
    const fetching = d.fetching[0] as number;
    expect(d.pieces[fetching]).toBeNull();
    // A part neither in nor fetched from S3 here (one part at a time): 404 at once, even with the
    // longest ?wait (60 s). Nothing can arrive while S3 is held, so "at once" means: well before the
    // wait would end; a node that waited on it anyway fails this deadline.
    const idle = d.pieces.findIndex((p, i) => p === null && i !== fetching);
    const notHere = await settles(ask(f, "piece", { piece: String(idle), wait: "60000" }), {
      what: "the 404 for a piece this node is not fetching (it waited for it)",
    });
    expect([notHere.status, notHere.body]).toMatchObject([404, { error: { code: "CS_PEER_NOT_HELD" } }]);
    expect((notHere.body as { error: { message: string } }).error.message).toMatch(/is not in yet$/);
    // Asked to begin where it does not: 404, whatever the piece's state.
    const elsewhere = await ask(f, "piece", { piece: String(fetching), start: "1", wait: "30000" });
    expect(elsewhere.status).toBe(404);
    // The part in flight: the answer waits while S3 holds the part, and once it is in carries it
    // and its digest.
    let answered = false;
    const waited = fetch(
      `${a.daemon.api}/v1/peer/piece?${new URLSearchParams({ bucket, key: `m/${f.relPath}`, etag: etags.get(f.relPath) ?? "", piece: String(fetching), wait: "60000" })}`,
      { headers: { authorization: `Bearer ${TOKEN}` } },
    ).finally(() => {
      answered = true;
    });
    // A short ?wait on the same piece, asked after it: answered 404 once its wait ran out (the server
    // says so: it took the waiting path, not the at-once one), while the first request still waits.
    const shortWaitMs = 1000;
    const timedOut = await ask(f, "piece", { piece: String(fetching), wait: String(shortWaitMs) });
    expect([timedOut.status, timedOut.body]).toMatchObject([404, { error: { code: "CS_PEER_NOT_HELD" } }]);
    expect((timedOut.body as { error: { message: string } }).error.message).toMatch(
      new RegExp(`is not in yet after waiting ${shortWaitMs} ms$`),
    );
    expect(answered).toBe(false);
    s3Held.open();
    const res = await settles(waited, { timeoutMs: 60_000, what: "the piece, once S3 let it through" });
    expect(res.status).toBe(200);
    const bytes = Buffer.from(await res.arrayBuffer());
    const want = f.body.subarray(d.bounds[fetching], d.bounds[fetching + 1]);
    const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");
    expect(sha(bytes)).toBe(sha(want));
    expect(res.headers.get("x-coldstart-piece-sha256")).toBe(sha(want));
  });

  it("a part a node fetches from a peer is never offered for waiting: no two nodes wait for each other", async () => {
    const { source, files } = await seed();
    const a = await node("a", [], ["--peer-max-upload-bytes-per-second", "3MiB"]);
    await stage(a, source);
    const b = await node("b", [a.daemon.api]);
    const ep = { url: b.daemon.api, token: TOKEN };
    await callDaemon(ep, "PUT", `/v1/models/${encodeURIComponent(MODEL)}`, { source });
    const bucket = source.slice(5).split("/")[0] ?? "";
    const shards = files.filter((f) => f.relPath.endsWith(".safetensors"));
    const etags = await etagsOf(bucket, shards);
    // While B stages from A (slowly: A serves 3 MiB/s), B describes its files as partly in, and
    // never as fetching anything: its parts come from a peer, not S3.
    // (12 MiB at 3 MiB/s: at least 3 s of staging to look at, however fast the machine.)
    let partial = 0;
    await waitFor(
      async () => {
        const state = await callDaemon(ep, "GET", `/v1/models/${encodeURIComponent(MODEL)}`);
        if ((state.body as { state?: string }).state === "ready") return true;
        for (const f of shards) {
          const q = new URLSearchParams({ bucket, key: `m/${f.relPath}`, etag: etags.get(f.relPath) ?? "" });
          const r = await callDaemon(ep, "GET", `/v1/peer/object?${q}`);
          if (r.status !== 200) continue;
          const d = r.body as { pieces: (string | null)[]; fetching: number[] };
          expect(d.fetching).toEqual([]);
          if (d.pieces.includes(null)) partial++;
        }
        return false;
      },
      { timeoutMs: 120_000, intervalMs: 50, what: "B ready" },
    );
    expect(partial).toBeGreaterThan(0);
    expect(await metric(b, 'coldstart_peer_bytes_total{direction="in"}')).toBeGreaterThan(0);
  });

  it("a peer serving corrupt bytes is caught: the piece comes from S3 and the model is right", async () => {
    const { source, files } = await seed();
    const a = await node("a");
    await stage(a, source);
    // Bit rot on the peer after it verified the file: its manifest still has the good digest.
    const shard = files.find((f) => f.relPath.endsWith(".safetensors"));
    if (!shard) throw new Error("no shard");
    const fh = await open(join(modelDir(a), shard.relPath), "r+");
    await fh.write(Buffer.from([0xff ^ (shard.body[2 * MiB + 7] ?? 0)]), 0, 1, 2 * MiB + 7);
    await fh.close();

    fx.proxy.resetStats();
    const b = await node("b", [a.daemon.api]);
    await stage(b, source);
    expect(await digests(modelDir(b), files)).toEqual(expectedDigests(files));
    expect(await metric(b, 'coldstart_peer_fallbacks_total{reason="corrupt"}')).toBe(1);
    // The bad piece (1 MiB) came from S3, and after it the suspect peer was left alone for a while.
    expect(fx.proxy.bytesServed().total).toBeGreaterThanOrEqual(MiB);
  });

  // A piece that fails partway marks its peer down (30 s), so each run injects one fault.
  it.each([
    ["cut off", "on part workers (bytes written as they come, taken back)", "truncate", "auto"],
    ["reset", "on part workers (bytes written as they come, taken back)", "reset", "auto"],
    ["cut off", "in process (bytes held in memory until verified)", "truncate", "0"],
    ["reset", "in process (bytes held in memory until verified)", "reset", "0"],
  ] as const)("a piece %s mid-body comes from S3 instead, %s", async (_, _path, kind, workers) => {
    const { source, files } = await seed();
    const a = await node("a");
    await stage(a, source);
    const toA = await startFaultProxy(a.daemon.api);
    proxies.push(toA);
    // A whole 1 MiB piece of a shard (not a shard's short last piece), cut partway.
    const shardPiece = (r: RecordedRequest) => {
      const q = new URLSearchParams(r.query);
      return (
        r.path === "/v1/peer/piece" &&
        /\.safetensors$/.test(q.get("key") ?? "") &&
        Number(q.get("start")) < 4 * MiB
      );
    };
    toA.addRule({ match: { predicate: shardPiece }, times: 1, action: { kind, afterBytes: 300_000 } });
    const b = await node("b", [toA.url], ["--workers", workers]);
    await stage(b, source);
    expect(await digests(modelDir(b), files)).toEqual(expectedDigests(files));
    expect(toA.faultsFired()[kind]).toBe(1);
    expect(await metric(b, 'coldstart_peer_fallbacks_total{reason="unreachable"}')).toBeGreaterThanOrEqual(1);
  });

  it("a peer killed mid-transfer still lets the others complete", async () => {
    const { source, files } = await seed();
    const a = await node("a");
    await stage(a, source);
    const b = await node("b", [a.daemon.api]);
    await stage(b, source);
    // C reaches A through a proxy that kills A at its third piece; B stays.
    const toA = await startFaultProxy(a.daemon.api);
    proxies.push(toA);
    toA.addRule({
      match: { path: "/v1/peer/piece" },
      skip: 2,
      times: 1,
      action: {
        kind: "hook",
        fn: async () => {
          a.daemon.child.kill("SIGKILL");
          await a.daemon.exited;
        },
      },
    });
    const c = await node("c", [toA.url, b.daemon.api]);
    await stage(c, source);
    expect(await digests(modelDir(c), files)).toEqual(expectedDigests(files));
    expect(await metric(c, 'coldstart_peer_fallbacks_total{reason="unreachable"}')).toBeGreaterThanOrEqual(1);
    expect(a.daemon.child.signalCode).toBe("SIGKILL");
  });

  it("serves only with a token, only over TCP, and only what it holds verified", async () => {
    const { source, files } = await seed();
    const a = await node("a");
    await stage(a, source);
    const first = files[0];
    if (!first) throw new Error("no file");
    const bucket = source.slice(5).split("/")[0] ?? "";
    const manifest = (await readFile(join(modelDir(a), ".coldstart", "manifest.jsonl"), "utf8"))
      .split("\n")
      .filter(Boolean)
      .slice(1)
      .map((l) => JSON.parse(l) as { path: string; file: { etag: string } });
    const etag = manifest.find((l) => l.path === first.relPath)?.file.etag ?? "";
    const q = new URLSearchParams({ bucket, key: `m/${first.relPath}`, etag }).toString();
    const path = `/v1/peer/object?${q}`;
    expect((await callDaemon({ url: a.daemon.api }, "GET", path)).status).toBe(401);
    expect((await callDaemon({ socketPath: join(fx.work, "a.sock") }, "GET", path)).status).toBe(401);
    const ok = await callDaemon({ url: a.daemon.api, token: TOKEN }, "GET", path);
    expect(ok.status).toBe(200);
    expect(ok.body).toMatchObject({ size: first.body.length });
    const other = await callDaemon(
      { url: a.daemon.api, token: TOKEN },
      "GET",
      `/v1/peer/object?${new URLSearchParams({ bucket, key: `m/${first.relPath}`, etag: '"stale"' })}`,
    );
    expect([other.status, other.body]).toMatchObject([404, { error: { code: "CS_PEER_NOT_HELD" } }]);
    const bad = await callDaemon(
      { url: a.daemon.api, token: TOKEN },
      "GET",
      `${path}&piece=99`.replace("object", "piece"),
    );
    expect([bad.status, bad.body]).toMatchObject([400, { error: { code: "CS_REQUEST_INVALID" } }]);
    // Tags: a reference that is not one never reaches containerd; here no containerd is configured.
    const tag = (ref: string) =>
      callDaemon({ url: a.daemon.api, token: TOKEN }, "GET", `/v1/peer/tag?${new URLSearchParams({ ref })}`);
    expect(await tag("registry.invalid/../etc:v1")).toMatchObject({
      status: 400,
      body: { error: { code: "CS_REQUEST_INVALID", details: { field: "ref" } } },
    });
    expect(await tag("registry.invalid/test/img:v1")).toMatchObject({
      status: 404,
      body: { error: { code: "CS_PEER_NOT_HELD" } },
    });
    expect((await callDaemon({ url: a.daemon.api }, "GET", "/v1/peer/tag?ref=r.io/a:b")).status).toBe(401);
  });
});

describe("peer discovery", () => {
  it("resolves a DNS name to peers and leaves itself out", async () => {
    const { PeerDirectory } = await import("../../src/peers/discovery.js");
    const pino = (await import("pino")).default;
    const directory = async (self?: string) => {
      const dir = new PeerDirectory({
        static: ["http://10.0.0.9:8476"],
        dnsName: "localhost:8476",
        self,
        logger: pino({ level: "silent" }),
      });
      await dir.start();
      dir.stop();
      return dir.urls();
    };
    expect(await directory()).toEqual(
      expect.arrayContaining(["http://10.0.0.9:8476", "http://127.0.0.1:8476"]),
    );
    // This node's own address is never its peer.
    const withoutSelf = await directory("127.0.0.1");
    expect(withoutSelf).toContain("http://10.0.0.9:8476");
    expect(withoutSelf).not.toContain("http://127.0.0.1:8476");
    // A static peer given with a path is asked by its origin, as cohorts and DNS name peers.
    const written = new PeerDirectory({
      static: ["http://10.0.0.9:8476/", "http://10.0.0.9:8476"],
      logger: pino({ level: "silent" }),
    });
    expect(written.urls()).toEqual(["http://10.0.0.9:8476"]);
  });
});
