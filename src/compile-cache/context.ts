import type { Logger } from "pino";
import type { Metrics } from "../metrics/metrics.js";
import type { CacheRecords } from "./records.js";
import type { RemoteStore } from "./remote.js";

/** What a restore and a publish of one key use of the node's compile caches (the manager gives it). */
export interface CacheContext {
  records: CacheRecords;
  /** The keyed directory of `key`. */
  pathOf(key: string): string;
  /** Where restores unpack and publishes snapshot before anything is visible. */
  tmpDir: string;
  remoteFor(uri: string): RemoteStore;
  /** Makes the keyed directory a real directory of mode 0777 (a symlink is moved aside). */
  ensureKeyDir(key: string): Promise<void>;
  /** compileCache.maxBytes. */
  maxBytes: number;
  /** Aborted when the manager stops. */
  stopSignal: AbortSignal;
  nodeName?: string | undefined;
  version: string;
  logger: Logger;
  metrics?: Metrics | undefined;
  now(): number;
  /** now(), as the ISO time records keep. */
  iso(): string;
}
