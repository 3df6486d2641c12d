/**
 * Helpers of the compile-cache tests. `useManagers`: a node's CompileCacheManager in process,
 * against the real S3 server (RGW) or the fault proxy in front of it: real files, a real remote, no
 * daemon. Scans run only when a test calls `scan()` (the scan interval is an hour), and the clock is
 * the test's when it passes `now`, so a quiet period or a silent miss is decided by the clock the
 * test moves, never by how fast the machine is.
 */
import { readdir, readlink } from "node:fs/promises";
import { join } from "node:path";
import { GetObjectCommand, ListObjectsV2Command } from "@aws-sdk/client-s3";
import pino from "pino";
import { afterEach } from "vitest";
import { CompileCacheManager } from "../../src/compile-cache/cache-manager.js";
import { compileCacheClient, type Manifest, RemoteStore } from "../../src/compile-cache/remote.js";
import type { GpuIdentity } from "../../src/compile-cache/types.js";
import { loadConfig } from "../../src/config/load.js";
import { Metrics } from "../../src/metrics/metrics.js";
import { parseS3Uri } from "../../src/s3/uri.js";
import type { S3Fixture } from "../support/s3-fixture.js";
import { waitFor as waitUntil } from "../support/wait.js";

export const H100: GpuIdentity = {
  gpuProduct: "NVIDIA-H100-80GB-HBM3",
  computeCapability: "9.0",
  driverMajor: "570",
};

export interface ManagerNode {
  m: CompileCacheManager;
  root: string;
  metrics: Metrics;
  /** Every log line so far, parsed. */
  logs: Record<string, unknown>[];
  config: ReturnType<typeof loadConfig>;
}

export interface ManagerNodeOptions {
  root: string;
  /** s3://bucket/prefix/ */
  remote: string;
  gpu?: () => GpuIdentity;
  /** Through the fault proxy (default: straight to the server). */
  viaProxy?: boolean;
  /** More COLDSTART_* settings (publish mode, quiet period…). */
  env?: Record<string, string>;
  now?: () => number;
  nodeName?: string;
}

/** Registers the teardown and returns a factory of started managers, stopped after each test. */
export function useManagers(fx: S3Fixture): (o: ManagerNodeOptions) => Promise<ManagerNode> {
  const stops: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const s of stops.splice(0)) await s();
  });
  return async (o) => {
    process.env.AWS_ACCESS_KEY_ID = fx.s3.accessKeyId;
    process.env.AWS_SECRET_ACCESS_KEY = fx.s3.secretAccessKey;
    const config = loadConfig({
      env: {
        COLDSTART_ROOT: o.root,
        COLDSTART_COMPILE_CACHE_REMOTE: o.remote,
        COLDSTART_COMPILE_CACHE_PUBLISH: "manual",
        COLDSTART_COMPILE_CACHE_SCAN_INTERVAL: "1h",
        COLDSTART_S3_ENDPOINT: o.viaProxy ? fx.proxy.url : fx.s3.endpoint,
        COLDSTART_S3_PATH_STYLE: "true",
        COLDSTART_S3_REGION: fx.s3.region,
        ...o.env,
      },
    });
    const client = compileCacheClient(config);
    const logs: Record<string, unknown>[] = [];
    const logger = pino({ level: "info" }, { write: (line: string) => void logs.push(JSON.parse(line)) });
    const metrics = new Metrics(undefined, { defaultMetrics: false });
    const m = new CompileCacheManager({
      root: o.root,
      config,
      remoteFor: (uri) => new RemoteStore(client, parseS3Uri(uri)),
      gpu: o.gpu ?? (() => H100),
      logger,
      metrics,
      version: "test",
      ...(o.nodeName ? { nodeName: o.nodeName } : {}),
      ...(o.now ? { now: o.now } : {}),
    });
    await m.start();
    stops.push(async () => {
      await m.stop();
      client.destroy();
    });
    return { m, root: o.root, metrics, logs, config };
  };
}

/** The value of a counter of the manager's metrics for one label set (0 when never counted). */
export async function counted(
  metric: { get(): Promise<{ values: { labels: Record<string, unknown>; value: number }[] }> },
  labels: Record<string, string> = {},
): Promise<number> {
  const { values } = await metric.get();
  const match = values.find((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x));
  return match?.value ?? 0;
}

export async function remoteKeys(fx: S3Fixture, bucket: string): Promise<string[]> {
  const out = await fx.client.send(new ListObjectsV2Command({ Bucket: bucket }));
  return (out.Contents ?? []).map((o) => o.Key ?? "").sort();
}

export async function readObject(fx: S3Fixture, bucket: string, key: string): Promise<Buffer> {
  const out = await fx.client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  return Buffer.from((await out.Body?.transformToByteArray()) ?? []);
}

export async function readManifest(fx: S3Fixture, bucket: string, objectKey: string): Promise<Manifest> {
  return JSON.parse((await readObject(fx, bucket, objectKey)).toString("utf8")) as Manifest;
}

/** Everything under `<root>/tmp/` (a restore's or a publish's leftovers), as relative paths. */
export async function tmpLeftovers(root: string): Promise<string[]> {
  const dir = join(root, "tmp");
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .map((e) => join(e.parentPath, e.name).slice(dir.length + 1))
    .filter((p) => p !== "compile-cache")
    .sort();
}

/** Files below `dir` this process still holds open (a leaked handle, or a writer still running). */
export async function openFilesUnder(dir: string): Promise<string[]> {
  const held: string[] = [];
  for (const fd of await readdir("/proc/self/fd")) {
    const target = await readlink(`/proc/self/fd/${fd}`).catch(() => "");
    if (target.startsWith(`${dir}/`)) held.push(target);
  }
  return held;
}

/** test/support/wait.ts's waitFor, in the (what, check) order these tests read best in. */
export async function waitFor(
  what: string,
  check: () => Promise<boolean>,
  deadlineMs = 30_000,
): Promise<void> {
  await waitUntil(check, { what, timeoutMs: deadlineMs });
}

/** Generated-code-like text from a seed: deflate codes it in Huffman blocks, yet not to nothing. */
export function pseudoSource(seed: number, bytes: number): Buffer {
  const words = ["def ", "return ", "tmp", "buf", "tl.load(", "tl.store(", "mask", "xindex", " + ", " * "];
  let x = seed >>> 0 || 1;
  let out = "";
  while (out.length < bytes) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out += words[x % words.length] + (x % 5 === 0 ? `${x % 997}\n    ` : "");
  }
  return Buffer.from(out.slice(0, bytes));
}
