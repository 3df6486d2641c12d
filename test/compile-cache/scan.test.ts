/**
 * The periodic scan, driven by hand on the test's clock: what it publishes on its own (a key that
 * grew and then stayed quiet for the quiet period) and what it counts as a silent miss (a restored
 * key that grew artifacts). Each "it does not happen" is asserted right after a scan that ran with
 * the clock where the test put it, never after a sleep. The daemon's timer that calls the scan is
 * covered by test/compile-cache/share.test.ts.
 */
import { mkdir, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { describe, expect, it } from "vitest";
import { freshBucket } from "../support/s3.js";
import { useS3Fixture } from "../support/s3-fixture.js";
import { counted, pseudoSource, readManifest, remoteKeys, useManagers } from "./harness.js";

const fx = useS3Fixture("cs-cc-scan-");
const node = useManagers(fx);
const identity = { vllm: "0.11.0" };

async function artifact(dir: string, rel: string, seed = rel.length): Promise<void> {
  await mkdir(dirname(join(dir, rel)), { recursive: true });
  await writeFile(join(dir, rel), pseudoSource(seed, 2048));
}

describe("the scan, on an injected clock", () => {
  it("publishes a key on its own once it has been quiet for the quiet period, and only then", async () => {
    const bucket = await freshBucket(fx.client, "ccscan");
    const clock = { t: Date.parse("2026-11-22T10:00:00Z") };
    const a = await node({
      root: join(fx.work, "a"),
      remote: `s3://${bucket}/cc/`,
      env: { COLDSTART_COMPILE_CACHE_PUBLISH: "auto" },
      now: () => clock.t,
      nodeName: "a",
    });
    const quiet = a.config.compileCache.quietPeriodMs;
    const published = () => counted(a.metrics.compileCachePublishes, { outcome: "published" });
    const first = await a.m.restore({ identity, timeoutMs: 30_000 });
    expect(first.outcome).toBe("miss");

    // Still compiling: each scan finds new files, and none is a full quiet period after the last.
    for (let i = 0; i < 4; i++) {
      await artifact(first.path, `torch_compile_cache/h/rank_0_0/inductor_cache/s${i}/c${i}.py`);
      await a.m.scan();
      clock.t += quiet - 1;
      await a.m.scan();
      expect(await remoteKeys(fx, bucket), `step ${i}`).toEqual([]);
      expect(await published(), `step ${i}`).toBe(0);
    }
    // Noise (a lock, bytecode) is no change: the quiet period is not restarted by it.
    await artifact(first.path, "torch_compile_cache/h/rank_0_0/triton.lock");
    await artifact(first.path, "__pycache__/m.cpython-311.pyc");
    clock.t += 1;
    await a.m.scan();

    expect(await published()).toBe(1);
    const manifest = await readManifest(fx, bucket, `cc/${first.key}/manifest.json`);
    expect(manifest).toMatchObject({ key: first.key, publisher: { node: "a" } });
    expect(manifest.files.map((f) => f.path)).toEqual(
      [0, 1, 2, 3].map((i) => `torch_compile_cache/h/rank_0_0/inductor_cache/s${i}/c${i}.py`),
    );
    // Published once: the remote has it now, later quiet scans leave it.
    clock.t += 10 * quiet;
    await a.m.scan();
    expect(await published()).toBe(1);
    expect(await counted(a.metrics.compileCachePublishes, { outcome: "exists" })).toBe(0);
  });

  it("a restored key that grows artifacts is one silent miss; noise is none, and more growth is not another", async () => {
    const bucket = await freshBucket(fx.client, "ccscan");
    const remote = `s3://${bucket}/cc/`;
    const a = await node({ root: join(fx.work, "a"), remote });
    const first = await a.m.restore({ identity, timeoutMs: 30_000 });
    for (let i = 0; i < 3; i++) await artifact(first.path, `torch_compile_cache/h/rank_0_0/c${i}.py`);
    expect((await a.m.publish(first.key, "api")).outcome).toBe("published");

    const clock = { t: Date.parse("2026-11-22T10:00:00Z") };
    const b = await node({ root: join(fx.work, "b"), remote, now: () => clock.t });
    const restored = await b.m.restore({ identity, timeoutMs: 30_000 });
    expect(restored.outcome).toBe("hit");
    const misses = () => counted(b.metrics.compileCacheSilentMisses);

    // What an engine writes even on a hit.
    await artifact(restored.path, "torch_compile_cache/x.lock");
    await artifact(restored.path, "__pycache__/m.cpython-311.pyc");
    await b.m.scan();
    expect(await misses()).toBe(0);
    expect(b.m.get(restored.key).silentMissAt).toBeNull();

    // vLLM compiled again under another hash: its own key differed from the publisher's.
    clock.t += 60_000;
    await artifact(restored.path, "torch_compile_cache/other/rank_0_0/g0.py");
    await artifact(restored.path, "torch_compile_cache/other/rank_0_0/g1.py");
    await b.m.scan();
    expect(await misses()).toBe(1);
    expect(b.m.get(restored.key).silentMissAt).toBe(new Date(clock.t).toISOString());
    const warned = b.logs.filter((l) => String(l.msg).includes("silent miss"));
    expect(warned).toHaveLength(1);
    expect(warned[0]).toMatchObject({
      key: restored.key,
      newFiles: 2,
      level: 40,
      examples: ["torch_compile_cache/other/rank_0_0/g0.py", "torch_compile_cache/other/rank_0_0/g1.py"],
    });

    // Counted once per restore, however much more it grows.
    clock.t += 60_000;
    await artifact(restored.path, "torch_compile_cache/other/rank_0_0/g2.py");
    await b.m.scan();
    expect(await misses()).toBe(1);
    expect(b.logs.filter((l) => String(l.msg).includes("silent miss"))).toHaveLength(1);
  });
});
