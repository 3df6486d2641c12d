import { createHash, randomBytes } from "node:crypto";
import { beforeAll, describe, expect, it } from "vitest";
import type { BodyStream, ObjectSource } from "../../src/s3/object-source.js";
import { statusOf } from "../../src/s3/retry.js";

/** A store under test: a source reading one fresh bucket, and how to put objects into it. */
export interface ConformanceStore {
  source: ObjectSource;
  bucket: string;
  put(key: string, body: Buffer): Promise<void>;
  putMultipart(key: string, body: Buffer, partSize: number): Promise<void>;
  /** Whether the store answers GetObjectAttributes (Ceph RGW 16.2 does not: part sizes unknown). */
  partSizesKnown: boolean;
}

const KiB = 1024;
const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

function readAll(body: BodyStream): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    body.on("data", (c: Buffer) => {
      chunks.push(Buffer.from(c));
    });
    body.once("end", () => resolve(Buffer.concat(chunks)));
    body.once("error", reject);
  });
}

async function statusOfFailure(p: Promise<unknown>): Promise<number | undefined> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, "the call should have failed").toBeDefined();
  return statusOf(err);
}

/**
 * The ObjectSource contract the staging engine relies on, run against every implementation (the
 * in-memory one and S3 through Ceph RGW), as spegel's storetest runs against each store.
 */
export function objectSourceConformance(name: string, open: () => Promise<ConformanceStore>): void {
  describe(`ObjectSource conformance: ${name}`, () => {
    let s: ConformanceStore;
    const small = randomBytes(3 * KiB + 7);
    const big = randomBytes(700 * KiB);
    const multi = randomBytes(11 * 1024 * KiB);

    beforeAll(async () => {
      s = await open();
      await s.put("m/a.json", small);
      await s.put("m/sub/b.bin", big);
      await s.put("other/c.bin", small);
      await s.putMultipart("m/multi.bin", multi, 5 * 1024 * KiB);
    });

    it("lists every object under the prefix, by key, and nothing outside it", async () => {
      const listed = [];
      for await (const o of s.source.list(s.bucket, "m/")) listed.push(o);
      expect(listed.map((o) => [o.key, o.size])).toEqual([
        ["m/a.json", small.length],
        ["m/multi.bin", multi.length],
        ["m/sub/b.bin", big.length],
      ]);
      for (const o of listed) expect(o.etag).toMatch(/^"[0-9a-f]{32}(-\d+)?"$/);
      expect(listed.find((o) => o.key === "m/multi.bin")?.etag).toMatch(/-3"$/);
    });

    it("HEAD gives the listed size and ETag; a missing key is 404", async () => {
      const listed = new Map<string, string>();
      for await (const o of s.source.list(s.bucket, "m/")) listed.set(o.key, o.etag);
      const head = await s.source.head(s.bucket, "m/sub/b.bin");
      expect([head.size, head.etag]).toEqual([big.length, listed.get("m/sub/b.bin")]);
      expect(await statusOfFailure(s.source.head(s.bucket, "m/none"))).toBe(404);
    });

    it("a whole GET is 200 with the object's length, ETag and bytes", async () => {
      const { etag } = await s.source.head(s.bucket, "m/sub/b.bin");
      const res = await s.source.get(s.bucket, "m/sub/b.bin", { ifMatch: etag });
      expect([res.statusCode, res.contentLength, res.etag]).toEqual([200, big.length, etag]);
      expect(sha(await readAll(res.body))).toBe(sha(big));
    });

    it("a ranged GET is 206 with Content-Range, Content-Length and exactly those bytes", async () => {
      const { etag } = await s.source.head(s.bucket, "m/multi.bin");
      const range = { start: 5 * 1024 * KiB - 100, end: 5 * 1024 * KiB + 99 };
      const res = await s.source.get(s.bucket, "m/multi.bin", { range, ifMatch: etag });
      expect([res.statusCode, res.contentLength, res.contentRange]).toEqual([
        206,
        200,
        `bytes ${range.start}-${range.end}/${multi.length}`,
      ]);
      expect((await readAll(res.body)).equals(multi.subarray(range.start, range.end + 1))).toBe(true);
    });

    it("a stale If-Match is 412, a missing key 404, a range past the end 416", async () => {
      expect(await statusOfFailure(s.source.get(s.bucket, "m/a.json", { ifMatch: '"0123"' }))).toBe(412);
      expect(await statusOfFailure(s.source.get(s.bucket, "m/none", {}))).toBe(404);
      const past = { start: small.length + 10, end: small.length + 20 };
      expect(await statusOfFailure(s.source.get(s.bucket, "m/a.json", { range: past }))).toBe(416);
    });

    it("part sizes are the uploaded ones or unknown, never guessed", async () => {
      const parts = await s.source.partSizes(s.bucket, "m/multi.bin");
      expect(parts).toEqual(s.partSizesKnown ? [5 * 1024 * KiB, 5 * 1024 * KiB, 1024 * KiB] : undefined);
      const single = await s.source.partSizes(s.bucket, "m/a.json");
      expect(single === undefined || (single.length === 1 && single[0] === small.length)).toBe(true);
    });

    it("a GET with an aborted signal fails without an answer", async () => {
      const abort = new AbortController();
      abort.abort(new Error("stop"));
      const err = await s.source.get(s.bucket, "m/a.json", { signal: abort.signal }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(Error);
      // No HTTP status: the request never got an answer.
      expect(statusOf(err)).toBeUndefined();
    });
  });
}
