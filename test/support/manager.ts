import pino from "pino";
import type { Config } from "../../src/config/schema.js";
import { ModelManager, type ModelManagerOptions } from "../../src/models/model-manager.js";
import { ModelRegistry } from "../../src/models/model-registry.js";
import { SlotScheduler } from "../../src/staging/scheduler.js";
import { stageSettingsFrom } from "../../src/wiring/staging.js";

/**
 * A ModelManager wired from `config` as the daemon wires it (job settings from config.download), on
 * the registry at `root` unless one is given, four download slots and a silent logger unless given.
 * Not started: a test calls start() when the state on disk should be loaded.
 */
export async function testManager(
  o: Pick<ModelManagerOptions, "root" | "source"> & { config: Config } & Partial<ModelManagerOptions>,
): Promise<ModelManager> {
  return new ModelManager({
    registry: o.registry ?? (await ModelRegistry.open(o.root)),
    scheduler: new SlotScheduler(4),
    stage: stageSettingsFrom(o.config.download),
    logger: pino({ level: "silent" }),
    ...o,
  });
}
