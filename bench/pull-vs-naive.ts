/**
 * `npm run bench`: coldstart pull against a naive single-stream GetObject, on the same files from the
 * same local S3 server, alternating runs in one session (the machine is noisy: compare ratios and
 * medians, not single numbers). Every run's output is digest-checked, so a fast wrong answer loses.
 *
 * Server: Ceph RGW when installed (the tests' server), else s3rver. Loopback is not S3: one connection
 * is nearly as fast as many here; the shaped S3-like network is the benchmark lab's job.
 */
import { spawn } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import S3rver from "s3rver";
import { rgwAvailable, startRgw } from "../test/support/rgw.js";
import { freshBucket, putFiles, type S3Endpoint, seedClient } from "../test/support/s3.js";
import { sha256, syntheticModel } from "../test/support/synthetic-model.js";

const { values: opts } = parseArgs({
  options: {
    runs: { type: "string", default: "3" },
    shards: { type: "string", default: "4" },
    "shard-mib": { type: "string", default: "128" },
    server: { type: "string", default: rgwAvailable() ? "rgw" : "s3rver" },
  },
});
const runs = Number(opts.runs);
// Node 20 here; the image ships Node 24 (see src/cli/bin.ts).
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";
const root = resolve(import.meta.dirname, "..");
const work = await mkdtemp(join(tmpdir(), "cs-bench-"));

interface Sample {
  wallSeconds: number;
  cpuSeconds: number;
  maxRssBytes: number;
}

const { s3, stop } = await startServer(opts.server as string);
try {
  const files = syntheticModel({
    shards: Number(opts.shards),
    shardBytes: Number(opts["shard-mib"]) * 1024 * 1024,
  });
  const total = files.reduce((n, f) => n + f.body.length, 0);
  const client = seedClient(s3);
  const bucket = await freshBucket(client, "bench");
  await putFiles(client, bucket, "model/", files, 4);
  client.destroy();

  const contenders: Record<string, (dest: string) => string[]> = {
    "coldstart pull": (dest) => [
      join(root, "bin/coldstart.js"),
      "pull",
      `s3://${bucket}/model/`,
      "--dest",
      dest,
      "--endpoint",
      s3.endpoint,
      "--path-style",
      "--json",
    ],
    "naive GetObject": (dest) => [join(root, "bench/naive-get.mjs"), bucket, "model/", dest, s3.endpoint],
  };
  const samples: Record<string, Sample[]> = Object.fromEntries(Object.keys(contenders).map((k) => [k, []]));
  for (let r = 0; r < runs; r++) {
    for (const [name, argv] of Object.entries(contenders)) {
      const dest = join(work, `run-${r}-${name.replace(/\W+/g, "-")}`);
      const sample = await measure(argv(dest), s3);
      for (const f of files) {
        const got = sha256(await readFile(join(dest, f.relPath)));
        if (got !== f.sha256) throw new Error(`${name}: ${f.relPath} digest mismatch: a wrong answer`);
      }
      await rm(dest, { recursive: true, force: true });
      samples[name]?.push(sample);
      process.stderr.write(
        `run ${r + 1}/${runs} ${name}: ${(total / 1e6 / sample.wallSeconds).toFixed(0)} MB/s\n`,
      );
    }
  }
  report(samples, total, opts.server as string, files.length);
} finally {
  await stop();
  await rm(work, { recursive: true, force: true });
}

async function measure(args: string[], s3: S3Endpoint): Promise<Sample> {
  const usageFile = join(work, `usage-${Date.now()}-${Math.random()}.jsonl`);
  const started = process.hrtime.bigint();
  const code = await new Promise<number>((done) => {
    const child = spawn(process.execPath, ["--import", join(root, "bench/lib/report-usage.mjs"), ...args], {
      stdio: ["ignore", "ignore", "inherit"],
      env: {
        ...process.env,
        AWS_ACCESS_KEY_ID: s3.accessKeyId,
        AWS_SECRET_ACCESS_KEY: s3.secretAccessKey,
        AWS_REGION: s3.region,
        BENCH_USAGE_FILE: usageFile,
        AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: "true",
      },
    });
    child.on("exit", (c) => done(c ?? 1));
  });
  const wallSeconds = Number(process.hrtime.bigint() - started) / 1e9;
  if (code !== 0) throw new Error(`${args.join(" ")} exited ${code}`);
  const usage = JSON.parse((await readFile(usageFile, "utf8")).trim().split("\n")[0] as string);
  return { wallSeconds, ...usage };
}

function report(samples: Record<string, Sample[]>, total: number, server: string, fileCount: number): void {
  const gb = total / 1e9;
  const stats = (xs: number[]) => {
    const s = [...xs].sort((a, b) => a - b);
    return { min: s[0] ?? 0, med: s[Math.floor(s.length / 2)] ?? 0, max: s.at(-1) ?? 0 };
  };
  const lines = [
    `server: ${server} on loopback; ${fileCount} files, ${(total / 1e6).toFixed(0)} MB; ${runs} runs each, alternating`,
    "",
    "| tool | MB/s median (min–max) | CPU-s per GB median | peak RSS MB median |",
    "| --- | --- | --- | --- |",
  ];
  for (const [name, xs] of Object.entries(samples)) {
    const mbps = stats(xs.map((x) => total / 1e6 / x.wallSeconds));
    const cpu = stats(xs.map((x) => x.cpuSeconds / gb));
    const rss = stats(xs.map((x) => x.maxRssBytes / 1e6));
    lines.push(
      `| ${name} | ${mbps.med.toFixed(0)} (${mbps.min.toFixed(0)}–${mbps.max.toFixed(0)}) | ${cpu.med.toFixed(2)} | ${rss.med.toFixed(0)} |`,
    );
  }
  // Ratios run by run (each pair ran back to back), so drift of the machine cancels out.
  const [a, b] = Object.values(samples);
  if (a && b) {
    const pairs = a.map((x, i) => [x, b[i] as Sample] as const);
    const speed = stats(pairs.map(([x, y]) => y.wallSeconds / x.wallSeconds));
    const cpu = stats(pairs.map(([x, y]) => x.cpuSeconds / y.cpuSeconds));
    lines.push(
      "",
      `coldstart / naive, per run pair: throughput ${speed.med.toFixed(2)}x (${speed.min.toFixed(2)}–${speed.max.toFixed(2)}), ` +
        `CPU-s ${cpu.med.toFixed(2)}x (${cpu.min.toFixed(2)}–${cpu.max.toFixed(2)})`,
    );
  }
  process.stdout.write(`${lines.join("\n")}\n`);
}

async function startServer(kind: string): Promise<{ s3: S3Endpoint; stop: () => Promise<void> }> {
  if (kind === "rgw") {
    const rgw = await startRgw();
    return { s3: rgw, stop: () => rgw.stop() };
  }
  const server = new S3rver({ address: "127.0.0.1", port: 0, silent: true, directory: join(work, "s3rver") });
  const { address, port } = await server.run();
  return {
    s3: {
      endpoint: `http://${address}:${port}`,
      accessKeyId: "S3RVER",
      secretAccessKey: "S3RVER",
      region: "us-east-1",
    },
    stop: () => server.close(),
  };
}
