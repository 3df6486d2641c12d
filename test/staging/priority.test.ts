// Regression (review of issue 15): with the work list, each job queued at most one part per worker,
// so a job holding every slot had nothing queued when one freed, and a lower-priority job took it
// (a waited-for model lost slots to prefetches). A job keeps a part queued beyond its slots.
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { SlotScheduler } from "../../src/staging/scheduler.js";
import { StageJob } from "../../src/staging/stage-job.js";
import { freshBucket, putFiles, testSource } from "../support/s3.js";
import { useS3Fixture } from "../support/s3-fixture.js";
import { digests, expectedDigests } from "../support/stage.js";
import { file } from "../support/synthetic-model.js";
import { gate, waitFor } from "../support/wait.js";

const fx = useS3Fixture("cs-priority-");
const MiB = 1024 * 1024;

describe("priorities on a shared download budget", () => {
  it("once a higher-priority job queues, a lower-priority job gets no slot until it has nothing left", async () => {
    const bucket = await freshBucket(fx.client, "pr");
    const low = [file("w.bin", randomBytes(8 * MiB))];
    const high = [file("w.bin", randomBytes(8 * MiB))];
    await putFiles(fx.client, bucket, "low/", low);
    await putFiles(fx.client, bucket, "high/", high);
    // The low job's first GET waits at the proxy, holding the only slot, until the high job queues.
    const held = gate();
    fx.proxy.addRule({
      match: { method: "GET", path: `/${bucket}/low/`, hasRange: true },
      times: 1,
      action: { kind: "hook", fn: () => held.opened },
    });
    const source = testSource(fx.s3, { endpoint: fx.proxy.url });
    const scheduler = new SlotScheduler(1);
    const job = (prefix: string, priority: number) =>
      new StageJob({
        source,
        bucket,
        prefix,
        dest: join(fx.work, prefix),
        partSizeBytes: MiB,
        concurrency: 1,
        scheduler,
        priority,
        filters: { include: [], exclude: [] },
        retry: { maxAttempts: 5, baseDelayMs: 5, maxDelayMs: 50 },
        requestTimeoutMs: 30_000,
      }).run();
    const gets = () =>
      fx.proxy.requests.filter((r) => r.method === "GET" && r.headers.range !== undefined).map((r) => r.path);
    try {
      const lowDone = job("low/", 0);
      await waitFor(() => gets().length === 1, { what: "the low job's first GET" });
      const highDone = job("high/", 10);
      // Something waits for the slot (the low job's next part, the high job's HEAD, or both).
      await waitFor(() => scheduler.queued >= 1, { what: "a task to queue" });
      held.open();
      await Promise.all([lowDone, highDone]);
    } finally {
      held.open();
      source.close();
    }
    expect(await digests(join(fx.work, "low/"), low)).toEqual(expectedDigests(low));
    expect(await digests(join(fx.work, "high/"), high)).toEqual(expectedDigests(high));
    const order = gets().map((p) => (p.includes("/high/") ? "H" : "L"));
    // However many low GETs went first (while the high job listed and opened its file, nothing of it
    // was queued), once the high job's first GET starts, all eight of its GETs come before the
    // next low one.
    const first = order.indexOf("H");
    expect(order.join("").slice(first, first + 8)).toBe("H".repeat(8));
    expect(order.filter((o) => o === "L")).toHaveLength(8);
  });
});
