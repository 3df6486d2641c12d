import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { CompileCacheManager } from "../../src/compile-cache/cache-manager.js";
import { loadConfig } from "../../src/config/load.js";

// Unit tier: the node's compile-cache records, without a remote (compileCache.remote unset).

let root: string;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "cs-cc-records-"));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

function manager(): CompileCacheManager {
  return new CompileCacheManager({
    root,
    config: loadConfig({ env: { COLDSTART_ROOT: root } }),
    remoteFor: () => {
      throw new Error("no remote in this test");
    },
    gpu: () => ({ gpuProduct: "NVIDIA-H100-80GB-HBM3", computeCapability: "9.0", driverMajor: "570" }),
    logger: pino({ level: "silent" }),
    version: "test",
  });
}

describe("compile-cache records", () => {
  it("regression: a keyed directory found without a record (lost state) was never adopted, so never evicted", async () => {
    const key = "h100-lost-state-0123456789abcdef";
    await mkdir(join(root, "compile-cache", key), { recursive: true });
    await writeFile(join(root, "compile-cache", key, "artifact.bin"), Buffer.alloc(1000, 1));
    const first = manager();
    await first.start();
    expect(first.list().map((c) => [c.key, c.origin, c.bytes])).toEqual([[key, "local", 1000]]);
    expect(first.localBytes()).toBe(1000);
    await first.stop();
    // Its record was written: a restart knows it without adopting it again.
    const again = manager();
    await again.start();
    expect(again.get(key)).toMatchObject({ key, bytes: 1000, origin: "local" });
    await again.stop();
  });
});
