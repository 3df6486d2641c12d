import { lstat, mkdir, readdir, rm, statfs } from "node:fs/promises";
import { join } from "node:path";
import picomatch from "picomatch";
import type { Logger } from "pino";
import type { Config } from "../config/schema.js";
import { ColdstartError, isColdstartError, toColdstartError } from "../errors.js";
import type { EvictionReason, Metrics } from "../metrics/metrics.js";
import type { ObjectSource } from "../s3/object-source.js";
import { parseS3Uri } from "../s3/uri.js";
import type { RateLimiter } from "../staging/rate-limiter.js";
import type { SlotScheduler } from "../staging/scheduler.js";
import { StageJob } from "../staging/stage-job.js";
import type { PartRunner } from "../staging/workers/pool.js";
import { renameBeneath } from "../store/beneath.js";
import type { EvictableStore } from "../store/eviction.js";
import { ioError } from "../store/paths.js";
import { RootLayout } from "../store/root-layout.js";
import type { StageSettings } from "../wiring/staging.js";
import { inUseGrace, ModelEviction, type SpaceWait } from "./eviction.js";
import { HeldPieces } from "./held-pieces.js";
import { validateModelId } from "./model-id.js";
import type { ModelRecord, ModelRegistry, ModelState } from "./model-registry.js";

/** A model as the API shows it. */
export interface ModelStatus {
  id: string;
  source: string;
  state: ModelState;
  path: string;
  pinned: boolean;
  bytesTotal: number;
  bytesDone: number;
  filesTotal: number;
  filesDone: number;
  bytesPerSecond: number;
  etaSeconds: number | null;
  startedAt: string | null;
  readyAt: string | null;
  lastUsedAt: string | null;
  error?: { code: string; message: string };
  /**
   * Present while the model's staging waits for room that pinned models or models in use hold now
   * (state stays `staging`): how many bytes it needs and why it cannot have them yet.
   */
  waiting?: SpaceWait;
}

export interface ModelRequest {
  source: string;
  include?: string[] | undefined;
  exclude?: string[] | undefined;
  pin?: boolean | undefined;
}

export type WaitOutcome = "ready" | "failed" | "timeout";

export interface ModelManagerOptions {
  root: string;
  registry: ModelRegistry;
  source: ObjectSource;
  scheduler: SlotScheduler;
  /** download.maxBytesPerSecond across all jobs, when set. */
  rateLimiter?: RateLimiter | undefined;
  /** Runs each part (the daemon's worker threads); absent: on the main thread. */
  runPart?: PartRunner | undefined;
  /** Peers are asked for pieces: each job takes its model's parts in a random order (see StageJob). */
  spreadParts?: boolean | undefined;
  /** What config.download decides for every job (src/wiring/staging.ts). */
  stage: StageSettings;
  config: Pick<Config, "eviction" | "sources">;
  logger: Logger;
  /** Told the ids of ready models whenever that set changes (node labels). */
  onReadyChanged?: (readyIds: string[]) => void;
  /** Told of every state change (metrics). */
  onStateChanged?: () => void;
  metrics?: Metrics;
  /**
   * Other things under the staging root that free-space eviction may take (compile caches): what
   * it may take now, merged with the models by last use, and the bytes of all of them, evictable
   * now or once their grace ends (what a model waiting for room may count on). The byte budget
   * counts models only.
   */
  extra?: EvictableStore;
  now?: () => number;
}

/** A model a pod is waiting for goes ahead of background prefetches. */
const PRIORITY_WAITED = 10;
const PRIORITY_PREFETCH = 0;

interface Running {
  job: StageJob;
  done: Promise<void>;
  waiters: number;
  /** Lowers the priority again some time after the last waiter left. */
  decay?: NodeJS.Timeout;
}

/** How long a model stays at the waited-for priority after its last waiter's poll ended. */
const WAITED_PRIORITY_LINGER_MS = 15_000;

