import { mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { Metrics } from "../../src/metrics/metrics.js";
import { type PageCacheMode, PageCacheWarmer } from "../../src/models/page-cache.js";
import { CGROUP_HEADROOM_BYTES, memoryRoom, warmBudget } from "../../src/node/memory.js";

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "cs-pc-"));
  await mkdir(join(dir, ".coldstart", "tmp"), { recursive: true });
  await writeFile(join(dir, ".coldstart", "tmp", "big.partial"), Buffer.alloc(1 << 20));
  await writeFile(join(dir, "config.json"), "{}");
  await writeFile(join(dir, "model-1.safetensors"), Buffer.alloc(300_000));
  await writeFile(join(dir, "model-2.safetensors"), Buffer.alloc(200_000));
  // A symlink is never followed out of the model's directory.
  await symlink("/etc/passwd", join(dir, "planted.safetensors"));
});
afterEach(() => rm(dir, { recursive: true, force: true }));

function warmer(mode: PageCacheMode, budget: number | null, bypassed = false, metrics?: Metrics) {
  return new PageCacheWarmer({
    mode,
    budget: async () => budget,
    bypassed: () => bypassed,
    logger: pino({ level: "silent" }),
    metrics,
  });
}

describe("the page-cache warm", () => {
  it("reads every byte of the model's files, not its state or what a symlink points at", async () => {
    const metrics = new Metrics(undefined, { defaultMetrics: false });
    const r = await warmer("on", 10 << 20, false, metrics).warm("m", dir);
    expect(r).toMatchObject({ outcome: "warmed", bytes: 2 + 300_000 + 200_000 });
    expect((await metrics.pageCacheWarmBytes.get()).values[0]?.value).toBe(500_002);
  });

  it("stops at the memory budget, small files and then shards in order", async () => {
    const r = await warmer("on", 250_000).warm("m", dir);
    expect(r).toMatchObject({ outcome: "partial", bytes: 250_000 });
  });

  it("skips when off, when the loader bypasses the page cache (auto), and without memory", async () => {
    expect((await warmer("off", 1 << 30).warm("m", dir)).outcome).toBe("off");
    expect((await warmer("auto", 1 << 30, true).warm("m", dir)).outcome).toBe("skipped_bypass");
    expect((await warmer("on", 1 << 30, true).warm("m", dir)).outcome).toBe("warmed");
    expect((await warmer("auto", 0).warm("m", dir)).outcome).toBe("skipped_memory");
    expect((await warmer("auto", null).warm("m", dir)).outcome).toBe("skipped_memory");
  });

  it("never fails the gate: a model directory that is gone is a partial warm of nothing", async () => {
    expect(await warmer("on", 1 << 30).warm("m", join(dir, "gone"))).toMatchObject({
      outcome: "partial",
      bytes: 0,
    });
  });

  it("shares one warm between gates opening for the same model at once", async () => {
    const w = warmer("on", 10 << 20);
    const [a, b] = await Promise.all([w.warm("m", dir), w.warm("m", dir)]);
    expect(a).toBe(b);
  });
});

describe("the memory a warm may take", () => {
  it("is bounded by the host's MemAvailable less the reserve and by the cgroup's room", async () => {
    const host = join(dir, "host");
    const cg = join(dir, "cgroup");
    await mkdir(join(host, "proc"), { recursive: true });
    await mkdir(cg);
    await writeFile(join(host, "proc/meminfo"), "MemTotal: 100 kB\nMemAvailable:    8388608 kB\n");
    await writeFile(join(cg, "memory.max"), `${3 * 2 ** 30}\n`);
    await writeFile(join(cg, "memory.current"), `${2 ** 30}\n`);
    const room = await memoryRoom(host, cg);
    expect(room).toEqual({ hostAvailable: 8 * 2 ** 30, cgroupRoom: 2 * 2 ** 30 });
    // The cgroup's room less the daemon's headroom is the tighter bound here.
    expect(warmBudget(room, 2 ** 30)).toBe(2 * 2 ** 30 - CGROUP_HEADROOM_BYTES);
    // The host's, less the reserve, there.
    expect(warmBudget(room, 7 * 2 ** 30)).toBe(2 ** 30);
    await writeFile(join(cg, "memory.max"), "max\n");
    expect(warmBudget(await memoryRoom(host, cg), 0)).toBe(8 * 2 ** 30);
    expect(warmBudget(await memoryRoom(join(dir, "nohost"), join(dir, "nocg")), 0)).toBeNull();
  });
});
