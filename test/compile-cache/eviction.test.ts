/**
 * Keyed compile-cache directories take part in the staging root's eviction: on a real (tmpfs) disk,
 * a model that needs room evicts a compile cache used less recently than the models, and a cache
 * handed to a pod within the grace period is spared.
 */
import { mkdir, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import pino from "pino";
import { describe, expect, it } from "vitest";
import { CompileCacheManager } from "../../src/compile-cache/cache-manager.js";
import { loadConfig } from "../../src/config/load.js";
import { Metrics } from "../../src/metrics/metrics.js";
import { SlotScheduler } from "../../src/staging/scheduler.js";
import { testManager } from "../support/manager.js";
import { freshBucket, putFiles, testSource } from "../support/s3.js";
import { useS3Fixture } from "../support/s3-fixture.js";
import { file } from "../support/synthetic-model.js";
import { tmpfs, umount } from "../support/tmpfs.js";
import { waitFor } from "../support/wait.js";

const fx = useS3Fixture("cs-cc-evict-");
const MiB = 1024 * 1024;
const GPU = { gpuProduct: "NVIDIA-H100-80GB-HBM3", computeCapability: "9.0", driverMajor: "570" };

async function onSmallDisk(sizeMiB: number, body: (root: string) => Promise<void>) {
  const mnt = await tmpfs(fx.work, sizeMiB * MiB);
  try {
    await body(join(mnt, "root"));
  } finally {
    umount(mnt);
  }
}

async function harness(root: string, clock: { t: number }) {
  await mkdir(root, { recursive: true });
  const config = loadConfig({
    env: {
      COLDSTART_ROOT: root,
      COLDSTART_SOURCES_ALLOW: "s3://ccev-*/**",
      COLDSTART_PART_SIZE: "1MiB",
      COLDSTART_IN_USE_GRACE: "10m",
      COLDSTART_EVICTION_HIGH_WATERMARK: "100",
      COLDSTART_EVICTION_LOW_WATERMARK: "99",
      COLDSTART_COMPILE_CACHE_QUIET: "1s",
      COLDSTART_COMPILE_CACHE_SCAN_INTERVAL: "1h",
    },
  });
  const logger = pino({ level: "silent" });
  const metrics = new Metrics(undefined, { defaultMetrics: false });
  const now = () => clock.t;
  const caches = new CompileCacheManager({
    root,
    config,
    remoteFor: () => {
      throw new Error("no remote in this test");
    },
    gpu: () => GPU,
    logger,
    metrics,
    version: "test",
    now,
  });
  const source = testSource(fx.s3, { endpoint: fx.proxy.url });
  const manager = await testManager({
    root,
    source,
    scheduler: new SlotScheduler(4),
    config,
    logger,
    metrics,
    extra: caches,
    now,
  });
  await manager.start();
  await caches.start();
  return {
    caches,
    manager,
    metrics,
    close: async () => {
      await manager.drain(0);
      await caches.stop();
      source.close();
    },
  };
}

async function stage(h: Awaited<ReturnType<typeof harness>>, bucket: string, id: string) {
  await h.manager.request(id, { source: `s3://${bucket}/${id}/` }, { waited: false });
  const { outcome, status } = await h.manager.waitReady(id, 30_000);
  expect([outcome, status.error?.code]).toEqual(["ready", undefined]);
}

describe("compile caches in the staging root's eviction", () => {
  it("a model that needs room evicts a compile cache used less recently; a handed-over one is spared", async () => {
    await onSmallDisk(24, async (root) => {
      const clock = { t: Date.parse("2026-11-22T10:00:00Z") };
      const h = await harness(root, clock);
      try {
        const bucket = await freshBucket(fx.client, "ccev");
        for (const id of ["a", "b"])
          await putFiles(fx.client, bucket, `${id}/`, [file("w.bin", Buffer.alloc(8 * MiB, id))]);

        // A pod's miss: the directory is made, and the "engine" compiles 10 MiB into it.
        const old = await h.caches.restore({ identity: { vllm: "0.11.0" }, timeoutMs: 5000 });
        expect(old.outcome).toBe("miss");
        await writeFile(join(old.path, "graph.bin"), Buffer.alloc(10 * MiB, 1));
        await h.caches.scan();
        expect(h.caches.get(old.key).bytes).toBe(10 * MiB);
        // While it is handed over (in-use grace) it is not a candidate.
        expect(h.caches.evictables()).toEqual([]);

        clock.t += 60 * 60_000;
        await stage(h, bucket, "a");
        clock.t += 60_000;
        // b does not fit beside a and the cache: the cache, used an hour before a, goes.
        await stage(h, bucket, "b");
        expect(h.caches.list()).toEqual([]);
        await expect(stat(old.path)).rejects.toMatchObject({ code: "ENOENT" });
        expect(
          h.manager
            .list()
            .map((m) => m.id)
            .sort(),
        ).toEqual(["a", "b"]);
        const evicted = await h.metrics.compileCacheEvictions.get();
        expect(evicted.values.find((v) => v.labels.reason === "watermark")?.value).toBe(1);
      } finally {
        await h.close();
      }
    });
  });

  // Regression (review of issue 15): a model whose room a handed-over compile cache holds failed at
  // once with CS_INSUFFICIENT_SPACE; only evictable caches counted as room that could ever free.
  it("a model that needs the room of a cache still in its in-use grace waits for it, then takes it", async () => {
    await onSmallDisk(24, async (root) => {
      const clock = { t: Date.parse("2026-11-22T10:00:00Z") };
      const h = await harness(root, clock);
      try {
        const bucket = await freshBucket(fx.client, "ccev");
        await putFiles(fx.client, bucket, "big/", [file("w.bin", Buffer.alloc(16 * MiB, 2))]);
        const cache = await h.caches.restore({ identity: { vllm: "0.11.0" }, timeoutMs: 5000 });
        await writeFile(join(cache.path, "graph.bin"), Buffer.alloc(10 * MiB, 1));
        await h.caches.scan();
        expect(h.caches.evictables()).toEqual([]); // handed over: in its grace

        await h.manager.request("big", { source: `s3://${bucket}/big/` }, { waited: false });
        const waiting = await waitFor(() => h.manager.get("big").waiting, { what: "big to wait for space" });
        expect(waiting.reason).toBe("space");

        clock.t += 60 * 60_000; // the cache's grace and quiet period are over
        await h.manager.enforceWatermarks();
        const { outcome, status } = await h.manager.waitReady("big", 30_000);
        expect([outcome, status.error?.code]).toEqual(["ready", undefined]);
        expect(h.caches.list()).toEqual([]);
      } finally {
        await h.close();
      }
    });
  });
});
