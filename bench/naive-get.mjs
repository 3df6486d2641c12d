// The baseline: one plain GetObject per file, one at a time, streamed to disk — what a script
// written in five minutes does. Plain JS so its CPU time carries no transpiler.
// usage: node bench/naive-get.mjs BUCKET PREFIX DEST ENDPOINT
import { createWriteStream } from "node:fs";
import { mkdir } from "node:fs/promises";
import { dirname, join } from "node:path";
import { pipeline } from "node:stream/promises";
import { GetObjectCommand, paginateListObjectsV2, S3Client } from "@aws-sdk/client-s3";

const [bucket, prefix, dest, endpoint] = process.argv.slice(2);
const client = new S3Client({
  endpoint,
  region: process.env.AWS_REGION ?? "us-east-1",
  forcePathStyle: true,
  // Same footing as coldstart: no SDK response CRC.
  responseChecksumValidation: "WHEN_REQUIRED",
});
for await (const page of paginateListObjectsV2({ client }, { Bucket: bucket, Prefix: prefix })) {
  for (const o of page.Contents ?? []) {
    const target = join(dest, o.Key.slice(prefix.length));
    await mkdir(dirname(target), { recursive: true });
    const out = await client.send(new GetObjectCommand({ Bucket: bucket, Key: o.Key }));
    await pipeline(out.Body, createWriteStream(target));
  }
}
client.destroy();
