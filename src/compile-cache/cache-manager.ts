import { constants } from "node:fs";
import { lstat, mkdir, open, readdir, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import picomatch from "picomatch";
import type { Logger } from "pino";
import type { Config } from "../config/schema.js";
import { ColdstartError, toColdstartError } from "../errors.js";
import type { Metrics } from "../metrics/metrics.js";
import { normalizeS3Uri } from "../s3/uri.js";
import type { Evictable } from "../store/eviction.js";
import { ioError } from "../store/paths.js";
import { RootLayout } from "../store/root-layout.js";
import type { CacheContext } from "./context.js";
import { cacheKey } from "./key.js";
import { type DirListing, listCacheDir } from "./pack.js";
import { publishOnce } from "./publish.js";
import { type CacheRecord, CacheRecords, observeListing, validKeyName } from "./records.js";
import type { RemoteStore } from "./remote.js";
import { restoreOnce } from "./restore.js";
import type { CacheStatus, GpuIdentity, PublishResult, RestoreRequest, RestoreResult } from "./types.js";

export interface CompileCacheManagerOptions {
  root: string;
  config: Pick<Config, "compileCache" | "eviction">;
  /** The remote store for a URI (one S3 client for all). */
  remoteFor: (uri: string) => RemoteStore;
  /** This node's GPU part of the key, or an error naming why there is none. */
  gpu: () => GpuIdentity;
  logger: Logger;
  metrics?: Metrics | undefined;
  nodeName?: string | undefined;
  version: string;
  /**
   * The clock (ms since the epoch) that decides quiet periods, in-use grace and every recorded
   * time; Date.now by default. Tests inject one and call `scan()` themselves.
   */
  now?: () => number;
}

export class CompileCacheManager {
  readonly #o: CompileCacheManagerOptions;
  readonly #records: CacheRecords;
  readonly #ctx: CacheContext;
  readonly #restoring = new Map<string, Promise<RestoreResult>>();
  readonly #publishing = new Map<string, Promise<PublishResult>>();
  /** Evictions in progress: a restore of the same key waits for its eviction to finish. */
  readonly #evictions = new Map<string, Promise<boolean>>();
  /** After a failed automatic publish, not again before this. */
  readonly #retryAt = new Map<string, number>();
  readonly #allowed: (uri: string) => boolean;
  /** compileCache.remote, normalized (s3://bucket/prefix/); parsed once, and a bad one fails the start. */
  readonly #defaultRemote: string | null;
  #timer: NodeJS.Timeout | undefined;
  #scanning: Promise<void> = Promise.resolve();
  #stopped = false;
  readonly #stop = new AbortController();
  /** Keys mounted into pods (CSI volumes), by holder (the volume's target path). */
  readonly #holds = new Map<string, string>();

  readonly #layout: RootLayout;

  constructor(options: CompileCacheManagerOptions) {
    this.#o = options;
    this.#layout = new RootLayout(options.root);
    this.#records = new CacheRecords(this.#layout.compileCacheRecords, options.logger);
    this.#ctx = {
      records: this.#records,
      pathOf: (key) => this.pathOf(key),
      tmpDir: this.#layout.compileCacheTmp,
      remoteFor: options.remoteFor,
      ensureKeyDir: (key) => this.#ensureKeyDir(key),
      maxBytes: options.config.compileCache.maxBytes,
      stopSignal: this.#stop.signal,
      nodeName: options.nodeName,
      version: options.version,
      logger: options.logger,
      metrics: options.metrics,
      now: () => this.#now(),
      iso: () => this.#iso(),
    };
    const uri = options.config.compileCache.remote;
    this.#defaultRemote = uri ? normalizeS3Uri(uri, "compileCache.remote") : null;
    const patterns = options.config.compileCache.allow;
    const match = patterns.length ? picomatch([...patterns], { dot: true }) : () => false;
    this.#allowed = (uri) => uri === this.#defaultRemote || match(uri);
  }

  get dir(): string {
    return this.#layout.compileCaches;
  }

  pathOf(key: string): string {
    return join(this.dir, key);
  }

  /** Loads the records, drops those whose directory is gone, adopts directories without one. */
  async start(): Promise<void> {
    const stateDir = this.#stateDir();
    for (const d of [this.dir, stateDir, this.#tmpDir()]) {
      await mkdir(d, { recursive: true }).catch((e) => {
        throw ioError(e, `creating ${d}`);
      });
    }
    await this.#layout.emptyTrash("compile-cache");
    // Restores interrupted by a crash: never complete, never visible.
    for (const e of await readdir(this.#tmpDir()))
      await rm(join(this.#tmpDir(), e), { recursive: true, force: true });
    await this.#records.load();
    const onDisk = new Set(await readdir(this.dir));
    for (const r of this.#records.all()) {
      if (!onDisk.has(r.key)) await this.#records.delete(r.key);
    }
    for (const name of onDisk) {
      if (this.#records.has(name) || !validKeyName(name)) continue;
      // A directory without a record (lost state, a pod that created it): keep it, local only. (It
      // was written only if already known, so such a directory was never adopted: listed, counted
      // or evicted.)
      const now = this.#iso();
      await this.#adopt({
        key: name,
        canonical: "",
        remote: this.#defaultRemote,
        createdAt: now,
        lastUsedAt: now,
        bytes: 0,
        files: 0,
        remoteState: "unknown",
      });
    }
    await this.scan();
    const every = this.#o.config.compileCache.scanIntervalMs;
    this.#timer = setInterval(() => {
      this.#scanning = this.#scanning
        .then(() => this.scan())
        .catch((e) => this.#o.logger.error({ err: String(e) }, "compile-cache scan"));
    }, every);
    this.#timer.unref();
  }

  /** Stops the scans and aborts restores and publishes in flight (their temp state is discarded). */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#timer);
    this.#stop.abort();
    await Promise.allSettled([this.#scanning, ...this.#restoring.values(), ...this.#publishing.values()]);
  }

  list(): CacheStatus[] {
    return this.#records
      .all()
      .sort((a, b) => a.key.localeCompare(b.key))
      .map((r) => this.#status(r));
  }

  get(key: string): CacheStatus {
    return this.#status(this.#records.require(key));
  }

  /**
   * The handshake: computes the key from this node's GPU and the pod's identity, and makes sure the
   * keyed directory exists, restored from the remote when it holds the key. Throws only for the
   * pod's own mistakes (a malformed identity, a remote not allowed); a miss, a slow remote, a bad
   * cache or a node without one GPU kind is an outcome, because none of them may stop the pod.
   */
  async restore(req: RestoreRequest): Promise<RestoreResult> {
    const started = this.#now();
    // The identity alone first, against a stand-in GPU: its errors are the pod's (400).
    cacheKey({ ...req.identity, ...STAND_IN_GPU });
    const remote = this.remoteFor(req.remote);
    let key: string;
    let canonical: string;
    try {
      ({ key, canonical } = cacheKey({ ...req.identity, ...this.#o.gpu() }));
    } catch (err) {
      // No GPU yet, two kinds, an unnamed one: the node's problem, not the pod's.
      const e = toColdstartError(err);
      this.#o.metrics?.compileCacheRestores.inc({ outcome: "error" });
      this.#o.logger.warn(
        { code: e.code, err: e.message },
        "no compile-cache key on this node; the pod compiles",
      );
      return {
        key: "",
        path: "",
        outcome: "error",
        bytes: 0,
        files: 0,
        seconds: 0,
        remote,
        error: { code: e.code, message: e.message },
      };
    }
    // An eviction of this key in progress finishes first; the restore then starts afresh.
    await this.#evictions.get(key);
    let r = this.#records.get(key);
    if (!r) {
      const now = this.#iso();
      r = {
        key,
        canonical,
        remote,
        createdAt: now,
        lastUsedAt: now,
        bytes: 0,
        files: 0,
        remoteState: "unknown",
      };
      this.#records.set(r);
    }
    r.canonical = canonical;
    // The latest asker's remote is where this key publishes to.
    r.remote = remote;
    this.#handedOver(r);
    let running = this.#restoring.get(key);
    if (!running) {
      // One restore per key, bounded by the first asker's timeout; later askers share it.
      const deadline = AbortSignal.timeout(req.timeoutMs);
      running = restoreOnce(this.#ctx, r, remote, AbortSignal.any([deadline, this.#stop.signal])).finally(
        () => this.#restoring.delete(key),
      );
      this.#restoring.set(key, running);
    }
    const result = await running;
    return { ...result, seconds: (this.#now() - started) / 1000 };
  }

  /**
   * Packs and uploads the keyed directory, then writes its manifest, unless the remote already holds
   * the key (the first complete manifest wins). Never leaves a manifest without its pack.
   */
  async publish(keyIn: string, reason: "api" | "quiet"): Promise<PublishResult> {
    const r = this.#records.require(keyIn);
    if (this.#o.config.compileCache.publish === "off") {
      throw new ColdstartError(
        "CS_CACHE_NO_REMOTE",
        "compileCache.publish is off on this node: it only reads",
        {
          details: { field: "compileCache.publish", value: "off" },
        },
      );
    }
    if (!r.remote) {
      throw new ColdstartError(
        "CS_CACHE_NO_REMOTE",
        "compileCache.remote is not set: nowhere to publish to",
        {
          details: { field: "compileCache.remote" },
        },
      );
    }
    if (this.#restoring.has(r.key) || this.#evictions.has(r.key)) {
      throw new ColdstartError("CS_CACHE_BUSY", `compile cache ${r.key} is being restored or evicted`);
    }
    let running = this.#publishing.get(r.key);
    if (!running) {
      running = publishOnce(this.#ctx, r, r.remote, reason).finally(() => this.#publishing.delete(r.key));
      this.#publishing.set(r.key, running);
    }
    return running;
  }

  /**
   * One pass over the keyed directories: sizes and changes (for eviction and the API), silent misses
   * of restored keys, and automatic publishes of keys that grew and then went quiet. Resolves once
   * the pass, and any publish it started, is done. A timer calls it every
   * compileCache.scanIntervalMs; a test calls it directly, on the clock it injected (`now`).
   */
  async scan(): Promise<void> {
    const cc = this.#o.config.compileCache;
    for (const r of this.#records.all()) {
      if (this.#stopped) return;
      if (this.#restoring.has(r.key) || this.#evictions.has(r.key)) continue;
      const listing = await listCacheDir(this.pathOf(r.key));
      if (observeListing(r, this.#iso(), listing)) await this.#records.put(r);
      this.#checkSilentMiss(r, listing);
      const quietFor = this.#now() - Date.parse(r.changedAt ?? r.createdAt);
      const due =
        cc.publish === "auto" &&
        r.remote !== null &&
        r.remoteState !== "present" &&
        listing.files.length > 0 &&
        r.published?.fingerprint !== listing.fingerprint &&
        quietFor >= cc.quietPeriodMs &&
        (this.#retryAt.get(r.key) ?? 0) <= this.#now() &&
        !this.#publishing.has(r.key);
      if (due) {
        const result = await this.publish(r.key, "quiet").catch((e) => ({
          outcome: "failed",
          error: toColdstartError(e),
        }));
        if (result.outcome === "failed" || result.outcome === "too_large")
          this.#retryAt.set(r.key, this.#now() + Math.max(cc.quietPeriodMs, 60_000));
      }
    }
  }

  /** A restored key whose directory grew with artifacts the manifest did not list: the engine missed. */
  #checkSilentMiss(r: CacheRecord, listing: DirListing): void {
    if (!r.restored || r.silentMissAt) return;
    const had = new Set(r.restored.files.map((f) => f.path));
    const grown = listing.files.filter((f) => !had.has(f.path));
    if (grown.length === 0) return;
    r.silentMissAt = this.#iso();
    this.#o.metrics?.compileCacheSilentMisses.inc();
    this.#o.logger.warn(
      {
        key: r.key,
        newFiles: grown.length,
        examples: grown.slice(0, 5).map((f) => f.path),
        restoredAt: r.restored.at,
      },
      `compile cache ${r.key} was restored but the engine compiled again (silent miss): its own hash differs from the publisher's`,
    );
    void this.#records.put(r).catch(() => {});
  }

  /** Keyed directories eviction may take: not busy, not handed over within the grace, not being written. */
  evictables(): Evictable[] {
    return this.#records
      .all()
      .filter((r) => !this.#busy(r.key) && this.#idle(r))
      .map((r) => ({
        bytes: r.bytes,
        lastUse: Math.max(Date.parse(r.lastUsedAt), Date.parse(r.changedAt ?? r.createdAt)),
        evict: () => this.#evict(r, "watermark"),
      }));
  }

  /**
   * A CSI volume mounted the keyed directory into a pod (`holder`: its target path): neither eviction
   * nor DELETE takes it until `release(holder)`, which starts the in-use grace once more.
   */
  hold(key: string, holder: string): void {
    this.#holds.set(holder, key);
    const r = this.#records.get(key);
    if (r) this.#handedOver(r);
  }

  release(holder: string): void {
    const key = this.#holds.get(holder);
    if (key === undefined) return;
    this.#holds.delete(holder);
    const r = this.#records.get(key);
    if (r) {
      this.#handedOver(r);
      void this.#records.put(r).catch(() => {});
    }
  }

  #mounted(key: string): boolean {
    for (const held of this.#holds.values()) if (held === key) return true;
    return false;
  }

  /** DELETE: removes the local copy now (the remote keeps its own). */
  async remove(keyIn: string): Promise<void> {
    const r = this.#records.require(keyIn);
    if (this.#busy(r.key)) {
      throw new ColdstartError(
        "CS_CACHE_BUSY",
        `compile cache ${r.key} is being restored, published or evicted`,
      );
    }
    if (this.#mounted(r.key)) {
      throw new ColdstartError("CS_CACHE_BUSY", `compile cache ${r.key} is mounted into a pod (CSI volume)`);
    }
    if (r.inUseUntil && Date.parse(r.inUseUntil) > this.#now()) {
      throw new ColdstartError(
        "CS_CACHE_BUSY",
        `compile cache ${r.key} was handed to a pod; in use until ${r.inUseUntil}`,
      );
    }
    await this.#evict(r, "api");
  }

  /** Local bytes of all keyed directories (the metric, refreshed with the disk every 30 s). */
  localBytes(): number {
    return this.#records.localBytes();
  }

  #evict(r: CacheRecord, reason: "watermark" | "api"): Promise<boolean> {
    if (this.#busy(r.key)) return Promise.resolve(false);
    // Chosen a while ago (eviction awaits between victims): handed over or written since? It stays.
    if (reason === "watermark" && !this.#idle(r)) return Promise.resolve(false);
    const running = this.#evictOnce(r, reason).finally(() => this.#evictions.delete(r.key));
    this.#evictions.set(r.key, running);
    return running;
  }

  async #evictOnce(r: CacheRecord, reason: "watermark" | "api"): Promise<boolean> {
    const gone = await this.#layout.trashSlot("compile-cache");
    // A symlink planted in place of the directory is moved, not followed.
    await rename(this.pathOf(r.key), gone).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== "ENOENT") throw ioError(e, `evicting compile cache ${r.key}`);
    });
    await this.#records.delete(r.key);
    await rm(gone, { recursive: true, force: true });
    this.#o.metrics?.compileCacheEvictions.inc({ reason });
    this.#o.logger.info({ key: r.key, reason, bytes: r.bytes }, "compile cache evicted");
    return true;
  }

  /** Not mounted, not handed to a pod within the grace, and not written within the quiet period. */
  #idle(r: CacheRecord): boolean {
    const now = this.#now();
    return (
      !this.#mounted(r.key) &&
      !(r.inUseUntil && Date.parse(r.inUseUntil) > now) &&
      now - Date.parse(r.changedAt ?? r.createdAt) >= this.#o.config.compileCache.quietPeriodMs
    );
  }

  /**
   * Makes the keyed directory a real directory of mode 0777. The pod may run as root and replace it
   * with a symlink; that is moved aside, never followed (the mode is set through an O_NOFOLLOW fd).
   */
  async #ensureKeyDir(key: string): Promise<void> {
    const path = this.pathOf(key);
    const st = await lstat(path).catch(() => undefined);
    if (st && !st.isDirectory()) {
      this.#o.logger.warn({ key, path }, "the keyed directory was replaced by a non-directory; moved aside");
      await rename(path, await this.#layout.trashSlot("compile-cache"));
    }
    if (!st?.isDirectory()) {
      await mkdir(path, { mode: 0o777 }).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== "EEXIST") throw ioError(e, `creating ${path}`);
      });
    }
    const fh = await open(path, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
    try {
      await fh.chmod(0o777);
    } finally {
      await fh.close();
    }
  }

  #handedOver(r: CacheRecord): void {
    const now = this.#now();
    r.lastUsedAt = new Date(now).toISOString();
    r.inUseUntil = new Date(now + this.#o.config.eviction.inUseGraceMs).toISOString();
  }

  /**
   * The remote a restore asking for `requested` uses: compileCache.remote when absent (null: none),
   * else `requested`, which must be compileCache.remote or in compileCache.allow (CS_SOURCE_NOT_ALLOWED).
   */
  remoteFor(requested: string | undefined): string | null {
    if (requested === undefined) return this.#defaultRemote;
    const uri = normalizeS3Uri(requested, "remote");
    if (!this.#allowed(uri)) {
      throw new ColdstartError(
        "CS_SOURCE_NOT_ALLOWED",
        `compile-cache remote ${uri} is neither compileCache.remote nor in compileCache.allow`,
        { details: { field: "remote", value: requested } },
      );
    }
    return uri;
  }

  /** Makes a directory found without a record one of the node's caches. */
  async #adopt(r: CacheRecord): Promise<void> {
    this.#records.set(r);
    await this.#records.put(r);
  }

  #status(r: CacheRecord): CacheStatus {
    return {
      key: r.key,
      path: this.pathOf(r.key),
      bytes: r.bytes,
      files: r.files,
      createdAt: r.createdAt,
      lastUsedAt: r.lastUsedAt,
      changedAt: r.changedAt ?? null,
      origin: r.restored ? "restored" : "local",
      restoredAt: r.restored?.at ?? null,
      silentMissAt: r.silentMissAt ?? null,
      busy: this.#restoring.has(r.key) ? "restoring" : this.#publishing.has(r.key) ? "publishing" : null,
      remote: {
        uri: r.remote,
        state: r.remoteState,
        checkedAt: r.remoteCheckedAt ?? null,
        publishedAt: r.published?.at ?? null,
      },
    };
  }

  #stateDir(): string {
    return this.#layout.compileCacheRecords;
  }

  #tmpDir(): string {
    return this.#layout.compileCacheTmp;
  }

  /** Being restored, published or evicted: nothing else may touch the key meanwhile. */
  #busy(key: string): boolean {
    return this.#restoring.has(key) || this.#publishing.has(key) || this.#evictions.has(key);
  }

  #now(): number {
    return (this.#o.now ?? Date.now)();
  }

  #iso(): string {
    return new Date(this.#now()).toISOString();
  }
}

/** Any valid GPU: checks the pod's identity on its own (cacheKey needs all inputs). */
const STAND_IN_GPU = { gpuProduct: "stand-in", computeCapability: "9.0", driverMajor: "1" } as const;
