import { createHash } from "node:crypto";
import { Readable } from "node:stream";
import type { ObjectChecksum } from "../checksums/types.js";
import type { GetOptions, GetResponse, ObjectHead, ObjectInfo, ObjectSource } from "./object-source.js";

/** A body is handed out in chunks of this size, as a socket would. */
const CHUNK = 64 * 1024;

interface Stored {
  body: Buffer;
  etag: string;
  checksum: ObjectChecksum | undefined;
  partSizes: number[] | undefined;
}

/**
 * An object store in memory, behind the same seam as S3 (src/s3/object-source.ts) and held to the
 * same conformance suite (test/s3/object-source-conformance.ts): the engine's logic tested without a
 * server. Errors are shaped like the SDK's (name = S3's code, `$metadata.httpStatusCode`), so the
 * retry rules and the error catalog treat them alike.
 */
export class MemoryObjectSource implements ObjectSource {
  readonly #buckets = new Map<string, Map<string, Stored>>();

  /**
   * Stores an object. `partSizes` makes it a multipart object (its ETag is S3's MD5 of the parts'
   * MD5s with a "-N" suffix); `checksum` is what S3 would return with checksum mode on.
   */
  put(
    bucket: string,
    key: string,
    body: Uint8Array,
    options: { partSizes?: number[]; checksum?: ObjectChecksum } = {},
  ): ObjectInfo {
    const bytes = Buffer.from(body);
    const parts = options.partSizes;
    if (parts && parts.reduce((a, b) => a + b, 0) !== bytes.length) {
      throw new Error(
        `part sizes of ${key} add up to ${parts.reduce((a, b) => a + b, 0)}, not ${bytes.length}`,
      );
    }
    const etag = parts ? multipartEtag(bytes, parts) : `"${md5(bytes).toString("hex")}"`;
    const objects = this.#buckets.get(bucket) ?? new Map<string, Stored>();
    this.#buckets.set(bucket, objects);
    objects.set(key, { body: bytes, etag, checksum: options.checksum, partSizes: parts });
    return { key, size: bytes.length, etag };
  }

  delete(bucket: string, key: string): void {
    this.#buckets.get(bucket)?.delete(key);
  }

  async *list(bucket: string, prefix: string, signal?: AbortSignal): AsyncIterable<ObjectInfo> {
    const objects = this.#buckets.get(bucket);
    if (!objects) throw s3Error(404, "NoSuchBucket", `bucket ${bucket} does not exist`);
    // ListObjectsV2 order: by key, as UTF-8 bytes.
    const keys = [...objects.keys()].filter((k) => k.startsWith(prefix)).sort(byUtf8);
    for (const key of keys) {
      signal?.throwIfAborted();
      const o = objects.get(key);
      if (o) yield { key, size: o.body.length, etag: o.etag };
    }
  }

  async head(bucket: string, key: string, signal?: AbortSignal): Promise<ObjectHead> {
    signal?.throwIfAborted();
    const o = this.#object(bucket, key, "NotFound");
    return { size: o.body.length, etag: o.etag, ...(o.checksum ? { checksum: o.checksum } : {}) };
  }

  async partSizes(bucket: string, key: string, signal?: AbortSignal): Promise<number[] | undefined> {
    signal?.throwIfAborted();
    return this.#object(bucket, key, "NoSuchKey").partSizes;
  }

  async get(bucket: string, key: string, options: GetOptions): Promise<GetResponse> {
    options.signal?.throwIfAborted();
    options.onSource?.(false);
    const o = this.#object(bucket, key, "NoSuchKey");
    if (options.ifMatch !== undefined && options.ifMatch !== o.etag) {
      throw s3Error(
        412,
        "PreconditionFailed",
        "At least one of the pre-conditions you specified did not hold",
      );
    }
    const size = o.body.length;
    const range = options.range;
    if (range && (range.start >= size || range.end < range.start)) {
      throw s3Error(416, "InvalidRange", "The requested range is not satisfiable");
    }
    const start = range?.start ?? 0;
    const end = range ? Math.min(range.end, size - 1) : size - 1;
    const slice = o.body.subarray(start, end + 1);
    const chunks: Buffer[] = [];
    for (let at = 0; at < slice.length; at += CHUNK) chunks.push(slice.subarray(at, at + CHUNK));
    return {
      statusCode: range ? 206 : 200,
      contentLength: slice.length,
      contentRange: range ? `bytes ${start}-${end}/${size}` : undefined,
      etag: o.etag,
      // S3 returns an object's checksum only for the whole object (or a whole part).
      checksum: options.checksumMode && !range ? o.checksum : undefined,
      body: Readable.from(chunks, { objectMode: false }),
    };
  }

  close(): void {}

  #object(bucket: string, key: string, missing: "NotFound" | "NoSuchKey"): Stored {
    const o = this.#buckets.get(bucket)?.get(key);
    if (!o) throw s3Error(404, missing, `${bucket}/${key} does not exist`);
    return o;
  }
}

function md5(b: Uint8Array): Buffer {
  return createHash("md5").update(b).digest();
}

function multipartEtag(body: Buffer, parts: number[]): string {
  let at = 0;
  const digests = parts.map((n) => {
    const d = md5(body.subarray(at, at + n));
    at += n;
    return d;
  });
  return `"${md5(Buffer.concat(digests)).toString("hex")}-${parts.length}"`;
}

function byUtf8(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

function s3Error(status: number, code: string, message: string): Error {
  return Object.assign(new Error(message), { name: code, Code: code, $metadata: { httpStatusCode: status } });
}
