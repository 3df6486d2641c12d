import { mkdir, readFile } from "node:fs/promises";
import { dirname } from "node:path";
import { ColdstartError } from "../errors.js";
import { writeFileAtomic } from "../store/atomic-file.js";
import { ioError } from "../store/paths.js";
import { RootLayout } from "../store/root-layout.js";
import { validateModelId } from "./model-id.js";

export type ModelState = "pending" | "staging" | "verifying" | "ready" | "failed" | "evicting";

/** What the daemon remembers about a model across restarts. */
export interface ModelRecord {
  id: string;
  source: string;
  include: string[];
  exclude: string[];
  /** Pinned through the API (PUT or PATCH {"pin": true}). */
  pinned: boolean;
  /** Pinned by these ModelCache resources while they select this node ("modelcache/<name>"). */
  pinnedBy?: string[] | undefined;
  /** Against other prefetches (a ModelCache's spec.priority); a waited-for model goes first regardless. */
  priority?: number | undefined;
  state: ModelState;
  error?: { code: string; message: string } | undefined;
  bytesTotal: number;
  filesTotal: number;
  startedAt?: string | undefined;
  readyAt?: string | undefined;
  lastUsedAt?: string | undefined;
  /** Not evicted before this time: the model was handed to a pod (coldstart wait). */
  inUseUntil?: string | undefined;
}

/** Whether eviction and DELETE must leave the model alone: pinned by the API or by a resource. */
export function isPinned(r: Pick<ModelRecord, "pinned" | "pinnedBy">): boolean {
  return r.pinned || (r.pinnedBy?.length ?? 0) > 0;
}

/**
 * The daemon's model records, `<root>/state/models.json`, rewritten atomically (temp, fsync, rename)
 * on every change, serially. Small (one record per model), so a whole rewrite is fine.
 */
export class ModelRegistry {
  readonly path: string;
  readonly #records = new Map<string, ModelRecord>();
  /** The write in progress, and the one queued behind it that every later change joins. */
  #inFlight: Promise<void> = Promise.resolve();
  #queued: Promise<void> | undefined;

  private constructor(path: string) {
    this.path = path;
  }

  static async open(root: string): Promise<ModelRegistry> {
    const file = new RootLayout(root).registryFile;
    await mkdir(dirname(file), { recursive: true }).catch((e) => {
      throw ioError(e, `creating ${dirname(file)}`);
    });
    const reg = new ModelRegistry(file);
    // Only "no file yet" means no models. Any other failure must stop the start: an empty registry
    // would make every staged model an orphan, and orphans are deleted.
    const text = await readFile(reg.path, "utf8").catch((e: NodeJS.ErrnoException) => {
      if (e.code === "ENOENT") return undefined;
      throw ioError(e, `reading ${reg.path}`);
    });
    if (text !== undefined) {
      let parsed: { version: 1; models: ModelRecord[] };
      try {
        parsed = JSON.parse(text);
        for (const m of parsed.models) validateModelId(m.id);
      } catch (e) {
        throw new ColdstartError("CS_IO_ERROR", `${reg.path} is damaged: ${(e as Error).message}`, {
          cause: e,
        });
      }
      for (const m of parsed.models) reg.#records.set(m.id, m);
    }
    return reg;
  }

  get(id: string): ModelRecord | undefined {
    return this.#records.get(id);
  }

  all(): ModelRecord[] {
    return [...this.#records.values()];
  }

  /** Replaces the record in memory only; the next put() persists it. */
  set(record: ModelRecord): void {
    this.#records.set(record.id, record);
  }

  /** Replaces the record and persists. */
  async put(record: ModelRecord): Promise<void> {
    this.#records.set(record.id, record);
    await this.#persist();
  }

  async delete(id: string): Promise<void> {
    this.#records.delete(id);
    await this.#persist();
  }

  /** Persists the current records (coalesced with concurrent callers). */
  flush(): Promise<void> {
    return this.#persist();
  }

  /**
   * Writes are coalesced: a change made while a write is in flight joins the one write queued behind
   * it, which writes the latest records. Twenty pods handed a model at once cost two writes, not 20.
   */
  #persist(): Promise<void> {
    if (this.#queued) return this.#queued;
    const run = async () => {
      this.#queued = undefined;
      try {
        await writeFileAtomic(this.path, JSON.stringify({ version: 1, models: this.all() }));
      } catch (e) {
        throw ioError(e as NodeJS.ErrnoException, `writing ${this.path}`);
      }
    };
    const queued = this.#inFlight.then(run, run);
    this.#queued = queued;
    this.#inFlight = queued.catch(() => {});
    return queued;
  }
}
