/**
 * The shared store of compile caches, an S3 prefix laid out as:
 *
 *   <prefix><key>/manifest.json        the cache: what files, their digests, which pack holds them
 *   <prefix><key>/packs/<uuid>.tar.gz  one publisher's files, uploaded before its manifest
 *   <prefix><key>/last-hit             empty; its LastModified is when a node last restored the key
 *
 * A pack is uploaded under a name no one else uses and the manifest is written last, so a reader
 * only ever finds a manifest whose pack is complete; a publisher killed mid-upload leaves a pack
 * (or an unfinished multipart upload) that no manifest names, which `cache prune` removes.
 */
import { randomUUID } from "node:crypto";
import type { Readable } from "node:stream";
import {
  AbortMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  PutObjectCommand,
  paginateListObjectsV2,
  S3Client,
} from "@aws-sdk/client-s3";
import { Upload } from "@aws-sdk/lib-storage";
import pLimit from "p-limit";
import { z } from "zod";
import type { Config } from "../config/schema.js";
import { statusOf, toS3Error } from "../s3/retry.js";
import type { S3Location } from "../s3/uri.js";
import { checkManifestPath, remoteInvalid, sha256Tap } from "./pack.js";

export const MANIFEST_FORMAT = "coldstart-compile-cache/v1";
/** A manifest lists every file; even 200,000 of them stay well under this. */
const MAX_MANIFEST_BYTES = 64 * 1024 * 1024;

const hex64 = z.string().regex(/^[0-9a-f]{64}$/, "64 lowercase hex digits");
const count = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);

export const manifestSchema = z
  .object({
    format: z.literal(MANIFEST_FORMAT),
    key: z.string().min(1).max(200),
    /** The key's canonical text: what a reader can compare with its own inputs. */
    canonical: z.string().max(8192),
    createdAt: z.iso.datetime(),
    publisher: z.object({ node: z.string().max(253).optional(), version: z.string().max(64) }).strict(),
    pack: z
      .object({
        name: z.string().regex(/^packs\/[0-9a-f-]{36}\.tar\.gz$/, "packs/<uuid>.tar.gz"),
        bytes: count,
        sha256: hex64,
      })
      .strict(),
    /** Unpacked bytes, the sum of the files' sizes. */
    bytes: count,
    files: z
      .array(z.object({ path: z.string().min(1).max(4096), bytes: count, sha256: hex64 }).strict())
      .max(1_000_000),
  })
  .strict();

export type Manifest = z.infer<typeof manifestSchema>;

export interface RemoteObject {
  key: string;
  size: number;
  lastModified: number;
}

/**
 * An S3 client for compile caches. Unlike staging (src/s3/s3-object-source.ts, maxAttempts 1: the
 * engine retries each part itself, resuming after the bytes already written, with its own metrics),
 * compile caches let the SDK retry: their calls are a manifest read, one pack stream and one upload,
 * none resumable mid-body, so the SDK's whole-request retry is all a retry could be, and each
 * outcome is judged by the manifest's digests, not by the transport.
 */
export function compileCacheClient(config: Pick<Config, "s3">): S3Client {
  return new S3Client({
    region: config.s3.region,
    ...(config.s3.endpoint ? { endpoint: config.s3.endpoint } : {}),
    forcePathStyle: config.s3.pathStyle,
    maxAttempts: 5,
    // The manifest's SHA-256 of the pack and of every file is the integrity check, end to end.
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
  });
}

export class RemoteStore {
  readonly uri: string;
  readonly #client: S3Client;
  readonly #loc: S3Location;

  constructor(client: S3Client, loc: S3Location) {
    this.#client = client;
    this.#loc = loc;
    this.uri = `s3://${loc.bucket}/${loc.prefix}`;
  }

  /** The key prefix of the store in its bucket ("" or ending in "/"). */
  get prefix(): string {
    return this.#loc.prefix;
  }

  /** The object key of something under a cache key's folder. */
  objectKey(key: string, rest: string): string {
    return `${this.#loc.prefix}${key}/${rest}`;
  }

