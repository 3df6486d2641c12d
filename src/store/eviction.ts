/**
 * The contract of free-space eviction under the staging root: the model manager evicts models and
 * whatever else an EvictableStore offers (compile caches), merged by last use.
 */

/** Something under the staging root that eviction may take (ModelManager merges these by last use). */
export interface Evictable {
  bytes: number;
  lastUse: number;
  evict(): Promise<boolean>;
}

/** What ModelManagerOptions.extra offers free-space eviction (a CompileCacheManager is one). */
export interface EvictableStore {
  /** What may be evicted now. */
  evictables(): Evictable[];
  /** Bytes of everything it holds, evictable now or not. */
  localBytes(): number;
}
