import { randomBytes } from "node:crypto";
import { mkdir, readdir, readFile, stat, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { PutObjectCommand } from "@aws-sdk/client-s3";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { compositeOf } from "../../src/checksums/combine.js";
import { createChecksum } from "../../src/checksums/streaming.js";
import { buildSafetensors } from "../../src/safetensors/build.js";
import { RateLimiter } from "../../src/staging/rate-limiter.js";
import type { ManifestFile } from "../../src/store/manifest.js";
import { expectRejection } from "../support/expect-error.js";
import { freshBucket, putFiles, putMultipart } from "../support/s3.js";
import { useS3Fixture } from "../support/s3-fixture.js";
import { digests, expectedDigests, listTree, stage, useStageRunner } from "../support/stage.js";
import { file, sha256, syntheticModel } from "../support/synthetic-model.js";
import { tmpfs, umount } from "../support/tmpfs.js";
import { fakeClock, gate, settles, waitFor } from "../support/wait.js";

const MiB = 1024 * 1024;
const fx = useS3Fixture("cs-stage-");
const { s3 } = fx;
let dest: string;
let work: string;
beforeEach(() => {
  work = fx.work;
  dest = join(work, "dest");
});

// Every test runs twice: parts on the daemon's worker threads (download.workers, the default) and on
// the main thread (download.workers 0). One engine, two byte paths, the same guarantees.
describe.each([
  ["worker threads", "workers"],
  ["the main thread", "main"],
] as const)("parts on %s", (_, runner) => {
  beforeAll(() => useStageRunner(runner));
  afterAll(() => useStageRunner("workers"));

  describe("staging a model from a real S3 server", () => {
    it("stages a multi-shard model byte-identical, with a manifest of piece digests", async () => {
      const files = syntheticModel({ shards: 4, shardBytes: 6 * MiB });
      const bucket = await freshBucket(fx.client);
      await putFiles(fx.client, bucket, "org/model/", files);

      const result = await stage(s3, { bucket, prefix: "org/model/", dest, partSizeBytes: MiB });

      expect(await digests(dest, files)).toEqual(expectedDigests(files));
      expect(await listTree(dest)).toEqual(files.map((f) => f.relPath).sort());
      expect(result).toMatchObject({ files: files.length, retries: 0, resumedBytes: 0 });
      expect(result.bytes).toBe(files.reduce((n, f) => n + f.body.length, 0));
      // No temp files or journals are left behind; the manifest names every file by piece digests.
      expect(await readdir(join(dest, ".coldstart", "tmp"))).toEqual([]);
      const manifest = await readManifest(dest);
      const shard = files[0];
      if (!shard) throw new Error("no shard");
      expect([...manifest.keys()].sort()).toEqual(files.map((f) => f.relPath).sort());
      const entry = manifest.get(shard.relPath);
      expect(entry?.pieces).toHaveLength(Math.ceil(shard.body.length / MiB));
      expect(entry?.pieces[0]).toBe(sha256(shard.body.subarray(0, MiB)));
    });

    it("a rerun over a complete destination fetches nothing and leaves the manifest untouched", async () => {
      const files = syntheticModel({ shards: 2, shardBytes: 2 * MiB });
      const bucket = await freshBucket(fx.client);
      await putFiles(fx.client, bucket, "m/", files);
      const first = await stage(s3, { bucket, prefix: "m/", dest, endpoint: fx.proxy.url });
      const manifestPath = join(dest, ".coldstart", "manifest.jsonl");
      const before = await stat(manifestPath);
      fx.proxy.resetStats();

      const again = await stage(s3, { bucket, prefix: "m/", dest, endpoint: fx.proxy.url });

      expect(again).toMatchObject({
        files: first.files,
        bytes: first.bytes,
        resumedBytes: first.bytes,
        retries: 0,
      });
      const objectGets = fx.proxy.requests.filter(
        (r) => r.method === "GET" && !r.query.includes("list-type"),
      );
      expect(objectGets).toEqual([]);
      const after = await stat(manifestPath);
      expect([after.ino, after.mtimeMs]).toEqual([before.ino, before.mtimeMs]);
    });

    it("stages a multipart-uploaded object (ETag with -N) intact", async () => {
      const body = randomBytes(11 * MiB + 123);
      const bucket = await freshBucket(fx.client);
      await putMultipart(fx.client, bucket, "m/blob.bin", body, 5 * MiB);
      await stage(s3, { bucket, prefix: "m/", dest, partSizeBytes: 2 * MiB });
      expect(sha256(await readFile(join(dest, "blob.bin")))).toBe(sha256(body));
    });

    it("pages through more than 1000 keys, with zero-byte objects and unicode/space keys", async () => {
      const bucket = await freshBucket(fx.client);
      const files = Array.from({ length: 1105 }, (_, i) =>
        file(
          `shard-${String(i).padStart(4, "0")}/piece.bin`,
          i % 100 === 0 ? Buffer.alloc(0) : randomBytes(64),
        ),
      );
      files.push(file("dir with spaces/naïve 模型 ✓.json", Buffer.from("{}")));
      await putFiles(fx.client, bucket, "many/", files, 16);

      const result = await stage(s3, { bucket, prefix: "many/", dest, concurrency: 16 });

      expect(result.files).toBe(files.length);
      expect(await digests(dest, files)).toEqual(expectedDigests(files));
    });

    it("applies include and exclude globs to keys relative to the prefix", async () => {
      const bucket = await freshBucket(fx.client);
      const files = syntheticModel({ shards: 2, shardBytes: 64 * 1024 });
      files.push(file("original/consolidated.00.pth", randomBytes(100)));
      await putFiles(fx.client, bucket, "p/", files);

      await stage(s3, {
        bucket,
        prefix: "p/",
        dest,
        include: ["*.safetensors", "*.json"],
        exclude: ["original/**"],
      });

      expect(await listTree(dest)).toEqual(
        files
          .filter((f) => !f.relPath.startsWith("original/"))
          .map((f) => f.relPath)
          .sort(),
      );
    });

    it("fails with CS_NO_OBJECTS when nothing matches", async () => {
      const bucket = await freshBucket(fx.client);
      await putFiles(fx.client, bucket, "p/", [file("a.txt", Buffer.from("a"))]);
      await expectRejection(stage(s3, { bucket, prefix: "p/", dest, include: ["*.bin"] }), "CS_NO_OBJECTS");
    });

    it("fails fast with CS_S3_NOT_FOUND for a missing bucket", async () => {
      await expectRejection(stage(s3, { bucket: "no-such-bucket-cs", prefix: "", dest }), "CS_S3_NOT_FOUND");
    });
  });

  describe("path safety", () => {
    it("refuses a key with .. and writes nothing, inside or outside DEST", async () => {
      const bucket = await freshBucket(fx.client);
      await putFiles(fx.client, bucket, "m/", [file("config.json", Buffer.from("{}"))]);
      // The hostile key is served in the listing itself (a store could hold it; RGW normalises "..").
      const outside = join(work, "escape.txt");
      const err = await expectRejection(
        stage(s3, { bucket, prefix: "m/", dest, endpoint: await listingInjector(bucket, "m/../escape.txt") }),
        "CS_KEY_UNSAFE",
      );
      expect(err.details.key).toBe("m/../escape.txt");
      await expect(readFile(outside)).rejects.toThrow();
      expect(await listTree(dest)).toEqual([]);
      expect(fx.proxy.requests.filter((r) => r.method === "GET" && !r.query.includes("list-type"))).toEqual(
        [],
      );
    });

    it("refuses to write through a symlink planted in DEST", async () => {
      const bucket = await freshBucket(fx.client);
      await putFiles(fx.client, bucket, "m/", [file("sub/weights.bin", randomBytes(1000))]);
      const outside = join(work, "outside");
      await mkdir(outside);
      await mkdir(dest);
      await symlink(outside, join(dest, "sub"));

      await expectRejection(stage(s3, { bucket, prefix: "m/", dest }), "CS_KEY_UNSAFE");
      expect(await readdir(outside)).toEqual([]);
    });
  });

  describe("verification", () => {
    it("refuses a malformed safetensors header and leaves nothing at the final name", async () => {
      const bucket = await freshBucket(fx.client);
      const good = buildSafetensors([{ name: "w", dtype: "F16", shape: [4, 4] }]);
      const bad = Buffer.from(good);
      bad.writeBigUInt64LE(BigInt(good.length), 0); // header length beyond the file
      await putFiles(fx.client, bucket, "m/", [
        file("model.safetensors", bad),
        file("config.json", Buffer.from("{}")),
      ]);

      await expectRejection(stage(s3, { bucket, prefix: "m/", dest }), "CS_SAFETENSORS_INVALID");
      expect(await listTree(dest)).not.toContain("model.safetensors");
    });

    it("refuses an index.json that names a shard that is not there", async () => {
      const bucket = await freshBucket(fx.client);
      const files = syntheticModel({ shards: 2, shardBytes: 64 * 1024 });
      const staged = files.filter((f) => !f.relPath.startsWith("model-00002"));
      await putFiles(fx.client, bucket, "m/", staged);

      await expectRejection(stage(s3, { bucket, prefix: "m/", dest }), "CS_SAFETENSORS_INDEX_INVALID");
      expect(await listTree(dest)).not.toContain("model.safetensors.index.json");
    });

    it("detects an object changed between parts (412 on If-Match) and never mixes versions", async () => {
      const bucket = await freshBucket(fx.client);
      const v1 = randomBytes(8 * MiB);
      await putFiles(fx.client, bucket, "m/", [file("blob.bin", v1)]);
      fx.proxy.addRule({
        match: { method: "GET", hasRange: true },
        skip: 2,
        times: 1,
        action: {
          kind: "hook",
          fn: async () => {
            await fx.client.send(
              new PutObjectCommand({ Bucket: bucket, Key: "m/blob.bin", Body: randomBytes(8 * MiB) }),
            );
          },
        },
      });

      const err = await expectRejection(
        stage(s3, { bucket, prefix: "m/", dest, endpoint: fx.proxy.url, concurrency: 1 }),
        "CS_OBJECT_CHANGED",
      );
      expect(err.details.key).toBe("m/blob.bin");
      expect(await listTree(dest)).toEqual([]);
      // Every range after the listing carried If-Match with the pinned ETag.
      const ranged = fx.proxy.requests.filter((r) => r.headers.range);
      expect(ranged.length).toBeGreaterThan(2);
      for (const r of ranged) expect(r.headers["if-match"]).toMatch(/^"[0-9a-f]{32}"$/);
    });

    it("checks a whole-object checksum S3 returns, and fails on a mismatch", async () => {
      const bucket = await freshBucket(fx.client);
      const body = randomBytes(300_000);
      await putFiles(fx.client, bucket, "m/", [file("tokenizer.json", body)]);
      // RGW ignores x-amz-checksum-*: the fx.proxy plays an S3 that returns them.
      const good = createChecksum("CRC32C");
      good.update(body);
      fx.proxy.addRule({
        match: { method: "GET", path: "tokenizer.json", hasRange: false },
        times: 1,
        action: { kind: "headers", set: { "x-amz-checksum-crc32c": good.digest().toString("base64") } },
      });
      await stage(s3, { bucket, prefix: "m/", dest, endpoint: fx.proxy.url });
      const manifest = await readManifest(dest);
      expect(manifest.get("tokenizer.json")?.checksum).toMatchObject({
        algorithm: "CRC32C",
        type: "FULL_OBJECT",
      });

      const dest2 = join(work, "dest2");
      fx.proxy.addRule({
        match: { method: "GET", path: "tokenizer.json", hasRange: false },
        times: 1,
        action: { kind: "headers", set: { "x-amz-checksum-crc32c": "AAAAAA==" } },
      });
      await expectRejection(
        stage(s3, { bucket, prefix: "m/", dest: dest2, endpoint: fx.proxy.url }),
        "CS_CHECKSUM_MISMATCH",
      );
      expect(await listTree(dest2)).toEqual([]);
    });

    it("combines the parts' CRCs into the full-object CRC64NVME from HEAD", async () => {
      const bucket = await freshBucket(fx.client);
      const body = randomBytes(5 * MiB + 17);
      await putFiles(fx.client, bucket, "m/", [file("w.bin", body)]);
      const crc = createChecksum("CRC64NVME");
      crc.update(body);
      const value = crc.digest().toString("base64");
      const headRule = (v: string) => ({
        match: { method: "HEAD", path: "w.bin" },
        times: 1,
        action: {
          kind: "headers" as const,
          set: { "x-amz-checksum-crc64nvme": v, "x-amz-checksum-type": "FULL_OBJECT" },
        },
      });
      fx.proxy.addRule(headRule(value));
      await stage(s3, { bucket, prefix: "m/", dest, endpoint: fx.proxy.url, partSizeBytes: MiB });
      expect(sha256(await readFile(join(dest, "w.bin")))).toBe(sha256(body));

      fx.proxy.addRule(headRule("AAAAAAAAAAA="));
      await expectRejection(
        stage(s3, {
          bucket,
          prefix: "m/",
          dest: join(work, "d2"),
          endpoint: fx.proxy.url,
          partSizeBytes: MiB,
        }),
        "CS_CHECKSUM_MISMATCH",
      );
    });
  });

  describe("composite checksums of multipart objects", () => {
    const MB5 = 5 * MiB;
    const partsOf = (body: Buffer) => [
      body.subarray(0, MB5),
      body.subarray(MB5, 2 * MB5),
      body.subarray(2 * MB5),
    ];

    /**
     * The proxy plays an S3 that holds the composite checksum of `claimed` (the body's parts unless
     * given) for the object `body`, and answers GetObjectAttributes with the body's part sizes.
     */
    async function serveComposite(
      key: string,
      alg: "CRC32" | "SHA256",
      body: Buffer,
      claimed: Buffer[] = partsOf(body),
    ): Promise<void> {
      const value = await composite(alg, claimed);
      const sizes = partsOf(body).map((b) => b.length);
      const header = `x-amz-checksum-${alg.toLowerCase()}`;
      fx.proxy.addRule({
        match: { method: "HEAD", path: key },
        action: { kind: "headers", set: { [header]: value, "x-amz-checksum-type": "COMPOSITE" } },
      });
      const parts = sizes.map(
        (size, i) => `<Part><PartNumber>${i + 1}</PartNumber><Size>${size}</Size></Part>`,
      );
      fx.proxy.addRule({
        match: { method: "GET", path: key, predicate: (r) => r.query.includes("attributes") },
        action: {
          kind: "status",
          status: 200,
          headers: { "content-type": "application/xml" },
          body:
            `<?xml version="1.0" encoding="UTF-8"?><GetObjectAttributesResponse><ObjectParts>` +
            `<IsTruncated>false</IsTruncated><MaxParts>1000</MaxParts><PartNumberMarker>0</PartNumberMarker>` +
            `<NextPartNumberMarker>${sizes.length}</NextPartNumberMarker><PartsCount>${sizes.length}</PartsCount>` +
            `${parts.join("")}</ObjectParts></GetObjectAttributesResponse>`,
        },
      });
    }

    async function composite(alg: "CRC32" | "SHA256", chunks: Buffer[]): Promise<string> {
      const values = chunks.map((c) => {
        const h = createChecksum(alg);
        h.update(c);
        return h.digest();
      });
      return `${compositeOf(alg, values).toString("base64")}-${chunks.length}`;
    }

    /** [start, end] of every ranged GET of `key` the proxy saw. */
    const rangesOf = (key: string) =>
      fx.proxy.requests
        .filter((r) => r.path.endsWith(key) && r.headers.range)
        .map((r) => (/bytes=(\d+)-(\d+)/.exec(String(r.headers.range)) ?? []).slice(1).map(Number));

    it("checks a composite CRC32, with ranges cut inside part boundaries", async () => {
      const bucket = await freshBucket(fx.client);
      const body = randomBytes(2 * MB5 + MiB + 123);
      await putMultipart(fx.client, bucket, "m/w.bin", body, MB5);
      await serveComposite("w.bin", "CRC32", body);

      await stage(s3, { bucket, prefix: "m/", dest, endpoint: fx.proxy.url, partSizeBytes: 2 * MiB });

      expect(sha256(await readFile(join(dest, "w.bin")))).toBe(sha256(body));
      const ranges = rangesOf("w.bin");
      expect(ranges.length).toBe(7); // MiB per range: 2+2+1 | 2+2+1 | 1.0001
      for (const [start, end] of ranges)
        expect(Math.floor((start as number) / MB5)).toBe(Math.floor((end as number) / MB5));
    });

    it("fails with CS_CHECKSUM_MISMATCH when a part differs from the composite", async () => {
      const bucket = await freshBucket(fx.client);
      const body = randomBytes(2 * MB5 + 1000);
      await putMultipart(fx.client, bucket, "m/w.bin", body, MB5);
      const wrong = partsOf(Buffer.from(body));
      wrong[1] = Buffer.alloc(wrong[1]?.length ?? 0);
      await serveComposite("w.bin", "CRC32", body, wrong);

      const err = await expectRejection(
        stage(s3, { bucket, prefix: "m/", dest, endpoint: fx.proxy.url, partSizeBytes: 2 * MiB }),
        "CS_CHECKSUM_MISMATCH",
      );
      expect(err.message).toMatch(/CRC32 of the staged bytes is .*-3, S3 holds/);
      expect(await listTree(dest)).toEqual([]);
    });

    it("keeps SHA256 parts whole (SHA values cannot be combined) and checks the composite", async () => {
      const bucket = await freshBucket(fx.client);
      const body = randomBytes(2 * MB5 + 777);
      await putMultipart(fx.client, bucket, "m/w.bin", body, MB5);
      await serveComposite("w.bin", "SHA256", body);

      await stage(s3, { bucket, prefix: "m/", dest, endpoint: fx.proxy.url, partSizeBytes: 2 * MiB });

      expect(rangesOf("w.bin").sort((a, b) => (a[0] as number) - (b[0] as number))).toEqual([
        [0, MB5 - 1],
        [MB5, 2 * MB5 - 1],
        [2 * MB5, body.length - 1],
      ]);
    });

    it("stages unverified (not failed) when the part sizes are unknown", async () => {
      const bucket = await freshBucket(fx.client);
      const body = randomBytes(2 * MB5 + 5);
      await putMultipart(fx.client, bucket, "m/w.bin", body, MB5);
      // HEAD claims a composite, but this RGW has no GetObjectAttributes.
      fx.proxy.addRule({
        match: { method: "HEAD", path: "w.bin" },
        action: {
          kind: "headers",
          set: { "x-amz-checksum-crc32": "AAAAAA==-3", "x-amz-checksum-type": "COMPOSITE" },
        },
      });
      await stage(s3, { bucket, prefix: "m/", dest, endpoint: fx.proxy.url, partSizeBytes: 2 * MiB });
      expect(sha256(await readFile(join(dest, "w.bin")))).toBe(sha256(body));
    });
  });

  describe("faults at the network seam", () => {
    it("survives a 503 SlowDown storm", async () => {
      const bucket = await freshBucket(fx.client);
      const files = syntheticModel({ shards: 2, shardBytes: 3 * MiB });
      await putFiles(fx.client, bucket, "m/", files);
      fx.proxy.addRule({
        match: { method: "GET" },
        times: 25,
        action: { kind: "status", status: 503, code: "SlowDown" },
      });

      const result = await stage(s3, { bucket, prefix: "m/", dest, endpoint: fx.proxy.url, maxAttempts: 30 });

      expect(result.retries).toBeGreaterThanOrEqual(25);
      expect(await digests(dest, files)).toEqual(expectedDigests(files));
    });

    it("gives up with CS_RETRIES_EXHAUSTED when 503s never end", async () => {
      const bucket = await freshBucket(fx.client);
      await putFiles(fx.client, bucket, "m/", [file("a.bin", randomBytes(100))]);
      fx.proxy.addRule({ match: { method: "GET", path: "a.bin" }, action: { kind: "status", status: 503 } });
      await expectRejection(
        stage(s3, { bucket, prefix: "m/", dest, endpoint: fx.proxy.url, maxAttempts: 3 }),
        "CS_RETRIES_EXHAUSTED",
      );
      expect(await listTree(dest)).toEqual([]);
    });

    it("fails fast on 403 without retrying", async () => {
      const bucket = await freshBucket(fx.client);
      await putFiles(fx.client, bucket, "m/", [file("a.bin", randomBytes(100))]);
      fx.proxy.addRule({
        match: { method: "GET", path: "a.bin" },
        action: { kind: "status", status: 403, code: "AccessDenied" },
      });
      await expectRejection(
        stage(s3, { bucket, prefix: "m/", dest, endpoint: fx.proxy.url }),
        "CS_S3_ACCESS_DENIED",
      );
      expect(fx.proxy.requests.filter((r) => r.path.endsWith("a.bin"))).toHaveLength(1);
    });

    it("resumes parts broken by resets and truncation from the bytes already written", async () => {
      const bucket = await freshBucket(fx.client);
      const body = randomBytes(8 * MiB);
      await putFiles(fx.client, bucket, "m/", [file("w.bin", body)]);
      fx.proxy.addRule({
        match: { method: "GET", hasRange: true },
        times: 3,
        action: { kind: "reset", afterBytes: 300_000 },
      });
      fx.proxy.addRule({
        match: { method: "GET", hasRange: true },
        times: 3,
        action: { kind: "truncate", afterBytes: 500_000 },
      });

      const result = await stage(s3, {
        bucket,
        prefix: "m/",
        dest,
        endpoint: fx.proxy.url,
        partSizeBytes: 2 * MiB,
      });

      expect(sha256(await readFile(join(dest, "w.bin")))).toBe(sha256(body));
      expect(result.retries).toBeGreaterThanOrEqual(6);
      // Resumed requests start mid-part, and little more than the object crossed the wire.
      const starts = fx.proxy.requests.flatMap(
        (r) => /bytes=(\d+)-/.exec(String(r.headers.range ?? ""))?.[1] ?? [],
      );
      expect(starts.map(Number).filter((s) => s % (2 * MiB) !== 0).length).toBeGreaterThanOrEqual(6);
      expect(fx.proxy.bytesServed().total).toBeLessThan(body.length + 6 * 600_000);
    });

    it("retries a stalled body on a fresh request", async () => {
      const bucket = await freshBucket(fx.client);
      const body = randomBytes(3 * MiB);
      await putFiles(fx.client, bucket, "m/", [file("w.bin", body)]);
      // Silent for as long as the test may run: only the client's inactivity timeout can end it.
      fx.proxy.addRule({
        match: { method: "GET", hasRange: true },
        times: 1,
        action: { kind: "stall", afterBytes: 1000, ms: 60_000 },
      });

      const result = await stage(s3, {
        bucket,
        prefix: "m/",
        dest,
        endpoint: fx.proxy.url,
        requestTimeoutMs: 2_000,
      });

      expect(result.retries).toBeGreaterThanOrEqual(1);
      expect(sha256(await readFile(join(dest, "w.bin")))).toBe(sha256(body));
    });
  });

  describe("regressions from review", () => {
    it("a second job on the same destination is refused while the first runs (lock was not exclusive)", async () => {
      const bucket = await freshBucket(fx.client);
      const body = randomBytes(4 * MiB);
      await putFiles(fx.client, bucket, "m/", [file("w.bin", body)]);
      // The first job's first part waits at the proxy: the job is mid-download, holding the lock, until
      // the second has been refused.
      const held = gate();
      fx.proxy.addRule({
        match: { method: "GET", hasRange: true },
        times: 1,
        action: { kind: "hook", fn: () => held.opened },
      });
      const first = stage(s3, { bucket, prefix: "m/", dest, endpoint: fx.proxy.url, concurrency: 1 });
      try {
        await waitFor(() => fx.proxy.requests.some((r) => r.method === "GET" && r.headers.range), {
          what: "the first job's first ranged GET",
        });
        await expectRejection(
          stage(s3, { bucket, prefix: "m/", dest, endpoint: fx.proxy.url }),
          "CS_DEST_LOCKED",
        );
      } finally {
        held.open();
      }
      await first;
      expect(sha256(await readFile(join(dest, "w.bin")))).toBe(sha256(body));
    });

    it("cancelling with parts still queued reports CS_ABORTED (was CS_INTERNAL)", async () => {
      const bucket = await freshBucket(fx.client);
      await putFiles(fx.client, bucket, "m/", [
        file("a.bin", randomBytes(3 * MiB)),
        file("b.bin", randomBytes(3 * MiB)),
      ]);
      // Every part waits at the proxy: with one slot, the first is in flight and five are queued when
      // the job is cancelled, however fast the machine.
      const held = gate();
      fx.proxy.addRule({
        match: { method: "GET", hasRange: true },
        action: { kind: "hook", fn: () => held.opened },
      });
      const abort = new AbortController();
      const job = stage(s3, {
        bucket,
        prefix: "m/",
        dest,
        endpoint: fx.proxy.url,
        concurrency: 1,
        signal: abort.signal,
        // Far beyond the wait below: only the abort can end the GET held at the proxy.
        requestTimeoutMs: 120_000,
      });
      try {
        await waitFor(() => fx.proxy.requests.some((r) => r.method === "GET" && r.headers.range), {
          what: "the first ranged GET",
        });
        abort.abort(Object.assign(new Error("received SIGINT"), { name: "AbortError" }));
        // The part in flight is cancelled too: the job ends while its GET is still held.
        await settles(expectRejection(job, "CS_ABORTED"), { what: "the job to end after the abort" });
      } finally {
        held.open();
      }
      expect(await listTree(dest)).toEqual([]);
    });

    it("attempts that resumed forward do not exhaust the retry budget (a long part gave up)", async () => {
      const bucket = await freshBucket(fx.client);
      const body = randomBytes(4 * MiB);
      await putFiles(fx.client, bucket, "m/", [file("w.bin", body)]);
      fx.proxy.addRule({
        match: { method: "GET", path: "w.bin" },
        times: 3,
        action: { kind: "reset", afterBytes: 300_000 },
      });
      const result = await stage(s3, {
        bucket,
        prefix: "m/",
        dest,
        endpoint: fx.proxy.url,
        partSizeBytes: 4 * MiB,
        maxAttempts: 3,
      });
      expect(result.retries).toBe(3);
      expect(sha256(await readFile(join(dest, "w.bin")))).toBe(sha256(body));
    });

    it("one 503 on GetObjectAttributes is retried, not taken as 'no parts' (verification was skipped)", async () => {
      const bucket = await freshBucket(fx.client);
      const body = randomBytes(2 * 5 * MiB + 10);
      await putMultipart(fx.client, bucket, "m/w.bin", body, 5 * MiB);
      fx.proxy.addRule({
        match: { method: "HEAD", path: "w.bin" },
        action: {
          kind: "headers",
          set: { "x-amz-checksum-crc32": "AAAAAA==-3", "x-amz-checksum-type": "COMPOSITE" },
        },
      });
      fx.proxy.addRule({
        match: { method: "GET", path: "w.bin", predicate: (r) => r.query.includes("attributes") },
        times: 1,
        action: { kind: "status", status: 503, code: "SlowDown" },
      });
      const sizes = [5 * MiB, 5 * MiB, 10].map(
        (n, i) => `<Part><PartNumber>${i + 1}</PartNumber><Size>${n}</Size></Part>`,
      );
      fx.proxy.addRule({
        match: { method: "GET", path: "w.bin", predicate: (r) => r.query.includes("attributes") },
        action: {
          kind: "status",
          status: 200,
          headers: { "content-type": "application/xml" },
          body: `<GetObjectAttributesResponse><ObjectParts><IsTruncated>false</IsTruncated>${sizes.join("")}</ObjectParts></GetObjectAttributesResponse>`,
        },
      });
      await expectRejection(
        stage(s3, { bucket, prefix: "m/", dest, endpoint: fx.proxy.url, partSizeBytes: 2 * MiB }),
        "CS_CHECKSUM_MISMATCH",
      );
    });
  });

  describe("throughput cap", () => {
    it("holds a download to download.maxBytesPerSecond: every byte waits its turn on the limiter's clock", async () => {
      const bucket = await freshBucket(fx.client);
      const body = randomBytes(4 * MiB);
      await putFiles(fx.client, bucket, "m/", [file("w.bin", body)]);
      // The limiter's clock moves only when it sleeps: what is measured is how long the cap made the
      // bytes wait, whatever the machine's speed. A byte that bypassed the cap would shorten it.
      const clock = fakeClock();
      await stage(s3, {
        bucket,
        prefix: "m/",
        dest,
        rateLimiter: new RateLimiter(1 * MiB, clock),
        concurrency: 4,
      });
      // 1 MiB of burst, then 3 MiB at 1 MiB/s.
      expect(clock.elapsed()).toBeGreaterThanOrEqual(3000);
      // And no byte charged twice (once on a worker, again on the main thread) or fetched again:
      // either would add about 1000 ms per MiB. Sleeps round up to whole milliseconds (3000–3001).
      expect(clock.elapsed()).toBeLessThan(3100);
      expect(sha256(await readFile(join(dest, "w.bin")))).toBe(sha256(body));
    });
  });

  describe("disk space", () => {
    it("refuses before downloading when the files cannot fit (CS_INSUFFICIENT_SPACE)", async () => {
      const mnt = await tmpfs(work, 4 * MiB);
      try {
        const bucket = await freshBucket(fx.client);
        await putFiles(fx.client, bucket, "m/", [file("w.bin", randomBytes(6 * MiB))]);
        await expectRejection(
          stage(s3, { bucket, prefix: "m/", dest: join(mnt, "d"), endpoint: fx.proxy.url }),
          "CS_INSUFFICIENT_SPACE",
        );
        expect(fx.proxy.requests.filter((r) => r.method === "GET" && r.headers.range)).toEqual([]);
      } finally {
        umount(mnt);
      }
    });

    it("reports ENOSPC mid-way as CS_DISK_FULL, with nothing at a final name and nothing unresumable left", async () => {
      const mnt = await tmpfs(work, 8 * MiB);
      try {
        const bucket = await freshBucket(fx.client);
        await putFiles(fx.client, bucket, "m/", [file("w.bin", randomBytes(6 * MiB))]);
        // Once the download has started, something else fills the disk.
        fx.proxy.addRule({
          match: { method: "GET", hasRange: true },
          times: 1,
          action: {
            kind: "hook",
            fn: () => writeFile(join(mnt, "filler"), Buffer.alloc(7 * MiB)).catch(() => {}),
          },
        });
        const d = join(mnt, "d");
        const err = await expectRejection(
          stage(s3, { bucket, prefix: "m/", dest: d, endpoint: fx.proxy.url, concurrency: 2 }),
          "CS_DISK_FULL",
        );
        expect(err.details.key).toBe("m/w.bin");
        expect(await listTree(d)).toEqual([]);
        // What is left can be resumed: a journal with at least one part beside its temp file. A sparse
        // temp file with an empty journal (the disk filled before any part was in) is gone; it was
        // left behind before issue 15.
        const tmp = join(d, ".coldstart", "tmp");
        const left = await readdir(tmp);
        const journal = left.find((n) => n.endsWith(".journal"));
        if (journal) {
          const lines = (await readFile(join(tmp, journal), "utf8")).trim().split("\n");
          expect(lines.length, "a journal kept has a part in it").toBeGreaterThan(1);
          expect(left.sort()).toEqual([journal, journal.replace(".journal", ".partial")].sort());
        } else expect(left).toEqual([]);
      } finally {
        umount(mnt);
      }
    });
  });
});

/** The manifest's entries by relative path (last line per path wins). */
async function readManifest(dest: string): Promise<Map<string, ManifestFile>> {
  const lines = (await readFile(join(dest, ".coldstart", "manifest.jsonl"), "utf8")).trim().split("\n");
  const out = new Map<string, ManifestFile>();
  for (const l of lines.slice(1).map((x) => JSON.parse(x))) out.set(l.path, l.file);
  return out;
}

/** Makes the fault proxy answer this bucket's listing with one extra (hostile) key. */
async function listingInjector(bucket: string, key: string): Promise<string> {
  fx.proxy.addRule({
    match: { method: "GET", path: `/${bucket}`, predicate: (r) => r.query.includes("list-type=2") },
    action: {
      kind: "status",
      status: 200,
      body:
        `<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>${bucket}</Name><Prefix>m/</Prefix>` +
        `<KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>` +
        `<Contents><Key>m/config.json</Key><Size>2</Size><ETag>"99914b932bd37a50b983c5e7c90ae93b"</ETag></Contents>` +
        `<Contents><Key>${key}</Key><Size>5</Size><ETag>"0123456789abcdef0123456789abcdef"</ETag></Contents>` +
        `</ListBucketResult>`,
      headers: { "content-type": "application/xml" },
    },
  });
  return fx.proxy.url;
}