  /** The manifest, validated; undefined when there is none (a miss). */
  async manifest(key: string, signal?: AbortSignal): Promise<Manifest | undefined> {
    let text: string;
    try {
      const out = await this.#client.send(
        new GetObjectCommand({ Bucket: this.#loc.bucket, Key: this.objectKey(key, "manifest.json") }),
        { abortSignal: signal },
      );
      if ((out.ContentLength ?? 0) > MAX_MANIFEST_BYTES) {
        (out.Body as Readable | undefined)?.destroy();
        throw remoteInvalid(
          `${key}: the manifest is ${out.ContentLength} bytes, more than a manifest can be`,
        );
      }
      text = (await out.Body?.transformToString("utf8")) ?? "";
    } catch (err) {
      // No manifest is a miss; no bucket is the operator's to fix, and must say so.
      const name = (err as { name?: string }).name;
      if (name === "NoSuchKey" || (statusOf(err) === 404 && name !== "NoSuchBucket")) return undefined;
      throw toS3Error(err, `${this.uri}${key}/manifest.json`, "GET");
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw remoteInvalid(`${key}: the manifest is not JSON`);
    }
    const result = manifestSchema.safeParse(parsed);
    if (!result.success) {
      const issue = result.error.issues[0];
      throw remoteInvalid(`${key}: manifest field ${issue?.path.join(".") || "(root)"}: ${issue?.message}`);
    }
    const m = result.data;
    if (m.key !== key) throw remoteInvalid(`${key}: the manifest is for another key, ${m.key}`);
    let total = 0;
    const seen = new Set<string>();
    for (const f of m.files) {
      checkManifestPath(f.path);
      if (seen.has(f.path)) throw remoteInvalid(`${key}: the manifest lists ${f.path} twice`);
      seen.add(f.path);
      total += f.bytes;
    }
    if (total !== m.bytes) throw remoteInvalid(`${key}: the files add up to ${total} bytes, not ${m.bytes}`);
    return m;
  }

  async hasManifest(key: string): Promise<boolean> {
    try {
      await this.#client.send(
        new HeadObjectCommand({ Bucket: this.#loc.bucket, Key: this.objectKey(key, "manifest.json") }),
      );
      return true;
    } catch (err) {
      if (statusOf(err) === 404) return false;
      throw err;
    }
  }

  /** The pack's bytes as a stream; the caller checks them against the manifest. */
  async pack(key: string, m: Manifest, signal?: AbortSignal): Promise<Readable> {
    const out = await this.#client.send(
      new GetObjectCommand({ Bucket: this.#loc.bucket, Key: this.objectKey(key, m.pack.name) }),
      { abortSignal: signal },
    );
    if (out.ContentLength !== undefined && out.ContentLength !== m.pack.bytes) {
      (out.Body as Readable | undefined)?.destroy();
      throw remoteInvalid(
        `${key}: the pack is ${out.ContentLength} bytes, the manifest says ${m.pack.bytes}`,
      );
    }
    return out.Body as Readable;
  }

  /**
   * Uploads a pack under a fresh name with lib-storage (multipart above 16 MiB, four parts in
   * flight, parts of a failed upload aborted), hashing the bytes on the way.
   */
  async uploadPack(
    key: string,
    body: Readable,
    signal?: AbortSignal,
  ): Promise<{ name: string; bytes: number; sha256: string }> {
    const name = `packs/${randomUUID()}.tar.gz`;
    const tap = sha256Tap();
    body.on("error", (e) => tap.stream.destroy(e));
    const upload = new Upload({
      client: this.#client,
      params: { Bucket: this.#loc.bucket, Key: this.objectKey(key, name), Body: body.pipe(tap.stream) },
      queueSize: 4,
      partSize: 16 * 1024 * 1024,
      leavePartsOnError: false,
    });
    const onAbort = () => void upload.abort().catch(() => {});
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      await upload.done();
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
    return { name, ...tap.result() };
  }

  /**
   * Writes the manifest unless one exists. `If-None-Match: *` makes this atomic where the store
   * supports conditional writes (AWS S3 since 2024); where it is ignored, the caller's re-check just
   * before narrows the race to a last-writer-wins between two complete caches.
   */
  async putManifest(m: Manifest): Promise<"written" | "exists"> {
    const put = (conditional: boolean) =>
      this.#client.send(
        new PutObjectCommand({
          Bucket: this.#loc.bucket,
          Key: this.objectKey(m.key, "manifest.json"),
          Body: `${JSON.stringify(m)}\n`,
          ContentType: "application/json",
          ...(conditional ? { IfNoneMatch: "*" } : {}),
        }),
      );
    try {
      await put(true);
      return "written";
    } catch (err) {
      const status = statusOf(err);
      if (status === 412 || status === 409) return "exists";
      // A store that refuses the header outright (501 NotImplemented): the check just made is all
      // the ordering there is, as on a store that ignores it.
      if (status !== 501) throw err;
    }
    if (await this.hasManifest(m.key)) return "exists";
    await put(false);
    return "written";
  }

  /** Marks a hit: `cache prune` keeps what nodes restore. Last writer wins, which is all we need. */
  async recordHit(key: string): Promise<void> {
    await this.#client.send(
      // An explicit length: the SDK warns on stdout about any PUT without one, an empty one included.
      new PutObjectCommand({
        Bucket: this.#loc.bucket,
        Key: this.objectKey(key, "last-hit"),
        Body: "",
        ContentLength: 0,
      }),
    );
  }

  /** Every object under the prefix, with the cache key it belongs to. */
  async *objects(): AsyncIterable<RemoteObject & { cacheKey: string; rest: string }> {
    const pages = paginateListObjectsV2(
      { client: this.#client, pageSize: 1000 },
      { Bucket: this.#loc.bucket, Prefix: this.#loc.prefix },
    );
    for await (const page of pages) {
      for (const o of page.Contents ?? []) {
        if (o.Key === undefined) continue;
        const within = o.Key.slice(this.#loc.prefix.length);
        const at = within.indexOf("/");
        yield {
          key: o.Key,
          size: o.Size ?? 0,
          lastModified: o.LastModified?.getTime() ?? 0,
          cacheKey: at < 0 ? "" : within.slice(0, at),
          rest: at < 0 ? within : within.slice(at + 1),
        };
      }
    }
  }

  /** Multipart uploads under the prefix that were never completed nor aborted (killed publishers). */
  async unfinishedUploads(): Promise<{ key: string; uploadId: string; initiated: number }[]> {
    const out: { key: string; uploadId: string; initiated: number }[] = [];
    let keyMarker: string | undefined;
    let idMarker: string | undefined;
    for (;;) {
      const page = await this.#client.send(
        new ListMultipartUploadsCommand({
          Bucket: this.#loc.bucket,
          Prefix: this.#loc.prefix,
          ...(keyMarker ? { KeyMarker: keyMarker } : {}),
          ...(idMarker ? { UploadIdMarker: idMarker } : {}),
        }),
      );
      for (const u of page.Uploads ?? []) {
        if (u.Key && u.UploadId)
          out.push({ key: u.Key, uploadId: u.UploadId, initiated: u.Initiated?.getTime() ?? 0 });
      }
      if (!page.IsTruncated) return out;
      keyMarker = page.NextKeyMarker;
      idMarker = page.NextUploadIdMarker;
    }
  }

  async abortUpload(key: string, uploadId: string): Promise<void> {
    await this.#client.send(
      new AbortMultipartUploadCommand({ Bucket: this.#loc.bucket, Key: key, UploadId: uploadId }),
    );
  }

  /**
   * Deletes objects (full keys). One DeleteObject each, not DeleteObjects: the batch call needs a
   * Content-MD5 the SDK no longer sends, which S3-compatible stores (Ceph RGW among them) refuse.
   */
  async delete(keys: string[]): Promise<void> {
    const limit = pLimit(8);
    await Promise.all(
      keys.map((Key) =>
        limit(() => this.#client.send(new DeleteObjectCommand({ Bucket: this.#loc.bucket, Key }))),
      ),
    );
  }
}