/**
 * Owns the models under <root>/models/: one staging job per model however many ask (single flight),
 * all jobs on one download budget, state persisted across restarts, LRU eviction under a byte budget
 * and disk watermarks that never touches a pinned model, one being staged, or one handed to a pod
 * within the grace period.
 */
export class ModelManager {
  readonly #o: ModelManagerOptions;
  readonly #allowed: (source: string) => boolean;
  readonly #running = new Map<string, Running>();
  readonly #listeners = new Map<string, Set<() => void>>();
  /** When the current wait for a model began (first poll while not ready): handshake durations. */
  readonly #waitingSince = new Map<string, number>();
  readonly #eviction: ModelEviction;
  /** What this node holds for peers (src/peers/serve.ts). */
  readonly pieces: HeldPieces;
  #draining = false;

  readonly #layout: RootLayout;
  constructor(options: ModelManagerOptions) {
    this.#o = options;
    this.#layout = new RootLayout(options.root);
    this.pieces = new HeldPieces(options.root, {
      records: () => this.#o.registry.all(),
      record: (id) => this.#o.registry.get(id),
      jobOf: (id) => this.#running.get(id)?.job,
    });
    this.#eviction = new ModelEviction(
      {
        records: () => this.#o.registry.all(),
        record: (id) => this.#o.registry.get(id),
        running: () => [...this.#running].map(([id, r]) => [id, r.job.progress()] as const),
        isRunning: (id) => this.#running.has(id),
        remove: (r, reason) => this.#removeModel(r, reason),
        disk: () => this.disk(),
        changed: (id) => this.#changed(id),
      },
      {
        config: options.config.eviction,
        extra: options.extra,
        logger: options.logger,
        metrics: options.metrics,
        now: () => this.#now(),
      },
    );
    const patterns = options.config.sources.allow;
    const match = patterns.length ? picomatch([...patterns], { dot: true }) : () => false;
    this.#allowed = (source) => match(source);
  }

