/**
 * `npm run bench:memory`: memory bounded by the work in flight, not by the number of files or tensors.
 *
 * 1. Many files: `coldstart pull` of one listing of N zero-byte objects (default 100,000, in one page)
 *    from a wire-level S3 double, against the same listing with every file excluded (the listing's own
 *    cost). Target: peak RSS at most 2.5 x the baseline.
 * 2. A big safetensors header: validating a header of 1,000,000 tensors (73 MB, under the format's
 *    100 MB cap), against a process that only reads and decodes those bytes. Target: at most 5 x.
 *
 * Peak RSS is each child's VmHWM (bench/lib/report-usage.mjs). Ratios in one run: the machine is noisy.
 */
import { spawn } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { startListingDouble } from "./lib/listing-double.js";

const ROOT = resolve(import.meta.dirname, "..");
const { values: args } = parseArgs({
  options: {
    files: { type: "string", default: "100000" },
    page: { type: "string", default: "100000" },
    tensors: { type: "string", default: "1000000" },
  },
});

interface Usage {
  cpuSeconds: number;
  maxRssBytes: number;
  code: number | null;
  seconds: number;
}

async function measured(argv: string[], env: Record<string, string> = {}): Promise<Usage> {
  const work = await mkdtemp(join(tmpdir(), "cs-bench-mem-"));
  const usageFile = join(work, "usage.jsonl");
  const started = performance.now();
  const code = await new Promise<number | null>((done) => {
    const child = spawn(process.execPath, ["--import", join(ROOT, "bench/lib/report-usage.mjs"), ...argv], {
      cwd: ROOT,
      env: { ...process.env, ...env, BENCH_USAGE_FILE: usageFile },
      stdio: ["ignore", "ignore", "pipe"],
    });
    child.stderr.resume();
    child.on("close", done);
  });
  const seconds = (performance.now() - started) / 1000;
  const usage = JSON.parse((await readFile(usageFile, "utf8")).trim().split("\n").at(-1) ?? "{}");
  await rm(work, { recursive: true, force: true });
  return { ...usage, code, seconds };
}

const mb = (b: number) => `${(b / 1e6).toFixed(0)} MB`;

async function manyFiles(): Promise<number> {
  const files = Number(args.files);
  const double = await startListingDouble(files, Number(args.page));
  const dest = await mkdtemp(join(tmpdir(), "cs-bench-mem-dest-"));
  const pull = (extra: string[]) =>
    measured(
      [
        join(ROOT, "bin/coldstart.js"),
        "pull",
        "s3://bench/m/",
        "--dest",
        dest,
        "--endpoint",
        double.endpoint,
        "--path-style",
        "--json",
        ...extra,
      ],
      { AWS_ACCESS_KEY_ID: "bench", AWS_SECRET_ACCESS_KEY: "bench", AWS_EC2_METADATA_DISABLED: "true" },
    );
  try {
    const baseline = await pull(["--exclude", "*"]);
    const full = await pull([]);
    if (full.code !== 0) throw new Error(`pull of ${files} files exited ${full.code}`);
    const ratio = full.maxRssBytes / baseline.maxRssBytes;
    console.log(`many files: ${files} zero-byte objects, pages of ${args.page}`);
    console.log(`  listing only (all excluded): peak RSS ${mb(baseline.maxRssBytes)}`);
    console.log(
      `  pull:                        peak RSS ${mb(full.maxRssBytes)}, ${full.seconds.toFixed(1)} s, ${full.cpuSeconds.toFixed(1)} CPU-s`,
    );
    console.log(`  ratio ${ratio.toFixed(2)} (target <= 2.5) ${ratio <= 2.5 ? "PASS" : "FAIL"}`);
    return ratio <= 2.5 ? 0 : 1;
  } finally {
    await double.close();
    await rm(dest, { recursive: true, force: true });
  }
}

async function bigHeader(): Promise<number> {
  const n = Number(args.tensors);
  const work = await mkdtemp(join(tmpdir(), "cs-bench-mem-st-"));
  const path = join(work, "big.safetensors");
  const parts: string[] = [];
  for (let i = 0; i < n; i++)
    parts.push(`"l.${i}.w":{"dtype":"F16","shape":[1],"data_offsets":[${i * 2},${i * 2 + 2}]}`);
  const json = Buffer.from(`{${parts.join(",")}}`);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  await writeFile(path, Buffer.concat([len, json, Buffer.alloc(n * 2)]));
  try {
    const read = `const b=require("node:fs").readFileSync(${JSON.stringify(path)});const n=Number(b.readBigUInt64LE(0));new TextDecoder().decode(b.subarray(8,8+n));`;
    const baseline = await measured(["-e", read]);
    const check = `import(${JSON.stringify(join(ROOT, "dist/safetensors/header.js"))}).then((m)=>m.readSafetensorsHeader(${JSON.stringify(path)})).then((h)=>{if(h.tensors.length!==${n})process.exit(3)})`;
    const full = await measured(["-e", check]);
    if (full.code !== 0) throw new Error(`header check exited ${full.code}`);
    const ratio = full.maxRssBytes / baseline.maxRssBytes;
    console.log(`big header: ${n} tensors, ${mb(json.length)} of JSON`);
    console.log(`  read and decode only: peak RSS ${mb(baseline.maxRssBytes)}`);
    console.log(`  validated header:     peak RSS ${mb(full.maxRssBytes)}, ${full.seconds.toFixed(1)} s`);
    console.log(`  ratio ${ratio.toFixed(2)} (target <= 5) ${ratio <= 5 ? "PASS" : "FAIL"}`);
    return ratio <= 5 ? 0 : 1;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

process.exitCode = (await manyFiles()) | (await bigHeader());
