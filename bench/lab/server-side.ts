/**
 * The lab's helpers that run in the server namespace, next to the S3 server, so that neither seeding
 * nor the fault proxy's upstream leg crosses the shaped link (run.ts starts them there):
 *
 *   server-side.ts seed ENDPOINT [DATASET...]
 *                                  uploads the datasets' files (default: every scenario's); prints their
 *                                  digests as one JSON line
 *   server-side.ts faults ENDPOINT HOST PORT EVERY
 *                                  a proxy in front of ENDPOINT that answers 503 SlowDown to every
 *                                  EVERY-th GET; prints "listening URL", serves, and at SIGTERM
 *                                  prints "served N 503s to M GETs"
 *   server-side.ts model ENDPOINT SHARDS SHARD_MIB
 *                                  uploads a generated safetensors model (syntheticModel) under m/ in a
 *                                  new bucket; prints {bucket, prefix, files: [{relPath, size, sha256}]}
 *   server-side.ts count ENDPOINT HOST PORT
 *                                  a proxy in front of ENDPOINT that only counts: prints "listening URL",
 *                                  then at each SIGUSR1 "served N" (object bytes of 2xx GETs since the last
 *                                  SIGUSR1) and starts counting again from zero
 *
 * Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
 */
import { CreateBucketCommand } from "@aws-sdk/client-s3";
import pLimit from "p-limit";
import { startFaultProxy } from "../../test/support/fault-proxy.js";
import { putFiles, putMultipart, seedClient } from "../../test/support/s3.js";
import { syntheticModel } from "../../test/support/synthetic-model.js";
import { SCENARIOS, type SeededFile, scenarioFiles } from "./scenarios.js";

const [command, endpoint = "", ...rest] = process.argv.slice(2);

/** The lab's RGW, with the credentials the lab passes in the environment. */
function labClient(endpoint: string) {
  return seedClient({
    endpoint,
    region: "us-east-1",
    accessKeyId: process.env.AWS_ACCESS_KEY_ID ?? "",
    secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY ?? "",
  });
}
/** Files this large are uploaded multipart. */
const MULTIPART_FROM = 16 << 20;

if (command === "seed") {
  const client = labClient(endpoint);
  const bucket = "coldstart-lab";
  await client.send(new CreateBucketCommand({ Bucket: bucket }));
  const seeded: Record<string, SeededFile[]> = {};
  // One scenario's bytes in memory at a time; scenarios sharing a dataset share its upload.
  for (const s of SCENARIOS) {
    if (seeded[s.dataset] || (rest.length && !rest.includes(s.dataset))) continue;
    const files = scenarioFiles(s.dataset);
    const big = files.filter((f) => f.body.length >= MULTIPART_FROM);
    await putFiles(
      client,
      bucket,
      `${s.dataset}/`,
      files.filter((f) => f.body.length < MULTIPART_FROM),
      16,
    );
    // As `aws s3 cp` uploads them: multipart, 8 MiB parts. Models in S3 mostly got there that way.
    const limit = pLimit(2);
    await Promise.all(
      big.map((f) => limit(() => putMultipart(client, bucket, `${s.dataset}/${f.relPath}`, f.body, 8 << 20))),
    );
    seeded[s.dataset] = files.map((f) => ({ relPath: f.relPath, size: f.body.length, sha256: f.sha256 }));
  }
  client.destroy();
  process.stdout.write(`${JSON.stringify({ bucket, datasets: seeded })}\n`);
} else if (command === "faults") {
  const [host = "127.0.0.1", port = "0", every = "10"] = rest;
  const proxy = await startFaultProxy(endpoint, { host, port: Number(port) });
  let gets = 0;
  proxy.addRule({
    match: { method: "GET", predicate: () => ++gets % Number(every) === 0 },
    action: { kind: "status", status: 503 },
  });
  // The proxy records every request for tests; a long benchmark must not keep them all.
  setInterval(() => proxy.resetStats(), 5_000).unref();
  process.stdout.write(`listening ${proxy.url}\n`);
  // The lab reports how many 503s a scenario really served.
  process.on("SIGTERM", () => {
    process.stdout.write(`served ${Math.floor(gets / Number(every))} 503s to ${gets} GETs\n`);
    void proxy.close().then(() => process.exit(0));
  });
} else if (command === "model") {
  const [shards = "4", shardMib = "128"] = rest;
  const client = labClient(endpoint);
  const bucket = "coldstart-fanout";
  const prefix = "m/";
  await client.send(new CreateBucketCommand({ Bucket: bucket }));
  const files = syntheticModel({ shards: Number(shards), shardBytes: Number(shardMib) * 1048576 });
  await putFiles(
    client,
    bucket,
    prefix,
    files.filter((f) => f.body.length < MULTIPART_FROM),
    8,
  );
  // As `aws s3 cp` uploads them, like the scenarios' files.
  const limit = pLimit(2);
  await Promise.all(
    files
      .filter((f) => f.body.length >= MULTIPART_FROM)
      .map((f) => limit(() => putMultipart(client, bucket, `${prefix}${f.relPath}`, f.body, 8 << 20))),
  );
  client.destroy();
  const seeded: SeededFile[] = files.map((f) => ({
    relPath: f.relPath,
    size: f.body.length,
    sha256: f.sha256,
  }));
  process.stdout.write(`${JSON.stringify({ bucket, prefix, files: seeded })}\n`);
} else if (command === "count") {
  const [host = "127.0.0.1", port = "0"] = rest;
  const proxy = await startFaultProxy(endpoint, { host, port: Number(port) });
  process.stdout.write(`listening ${proxy.url}\n`);
  process.on("SIGUSR1", () => {
    process.stdout.write(`served ${proxy.bytesServed().total}\n`);
    proxy.resetStats();
  });
  process.on("SIGTERM", () => void proxy.close().then(() => process.exit(0)));
} else {
  process.stderr.write(
    "usage: server-side.ts seed ENDPOINT | faults ENDPOINT HOST PORT EVERY | model ENDPOINT SHARDS SHARD_MIB | count ENDPOINT HOST PORT\n",
  );
  process.exit(2);
}
