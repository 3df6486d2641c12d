import { lstat, statfs } from "node:fs/promises";
import { join } from "node:path";
import picomatch from "picomatch";
import type { Config } from "../config/schema.js";
import { ColdstartError } from "../errors.js";
import type { ModelStagingProgress } from "../metrics/metrics.js";
import { normalizeS3Uri, parseS3Uri } from "../s3/uri.js";
import type { EvictableStore } from "../store/eviction.js";
import { RootLayout } from "../store/root-layout.js";
import { inUseGrace, ModelEviction } from "./eviction.js";
import { HeldPieces } from "./held-pieces.js";
import { validateModelId } from "./model-id.js";
import { isPinned, type ModelRecord, type ModelState } from "./model-registry.js";
import { ModelRemoval } from "./removal.js";
import { StageRunner, type StageRunnerOptions } from "./stage-runner.js";
import { countByState, type ModelStatus, modelStatus } from "./status.js";

export interface ModelRequest {
  source: string;
  include?: string[] | undefined;
  exclude?: string[] | undefined;
  pin?: boolean | undefined;
  /** Against other prefetches (a ModelCache's spec.priority, -100 to 100); the API leaves it. */
  priority?: number | undefined;
  /**
   * The peer URLs of the nodes asked to stage this model at the same moment, this node's own among
   * them: the cooperative first wave (src/peers/cohort.ts) without a ModelCache resource.
   */
  cohort?: string[] | undefined;
}

/** The cohort a PUT with `cohort` sets is kept under this prefix and the model id. */
const API_COHORT_PREFIX = "api/";

export type WaitOutcome = "ready" | "failed" | "timeout";

/** The stage runner's options (how every job is built) and what the manager itself needs. */
export interface ModelManagerOptions extends StageRunnerOptions {
  config: Pick<Config, "eviction" | "sources">;
  /** Told the ids of ready models whenever that set changes (node labels). */
  onReadyChanged?: (readyIds: string[]) => void;
  /** Told of every state change (metrics). */
  onStateChanged?: () => void;
  /**
   * Other things under the staging root that free-space eviction may take (compile caches): what
   * it may take now, merged with the models by last use, and the bytes of all of them, evictable
   * now or once their grace ends (what a model waiting for room may count on). The byte budget
   * counts models only.
   */
  extra?: EvictableStore;
}

/**
 * Owns the models under <root>/models/: one staging job per model however many ask (single flight),
 * all jobs on one download budget, state persisted across restarts, LRU eviction under a byte budget
 * and disk watermarks that never touches a pinned model, one being staged, or one handed to a pod
 * within the grace period.
 */
export class ModelManager {
  readonly #o: ModelManagerOptions;
  readonly #allowed: (source: string) => boolean;
  readonly #layout: RootLayout;
  readonly #listeners = new Map<string, Set<() => void>>();
  /**
   * When the current wait for a model began (first poll while not ready): the gate wait of a client
   * that does not say who it is.
   */
  readonly #waitingSince = new Map<string, number>();
  /**
   * Per model, when each named waiter (a handshake's `waiter`, a CSI volume's target path) first
   * found it not ready: each pod's own wait, however many wait for the same model.
   */
  readonly #waiterSince = new Map<string, Map<string, number>>();
  #waitersSweptAt = 0;
  readonly #jobs: StageRunner;
  readonly #eviction: ModelEviction;
  readonly #removal: ModelRemoval;
  /** Models mounted into pods (CSI volumes), by holder (the volume's target path). */
  readonly #holds = new Map<string, string>();
  /** What this node holds for peers (src/peers/serve.ts). */
  readonly pieces: HeldPieces;

