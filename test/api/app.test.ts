import { mkdir, readdir, writeFile } from "node:fs/promises";
import { connect } from "node:net";
import { join } from "node:path";
import pino from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { buildApp } from "../../src/api/app.js";
import { TokenFile } from "../../src/api/auth.js";
import type { Surface } from "../../src/api/deps.js";
import { loadConfig } from "../../src/config/load.js";
import { Metrics } from "../../src/metrics/metrics.js";
import type { ModelManager } from "../../src/models/model-manager.js";
import { ModelRegistry } from "../../src/models/model-registry.js";
import { S3ObjectSource } from "../../src/s3/s3-object-source.js";
import { SlotScheduler } from "../../src/staging/scheduler.js";
import { testManager } from "../support/manager.js";
import { freshBucket, putFiles } from "../support/s3.js";
import { useS3Fixture } from "../support/s3-fixture.js";
import { digests, expectedDigests } from "../support/stage.js";
import { file, syntheticModel } from "../support/synthetic-model.js";
import { tmpfs, umount } from "../support/tmpfs.js";
import { gate } from "../support/wait.js";

const fx = useS3Fixture("cs-api-");
const TOKEN = "s3cr3t-token-for-tests";
const MiB = 1024 * 1024;

interface Harness {
  root: string;
  manager: ModelManager;
  metrics: Metrics;
  tcp: ReturnType<typeof buildApp>;
  sock: ReturnType<typeof buildApp>;
  close: () => Promise<void>;
}
let h: Harness;

async function harness(env: Record<string, string> = {}, root = join(fx.work, "root")): Promise<Harness> {
  process.env.AWS_ACCESS_KEY_ID = fx.s3.accessKeyId;
  process.env.AWS_SECRET_ACCESS_KEY = fx.s3.secretAccessKey;
  await mkdir(root, { recursive: true });
  const tokenFile = join(fx.work, "tokens");
  await writeFile(tokenFile, `# operators\n${TOKEN}\n`);
  const config = loadConfig({
    env: {
      COLDSTART_ROOT: root,
      COLDSTART_SOURCES_ALLOW: "s3://allowed-*/**",
      COLDSTART_PART_SIZE: "1MiB",
      COLDSTART_CONCURRENCY: "8",
      ...env,
    },
  });
  const logger = pino({ level: "silent" });
  const source = new S3ObjectSource({
    region: fx.s3.region,
    endpoint: fx.proxy.url,
    pathStyle: true,
    maxSockets: 16,
    // No test here stalls S3: a slow answer on a loaded machine must not become a retry, which the
    // tests that count requests would see.
    requestTimeoutMs: 30_000,
  });
  const registry = await ModelRegistry.open(root);
  const manager = await testManager({
    root,
    registry,
    source,
    scheduler: new SlotScheduler(8),
    config,
    logger,
  });
  await manager.start();
  const tokens = new TokenFile(tokenFile);
  const metrics = new Metrics(undefined, { defaultMetrics: false });
  const deps = {
    manager,
    logger,
    metrics,
    tokens,
    bodyLimitBytes: 4096,
    isReady: () => true,
  };
  const tcp = buildApp(deps, "tcp");
  const sock = buildApp(deps, "socket");
  return {
    root,
    manager,
    metrics,
    tcp,
    sock,
    close: async () => {
      await manager.drain(0);
      await tcp.close();
      await sock.close();
      tokens.close();
      source.close();
    },
  };
}

beforeEach(async () => {
  h = await harness();
});
afterEach(async () => {
  await h.close();
});

const auth = { authorization: `Bearer ${TOKEN}` };
const put = (surface: Surface, id: string, body: unknown, headers: Record<string, string> = auth) =>
  (surface === "tcp" ? h.tcp : h.sock).inject({
    method: "PUT",
    url: `/v1/models/${id}`,
    payload: body as object,
    headers,
  });

async function seedModel(): Promise<{ bucket: string; files: ReturnType<typeof syntheticModel> }> {
  const bucket = await freshBucket(fx.client, "allowed");
  const files = syntheticModel({ shards: 2, shardBytes: 2 * MiB });
  await putFiles(fx.client, bucket, "m/", files);
  return { bucket, files };
}

