import { readdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "pino";
import { ColdstartError } from "../errors.js";
import { writeFileAtomic } from "../store/atomic-file.js";
import type { CacheFile, DirListing } from "./pack.js";

/** What the daemon remembers of one keyed directory, `<root>/state/compile-caches/<key>.json`. */
export interface CacheRecord {
  key: string;
  canonical: string;
  /** The remote this key restores from and publishes to (s3://bucket/prefix/), null for none. */
  remote: string | null;
  createdAt: string;
  lastUsedAt: string;
  /** Not evicted before this: handed to a pod. */
  inUseUntil?: string | undefined;
  bytes: number;
  files: number;
  fingerprint?: string | undefined;
  changedAt?: string | undefined;
  /** Set when the directory came from the remote: the manifest's files, to tell growth from it. */
  restored?: { at: string; manifestCreatedAt: string; files: CacheFile[] } | undefined;
  published?: { at: string; fingerprint: string; pack: string } | undefined;
  remoteState: "present" | "absent" | "unknown";
  remoteCheckedAt?: string | undefined;
  silentMissAt?: string | undefined;
}

/** What a key looks like (key.ts builds them): a single safe path segment. */
export function validKeyName(key: string): boolean {
  return /^[a-z0-9][a-z0-9-]{0,199}$/.test(key) && !key.endsWith("-");
}

/** Updates sizes and the change time (`at`) from a listing; true when something changed. */
export function observeListing(r: CacheRecord, at: string, listing: DirListing): boolean {
  if (r.fingerprint === listing.fingerprint) return false;
  r.fingerprint = listing.fingerprint;
  r.bytes = listing.bytes;
  r.files = listing.files.length;
  r.changedAt = at;
  return true;
}

/**
 * The node's compile-cache records, `<root>/state/compile-caches/<key>.json`, each rewritten
 * atomically; the map in memory is the truth while the daemon runs.
 */
export class CacheRecords {
  readonly #map = new Map<string, CacheRecord>();
  readonly #dir: string;
  readonly #logger: Logger;

  constructor(dir: string, logger: Logger) {
    this.#dir = dir;
    this.#logger = logger;
  }

  /** Reads every record; one that cannot be read, or is not under its key's name, is logged and skipped. */
  async load(): Promise<void> {
    for (const name of await readdir(this.#dir)) {
      if (!name.endsWith(".json")) continue;
      try {
        const r = JSON.parse(await readFile(join(this.#dir, name), "utf8")) as CacheRecord;
        if (`${r.key}.json` !== name || !validKeyName(r.key)) throw new Error("key does not match file");
        this.#map.set(r.key, r);
      } catch (err) {
        this.#logger.warn({ file: name, err: String(err) }, "ignoring unreadable compile-cache record");
      }
    }
  }

  get(key: string): CacheRecord | undefined {
    return this.#map.get(key);
  }

  has(key: string): boolean {
    return this.#map.has(key);
  }

  all(): CacheRecord[] {
    return [...this.#map.values()];
  }

  /** The record of a key the API named: CS_CACHE_KEY_INVALID or CS_CACHE_NOT_FOUND otherwise. */
  require(keyIn: string): CacheRecord {
    if (!validKeyName(keyIn)) {
      throw new ColdstartError(
        "CS_CACHE_KEY_INVALID",
        `${JSON.stringify(keyIn)} is not a compile-cache key`,
        {
          details: { field: "key", value: keyIn },
        },
      );
    }
    const r = this.#map.get(keyIn);
    if (!r) {
      throw new ColdstartError("CS_CACHE_NOT_FOUND", `no compile cache ${keyIn} on this node`, {
        details: { field: "key", value: keyIn },
      });
    }
    return r;
  }

  /** Makes `r` its key's record (in memory only: `put` writes it). */
  set(r: CacheRecord): void {
    this.#map.set(r.key, r);
  }

  /** Writes `r` if it is still its key's record: one evicted meanwhile is not brought back. */
  async put(r: CacheRecord): Promise<void> {
    if (this.#map.get(r.key) !== r) return;
    await writeFileAtomic(join(this.#dir, `${r.key}.json`), JSON.stringify(r));
  }

  /** Forgets a key, in memory and on disk. */
  async delete(key: string): Promise<void> {
    this.#map.delete(key);
    await rm(join(this.#dir, `${key}.json`), { force: true });
  }

  /** Bytes of every keyed directory, as last scanned. */
  localBytes(): number {
    let n = 0;
    for (const r of this.#map.values()) n += r.bytes;
    return n;
  }
}
