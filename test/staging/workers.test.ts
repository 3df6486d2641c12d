import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { Worker } from "node:worker_threads";
import { afterEach, describe, expect, it } from "vitest";
import { PartWorkers } from "../../src/staging/workers/pool.js";
import { freshBucket, putFiles } from "../support/s3.js";
import { useS3Fixture } from "../support/s3-fixture.js";
import { digests, expectedDigests, stage } from "../support/stage.js";
import { sha256, syntheticModel } from "../support/synthetic-model.js";
import { waitFor } from "../support/wait.js";

const MiB = 1024 * 1024;
const fx = useS3Fixture("cs-workers-");
let pool: PartWorkers | undefined;
afterEach(async () => {
  await pool?.close();
  pool = undefined;
});

describe("part worker threads", () => {
  it("a thread that dies mid-part: the part starts over on a new thread, and only true digests are journaled", async () => {
    const files = syntheticModel({ shards: 1, shardBytes: 4 * MiB });
    const shard = files.find((f) => f.relPath.endsWith(".safetensors"));
    if (!shard) throw new Error("no shard");
    const bucket = await freshBucket(fx.client);
    await putFiles(fx.client, bucket, "m/", files);
    // The first ranged GET sends 300 KiB and then nothing: its thread holds a part half in, with
    // bytes written and digests running, when the test ends the thread.
    fx.proxy.addRule({
      match: { method: "GET", hasRange: true },
      times: 1,
      action: { kind: "stall", afterBytes: 300 * 1024, ms: 600_000 },
    });
    const threads: Worker[] = [];
    pool = new PartWorkers({ size: 1, onSpawn: (w) => threads.push(w) });
    const dest = join(fx.work, "dest");

    const staging = stage(fx.s3, {
      bucket,
      prefix: "m/",
      dest,
      endpoint: fx.proxy.url,
      partSizeBytes: MiB,
      concurrency: 2,
      runPart: pool.run,
    });
    await waitFor(() => fx.proxy.faultsFired().stall === 1, { what: "a part stalled mid-body" });
    const stalled = fx.proxy.requests.find((r) => r.headers.range);
    const first = threads[0];
    if (!stalled || !first) throw new Error("no stalled request or no thread");
    await first.terminate();
    const result = await staging;

    expect(threads).toHaveLength(2);
    expect(result.retries).toBeGreaterThanOrEqual(1);
    // The stalled range was asked for again from its first byte: the dead thread's digest state
    // is gone, so nothing of the part could be resumed on the new one.
    const again = fx.proxy.requests.filter((r) => r.headers.range === stalled.headers.range);
    expect(again).toHaveLength(2);
    expect(await digests(dest, files)).toEqual(expectedDigests(files));
    // The manifest's piece digests are those of the source's bytes (a digest over a part's second
    // half only, or over its first half twice, would differ).
    const manifest = (await readFile(join(dest, ".coldstart", "manifest.jsonl"), "utf8"))
      .trim()
      .split("\n")
      .slice(1)
      .map((l) => JSON.parse(l) as { path: string; file: { pieces: string[] } });
    const pieces = manifest.find((e) => e.path === shard.relPath)?.file.pieces;
    const truth = Array.from({ length: Math.ceil(shard.body.length / MiB) }, (_, i) =>
      sha256(shard.body.subarray(i * MiB, (i + 1) * MiB)),
    );
    expect(pieces).toEqual(truth);
  });

  it("closing the pool ends its threads; a part asked for afterwards runs on the calling thread", async () => {
    const files = syntheticModel({ shards: 1, shardBytes: 2 * MiB });
    const bucket = await freshBucket(fx.client);
    await putFiles(fx.client, bucket, "m/", files);
    const threads: Worker[] = [];
    pool = new PartWorkers({ size: 2, onSpawn: (w) => threads.push(w) });
    const dest = join(fx.work, "a");
    await stage(fx.s3, { bucket, prefix: "m/", dest, partSizeBytes: MiB, runPart: pool.run });
    expect(threads.length).toBeGreaterThan(0);
    const exits = threads.map((w) => new Promise((resolve) => w.once("exit", resolve)));
    await pool.close();
    await Promise.all(exits);

    const later = join(fx.work, "b");
    await stage(fx.s3, { bucket, prefix: "m/", dest: later, partSizeBytes: MiB, runPart: pool.run });
    expect(await digests(later, files)).toEqual(expectedDigests(files));
    expect(threads.length).toBe(exits.length);
  });
});