describe("HTTP API v1", () => {
  it("stages a model on PUT (202), reports it ready (200) and idempotently answers 200 after", async () => {
    const { bucket, files } = await seedModel();
    const res = await put("tcp", "org/llama", { source: `s3://${bucket}/m/` });
    expect(res.statusCode).toBe(202);
    expect(res.json()).toMatchObject({
      id: "org/llama",
      state: expect.stringMatching(/pending|staging/),
      pinned: false,
    });

    const ready = await h.tcp.inject({
      url: "/v1/models/org%2Fllama/ready?timeoutSeconds=30",
      headers: auth,
    });
    expect(ready.statusCode).toBe(200);
    const status = ready.json();
    expect(status).toMatchObject({
      state: "ready",
      path: join(h.root, "models", "org", "llama"),
      filesDone: files.length,
    });
    expect(status.lastUsedAt).not.toBeNull();
    expect(await digests(status.path, files)).toEqual(expectedDigests(files));

    const again = await put("tcp", "org/llama", { source: `s3://${bucket}/m/` });
    expect(again.statusCode).toBe(200);
    const list = await h.tcp.inject({ url: "/v1/models", headers: auth });
    expect(list.json().models.map((m: { id: string }) => m.id)).toEqual(["org/llama"]);
  });

  it("coalesces concurrent PUTs of one model into one download", async () => {
    const { bucket, files } = await seedModel();
    const results = await Promise.all(
      Array.from({ length: 10 }, () => put("tcp", "org/once", { source: `s3://${bucket}/m/` })),
    );
    expect(results.map((r) => r.statusCode).every((c) => c === 202 || c === 200)).toBe(true);
    const ready = await h.tcp.inject({ url: "/v1/models/org/once/ready?timeoutSeconds=30", headers: auth });
    expect(ready.statusCode).toBe(200);
    const listings = fx.proxy.requests.filter((r) => r.query.includes("list-type=2"));
    expect(listings).toHaveLength(1);
    const shard = files[0];
    if (!shard) throw new Error("no shard");
    const ranges = fx.proxy.requests
      .filter((r) => r.method === "GET" && r.path.endsWith(shard.relPath))
      .map((r) => String(r.headers.range));
    // Every 1 MiB part of the shard fetched exactly once, whatever the number of PUTs.
    expect(ranges).toHaveLength(Math.ceil(shard.body.length / MiB));
    expect(new Set(ranges).size).toBe(ranges.length);
  });

  it("refuses another source for an existing id with 409 CS_MODEL_SOURCE_CONFLICT", async () => {
    const { bucket } = await seedModel();
    expect((await put("tcp", "m1", { source: `s3://${bucket}/m/` })).statusCode).toBe(202);
    const res = await put("tcp", "m1", { source: `s3://${bucket}/other/` });
    expect(res.statusCode).toBe(409);
    expect(res.json().error.code).toBe("CS_MODEL_SOURCE_CONFLICT");
  });

  it("refuses a source outside the allowlist with 403 and fetches nothing", async () => {
    const res = await put("tcp", "m1", { source: "s3://forbidden-bucket/m/" });
    expect(res.statusCode).toBe(403);
    expect(res.json()).toEqual({
      error: {
        code: "CS_SOURCE_NOT_ALLOWED",
        message: expect.stringContaining("forbidden-bucket"),
        details: { field: "source", value: "s3://forbidden-bucket/m/" },
      },
    });
    expect(fx.proxy.requests).toEqual([]);
  });

  it("answers 401 to a mutation without a valid token on TCP", async () => {
    const variants: Record<string, string>[] = [
      {},
      { authorization: "Bearer wrong" },
      { authorization: TOKEN },
    ];
    for (const headers of variants) {
      const res = await put("tcp", "m1", { source: "s3://allowed-x/m/" }, headers);
      expect(res.statusCode).toBe(401);
      expect(res.json().error.code).toBe("CS_UNAUTHORIZED");
    }
    expect((await h.tcp.inject({ method: "DELETE", url: "/v1/models/m1" })).statusCode).toBe(401);
    expect((await h.tcp.inject({ url: "/v1/models" })).statusCode).toBe(401);
  });

  it("lets the socket's handshake calls through without a token, and nothing else", async () => {
    const { bucket } = await seedModel();
    expect((await put("socket", "hs", { source: `s3://${bucket}/m/` }, {})).statusCode).toBe(202);
    expect((await h.sock.inject({ url: "/v1/models/hs" })).statusCode).toBe(200);
    expect((await h.sock.inject({ url: "/v1/models/hs/ready?timeoutSeconds=30" })).statusCode).toBe(200);
    expect((await h.sock.inject({ url: "/v1/models" })).statusCode).toBe(401);
    expect((await h.sock.inject({ method: "DELETE", url: "/v1/models/hs" })).statusCode).toBe(401);
    expect(
      (await h.sock.inject({ method: "PATCH", url: "/v1/models/hs", payload: { pin: true } })).statusCode,
    ).toBe(401);
  });

  it("validates bodies: unknown fields, wrong types, malformed JSON, size, content type", async () => {
    const cases: [unknown, string | undefined, number, string][] = [
      [{ source: "s3://allowed-x/m/", extra: 1 }, undefined, 400, "CS_REQUEST_INVALID"],
      [{ source: "s3://allowed-x/m/", pin: "true" }, undefined, 400, "CS_REQUEST_INVALID"],
      [{}, undefined, 400, "CS_REQUEST_INVALID"],
      ['{"source": ', "application/json", 400, "CS_REQUEST_INVALID"],
      [
        {
          source: "s3://allowed-x/m/",
          include: Array.from({ length: 50 }, (_, i) => `${i}${"x".repeat(100)}`),
        },
        undefined,
        413,
        "CS_REQUEST_TOO_LARGE",
      ],
      ["source=s3://allowed-x/m/", "text/plain", 415, "CS_UNSUPPORTED_MEDIA_TYPE"],
      [{ source: "https://allowed-x/m/" }, undefined, 400, "CS_SOURCE_URI_INVALID"],
    ];
    for (const [body, type, status, code] of cases) {
      const res = await h.tcp.inject({
        method: "PUT",
        url: "/v1/models/m1",
        payload: typeof body === "string" ? body : JSON.stringify(body),
        headers: { ...auth, "content-type": type ?? "application/json" },
      });
      expect([res.statusCode, res.json().error?.code], JSON.stringify(body).slice(0, 80)).toEqual([
        status,
        code,
      ]);
    }
    expect(h.manager.list()).toEqual([]);
  });

  it("refuses ids with .. or other unsafe segments with 400 CS_MODEL_ID_INVALID", async () => {
    for (const id of ["a/../b", "x/..", "a//b", "/abs", "a/", "x".repeat(201), "sp ace", "a\u0000b", "./a"]) {
      // Clients percent-encode ids (a raw "/../" would be resolved by the client's URL handling).
      const res = await put("tcp", encodeURIComponent(id), { source: "s3://allowed-x/m/" });
      expect([res.statusCode, res.json().error?.code], `${id} ${res.body}`).toEqual([
        400,
        "CS_MODEL_ID_INVALID",
      ]);
    }
    expect(await readdir(join(h.root, "models"))).toEqual([]);
  });

  it("answers the long-poll: 503 with Retry-After on timeout, 409 CS_MODEL_FAILED, 404", async () => {
    // S3 holds the model's first request until the 503 is in: "slow" cannot be ready before.
    const s3Held = gate();
    fx.proxy.addRule({
      match: { method: "GET" },
      action: { kind: "hook", fn: () => s3Held.opened },
      times: 1,
    });
    const { bucket } = await seedModel();
    await put("tcp", "slow", { source: `s3://${bucket}/m/` });
    const timeouts = async () =>
      (await h.metrics.registry.getSingleMetricAsString("coldstart_handshake_waits_total")).match(
        /outcome="timeout"} (\d+)/,
      )?.[1];
    try {
      const pending = await h.tcp.inject({ url: "/v1/models/slow/ready?timeoutSeconds=0", headers: auth });
      expect(pending.statusCode).toBe(503);
      expect(pending.headers["retry-after"]).toBe("5");
      expect(pending.json()).toMatchObject({ id: "slow" });
      // A poll that may be followed by another is no timed-out handshake; the client's last one is.
      expect(await timeouts()).toBe("0");
      const last = await h.tcp.inject({
        url: "/v1/models/slow/ready?timeoutSeconds=0&last=1",
        headers: auth,
      });
      expect(last.statusCode).toBe(503);
      expect(await timeouts()).toBe("1");
      const badLast = await h.tcp.inject({
        url: "/v1/models/slow/ready?timeoutSeconds=0&last=yes",
        headers: auth,
      });
      expect([badLast.statusCode, badLast.json().error.details]).toEqual([
        400,
        { field: "last", value: "yes" },
      ]);
      const badWaiter = await h.tcp.inject({
        url: "/v1/models/slow/ready?timeoutSeconds=0&waiter=a%20b",
        headers: auth,
      });
      expect([badWaiter.statusCode, badWaiter.json().error]).toEqual([
        400,
        {
          code: "CS_REQUEST_INVALID",
          message: 'waiter must be 1 to 64 letters, digits or dashes, got "a b"',
          details: { field: "waiter", value: "a b" },
        },
      ]);
    } finally {
      s3Held.open();
    }

    const missing = await freshBucket(fx.client, "allowed");
    await put("tcp", "broken", { source: `s3://${missing}/nothing/` });
    const failed = await h.tcp.inject({ url: "/v1/models/broken/ready?timeoutSeconds=30", headers: auth });
    expect(failed.statusCode).toBe(409);
    expect(failed.json().error).toMatchObject({ code: "CS_MODEL_FAILED", cause: { code: "CS_NO_OBJECTS" } });

    const unknown = await h.tcp.inject({ url: "/v1/models/nope/ready?timeoutSeconds=1", headers: auth });
    expect([unknown.statusCode, unknown.json().error.code]).toEqual([404, "CS_MODEL_NOT_FOUND"]);
    const bad = await h.tcp.inject({ url: "/v1/models/slow/ready?timeoutSeconds=301", headers: auth });
    expect(bad.statusCode).toBe(400);
  });

  it("pins, refuses to delete pinned or in-use models, and deletes otherwise (204)", async () => {
    const { bucket } = await seedModel();
    await put("tcp", "p", { source: `s3://${bucket}/m/`, pin: true });
    await h.tcp.inject({ url: "/v1/models/p/ready?timeoutSeconds=30", headers: auth });
    const pinned = await h.tcp.inject({ method: "DELETE", url: "/v1/models/p", headers: auth });
    expect([pinned.statusCode, pinned.json().error.code]).toEqual([409, "CS_MODEL_PINNED"]);
    const unpin = await h.tcp.inject({
      method: "PATCH",
      url: "/v1/models/p",
      payload: { pin: false },
      headers: auth,
    });
    expect(unpin.json().pinned).toBe(false);
    // The ready long-poll above handed it to a "pod": within the grace period it stays.
    const inUse = await h.tcp.inject({ method: "DELETE", url: "/v1/models/p", headers: auth });
    expect([inUse.statusCode, inUse.json().error.code]).toEqual([409, "CS_MODEL_IN_USE"]);
  });

  it("deletes a model no pod uses: 204, directory gone, 404 after", async () => {
    const { bucket } = await seedModel();
    await put("tcp", "d", { source: `s3://${bucket}/m/` });
    await h.manager.waitReady("d", 30_000);
    const del = await h.tcp.inject({ method: "DELETE", url: "/v1/models/d", headers: auth });
    expect(del.statusCode).toBe(204);
    expect(await readdir(join(h.root, "models"))).toEqual([]);
    expect((await h.tcp.inject({ url: "/v1/models/d", headers: auth })).statusCode).toBe(404);
  });

  it("serves /livez, /readyz, /metrics and /v1/node", async () => {
    expect((await h.tcp.inject({ url: "/livez" })).statusCode).toBe(200);
    expect((await h.tcp.inject({ url: "/readyz" })).statusCode).toBe(200);
    const m = await h.tcp.inject({ url: "/metrics" });
    expect(m.body).toContain("coldstart_models");
    const node = await h.tcp.inject({ url: "/v1/node", headers: auth });
    expect(node.json().disk).toMatchObject({
      root: h.root,
      totalBytes: expect.any(Number),
      freeBytes: expect.any(Number),
    });
  });
});

