import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { MemoryObjectSource } from "../../src/s3/memory-object-source.js";
import { StageJob } from "../../src/staging/stage-job.js";
import { digests, expectedDigests, listTree } from "../support/stage.js";
import { syntheticModel } from "../support/synthetic-model.js";

// Unit tier: the staging engine against the in-memory object source (held to the same conformance
// suite as S3), for the engine's own logic without a server; the fault-injected runs against RGW are
// in stage-job.test.ts.

const MiB = 1024 * 1024;
let dest: string;
beforeEach(async () => {
  dest = await mkdtemp(join(tmpdir(), "cs-stage-mem-"));
});
afterEach(async () => {
  await rm(dest, { recursive: true, force: true });
});

function job(source: MemoryObjectSource, prefix = "m/") {
  return new StageJob({
    source,
    bucket: "b",
    prefix,
    dest,
    partSizeBytes: MiB,
    concurrency: 4,
    filters: { include: [], exclude: [] },
    retry: { maxAttempts: 3, baseDelayMs: 1, maxDelayMs: 5 },
    requestTimeoutMs: 30_000,
  });
}

describe("StageJob on the in-memory source", () => {
  it("stages a sharded model, a multipart shard included, byte for byte", async () => {
    const source = new MemoryObjectSource();
    const files = syntheticModel({ shards: 2, shardBytes: 3 * MiB });
    const multipart = files.find((f) => f.relPath.endsWith(".safetensors"));
    for (const f of files) {
      const partSizes = f === multipart ? [2 * MiB, f.body.length - 2 * MiB] : undefined;
      source.put("b", `m/${f.relPath}`, f.body, partSizes ? { partSizes } : {});
    }
    const result = await job(source).run();
    expect(result.files).toBe(files.length);
    expect(await digests(dest, files)).toEqual(expectedDigests(files));
    expect(await listTree(dest)).toEqual(files.map((f) => f.relPath).sort());
  });

  it("an object that changes between the listing and its GET fails with CS_OBJECT_CHANGED and shows nothing", async () => {
    const source = new MemoryObjectSource();
    const files = syntheticModel({ shards: 1, shardBytes: 2 * MiB });
    for (const f of files) source.put("b", `m/${f.relPath}`, f.body);
    const shard = files.find((f) => f.relPath.endsWith(".safetensors"));
    if (!shard) throw new Error("no shard");
    const changing = job(source);
    // Rewritten after the listing: its ETag no longer matches, every GET is refused with 412.
    const list = source.list.bind(source);
    source.list = async function* (bucket, prefix, signal) {
      yield* list(bucket, prefix, signal);
      source.put("b", `m/${shard.relPath}`, Buffer.concat([shard.body, Buffer.from("x")]));
    };
    await expect(changing.run()).rejects.toMatchObject({ code: "CS_OBJECT_CHANGED" });
    expect(await listTree(dest)).not.toContain(shard.relPath);
  });
});