  constructor(options: ModelManagerOptions) {
    this.#o = options;
    this.#layout = new RootLayout(options.root);
    this.#jobs = new StageRunner(
      {
        modelPath: (id) => this.modelPath(id),
        makeRoom: (id, need, signal) => this.#eviction.makeRoom(id, need, signal),
        release: (id) => this.#eviction.release(id),
        changed: (id) => this.#changed(id),
        settled: (r) => this.#settled(r),
      },
      options,
    );
    this.#removal = new ModelRemoval(options.root, {
      registry: options.registry,
      logger: options.logger,
      metrics: options.metrics,
      changed: (id) => this.#changed(id),
    });
    this.pieces = new HeldPieces(options.root, {
      records: () => this.#o.registry.all(),
      record: (id) => this.#o.registry.get(id),
      jobOf: (id) => this.#jobs.jobOf(id),
    });
    this.#eviction = new ModelEviction(
      {
        records: () => this.#o.registry.all(),
        record: (id) => this.#o.registry.get(id),
        running: () => this.#jobs.progress(),
        isRunning: (id) => this.#jobs.isRunning(id),
        mounted: (id) => this.mounts(id) > 0,
        remove: (r, reason) => this.#removal.remove(r, reason),
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
    return join(this.#o.root, ...this.#layout.modelSegments(id));
  }

  /** Loads the registry, finishes interrupted evictions, removes orphans and resumes staging. */
  async start(): Promise<void> {
    await this.#removal.recover();
    for (const r of this.#o.registry.all()) {
      if (r.state === "ready" && !(await isDir(this.modelPath(r.id)))) {
        this.#o.logger.warn({ model: r.id }, "ready model's directory is gone; staging it again");
        r.state = "pending";
      }
      if (r.state === "pending" || r.state === "staging" || r.state === "verifying") {
        if (!this.#allowed(r.source)) {
          await this.#jobs.fail(
            r,
            new ColdstartError("CS_SOURCE_NOT_ALLOWED", `source ${r.source} is no longer allowed`),
          );
        } else this.#jobs.start(r, false);
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
    const source = normalizeS3Uri(req.source);
    if (!this.#allowed(source)) {
      throw new ColdstartError("CS_SOURCE_NOT_ALLOWED", `source ${source} is not in sources.allow`, {
        details: { field: "source", value: req.source },
      });
    }
    const cohort = req.cohort ? this.#cohortOf(req.cohort) : undefined;
    const include = [...(req.include ?? [])];
    const exclude = [...(req.exclude ?? [])];
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
      if (req.priority !== undefined) await this.setPriority(id, req.priority);
      if (existing.state === "failed") this.#jobs.start(existing, opts.waited);
      if (opts.waited) this.#jobs.waited(id);
      return { status: this.#status(existing), created: false };
    }
    const record: ModelRecord = {
      id,
      source,
      include,
      exclude,
      pinned: req.pin ?? false,
      ...(req.priority ? { priority: req.priority } : {}),
      state: "pending",
      bytesTotal: 0,
      filesTotal: 0,
    };
    if (cohort) {
      const { bucket, prefix } = parseS3Uri(source);
      this.#o.cohorts?.set(`${API_COHORT_PREFIX}${id}`, bucket, prefix, cohort);
    }
    // The job is registered before anything is awaited (single flight; a racing DELETE sees it),
    // and persists the record itself: a failed write fails the job, visibly, instead of stranding it.
    this.#jobs.start(record, opts.waited);
    if (opts.waited) this.#jobs.waited(id);
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
    waiter?: string,
  ): Promise<{ outcome: WaitOutcome; status: ModelStatus }> {
    const r = this.#record(id);
    const settled = (s: ModelState) => s === "ready" || s === "failed";
    if (settled(r.state)) return { outcome: r.state as WaitOutcome, status: this.#status(r) };
    const startedAt = this.#now();
    if (!this.#waitingSince.has(id)) this.#waitingSince.set(id, startedAt);
    if (waiter !== undefined) this.#noteWaiter(id, waiter, startedAt);
    const leave = this.#jobs.join(id);
    this.#o.metrics?.gateWaiters.inc();
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
      leave();
      this.#o.metrics?.gateWaiters.dec();
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
  async markInUse(
    id: string,
    waiter?: string,
  ): Promise<{ status: ModelStatus; waitedSeconds: number } | undefined> {
    const handed = await this.#eviction.exclusive(async () => {
      const r = this.#o.registry.get(id);
      if (r?.state !== "ready") return undefined;
      const now = this.#now();
      // In memory first, under the queue: an eviction queued after this sees the grace period.
      r.lastUsedAt = new Date(now).toISOString();
      r.inUseUntil = new Date(now + this.#o.config.eviction.inUseGraceMs).toISOString();
      const waitedSeconds = this.#waited(id, waiter, now);
      this.#o.metrics?.gateWait.observe({ gate: "handshake" }, waitedSeconds);
      return { status: this.#status(r), waitedSeconds };
    });
    // Persisted outside the queue, coalesced with the other hand-overs of the moment.
    if (handed) await this.#o.registry.flush();
    return handed;
  }

  /**
   * A volume mounted the model into a pod (`holder`: the volume's target path): no eviction and no
   * DELETE takes it until `release(holder)`. Returns undefined if the model is not ready (evicted in
   * between): the caller must not mount it. Runs in the eviction queue, like markInUse. At start, a
   * volume found still mounted holds its model `evenIfNotReady`: a pod is reading it whatever its state.
   */
  async hold(
    id: string,
    holder: string,
    o: { evenIfNotReady?: boolean } = {},
  ): Promise<ModelStatus | undefined> {
    const held = await this.#eviction.exclusive(async () => {
      const r = this.#o.registry.get(id);
      if (o.evenIfNotReady && r) this.#holds.set(holder, id);
      if (r?.state !== "ready") return undefined;
      this.#holds.set(holder, id);
      const now = this.#now();
      r.lastUsedAt = new Date(now).toISOString();
      // A volume found mounted at start is no pod passing the gate.
      if (!o.evenIfNotReady)
        this.#o.metrics?.gateWait.observe({ gate: "csi" }, this.#waited(id, holder, now));
      return this.#status(r);
    });
    if (held) await this.#o.registry.flush();
    return held;
  }

  /**
   * The holder's volume is unmounted: the model stays out of eviction's reach for the in-use grace
   * (a restarting pod mounts it again), then is an LRU candidate like any other.
   */
  async release(holder: string): Promise<void> {
    const id = this.#holds.get(holder);
    if (id === undefined) return;
    this.#holds.delete(holder);
    const r = this.#o.registry.get(id);
    if (!r) return;
    const now = this.#now();
    r.lastUsedAt = new Date(now).toISOString();
    r.inUseUntil = new Date(now + this.#o.config.eviction.inUseGraceMs).toISOString();
    await this.#o.registry.flush();
    this.#changed(id);
  }

  /** How many volumes have the model mounted now. */
  mounts(id: string): number {
    let n = 0;
    for (const held of this.#holds.values()) if (held === id) n++;
    return n;
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

  /**
   * Pins the model for `holder` (a ModelCache resource, "modelcache/<name>") or, `pinned` false,
   * takes that holder's pin away: the model stays pinned while the API or any other holder pins it.
   */
  async pinFor(id: string, holder: string, pinned: boolean): Promise<void> {
    const r = this.#o.registry.get(id);
    if (!r) return;
    const holders = new Set(r.pinnedBy ?? []);
    if (holders.has(holder) === pinned) return;
    if (pinned) holders.add(holder);
    else holders.delete(holder);
    r.pinnedBy = [...holders].sort();
    if (r.pinnedBy.length === 0) delete r.pinnedBy;
    await this.#o.registry.put(r);
    if (!isPinned(r)) this.#eviction.wake();
    this.#changed(id);
  }

  /** A prefetch's priority against the others (a ModelCache's spec.priority), kept with the model. */
  async setPriority(id: string, priority: number): Promise<void> {
    const r = this.#o.registry.get(id);
    if (!r || (r.priority ?? 0) === priority) return;
    r.priority = priority === 0 ? undefined : priority;
    this.#jobs.setBasePriority(id, priority);
    await this.#o.registry.put(r);
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
    if (isPinned(r))
      throw new ColdstartError(
        "CS_MODEL_PINNED",
        `model ${id} is pinned by ${r.pinnedBy?.join(", ")} (ModelCache resources that select this node); it is unpinned when they no longer do`,
      );
    const mounts = this.mounts(id);
    if (mounts > 0) {
      throw new ColdstartError(
        "CS_MODEL_IN_USE",
        `model ${id} is mounted into ${mounts} pod${mounts === 1 ? "" : "s"} (CSI volumes); it can be removed once they are gone`,
      );
    }
    if (
      this.#jobs.isRunning(id) ||
      inUseGrace(r, this.#now()) ||
      (r.state !== "ready" && r.state !== "failed")
    ) {
      throw new ColdstartError(
        "CS_MODEL_IN_USE",
        this.#jobs.isRunning(id)
          ? `model ${id} is being staged`
          : `model ${id} was handed to a pod at ${r.lastUsedAt}; in use until ${r.inUseUntil}`,
      );
    }
    await this.#removal.remove(r, "api");
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

  /** Each model being staged now, once its listing is done: bytes to go and the ETA (metrics). */
  staging(): ModelStagingProgress[] {
    const out: ModelStagingProgress[] = [];
    for (const [id, p] of this.#jobs.progress()) {
      const r = this.#o.registry.get(id);
      if (!r || (p.phase !== "downloading" && p.phase !== "verifying")) continue;
      const s = this.#status(r);
      out.push({
        model: id,
        remainingBytes: Math.max(s.bytesTotal - s.bytesDone, 0),
        etaSeconds: s.etaSeconds,
      });
    }
    return out;
  }

  /** Models by state (metrics). */
  countByState(): Record<ModelState, number> {
    return countByState(this.#o.registry.all(), (id) => this.#jobs.progressOf(id));
  }

  /**
   * SIGTERM: refuse new work, start no new part, let the parts in flight finish for up to `graceMs`,
   * then abort them (their journals keep every durable part; a restart resumes). Resolves when every
   * job has settled.
   */
  drain(graceMs: number, hurry?: AbortSignal): Promise<void> {
    return this.#jobs.drain(graceMs, hurry);
  }

  /** A PUT's cohort, checked: URLs, and this node's own among them. */
  #cohortOf(urls: string[]): string[] {
    const self = this.#o.cohorts?.self;
    if (!self) {
      throw new ColdstartError(
        "CS_REQUEST_INVALID",
        "cohort needs peers (peers.urls or peers.dns) and this node's own peer address (peers.selfAddress)",
        { details: { field: "cohort" } },
      );
    }
    const members = urls.map((u) => {
      let url: URL | undefined;
      try {
        url = new URL(u);
      } catch {
        url = undefined;
      }
      if (!url || (url.protocol !== "http:" && url.protocol !== "https:") || url.pathname !== "/") {
        throw new ColdstartError(
          "CS_REQUEST_INVALID",
          `cohort entries are peer base URLs (http://IP:PORT), got ${u}`,
          {
            details: { field: "cohort", value: u },
          },
        );
      }
      return url.origin;
    });
    if (!members.includes(self)) {
      throw new ColdstartError(
        "CS_REQUEST_INVALID",
        `cohort must list this node's own peer URL, ${self}, among the nodes staging the model together`,
        { details: { field: "cohort", value: urls.slice(0, 8) } },
      );
    }
    return members;
  }

  /** A named waiter's first wait for `id`; waiters that never came back (pods gone) expire in a day. */
  #noteWaiter(id: string, waiter: string, now: number): void {
    const waiters = this.#waiterSince.get(id) ?? new Map<string, number>();
    if (!waiters.has(waiter)) {
      this.#expireWaiters(now);
      waiters.set(waiter, now);
    }
    this.#waiterSince.set(id, waiters);
  }

  /** A named waiter that gave up (its handshake's last poll timed out): its wait is over. */
  forgetWaiter(id: string, waiter: string): void {
    const waiters = this.#waiterSince.get(id);
    waiters?.delete(waiter);
    if (waiters?.size === 0) this.#waiterSince.delete(id);
  }

  /**
   * Drops waiters older than a day (a pod deleted mid-wait never comes back), every model's; at most
   * once an hour, since it runs on hand-overs.
   */
  #expireWaiters(now: number): void {
    if (now - this.#waitersSweptAt < 3_600_000) return;
    this.#waitersSweptAt = now;
    for (const [id, waiters] of this.#waiterSince) {
      for (const [w, since] of waiters) if (now - since > 86_400_000) waiters.delete(w);
      if (waiters.size === 0) this.#waiterSince.delete(id);
    }
  }

  /**
   * Seconds a pod waited at the gate for `id`, ending its wait: a named waiter's own (0 if it never
   * found the model not ready); an unnamed one since the model's current wait began, which only the
   * first pod handed the model takes (the next get 0).
   */
  #waited(id: string, waiter: string | undefined, now: number): number {
    let since: number | undefined;
    if (waiter === undefined) {
      since = this.#waitingSince.get(id);
    } else {
      since = this.#waiterSince.get(id)?.get(waiter);
      this.forgetWaiter(id, waiter);
      this.#expireWaiters(now);
    }
    this.#waitingSince.delete(id);
    return since === undefined ? 0 : (now - since) / 1000;
  }

  /** A model's job settled (its outcome persisted): waiters, labels and eviction learn of it. */
  async #settled(record: ModelRecord): Promise<void> {
    if (record.state === "ready" || record.state === "failed")
      this.#o.cohorts?.delete(`${API_COHORT_PREFIX}${record.id}`);
    if (record.state !== "ready" && record.state !== "staging") {
      this.#waitingSince.delete(record.id);
      this.#waiterSince.delete(record.id);
    }
    this.#changed(record.id);
    if (record.state === "ready") {
      await this.enforceWatermarks().catch((e) =>
        this.#o.logger.error({ err: String(e) }, "eviction failed"),
      );
    }
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
    if (this.#jobs.draining)
      throw new ColdstartError("CS_SHUTTING_DOWN", "the daemon is shutting down; retry on its successor");
  }

  #status(r: ModelRecord): ModelStatus {
    return modelStatus(r, {
      progress: this.#jobs.progressOf(r.id),
      path: this.modelPath(r.id),
      waiting: this.#eviction.waiting(r.id),
      mounts: this.mounts(r.id),
    });
  }

  #changed(id?: string): void {
    // Removed (evicted, deleted): nobody waits for it any more.
    if (id && !this.#o.registry.get(id)) {
      this.#waitingSince.delete(id);
      this.#waiterSince.delete(id);
    }
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
