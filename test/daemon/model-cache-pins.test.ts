/**
 * releaseModelCachePins on a real ModelManager over the in-memory object source: the pins an earlier
 * run took for ModelCache resources go, except those of the resources kept; an API pin stays.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config/load.js";
import { releaseModelCachePins } from "../../src/daemon/model-caches.js";
import type { ModelManager } from "../../src/models/model-manager.js";
import { MemoryObjectSource } from "../../src/s3/memory-object-source.js";
import { testManager } from "../support/manager.js";

let root: string;
let manager: ModelManager;

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "cs-mc-pins-"));
  const source = new MemoryObjectSource();
  source.put("models", "m/config.json", Buffer.from("{}"));
  const config = loadConfig({ env: { COLDSTART_ROOT: root, COLDSTART_SOURCES_ALLOW: "s3://models/**" } });
  manager = await testManager({ root, source, config });
  await manager.start();
  await manager.request("org/m", { source: "s3://models/m/", pin: true }, { waited: true });
  expect((await manager.waitReady("org/m", 60_000)).outcome).toBe("ready");
  await manager.pinFor("org/m", "modelcache/kept", true);
  await manager.pinFor("org/m", "modelcache/gone", true);
});
afterEach(async () => {
  await manager.drain(0);
  await rm(root, { recursive: true, force: true });
});

describe("releaseModelCachePins", () => {
  it("takes away the pins of resources not kept, and keeps the API's pin", async () => {
    const silent = pino({ level: "silent" });
    await releaseModelCachePins(manager, silent, new Set(["kept"]));
    expect(manager.get("org/m")).toMatchObject({ pinned: true, pinnedBy: ["modelcache/kept"] });
    // kube.modelCaches off: no resource is kept.
    await releaseModelCachePins(manager, silent);
    expect(manager.get("org/m")).toMatchObject({ pinned: true, pinnedBy: [] });
  });
});