  /** Absolute directory of a model: the same on every node. */
  modelPath(id: string): string {
    return join(this.#o.root, ...this.#modelSegments(id));
  }

  /** Loads the registry, finishes interrupted evictions, removes orphans and resumes staging. */
  async start(): Promise<void> {
    await mkdir(this.#layout.models, { recursive: true }).catch((e) => {
      throw ioError(e, `creating ${this.#layout.models}`);
    });
    await this.#layout.emptyTrash("models");
    for (const r of this.#o.registry.all()) {
      if (r.state === "evicting") await this.#removeModel(r, "resume");
    }
    await this.#removeOrphans();
    for (const r of this.#o.registry.all()) {
      if (r.state === "ready" && !(await isDir(this.modelPath(r.id)))) {
        this.#o.logger.warn({ model: r.id }, "ready model's directory is gone; staging it again");
        r.state = "pending";
      }
      if (r.state === "pending" || r.state === "staging" || r.state === "verifying") {
        if (!this.#allowed(r.source)) {
          await this.#fail(
            r,
            new ColdstartError("CS_SOURCE_NOT_ALLOWED", `source ${r.source} is no longer allowed`),
          );
        } else this.#startJob(r, PRIORITY_PREFETCH);
      }
    }
    this.#changed();
  }

  get(id: string): ModelStatus {
    return this.#status(this.#record(id));
  }

  list(): ModelStatus[] {
    return this.#o.registry.all().map((r) => this.#status(r));
  }

  /**
   * PUT: registers the model and starts staging it, or joins the job already running (single
   * flight). Idempotent for the same source and filters; another source is a conflict.
   */
  async request(
    idIn: string,
    req: ModelRequest,
    opts: { waited: boolean },
  ): Promise<{ status: ModelStatus; created: boolean }> {
    const id = validateModelId(idIn);
    this.#refuseWhenDraining();
    const { bucket, prefix } = parseS3Uri(req.source);
    const source = `s3://${bucket}/${prefix}`;
    if (!this.#allowed(source)) {
      throw new ColdstartError("CS_SOURCE_NOT_ALLOWED", `source ${source} is not in sources.allow`, {
        details: { field: "source", value: req.source },
      });
    }
    const include = [...(req.include ?? [])];
    const exclude = [...(req.exclude ?? [])];
    const priority = opts.waited ? PRIORITY_WAITED : PRIORITY_PREFETCH;
    const existing = this.#o.registry.get(id);
    if (!existing) this.#refuseNested(id);
    if (existing) {
      if (
        existing.source !== source ||
        JSON.stringify(existing.include) !== JSON.stringify(include) ||
        JSON.stringify(existing.exclude) !== JSON.stringify(exclude)
      ) {
        throw new ColdstartError(
          "CS_MODEL_SOURCE_CONFLICT",
          `model ${id} is registered from ${existing.source} (include ${JSON.stringify(existing.include)}, exclude ${JSON.stringify(existing.exclude)}); refusing ${source}`,
          { details: { field: "source", value: req.source } },
        );
      }
      if (existing.state === "evicting") {
        throw new ColdstartError("CS_MODEL_IN_USE", `model ${id} is being evicted; retry shortly`);
      }
      if (req.pin !== undefined && req.pin !== existing.pinned) {
        existing.pinned = req.pin;
        await this.#o.registry.put(existing);
      }
      if (existing.state === "failed") this.#startJob(existing, priority);
      if (opts.waited) this.#waited(id);
      return { status: this.#status(existing), created: false };
    }
    const record: ModelRecord = {
      id,
      source,
      include,
      exclude,
      pinned: req.pin ?? false,
      state: "pending",
      bytesTotal: 0,
      filesTotal: 0,
    };
    // The job is registered before anything is awaited (single flight; a racing DELETE sees it),
    // and persists the record itself: a failed write fails the job, visibly, instead of stranding it.
    this.#startJob(record, priority);
    if (opts.waited) this.#waited(id);
    return { status: this.#status(record), created: true };
  }

  /**
   * Long-poll: resolves when the model is ready or failed, or at the timeout. While anyone waits, the
   * model's staging runs at the waited-for priority.
   */
  async waitReady(
    id: string,
    timeoutMs: number,
    signal?: AbortSignal,
  ): Promise<{ outcome: WaitOutcome; status: ModelStatus }> {
    const r = this.#record(id);
    const settled = (s: ModelState) => s === "ready" || s === "failed";
    if (settled(r.state)) return { outcome: r.state as WaitOutcome, status: this.#status(r) };
    if (!this.#waitingSince.has(id)) this.#waitingSince.set(id, this.#now());
    const running = this.#running.get(id);
    if (running) {
      running.waiters++;
      running.job.setPriority(PRIORITY_WAITED);
    }
    try {
      await new Promise<void>((resolve) => {
        const set = this.#listeners.get(id) ?? new Set();
        this.#listeners.set(id, set);
        const finish = () => {
          clearTimeout(timer);
          set.delete(onChange);
          signal?.removeEventListener("abort", finish);
          resolve();
        };
        const onChange = () => {
          const now = this.#o.registry.get(id);
          if (!now || settled(now.state)) finish();
        };
        const timer = setTimeout(finish, timeoutMs);
        set.add(onChange);
        signal?.addEventListener("abort", finish, { once: true });
      });
    } finally {
      // Waiters poll in a loop: keep the priority through the gap between two polls.
      if (running && --running.waiters === 0) this.#waited(id);
    }
    const now = this.#o.registry.get(id);
    if (!now) throw new ColdstartError("CS_MODEL_NOT_FOUND", `model ${id} was removed while waiting`);
    return {
      outcome: settled(now.state) ? (now.state as WaitOutcome) : "timeout",
      status: this.#status(now),
    };
  }

  /**
   * The model is being handed to a pod: keep it from eviction for the grace period. Returns undefined
   * if it is not ready any more (evicted in between): the caller must not report it ready. Runs in
   * the eviction queue, so an eviction that picked the model has either finished or not started.
   */
  async markInUse(id: string): Promise<{ status: ModelStatus; waitedSeconds: number } | undefined> {
    const handed = await this.#eviction.exclusive(async () => {
      const r = this.#o.registry.get(id);
      if (r?.state !== "ready") return undefined;
      const now = this.#now();
      // In memory first, under the queue: an eviction queued after this sees the grace period.
      r.lastUsedAt = new Date(now).toISOString();
      r.inUseUntil = new Date(now + this.#o.config.eviction.inUseGraceMs).toISOString();
      const since = this.#waitingSince.get(id);
      this.#waitingSince.delete(id);
      return { status: this.#status(r), waitedSeconds: since === undefined ? 0 : (now - since) / 1000 };
    });
    // Persisted outside the queue, coalesced with the other hand-overs of the moment.
    if (handed) await this.#o.registry.flush();
    return handed;
  }

  async setPin(id: string, pinned: boolean): Promise<ModelStatus> {
    const r = this.#record(id);
    if (r.state === "evicting") throw new ColdstartError("CS_MODEL_IN_USE", `model ${id} is being evicted`);
    r.pinned = pinned;
    await this.#o.registry.put(r);
    // An unpinned model may be what a job waiting for room needs.
    if (!pinned) this.#eviction.wake();
    return this.#status(r);
  }

  /** DELETE: evicts now, unless pinned, being staged, or within the in-use grace period. */
  async remove(id: string): Promise<void> {
    return this.#eviction.exclusive(() => this.#remove(id));
  }

  async #remove(id: string): Promise<void> {
    const r = this.#record(id);
    if (r.pinned)
      throw new ColdstartError(
        "CS_MODEL_PINNED",
        `model ${id} is pinned; unpin it (PATCH {"pin":false}) first`,
      );
    if (
      this.#running.has(id) ||
      inUseGrace(r, this.#now()) ||
      (r.state !== "ready" && r.state !== "failed")
    ) {
      throw new ColdstartError(
        "CS_MODEL_IN_USE",
        this.#running.has(id)
          ? `model ${id} is being staged`
          : `model ${id} was handed to a pod at ${r.lastUsedAt}; in use until ${r.inUseUntil}`,
      );
    }
    await this.#removeModel(r, "api");
  }

  /**
   * Evicts least recently used models while disk use is over the high watermark (down to low). The
   * daemon calls it every 30 s; jobs waiting for room look again after it (a grace may have ended,
   * or something outside coldstart freed disk).
   */
  enforceWatermarks(): Promise<void> {
    return this.#eviction.enforceWatermarks();
  }

  /** Disk facts of the staging root, for /v1/node and metrics. */
  async disk(): Promise<{ root: string; totalBytes: number; freeBytes: number; modelBytes: number }> {
    const s = await statfs(this.#o.root);
    return {
      root: this.#o.root,
      totalBytes: Number(s.blocks) * Number(s.bsize),
      freeBytes: Number(s.bavail) * Number(s.bsize),
      modelBytes: this.#o.registry.all().reduce((n, r) => n + (r.state === "ready" ? r.bytesTotal : 0), 0),
    };
  }

  /** A model's directory as segments below the staging root. */
  #modelSegments(id: string): string[] {
    return this.#layout.modelSegments(id);
  }

  /** Models by state (metrics). */
  countByState(): Record<ModelState, number> {
    const out: Record<ModelState, number> = {
      pending: 0,
      staging: 0,
      verifying: 0,
      ready: 0,
      failed: 0,
      evicting: 0,
    };
    for (const r of this.#o.registry.all()) out[this.#liveState(r)]++;
    return out;
  }

  /**
   * SIGTERM: refuse new work, start no new part, let the parts in flight finish for up to `graceMs`,
   * then abort them (their journals keep every durable part; a restart resumes). Resolves when every
   * job has settled.
   */
  async drain(graceMs: number, hurry?: AbortSignal): Promise<void> {
    this.#draining = true;
    // No part starts from here on (S3 or peer); the parts in flight may finish within the grace, and
    // a job settles as soon as its last one is in, so the daemon exits then, not at the grace's end.
    const stopping = new ColdstartError("CS_SHUTTING_DOWN", "daemon shutting down");
    for (const r of this.#running.values()) r.job.stop(stopping);
    const all = () => Promise.allSettled([...this.#running.values()].map((r) => r.done));
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, graceMs);
      hurry?.addEventListener("abort", () => resolve(), { once: true });
    });
    await Promise.race([all(), deadline]);
    clearTimeout(timer);
    for (const r of this.#running.values())
      r.job.abort(new ColdstartError("CS_SHUTTING_DOWN", "daemon shutting down"));
    await all();
  }

  #startJob(record: ModelRecord, priority: number): void {
    if (this.#running.has(record.id)) return;
    const { bucket, prefix } = parseS3Uri(record.source);
    const job = new StageJob({
      source: this.#o.source,
      bucket,
      prefix,
      dest: this.modelPath(record.id),
      ...this.#o.stage,
      scheduler: this.#o.scheduler,
      priority,
      filters: { include: record.include, exclude: record.exclude },
      logger: this.#o.logger.child({ model: record.id }),
      metrics: this.#o.metrics,
      rateLimiter: this.#o.rateLimiter,
      runPart: this.#o.runPart,
      // A resumed model's lock may belong to the replaced pod of this daemon: wait for it to go stale.
      lockWaitMs: 45_000,
      within: this.#o.root,
      makeRoom: (need, signal) => this.#eviction.makeRoom(record.id, need, signal),
      // With peers, nodes staging a model at once each start elsewhere in it (see StageJob).
      spreadParts: this.#o.spreadParts,
    });
    record.state = "staging";
    record.startedAt = new Date(this.#now()).toISOString();
    delete record.error;
    delete record.readyAt;
    const running: Running = { job, waiters: 0, done: Promise.resolve() };
    this.#running.set(record.id, running);
    this.#o.registry.set(record);
    running.done = (async () => {
      this.#changed(record.id);
      try {
        await this.#o.registry.put(record);
        const result = await job.run();
        record.state = "ready";
        record.bytesTotal = result.bytes;
        record.filesTotal = result.files;
        record.readyAt = new Date(this.#now()).toISOString();
        this.#o.logger.info({ model: record.id, ...result }, "model ready");
      } catch (err) {
        const e = toColdstartError(err);
        if (this.#draining && (e.code === "CS_SHUTTING_DOWN" || e.code === "CS_ABORTED")) {
          // Interrupted by shutdown: stays "staging" on disk, resumed at the next start.
          this.#o.logger.info({ model: record.id }, "staging interrupted by shutdown; will resume");
        } else {
          record.state = "failed";
          record.error = { code: e.code, message: e.message };
          this.#o.logger.warn({ model: record.id, code: e.code, err: e.message }, "staging failed");
        }
      } finally {
        this.#running.delete(record.id);
        this.#eviction.release(record.id);
      }
      // Deleted meanwhile (it cannot be while running, but never resurrect a record that is gone).
      if (this.#o.registry.get(record.id) === record) {
        await this.#o.registry
          .put(record)
          .catch((e) => this.#o.logger.error({ err: String(e) }, "persisting state"));
      }
      if (record.state !== "ready" && record.state !== "staging") this.#waitingSince.delete(record.id);
      this.#changed(record.id);
      if (record.state === "ready") {
        await this.enforceWatermarks().catch((e) =>
          this.#o.logger.error({ err: String(e) }, "eviction failed"),
        );
      }
    })();
  }

  async #fail(record: ModelRecord, err: ColdstartError): Promise<void> {
    record.state = "failed";
    record.error = { code: err.code, message: err.message };
    await this.#o.registry.put(record);
  }

  /** Raises the model's priority now and keeps it up for a while after the last waiter's poll. */
  #waited(id: string): void {
    const running = this.#running.get(id);
    if (!running) return;
    running.job.setPriority(PRIORITY_WAITED);
    clearTimeout(running.decay);
    running.decay = setTimeout(() => {
      if (running.waiters === 0) running.job.setPriority(PRIORITY_PREFETCH);
    }, WAITED_PRIORITY_LINGER_MS);
    running.decay.unref();
  }

  /** Nested ids would share directories (evicting `org` would delete `org/llama`). */
  #refuseNested(id: string): void {
    for (const other of this.#o.registry.all()) {
      if (id.startsWith(`${other.id}/`) || other.id.startsWith(`${id}/`)) {
        throw new ColdstartError(
          "CS_MODEL_ID_CONFLICT",
          `model id ${id} would nest with ${other.id}: a model's directory cannot hold another model`,
          { details: { field: "id", value: id } },
        );
      }
    }
  }

  /**
   * Removes a model: marks it evicting (persisted, so a crash mid-way finishes on restart), renames
   * its directory into <root>/trash (the model path disappears at once), deletes it, forgets it.
   */
  async #removeModel(r: ModelRecord, reason: EvictionReason | "resume"): Promise<void> {
    r.state = "evicting";
    await this.#o.registry.put(r);
    this.#changed(r.id);
    const gone = await this.#layout.trashSlot("models");
    // Never through a planted symlink: the rename would move (and the rm delete) something outside.
    await renameBeneath(this.#o.root, this.#modelSegments(r.id), gone).catch((e) => {
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
    this.#changed(r.id);
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

  #record(idIn: string): ModelRecord {
    const id = validateModelId(idIn);
    const r = this.#o.registry.get(id);
    if (!r)
      throw new ColdstartError("CS_MODEL_NOT_FOUND", `no model ${id} on this node`, {
        details: { value: id },
      });
    return r;
  }

  #refuseWhenDraining(): void {
    if (this.#draining)
      throw new ColdstartError("CS_SHUTTING_DOWN", "the daemon is shutting down; retry on its successor");
  }

  #liveState(r: ModelRecord): ModelState {
    const running = this.#running.get(r.id);
    return running?.job.progress().phase === "verifying" ? "verifying" : r.state;
  }

  #status(r: ModelRecord): ModelStatus {
    const running = this.#running.get(r.id);
    const p = running?.job.progress();
    const seconds = p ? Math.max((Date.now() - p.startedAt) / 1000, 0.001) : 0;
    const rate = p ? Math.round((p.bytesDone - p.resumedBytes) / seconds) : 0;
    const bytesTotal = p && p.phase !== "listing" ? p.bytesTotal : r.bytesTotal;
    const bytesDone = p ? p.bytesDone : r.state === "ready" ? r.bytesTotal : 0;
    return {
      id: r.id,
      source: r.source,
      state: this.#liveState(r),
      path: this.modelPath(r.id),
      pinned: r.pinned,
      bytesTotal,
      bytesDone,
      filesTotal: p && p.phase !== "listing" ? p.filesTotal : r.filesTotal,
      filesDone: p ? p.filesDone : r.state === "ready" ? r.filesTotal : 0,
      bytesPerSecond: rate,
      etaSeconds: p && rate > 0 ? Math.ceil((bytesTotal - bytesDone) / rate) : r.state === "ready" ? 0 : null,
      startedAt: r.startedAt ?? null,
      readyAt: r.readyAt ?? null,
      lastUsedAt: r.lastUsedAt ?? null,
      ...(r.error ? { error: r.error } : {}),
      ...(this.#eviction.waiting(r.id) ? { waiting: this.#eviction.waiting(r.id) } : {}),
    };
  }

  #changed(id?: string): void {
    if (id) for (const l of this.#listeners.get(id) ?? []) l();
    this.#eviction.wake();
    this.#o.onStateChanged?.();
    this.#o.onReadyChanged?.(
      this.#o.registry
        .all()
        .filter((r) => r.state === "ready")
        .map((r) => r.id),
    );
  }

  #now(): number {
    return (this.#o.now ?? Date.now)();
  }
}

async function isDir(path: string): Promise<boolean> {
  return (await lstat(path).catch(() => undefined))?.isDirectory() === true;
}
