/**
 * `npm run bench:page-cache`: what the page-cache warm buys a pod. A reader that maps every shard of
 * a model and touches every page (what safetensors' mmap loader does on its first pass) runs twice
 * in one run: with the model's pages dropped from the cache (cold: every page from disk), and right
 * after PageCacheWarmer read the model in (warmed). Reported: both reader times, the warm itself,
 * and their ratio. Needs root (it drops the page cache through /proc/sys/vm/drop_caches).
 *
 * Options: --gib <n> (model size, default 2), --shards <n> (default 8), --dir <path> (default
 * .bench-data/page-cache, on the disk the repo is on; not a tmpfs).
 */
import { execFileSync } from "node:child_process";
import { randomFillSync } from "node:crypto";
import { mkdir, open, rm, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import pino from "pino";
import { PageCacheWarmer } from "../src/models/page-cache.js";

const ROOT = resolve(import.meta.dirname, "..");
const { values: args } = parseArgs({
  options: {
    gib: { type: "string", default: "2" },
    shards: { type: "string", default: "8" },
    dir: { type: "string", default: join(ROOT, ".bench-data", "page-cache") },
  },
});

/**
 * Maps every file and touches every page: in file order ("sequential", the best case for the
 * kernel's readahead), or in 1 MiB blocks in a random order across all shards ("scattered": tensors
 * loaded in the model's order, not the files').
 */
const READER = `
import mmap, random, sys, time
order = sys.argv[1]; files = sys.argv[2:]
t = time.perf_counter()
maps = []
for p in files:
    f = open(p, "rb"); maps.append(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
blocks = [(m, off) for m in maps for off in range(0, len(m), 1 << 20)]
if order == "scattered":
    random.Random(7).shuffle(blocks)
s = 0
for m, off in blocks:
    for i in range(off, min(off + (1 << 20), len(m)), 4096):
        s += m[i]
print(time.perf_counter() - t)
`;

function dropCaches(): void {
  execFileSync("sync");
  execFileSync("sh", ["-c", "echo 1 > /proc/sys/vm/drop_caches"]);
}

function reader(order: "sequential" | "scattered", files: string[]): number {
  return Number(execFileSync("python3", ["-c", READER, order, ...files], { encoding: "utf8" }).trim());
}

async function main(): Promise<void> {
  const dir = resolve(args.dir);
  const shards = Number(args.shards);
  const shardBytes = Math.floor((Number(args.gib) * 2 ** 30) / shards);
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  const files: string[] = [];
  const chunk = Buffer.alloc(16 * 1024 * 1024);
  for (let s = 0; s < shards; s++) {
    const path = join(
      dir,
      `model-${String(s + 1).padStart(5, "0")}-of-${String(shards).padStart(5, "0")}.safetensors`,
    );
    const fh = await open(path, "w");
    for (let off = 0; off < shardBytes; off += chunk.length) {
      randomFillSync(chunk);
      await fh.write(chunk, 0, Math.min(chunk.length, shardBytes - off));
    }
    await fh.close();
    files.push(path);
  }
  await writeFile(join(dir, "config.json"), "{}\n");

  const warmer = new PageCacheWarmer({
    mode: "on",
    budget: async () => Number.MAX_SAFE_INTEGER,
    bypassed: () => false,
    logger: pino({ level: "silent" }),
  });
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
  const gib = (shardBytes * shards) / 2 ** 30;
  console.log(`model: ${gib.toFixed(2)} GiB in ${shards} shards, ${dir}; medians of 3 runs`);
  for (const order of ["sequential", "scattered"] as const) {
    const runs: { cold: number; warm: number; warmed: number }[] = [];
    for (let i = 0; i < 3; i++) {
      dropCaches();
      const cold = reader(order, files);
      dropCaches();
      const w = await warmer.warm("bench", dir);
      const warmed = reader(order, files);
      runs.push({ cold, warm: w.seconds, warmed });
    }
    const cold = median(runs.map((r) => r.cold));
    const warm = median(runs.map((r) => r.warm));
    const warmed = median(runs.map((r) => r.warmed));
    const rate = (s: number) => `${s.toFixed(3)} s (${(gib / s).toFixed(2)} GiB/s)`;
    console.log(`${order} reader: cold ${rate(cold)}; warm ${rate(warm)}; warmed ${rate(warmed)}`);
    console.log(
      `  ${order}: reader ${(cold / warmed).toFixed(1)}x faster warmed; warm + warmed reader = ${(warm + warmed).toFixed(3)} s against ${cold.toFixed(3)} s cold (${((warm + warmed) / cold).toFixed(2)}x)`,
    );
  }
  await rm(dir, { recursive: true, force: true });
}

await main();
