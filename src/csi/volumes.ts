/**
 * The CSI volumes this node has published, persisted (state/csi-volumes.json) so that a restarted
 * daemon finds them again: the pods keep their mounts across a daemon restart or upgrade, and the
 * models they hold stay out of eviction's reach.
 */
import { createHash } from "node:crypto";
import { mkdir, readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { ColdstartError } from "../errors.js";
import { writeFileAtomic } from "../store/atomic-file.js";
import { RootLayout } from "../store/root-layout.js";

export interface PublishedVolume {
  /** Absent in records written before compile-cache volumes: a model. */
  kind?: "model" | "compile-cache";
  volumeId: string;
  targetPath: string;
  /** The model of a model volume ("" for a compile cache). */
  modelId: string;
  /** A compile-cache volume's key; absent when the node had none and the pod got a scratch directory. */
  cacheKey?: string | undefined;
  /** The model's source, or a compile cache's remote ("" when local only). */
  source: string;
  include: string[];
  exclude: string[];
  namespace: string;
  podName: string;
  podUid: string;
  /**
   * The volume's directory under <root>/csi/: for a model, coldstart.json, coldstart.env and model/;
   * for a compile cache without a key on this node, scratch/ (mounted instead, removed with it).
   */
  dir: string;
  publishedAt: string;
}

export class VolumeStore {
  readonly #file: string;
  readonly #dir: string;
  readonly #byTarget = new Map<string, PublishedVolume>();
  #writes: Promise<void> = Promise.resolve();

  private constructor(root: string) {
    const layout = new RootLayout(root);
    this.#file = layout.csiVolumesFile;
    this.#dir = layout.csiVolumes;
  }

  static async open(root: string): Promise<VolumeStore> {
    const store = new VolumeStore(root);
    let text: string | undefined;
    try {
      text = await readFile(store.#file, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
    if (text !== undefined) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch (err) {
        throw new ColdstartError("CS_IO_ERROR", `${store.#file} is not valid JSON; move it aside to start`, {
          cause: err,
        });
      }
      for (const v of (parsed as { volumes?: PublishedVolume[] }).volumes ?? [])
        store.#byTarget.set(v.targetPath, v);
    }
    return store;
  }

  /** A target's volume directory under <root>/csi/: named by the target, so a retry finds it. */
  dirFor(targetPath: string): string {
    return join(this.#dir, createHash("sha256").update(targetPath).digest("hex").slice(0, 32));
  }

  get(targetPath: string): PublishedVolume | undefined {
    return this.#byTarget.get(targetPath);
  }

  all(): PublishedVolume[] {
    return [...this.#byTarget.values()];
  }

  async put(v: PublishedVolume): Promise<void> {
    this.#byTarget.set(v.targetPath, v);
    await this.#save();
  }

  async delete(targetPath: string): Promise<void> {
    if (this.#byTarget.delete(targetPath)) await this.#save();
  }

  /** Writes run one after another, each with the state of its moment. */
  #save(): Promise<void> {
    const write = this.#writes.then(async () => {
      await mkdir(dirname(this.#file), { recursive: true });
      await writeFileAtomic(this.#file, `${JSON.stringify({ v: 1, volumes: this.all() }, null, 1)}\n`);
    });
    this.#writes = write.catch(() => {});
    return write;
  }
}
