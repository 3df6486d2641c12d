/**
 * Reads a ready model into the page cache before the gate opens (the wait handshake's answer, the
 * CSI publish), so the engine's first pass over the weights comes from memory rather than NVMe. The
 * reads run in libuv's thread pool into one reused buffer per reader: the event loop only sees a
 * callback per 8 MiB. Bounded by the memory the page cache may take (src/node/memory.ts), skipped
 * where the pod's loader bypasses the page cache (fastsafetensors over GDS reads with O_DIRECT).
 */
import { lstat, open, readdir } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "pino";
import type { Metrics, PageCacheWarmOutcome } from "../metrics/metrics.js";
import { STATE_DIR } from "../store/paths.js";

export type PageCacheMode = "auto" | "on" | "off";

export interface PageCacheOptions {
  mode: PageCacheMode;
  /** Bytes the page cache may take for this model now (memory less the reserve); null: unknown. */
  budget: () => Promise<number | null>;
  /** True when the node's pods load with a loader that bypasses the page cache (auto skips then). */
  bypassed: () => boolean;
  logger: Logger;
  metrics?: Metrics | undefined;
}

export interface WarmResult {
  outcome: PageCacheWarmOutcome;
  bytes: number;
  seconds: number;
}

const CHUNK = 8 * 1024 * 1024;
const READERS = 4;

export class PageCacheWarmer {
  readonly #o: PageCacheOptions;
  /** One warm per model at a time; a second gate opening for it shares the first's. */
  readonly #running = new Map<string, Promise<WarmResult>>();
  /** Bytes the warms running now will read: each new warm's budget leaves them out. */
  #planned = 0;

  constructor(options: PageCacheOptions) {
    this.#o = options;
  }

  warm(id: string, dir: string): Promise<WarmResult> {
    let running = this.#running.get(id);
    if (!running) {
      running = this.#warm(id, dir).finally(() => this.#running.delete(id));
      this.#running.set(id, running);
    }
    return running;
  }

  async #warm(id: string, dir: string): Promise<WarmResult> {
    const o = this.#o;
    const started = Date.now();
    const done = (outcome: PageCacheWarmOutcome, bytes = 0): WarmResult => {
      const seconds = (Date.now() - started) / 1000;
      o.metrics?.pageCacheWarms.inc({ outcome });
      if (bytes > 0) {
        o.metrics?.pageCacheWarmBytes.inc(bytes);
        o.metrics?.pageCacheWarmDuration.observe(seconds);
      }
      return { outcome, bytes, seconds };
    };
    if (o.mode === "off") return done("off");
    if (o.mode === "auto" && o.bypassed()) return done("skipped_bypass");
    let budget: number;
    let files: { path: string; size: number }[];
    try {
      budget = (await o.budget()) ?? 0;
      files = await modelFiles(dir);
    } catch (err) {
      o.logger.warn(
        { model: id, err: String(err) },
        "page-cache warm skipped: the model's files could not be listed",
      );
      return done("partial");
    }
    const total = files.reduce((n, f) => n + f.size, 0);
    if (budget - this.#planned <= 0 && total > 0) return done("skipped_memory");
    // In load order as far as one can tell: the small files (config, tokenizer, index), then shards.
    let left = budget - this.#planned;
    const take: { path: string; bytes: number }[] = [];
    for (const f of files) {
      if (left <= 0) break;
      take.push({ path: f.path, bytes: Math.min(f.size, left) });
      left -= f.size;
    }
    const planned = take.reduce((n, f) => n + f.bytes, 0);
    this.#planned += planned;
    let bytes = 0;
    try {
      let next = 0;
      const reader = async () => {
        const buf = Buffer.allocUnsafe(CHUNK);
        while (next < take.length) {
          const f = take[next++] as { path: string; bytes: number };
          const fh = await open(f.path, "r");
          try {
            for (let pos = 0; pos < f.bytes; ) {
              const { bytesRead } = await fh.read(buf, 0, Math.min(CHUNK, f.bytes - pos), pos);
              if (bytesRead === 0) break;
              pos += bytesRead;
              bytes += bytesRead;
            }
          } finally {
            await fh.close();
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(READERS, take.length) }, reader));
    } catch (err) {
      // Warming is an optimisation: a file that vanished or failed to read never fails the gate.
      o.logger.warn({ model: id, err: String(err) }, "page-cache warm stopped early");
      return done("partial", bytes);
    } finally {
      this.#planned -= planned;
    }
    const result = done(bytes < total ? "partial" : "warmed", bytes);
    o.logger.info({ model: id, bytes, totalBytes: total, seconds: result.seconds }, "page cache warmed");
    return result;
  }
}

/** The model's files below `dir` (not its .coldstart state), small ones first, then by name. */
async function modelFiles(dir: string): Promise<{ path: string; size: number }[]> {
  const out: { path: string; size: number }[] = [];
  const walk = async (d: string) => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      if (e.name === STATE_DIR && d === dir) continue;
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile()) out.push({ path: p, size: (await lstat(p)).size });
    }
  };
  await walk(dir);
  const weights = (p: string) => p.endsWith(".safetensors") || p.endsWith(".bin");
  return out.sort(
    (a, b) => Number(weights(a.path)) - Number(weights(b.path)) || a.path.localeCompare(b.path),
  );
}
