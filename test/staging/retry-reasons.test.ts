// Regression (issue 15, defect 9): under a fault mix of resets, truncations and stalls the retry
// metrics never used the `truncated` or `stall` reasons, and about a third of the injected resets and
// truncations had no matching retry at all. Every retry is counted once, with the reason that caused it.
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { Metrics } from "../../src/metrics/metrics.js";
import { StageJob } from "../../src/staging/stage-job.js";
import { freshBucket, putFiles, testSource } from "../support/s3.js";
import { useS3Fixture } from "../support/s3-fixture.js";
import { digests, expectedDigests } from "../support/stage.js";
import { file } from "../support/synthetic-model.js";

const fx = useS3Fixture("cs-reasons-");
const MiB = 1024 * 1024;

async function retriesByReason(metrics: Metrics): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const v of (await metrics.s3Retries.get()).values) {
    if (v.value > 0) out[`${v.labels.operation}/${v.labels.reason}`] = v.value;
  }
  return out;
}

/** A deterministic pseudo-random sequence (the test's faults are the same every run). */
function lcg(seed: number): () => number {
  let x = seed;
  return () => {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    return x / 2 ** 31;
  };
}

async function stageWithMetrics(bucket: string, dest: string, concurrency: number) {
  const source = testSource(fx.s3, {
    endpoint: fx.proxy.url,
    maxSockets: concurrency + 4,
    requestTimeoutMs: 2_000,
  });
  const metrics = new Metrics(undefined, { defaultMetrics: false });
  try {
    await new StageJob({
      source,
      bucket,
      prefix: "m/",
      dest,
      partSizeBytes: MiB,
      concurrency,
      filters: { include: [], exclude: [] },
      retry: { maxAttempts: 20, baseDelayMs: 5, maxDelayMs: 50 },
      requestTimeoutMs: 2_000,
      metrics,
    }).run();
  } finally {
    source.close();
  }
  return metrics;
}

describe("retry reasons", () => {
  it("counts each injected reset, truncation, stall and 503 once, under its own reason", async () => {
    const bucket = await freshBucket(fx.client, "rr");
    const files = [file("a.bin", randomBytes(8 * MiB)), file("b.bin", randomBytes(8 * MiB))];
    await putFiles(fx.client, bucket, "m/", files);
    // Each kind hits a fixed set of ranged GETs (by arrival order), mid-body, once each.
    const ranged = { method: "GET", hasRange: true } as const;
    const faults = { reset: 3, truncate: 3, stall: 2, status: 2 };
    fx.proxy.addRule({
      match: ranged,
      skip: 0,
      times: faults.reset,
      action: { kind: "reset", afterBytes: 1000 },
    });
    fx.proxy.addRule({
      match: ranged,
      skip: 3,
      times: faults.truncate,
      action: { kind: "truncate", afterBytes: 1000 },
    });
    fx.proxy.addRule({
      match: ranged,
      skip: 6,
      times: faults.stall,
      action: { kind: "stall", afterBytes: 1000, ms: 600_000 },
    });
    fx.proxy.addRule({
      match: ranged,
      skip: 8,
      times: faults.status,
      action: { kind: "status", status: 503 },
    });
    const dest = join(fx.work, "d");
    const metrics = await stageWithMetrics(bucket, dest, 4);
    expect(await digests(dest, files)).toEqual(expectedDigests(files));
    const got = await retriesByReason(metrics);
    expect(Object.keys(got).filter((k) => !/^get\/(reset|truncated|stall|slowdown)$/.test(k))).toEqual([]);
    expectResetsAndTruncations(got, faults.reset, faults.truncate);
    expect(got["get/stall"]).toBe(faults.stall);
    expect(got["get/slowdown"]).toBe(faults.status);
  });

  it("a mix of 60 faults on random requests at random offsets: every fault that fired is one retry of its reason", async () => {
    const bucket = await freshBucket(fx.client, "rr");
    const files = Array.from({ length: 4 }, (_, i) => file(`s${i}.bin`, randomBytes(6 * MiB + 12345 * i)));
    await putFiles(fx.client, bucket, "m/", files);
    const random = lcg(15);
    const kinds = ["reset", "truncate", "stall"] as const;
    for (let i = 0; i < 60; i++) {
      const kind = kinds[Math.floor(random() * 3)] as (typeof kinds)[number];
      const afterBytes = Math.floor(random() * 1.2 * MiB);
      fx.proxy.addRule({
        match: { method: "GET", predicate: () => random() < 0.3 },
        times: 1,
        action: kind === "stall" ? { kind, afterBytes, ms: 600_000 } : { kind, afterBytes },
      });
    }
    const dest = join(fx.work, "d");
    const metrics = await stageWithMetrics(bucket, dest, 8);
    expect(await digests(dest, files)).toEqual(expectedDigests(files));
    const fired = fx.proxy.faultsFired();
    expect(fired.reset + fired.truncate + fired.stall).toBeGreaterThan(10);
    const got = await retriesByReason(metrics);
    expectResetsAndTruncations(got, fired.reset, fired.truncate);
    expect(got["get/stall"] ?? 0).toBe(fired.stall);
    expect(Object.keys(got).filter((k) => !/^get\/(reset|truncated|stall)$/.test(k))).toEqual([]);
  });
});

/**
 * Every reset and truncation that fired is one retry, under its own reason, with one allowance: an
 * RST that reaches a client still holding unread bytes is reported by libuv as a plain end of
 * stream (the proxy gives the client RESET_GRACE_MS to drain first, which a loaded machine can
 * outrun), so a reset may count as a truncation, never the other way round. Both are retried alike.
 */
function expectResetsAndTruncations(got: Record<string, number>, resets: number, truncations: number): void {
  const reset = got["get/reset"] ?? 0;
  const truncated = got["get/truncated"] ?? 0;
  expect(reset + truncated).toBe(resets + truncations);
  expect(reset).toBeLessThanOrEqual(resets);
  expect(truncated).toBeGreaterThanOrEqual(truncations);
}
