import { mkdir, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "pino";
import { isColdstartError } from "../errors.js";
import type { EvictionReason, Metrics } from "../metrics/metrics.js";
import { renameBeneath } from "../store/beneath.js";
import { ioError } from "../store/paths.js";
import { RootLayout } from "../store/root-layout.js";
import type { ModelRecord, ModelRegistry } from "./model-registry.js";

export interface ModelRemovalOptions {
  registry: ModelRegistry;
  logger: Logger;
  metrics?: Metrics | undefined;
  /** A model's state changed (evicting, then gone). */
  changed: (id: string) => void;
}

/**
 * Takes models off the disk, crash-safely: a model being removed is marked so on disk first, and what
 * a crash left half-done under <root>/models/ is finished or cleaned at the next start.
 */
export class ModelRemoval {
  readonly #root: string;
  readonly #layout: RootLayout;
  readonly #o: ModelRemovalOptions;

  constructor(root: string, options: ModelRemovalOptions) {
    this.#root = root;
    this.#layout = new RootLayout(root);
    this.#o = options;
  }

  /**
   * At start: creates <root>/models/, empties its trash, finishes the removals a crash interrupted
   * and removes orphans.
   */
  async recover(): Promise<void> {
    await mkdir(this.#layout.models, { recursive: true }).catch((e) => {
      throw ioError(e, `creating ${this.#layout.models}`);
    });
    await this.#layout.emptyTrash("models");
    for (const r of this.#o.registry.all()) {
      if (r.state === "evicting") await this.remove(r, "resume");
    }
    await this.#removeOrphans();
  }

  /**
   * Removes a model: marks it evicting (persisted, so a crash mid-way finishes on restart), renames
   * its directory into <root>/trash (the model path disappears at once), deletes it, forgets it.
   */
  async remove(r: ModelRecord, reason: EvictionReason | "resume"): Promise<void> {
    r.state = "evicting";
    await this.#o.registry.put(r);
    this.#o.changed(r.id);
    const gone = await this.#layout.trashSlot("models");
    // Never through a planted symlink: the rename would move (and the rm delete) something outside.
    await renameBeneath(this.#root, this.#layout.modelSegments(r.id), gone).catch((e) => {
      throw isColdstartError(e) ? e : ioError(e as NodeJS.ErrnoException, `evicting ${r.id}`);
    });
    // Deleted before the queue moves on: room-making re-measures free space right after this.
    await rm(gone, { recursive: true, force: true });
    await this.#o.registry.delete(r.id);
    if (reason !== "resume") {
      this.#o.metrics?.evictions.inc({ reason });
      this.#o.metrics?.evictedBytes.inc(r.bytesTotal);
    }
    this.#o.logger.info({ model: r.id, reason, bytes: r.bytesTotal }, "model evicted");
    this.#o.changed(r.id);
  }

  /** Directories under <root>/models/ that belong to no model (a crash between steps, manual copies). */
  async #removeOrphans(): Promise<void> {
    const ids = new Set(this.#o.registry.all().map((r) => r.id));
    const walk = async (rel: string[]) => {
      const dir = join(this.#layout.models, ...rel);
      for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
        const id = [...rel, e.name].join("/");
        if (ids.has(id)) continue;
        if (e.isDirectory() && [...ids].some((m) => m.startsWith(`${id}/`))) {
          await walk([...rel, e.name]);
          continue;
        }
        this.#o.logger.warn({ path: join(dir, e.name) }, "removing orphan in the models directory");
        await rm(join(dir, e.name), { recursive: true, force: true });
      }
    };
    await walk([]);
  }
}
