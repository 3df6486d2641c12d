/**
 * The keyed directories are the pods' to write, and a pod may run as root: whatever it plants there,
 * the daemon must never change, read or upload anything outside the keyed directory. Real files, the
 * real S3 server (RGW), the node's manager in process.
 */
import { mkdir, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { GetObjectCommand } from "@aws-sdk/client-s3";
import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { CompileCacheManager } from "../../src/compile-cache/cache-manager.js";
import { compileCacheClient, RemoteStore } from "../../src/compile-cache/remote.js";
import { loadConfig } from "../../src/config/load.js";
import { parseS3Uri } from "../../src/s3/uri.js";
import { freshBucket } from "../support/s3.js";
import { useS3Fixture } from "../support/s3-fixture.js";

const fx = useS3Fixture("cs-cc-safety-");
const GPU = { gpuProduct: "NVIDIA-H100-80GB-HBM3", computeCapability: "9.0", driverMajor: "570" };
const identity = { vllm: "0.11.0" };
const stops: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const s of stops.splice(0)) await s();
});

async function node(root: string, remote: string, gpu: () => typeof GPU = () => GPU) {
  process.env.AWS_ACCESS_KEY_ID = fx.s3.accessKeyId;
  process.env.AWS_SECRET_ACCESS_KEY = fx.s3.secretAccessKey;
  const config = loadConfig({
    env: {
      COLDSTART_ROOT: root,
      COLDSTART_COMPILE_CACHE_REMOTE: remote,
      COLDSTART_COMPILE_CACHE_PUBLISH: "manual",
      COLDSTART_COMPILE_CACHE_SCAN_INTERVAL: "1h",
      COLDSTART_S3_ENDPOINT: fx.s3.endpoint,
      COLDSTART_S3_PATH_STYLE: "true",
      COLDSTART_S3_REGION: fx.s3.region,
    },
  });
  const client = compileCacheClient(config);
  const m = new CompileCacheManager({
    root,
    config,
    remoteFor: (uri) => new RemoteStore(client, parseS3Uri(uri)),
    gpu,
    logger: pino({ level: "silent" }),
    version: "test",
  });
  await m.start();
  stops.push(async () => {
    await m.stop();
    client.destroy();
  });
  return m;
}

async function manifestFiles(bucket: string, key: string): Promise<string[]> {
  const out = await fx.client.send(new GetObjectCommand({ Bucket: bucket, Key: `cc/${key}/manifest.json` }));
  const m = JSON.parse((await out.Body?.transformToString()) ?? "{}") as { files: { path: string }[] };
  return m.files.map((f) => f.path).sort();
}

describe("what a pod plants in its keyed directory", () => {
  it("a keyed directory replaced by a symlink is moved aside, not followed: no chmod, no upload outside", async () => {
    const bucket = await freshBucket(fx.client, "ccsafe");
    const m = await node(join(fx.work, "root"), `s3://${bucket}/cc/`);
    const outside = join(fx.work, "host-secrets");
    await mkdir(outside, { mode: 0o700 });
    await writeFile(join(outside, "token"), "s3cr3t", { mode: 0o600 });

    const first = await m.restore({ identity, timeoutMs: 10_000 });
    expect(first.outcome).toBe("miss");
    // A root pod swaps its keyed directory for a link to somewhere the daemon can see.
    await rm(first.path, { recursive: true });
    await symlink(outside, first.path);

    // Publishing through the link finds nothing to publish.
    expect((await m.publish(first.key, "api")).outcome).toBe("empty");
    // The next hand-over moves the link aside and makes a real directory.
    const again = await m.restore({ identity, timeoutMs: 10_000 });
    expect(again.outcome).toBe("miss");
    expect((await stat(again.path)).isDirectory()).toBe(true);
    expect((await stat(outside)).mode & 0o777).toBe(0o700);
    expect((await stat(join(outside, "token"))).mode & 0o777).toBe(0o600);
    expect(await readFile(join(outside, "token"), "utf8")).toBe("s3cr3t");
  });

  it("a symlinked subdirectory is not published, only the real files are", async () => {
    const bucket = await freshBucket(fx.client, "ccsafe");
    const m = await node(join(fx.work, "root"), `s3://${bucket}/cc/`);
    const outside = join(fx.work, "elsewhere");
    await mkdir(outside);
    await writeFile(join(outside, "secret.py"), "token = 's3cr3t'");
    const r = await m.restore({ identity, timeoutMs: 10_000 });
    await mkdir(join(r.path, "torch_compile_cache", "h"), { recursive: true });
    await writeFile(join(r.path, "torch_compile_cache", "h", "real.py"), "x = 1");
    await symlink(outside, join(r.path, "torch_compile_cache", "linked"));
    await symlink(join(outside, "secret.py"), join(r.path, "alias.py"));

    expect((await m.publish(r.key, "api")).outcome).toBe("published");
    expect(await manifestFiles(bucket, r.key)).toEqual(["torch_compile_cache/h/real.py"]);
  });

  it("a node without one GPU kind answers an error outcome, not a refusal: the pod is not its fault", async () => {
    const bucket = await freshBucket(fx.client, "ccsafe");
    const m = await node(join(fx.work, "root"), `s3://${bucket}/cc/`, () => ({
      ...GPU,
      gpuProduct: "mixed",
    }));
    const r = await m.restore({ identity, timeoutMs: 10_000 });
    expect(r).toMatchObject({ outcome: "error", path: "", error: { code: "CS_CACHE_KEY_INVALID" } });
    // The pod's own mistake is still a refusal.
    await expect(m.restore({ identity: { vllm: "bad version" }, timeoutMs: 10_000 })).rejects.toMatchObject({
      code: "CS_CACHE_KEY_INVALID",
    });
  });
});
