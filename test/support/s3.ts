import {
  CompleteMultipartUploadCommand,
  CreateBucketCommand,
  CreateMultipartUploadCommand,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
} from "@aws-sdk/client-s3";
import pLimit from "p-limit";
import { S3ObjectSource } from "../../src/s3/s3-object-source.js";
import type { SyntheticFile } from "./synthetic-model.js";

export interface S3Endpoint {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
}

/** A client for seeding test data. Buffer bodies and no request checksums: RGW refuses aws-chunked. */
export function seedClient(s3: S3Endpoint): S3Client {
  return new S3Client({
    endpoint: s3.endpoint,
    region: s3.region,
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
  });
}

/**
 * The product's S3 source against the test server (or, with `endpoint`, the fault proxy in front of
 * it), with credentials from the environment as in production.
 */
export function testSource(
  s3: S3Endpoint,
  options: { endpoint?: string; maxSockets?: number; requestTimeoutMs?: number } = {},
): S3ObjectSource {
  process.env.AWS_ACCESS_KEY_ID = s3.accessKeyId;
  process.env.AWS_SECRET_ACCESS_KEY = s3.secretAccessKey;
  return new S3ObjectSource({
    region: s3.region,
    endpoint: options.endpoint ?? s3.endpoint,
    pathStyle: true,
    maxSockets: options.maxSockets ?? 8,
    requestTimeoutMs: options.requestTimeoutMs ?? 30_000,
  });
}

let counter = 0;
/** A fresh bucket per test keeps tests independent on one shared server. */
export async function freshBucket(client: S3Client, hint = "t"): Promise<string> {
  const name = `${hint}-${process.pid}-${Date.now().toString(36)}-${counter++}`.toLowerCase().slice(0, 63);
  await client.send(new CreateBucketCommand({ Bucket: name }));
  return name;
}

export async function putFiles(
  client: S3Client,
  bucket: string,
  prefix: string,
  files: SyntheticFile[],
  concurrency = 8,
): Promise<void> {
  const limit = pLimit(concurrency);
  await Promise.all(
    files.map((f) =>
      limit(() =>
        client.send(new PutObjectCommand({ Bucket: bucket, Key: prefix + f.relPath, Body: f.body })),
      ),
    ),
  );
}

/** Uploads `body` as a multipart object (ETag "<md5>-N"), parts of `partSize` bytes. */
export async function putMultipart(
  client: S3Client,
  bucket: string,
  key: string,
  body: Buffer,
  partSize: number,
): Promise<void> {
  const { UploadId } = await client.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: key }));
  const parts: { ETag: string | undefined; PartNumber: number }[] = [];
  for (let at = 0, n = 1; at < body.length; at += partSize, n++) {
    const out = await client.send(
      new UploadPartCommand({
        Bucket: bucket,
        Key: key,
        UploadId,
        PartNumber: n,
        Body: body.subarray(at, at + partSize),
      }),
    );
    parts.push({ ETag: out.ETag, PartNumber: n });
  }
  await client.send(
    new CompleteMultipartUploadCommand({
      Bucket: bucket,
      Key: key,
      UploadId,
      MultipartUpload: { Parts: parts },
    }),
  );
}
