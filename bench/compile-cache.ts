/**
 * `npm run bench:compile-cache`: what restoring a compile cache costs, against the baseline of
 * keeping the same files loose under an S3 prefix and fetching them with `coldstart pull` (the
 * staging engine: 32 parallel GETs, verified). A compile cache is thousands of small files, so the
 * per-request cost dominates the loose copy; one packed object is the design's bet. Both run on the
 * same files from the same local S3 server, alternating, every result digest-checked.
 *
 * Loopback is not S3: a request costs ~1 ms here against ~20-50 ms of first-byte latency on S3, so
 * the ratio here understates the pack's advantage on a real network.
 */
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { parseArgs } from "node:util";
import pino from "pino";
import { CompileCacheManager } from "../src/compile-cache/cache-manager.js";
import { digestFiles, listCacheDir } from "../src/compile-cache/pack.js";
import { compileCacheClient, RemoteStore } from "../src/compile-cache/remote.js";
import { loadConfig } from "../src/config/load.js";
import { parseS3Uri } from "../src/s3/uri.js";
import { startRgw } from "../test/support/rgw.js";
import { freshBucket, putFiles, seedClient } from "../test/support/s3.js";

const { values: opts } = parseArgs({
  options: {
    runs: { type: "string", default: "3" },
    files: { type: "string", default: "2000" },
    "file-kib": { type: "string", default: "48" },
  },
});
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";
const root = resolve(import.meta.dirname, "..");
const work = await mkdtemp(join(tmpdir(), "cs-bench-cc-"));
const GPU = { gpuProduct: "NVIDIA-H100-80GB-HBM3", computeCapability: "9.0", driverMajor: "570" };
const identity = { vllm: "0.11.0", extra: { bench: work.slice(-6).toLowerCase() } };

