// Regression (issue 15, defect 10): when the disk was held by pinned models and models still inside
// their in-use grace, a new model failed at once with CS_INSUFFICIENT_SPACE and the pod waiting for it
// exited 1, although room freed a moment later. Now a model that could fit once models leave their
// grace waits (status `waiting`), and only one that could never fit fails at once.
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config/load.js";
import { Metrics } from "../../src/metrics/metrics.js";
import type { ModelManager } from "../../src/models/model-manager.js";
import { SlotScheduler } from "../../src/staging/scheduler.js";
import { testManager } from "../support/manager.js";
import { freshBucket, putFiles, testSource } from "../support/s3.js";
import { useS3Fixture } from "../support/s3-fixture.js";
import { file } from "../support/synthetic-model.js";
import { tmpfs, umount } from "../support/tmpfs.js";
import { waitFor } from "../support/wait.js";

const fx = useS3Fixture("cs-space-");
const MiB = 1024 * 1024;
const GRACE_MS = 10 * 60_000;

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A manager on a 20 MiB tmpfs, on a clock the test moves. */
async function onSmallDisk() {
  const mnt = await tmpfs(fx.work, 20 * MiB);
  const root = join(mnt, "root");
  await mkdir(root);
  let now = Date.parse("2026-12-01T00:00:00Z");
  const config = loadConfig({
    env: {
      COLDSTART_ROOT: root,
      COLDSTART_SOURCES_ALLOW: "s3://sp-*/**",
      COLDSTART_PART_SIZE: "1MiB",
      COLDSTART_IN_USE_GRACE: `${GRACE_MS}`,
      COLDSTART_EVICTION_HIGH_WATERMARK: "100",
      COLDSTART_EVICTION_LOW_WATERMARK: "99",
    },
  });
  const source = testSource(fx.s3);
  const metrics = new Metrics(undefined, { defaultMetrics: false });
  const managers: ModelManager[] = [];
  /** A manager on the root, as a (re)started daemon makes it: the state on disk is reloaded. */
  const open = async () => {
    const m = await testManager({
      root,
      source,
      scheduler: new SlotScheduler(4),
      config,
      logger: pino({ level: "silent" }),
      metrics,
      now: () => now,
    });
    managers.push(m);
    await m.start();
    return m;
  };
  const manager = await open();
  cleanups.push(async () => {
    for (const m of managers) await m.drain(0);
    source.close();
    umount(mnt);
  });
  const bucket = await freshBucket(fx.client, "sp");
  const model = async (id: string, mib: number, pin = false) => {
    await putFiles(fx.client, bucket, `${id}/`, [file("w.bin", Buffer.alloc(mib * MiB, id))]);
    await manager.request(
      id,
      { source: `s3://${bucket}/${id}/`, ...(pin ? { pin } : {}) },
      { waited: false },
    );
  };
  return { manager, metrics, model, reopen: open, advance: (ms: number) => (now += ms) };
}

describe("a model that does not fit yet", () => {
  it("waits while a model in use holds the room, then stages once its grace ends", async () => {
    const { manager, metrics, model, advance } = await onSmallDisk();
    await model("p", 12);
    expect((await manager.waitReady("p", 60_000)).outcome).toBe("ready");
    expect(await manager.markInUse("p")).toBeDefined(); // handed to a pod: in use for the grace
    await model("n", 10);
    const waiting = await waitFor(() => manager.get("n").waiting, { what: "n to wait for space" });
    expect(waiting).toMatchObject({ reason: "space", needBytes: 10 * MiB });
    expect(waiting.message).toMatch(/held by pinned models, models in use/);
    expect(manager.get("n")).toMatchObject({ state: "staging" });
    expect((await metrics.modelsWaitingForSpace.get()).values[0]?.value).toBe(1);
    // A pod waiting for n sees "not ready yet" (503 timeout), not "failed".
    expect((await manager.waitReady("n", 0)).outcome).toBe("timeout");
    expect(
      manager
        .list()
        .map((m) => m.id)
        .sort(),
    ).toEqual(["n", "p"]);

    advance(GRACE_MS + 1);
    // What the daemon's 30 s disk pass does: evict over the watermarks, and wake jobs waiting for room.
    await manager.enforceWatermarks();
    const n = await manager.waitReady("n", 60_000);
    expect([n.outcome, n.status.error, n.status.waiting]).toEqual(["ready", undefined, undefined]);
    expect(manager.list().map((m) => m.id)).toEqual(["n"]); // p, out of its grace, made the room
    expect((await metrics.modelsWaitingForSpace.get()).values[0]?.value).toBe(0);
  });

  it("fails at once when it could never fit: the room is held by pinned models", async () => {
    const { manager, model } = await onSmallDisk();
    await model("p", 12, true);
    expect((await manager.waitReady("p", 60_000)).outcome).toBe("ready");
    await model("n", 10);
    const n = await manager.waitReady("n", 60_000);
    expect(n.outcome).toBe("failed");
    expect(n.status.error?.code).toBe("CS_INSUFFICIENT_SPACE");
    expect(n.status.error?.message).toMatch(/can never have them: .*\(pinned models hold 12582912\)$/);
    expect(manager.get("p").state).toBe("ready");
  });

  it("a model waiting for space stops with the daemon at once, and the next daemon resumes it", async () => {
    const { manager, model, reopen, advance } = await onSmallDisk();
    await model("p", 12);
    await manager.waitReady("p", 60_000);
    await manager.markInUse("p");
    await model("n", 10);
    await waitFor(() => manager.get("n").waiting, { what: "n to wait for space" });
    // A grace far longer than the test: a drain that waited for n would time the test out.
    await manager.drain(10 * 60_000);
    expect(manager.get("n")).toMatchObject({ state: "staging" });

    // The next daemon, once p's hand-over grace is over, resumes n and makes its room.
    advance(GRACE_MS + 1);
    const next = await reopen();
    const n = await next.waitReady("n", 60_000);
    expect([n.outcome, n.status.error]).toEqual(["ready", undefined]);
    expect(next.list().map((m) => m.id)).toEqual(["n"]);
  });
});
