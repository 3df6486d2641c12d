import { randomUUID } from "node:crypto";
import { mkdir, readdir, rm } from "node:fs/promises";
import { join } from "node:path";

/**
 * The daemon's staging root (`--root`), described once. Every path the daemon keeps there:
 *
 *   models/<id segments>/        staged models; each is a destination with its own `.coldstart/`
 *                                (temp files, journals, the manifest: src/store/paths.ts STATE_DIR)
 *   compile-cache/<key>/         torch.compile caches, one directory per key
 *   state/models.json            the model registry
 *   state/compile-caches/<key>.json   one record per compile cache
 *   tmp/compile-cache/           compile-cache packs being unpacked (never visible half-done)
 *   csi/<volume>/                one per published CSI volume: coldstart.json and coldstart.env
 *                                beside model/, where the model is bind-mounted read-only
 *   state/csi-volumes.json       the published CSI volumes (found again after a restart)
 *   trash/models/, trash/compile-cache/   what eviction moved aside, each owned and emptied by
 *                                its manager (a directory renamed away vanishes at once, and is
 *                                deleted after)
 */
export class RootLayout {
  constructor(readonly root: string) {}

  /** The directory holding every model. */
  get models(): string {
    return join(this.root, "models");
  }

  /** A model's directory as segments below the root (for the beneath-the-root path checks). */
  modelSegments(id: string): string[] {
    return ["models", ...id.split("/")];
  }

  get compileCaches(): string {
    return join(this.root, "compile-cache");
  }

  get registryFile(): string {
    return join(this.root, "state", "models.json");
  }

  get compileCacheRecords(): string {
    return join(this.root, "state", "compile-caches");
  }

  /** One directory per published CSI volume (src/csi/volumes.ts). */
  get csiVolumes(): string {
    return join(this.root, "csi");
  }

  get csiVolumesFile(): string {
    return join(this.root, "state", "csi-volumes.json");
  }

  get compileCacheTmp(): string {
    return join(this.root, "tmp", "compile-cache");
  }

  /** Where one manager moves what it evicts; only that manager empties it. */
  trash(owner: "models" | "compile-cache"): string {
    return join(this.root, "trash", owner);
  }

  /** A fresh name in the owner's trash, its directory made: where something is renamed away. */
  async trashSlot(owner: "models" | "compile-cache"): Promise<string> {
    const dir = this.trash(owner);
    await mkdir(dir, { recursive: true });
    return join(dir, randomUUID());
  }

  /**
   * Empties the owner's trash (what a crash left mid-eviction). The models' manager also removes
   * what versions before the split left loose in trash/.
   */
  async emptyTrash(owner: "models" | "compile-cache"): Promise<void> {
    await rm(this.trash(owner), { recursive: true, force: true });
    if (owner !== "models") return;
    const top = join(this.root, "trash");
    for (const name of await readdir(top).catch(() => [] as string[])) {
      if (name !== "models" && name !== "compile-cache")
        await rm(join(top, name), { recursive: true, force: true });
    }
  }
}