describe("regressions from the daemon review", () => {
  it("an absolute-form request target does not skip authentication (it did: PUT http://x/v1/...)", async () => {
    const address = await h.tcp.listen({ host: "127.0.0.1", port: 0 });
    const { port } = new URL(address);
    const raw = (line: string, body = "") =>
      new Promise<string>((resolve, reject) => {
        const sock = connect(Number(port), "127.0.0.1", () => {
          sock.end(
            `${line}\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
          );
        });
        let out = "";
        sock.on("data", (d) => (out += d));
        sock.on("end", () => resolve(out));
        sock.on("error", reject);
      });
    const put = await raw(
      "PUT http://abc/v1/models/evil HTTP/1.1",
      JSON.stringify({ source: "s3://allowed-x/m/" }),
    );
    expect(put).toMatch(/^HTTP\/1\.1 (400|401) /);
    expect(await raw("GET http://abc/v1/models HTTP/1.1")).toMatch(/^HTTP\/1\.1 (400|401) /);
    expect(h.manager.list()).toEqual([]);
  });

  it("refuses an id that would nest with a registered one (evicting org deleted pinned org/llama)", async () => {
    const { bucket } = await seedModel();
    expect((await put("tcp", "org/llama", { source: `s3://${bucket}/m/` })).statusCode).toBe(202);
    for (const id of ["org", "org/llama/extra"]) {
      const res = await put("tcp", encodeURIComponent(id), { source: `s3://${bucket}/m/` });
      expect([res.statusCode, res.json().error.code], id).toEqual([409, "CS_MODEL_ID_CONFLICT"]);
    }
  });

  it("the socket's tokenless PUT cannot change a pin (it could unpin an operator's model)", async () => {
    const { bucket } = await seedModel();
    await put("tcp", "pinned", { source: `s3://${bucket}/m/`, pin: true });
    const res = await put("socket", "pinned", { source: `s3://${bucket}/m/`, pin: false }, {});
    expect([res.statusCode, res.json().error.code]).toEqual([401, "CS_UNAUTHORIZED"]);
    expect(h.manager.get("pinned").pinned).toBe(true);
    expect((await put("socket", "pinned", { source: `s3://${bucket}/m/` }, {})).statusCode).toBeLessThan(300);
  });

  it("a DELETE racing a PUT is refused, not answered 204 for a model that then comes back", async () => {
    const { bucket } = await seedModel();
    // The PUT's synchronous part registers the job before anything is awaited.
    const created = h.manager.request("racy", { source: `s3://${bucket}/m/` }, { waited: false });
    await expect(h.manager.remove("racy")).rejects.toMatchObject({ code: "CS_MODEL_IN_USE" });
    expect((await created).created).toBe(true);
    expect((await h.manager.waitReady("racy", 30_000)).outcome).toBe("ready");
  });

  it("an unreadable registry stops the start instead of deleting every model as an orphan", async () => {
    const { bucket, files } = await seedModel();
    await put("tcp", "keep", { source: `s3://${bucket}/m/` });
    await h.manager.waitReady("keep", 30_000);
    await h.close();
    const state = join(h.root, "state", "models.json");
    await writeFile(state, "{ damaged");
    await expect(ModelRegistry.open(h.root)).rejects.toMatchObject({ code: "CS_IO_ERROR" });
    expect(await digests(join(h.root, "models", "keep"), files)).toEqual(expectedDigests(files));
    await writeFile(state, JSON.stringify({ version: 1, models: [] }));
    h = await harness();
  });
});

describe("eviction on a real (tmpfs) disk", () => {
  async function onSmallDisk(sizeMiB: number, env: Record<string, string>, body: () => Promise<void>) {
    await h.close();
    const mnt = await tmpfs(fx.work, sizeMiB * MiB);
    try {
      h = await harness(env, join(mnt, "root"));
      await body();
    } finally {
      await h.close();
      umount(mnt);
      h = await harness();
    }
  }
  const model = async (bucket: string, name: string, mib: number) =>
    putFiles(fx.client, bucket, `${name}/`, [file("w.bin", Buffer.alloc(mib * MiB, name))]);

  it("evicting to free disk space lets the new model in (it evicted, then refused anyway)", async () => {
    const env = {
      COLDSTART_IN_USE_GRACE: "0",
      COLDSTART_EVICTION_HIGH_WATERMARK: "100",
      COLDSTART_EVICTION_LOW_WATERMARK: "99",
    };
    await onSmallDisk(20, env, async () => {
      const bucket = await freshBucket(fx.client, "allowed");
      for (const n of ["a", "b", "c"]) await model(bucket, n, 8);
      for (const n of ["a", "b"]) {
        await put("tcp", n, { source: `s3://${bucket}/${n}/` });
        expect((await h.manager.waitReady(n, 30_000)).outcome).toBe("ready");
      }
      await put("tcp", "c", { source: `s3://${bucket}/c/` });
      const c = await h.manager.waitReady("c", 30_000);
      expect([c.outcome, c.status.error?.code]).toEqual(["ready", undefined]);
      expect(
        h.manager
          .list()
          .map((m) => m.id)
          .sort(),
      ).toEqual(["b", "c"]); // a was least recently used
    });
  });

  it("a freshly staged model is handed over, not evicted by the watermark pass right after it", async () => {
    await onSmallDisk(20, {}, async () => {
      const bucket = await freshBucket(fx.client, "allowed");
      await model(bucket, "p", 12);
      await model(bucket, "n", 6);
      await put("tcp", "p", { source: `s3://${bucket}/p/`, pin: true });
      await h.manager.waitReady("p", 30_000);
      await put("socket", "n", { source: `s3://${bucket}/n/` }, {});
      const ready = await h.tcp.inject({ url: "/v1/models/n/ready?timeoutSeconds=30", headers: auth });
      expect(ready.statusCode).toBe(200);
      expect(
        h.manager
          .list()
          .map((m) => m.id)
          .sort(),
      ).toEqual(["n", "p"]);
    });
  });
});

describe("eviction", () => {
  it("evicts least recently used first under the byte budget, never a pinned model", async () => {
    await h.close();
    h = await harness({ COLDSTART_EVICTION_MAX_BYTES: String(9 * MiB), COLDSTART_IN_USE_GRACE: "0" });
    const bucket = await freshBucket(fx.client, "allowed");
    for (const name of ["a", "b", "c", "d"]) {
      await putFiles(fx.client, bucket, `${name}/`, [file("w.bin", Buffer.alloc(3 * MiB, name))]);
    }
    const stageOne = async (id: string, pin = false) => {
      await put("tcp", id, { source: `s3://${bucket}/${id}/`, pin });
      return h.manager.waitReady(id, 30_000);
    };
    await stageOne("a", true); // pinned: never evicted
    await stageOne("b");
    await stageOne("c");
    expect((await stageOne("d")).outcome).toBe("ready"); // 12 MiB > 9 MiB: b (least recently used) goes
    expect(
      h.manager
        .list()
        .map((m) => m.id)
        .sort(),
    ).toEqual(["a", "c", "d"]);

    const big = await freshBucket(fx.client, "allowed");
    await putFiles(fx.client, big, "x/", [file("w.bin", Buffer.alloc(7 * MiB, 1))]);
    await put("tcp", "x", { source: `s3://${big}/x/` });
    const res = await h.manager.waitReady("x", 30_000);
    // Even evicting c and d would leave pinned a (3 MiB) + 7 MiB over the budget: fail, evict nothing.
    expect(res.outcome).toBe("failed");
    expect(res.status.error?.code).toBe("CS_INSUFFICIENT_SPACE");
    expect(
      h.manager
        .list()
        .map((m) => m.id)
        .sort(),
    ).toEqual(["a", "c", "d", "x"]);
  });
});