const rgw = await startRgw();
try {
  process.env.AWS_ACCESS_KEY_ID = rgw.accessKeyId;
  process.env.AWS_SECRET_ACCESS_KEY = rgw.secretAccessKey;
  process.env.AWS_REGION = rgw.region;
  const client = seedClient(rgw);
  const bucket = await freshBucket(client, "bench-cc");

  // A cache shaped like vLLM's: generated Python (compressible) and kernels (not), in hash dirs.
  const src = join(work, "src");
  const nFiles = Number(opts.files);
  const bytes = Number(opts["file-kib"]) * 1024;
  const loose: { relPath: string; body: Buffer; sha256: string }[] = [];
  for (let i = 0; i < nFiles; i++) {
    const rel = `torch_compile_cache/h${i % 7}/rank_0_0/${i % 2 ? "inductor_cache" : "triton_cache"}/${(i % 97).toString(16)}/f${i}.${i % 2 ? "py" : "cubin"}`;
    const body =
      i % 2
        ? Buffer.from(`def kernel_${i}(x):\n    return x * ${i}\n`.repeat(Math.ceil(bytes / 32))).subarray(
            0,
            bytes,
          )
        : randomBytes(bytes);
    await mkdir(dirname(join(src, rel)), { recursive: true });
    await writeFile(join(src, rel), body);
    loose.push({ relPath: rel, body, sha256: createHash("sha256").update(body).digest("hex") });
  }
  const total = loose.reduce((n, f) => n + f.body.length, 0);
  await putFiles(client, bucket, "loose/", loose, 16);
  client.destroy();

  const config = loadConfig({
    env: {
      COLDSTART_ROOT: join(work, "root-pub"),
      COLDSTART_COMPILE_CACHE_REMOTE: `s3://${bucket}/cc/`,
      COLDSTART_COMPILE_CACHE_PUBLISH: "manual",
      COLDSTART_S3_ENDPOINT: rgw.endpoint,
      COLDSTART_S3_PATH_STYLE: "true",
    },
  });
  const s3 = compileCacheClient(config);
  const store = new RemoteStore(s3, parseS3Uri(`s3://${bucket}/cc/`));
  const manager = (r: string) =>
    new CompileCacheManager({
      root: r,
      config: { ...config, compileCache: { ...config.compileCache, scanIntervalMs: 3_600_000 } },
      remoteFor: () => store,
      gpu: () => GPU,
      logger: pino({ level: "warn" }),
      version: "bench",
    });

  // Publish once (timed), from a node whose keyed directory holds the files.
  const pub = manager(join(work, "root-pub"));
  await pub.start();
  const miss = await pub.restore({ identity, timeoutMs: 60_000 });
  await rm(miss.path, { recursive: true });
  await mkdir(dirname(miss.path), { recursive: true });
  await cp(src, miss.path);
  const t0 = process.hrtime.bigint();
  const published = await pub.publish(miss.key, "api");
  const publishSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
  await pub.stop();
  if (published.outcome !== "published") throw new Error(`publish: ${JSON.stringify(published)}`);

  const expected = new Map(loose.map((f) => [f.relPath, f.sha256]));
  const check = async (dir: string) => {
    // pull keeps its journal and manifest in .coldstart/ beside the files.
    const listed = (await listCacheDir(dir)).files.filter((f) => !f.path.startsWith(".coldstart/"));
    const got = await digestFiles(dir, listed);
    if (got.length !== expected.size || got.some((f) => expected.get(f.path) !== f.sha256))
      throw new Error(`${dir}: wrong files`);
  };

  const samples: Record<string, number[]> = { "restore (one pack)": [], "pull (loose files)": [] };
  for (let run = 0; run < Number(opts.runs); run++) {
    const order =
      run % 2 ? ["pull (loose files)", "restore (one pack)"] : ["restore (one pack)", "pull (loose files)"];
    for (const name of order) {
      const dir = join(work, `run-${run}-${name.split(" ")[0]}`);
      const started = process.hrtime.bigint();
      if (name.startsWith("restore")) {
        const m = manager(dir);
        await m.start();
        const r = await m.restore({ identity, timeoutMs: 600_000 });
        if (r.outcome !== "hit") throw new Error(`restore: ${JSON.stringify(r)}`);
        samples[name]?.push(Number(process.hrtime.bigint() - started) / 1e9);
        await check(r.path);
        await m.stop();
      } else {
        await run_(process.execPath, [
          join(root, "bin/coldstart.js"),
          "pull",
          `s3://${bucket}/loose/`,
          "--dest",
          dir,
          "--endpoint",
          rgw.endpoint,
          "--path-style",
        ]);
        samples[name]?.push(Number(process.hrtime.bigint() - started) / 1e9);
        await check(dir);
      }
      await rm(dir, { recursive: true, force: true });
    }
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? Number.NaN;
  const r = median(samples["restore (one pack)"] ?? []);
  const p = median(samples["pull (loose files)"] ?? []);
  const mib = total / 1048576;
  console.log(
    `compile cache: ${nFiles} files, ${mib.toFixed(1)} MiB unpacked, pack ${(published.packBytes / 1048576).toFixed(1)} MiB; publish ${publishSeconds.toFixed(2)} s`,
  );
  for (const [name, xs] of Object.entries(samples))
    console.log(
      `${name.padEnd(20)} median ${median(xs).toFixed(2)} s (${(mib / median(xs)).toFixed(1)} MiB/s)  runs ${xs.map((x) => x.toFixed(2)).join(" ")}`,
    );
  console.log(`restore / pull wall time: ${(r / p).toFixed(2)} (below 1: the pack is faster)`);
  s3.destroy();
} finally {
  await rgw.stop();
  await rm(work, { recursive: true, force: true });
}

async function cp(from: string, to: string): Promise<void> {
  for (const f of (await listCacheDir(from)).files) {
    await mkdir(dirname(join(to, f.path)), { recursive: true });
    await writeFile(join(to, f.path), await readFile(join(from, f.path)));
  }
}

function run_(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolveRun, reject) => {
    const child = spawn(cmd, ["--", ...args], { stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    child.stderr.on("data", (d) => (err += d));
    child.on("close", (code) =>
      code === 0 ? resolveRun() : reject(new Error(`${args[1]} exited ${code}: ${err}`)),
    );
  });
}
