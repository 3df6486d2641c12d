import type { Logger } from "pino";
import { ColdstartError, toColdstartError } from "../errors.js";
import type { Metrics } from "../metrics/metrics.js";
import type { Cohorts } from "../peers/cohort.js";
import type { ObjectSource } from "../s3/object-source.js";
import { parseS3Uri } from "../s3/uri.js";
import type { StageProgress, StageSettings } from "../staging/job-types.js";
import type { RateLimiter } from "../staging/rate-limiter.js";
import type { SlotScheduler } from "../staging/scheduler.js";
import { StageJob } from "../staging/stage-job.js";
import type { PartRunner } from "../staging/workers/pool.js";
import type { ModelRecord, ModelRegistry } from "./model-registry.js";

/** What the stage runner needs of the model manager. */
export interface StageRunnerHost {
  /** The model's directory: its job's destination. */
  modelPath(id: string): string;
  /** Resolves once the disk has room for `need` more bytes of the model (ModelEviction.makeRoom). */
  makeRoom(id: string, need: number, signal: AbortSignal): Promise<void>;
  /** The model's job settled: the room it reserved is free for the others. */
  release(id: string): void;
  /** The model's state changed. */
  changed(id: string): void;
  /** The model's job settled and its outcome is persisted (ready, failed, or staging to resume). */
  settled(record: ModelRecord): Promise<void>;
}

/** How every model's StageJob is built: the daemon's download setup. */
export interface StageRunnerOptions {
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
  /** Nodes staging a model together: each job takes the parts this node owns first. */
  cohorts?: Cohorts | undefined;
  /** What config.download decides for every job (src/wiring/staging.ts). */
  stage: StageSettings;
  logger: Logger;
  metrics?: Metrics | undefined;
  now?: (() => number) | undefined;
}

/**
 * A model a pod is waiting for goes ahead of every background prefetch, whatever the prefetch's own
 * priority (a ModelCache's spec.priority, -100 to 100).
 */
const PRIORITY_WAITED = 1_000;

/** How long a model stays at the waited-for priority after its last waiter's poll ended. */
const WAITED_PRIORITY_LINGER_MS = 15_000;

interface Running {
  job: StageJob;
  /** The priority without waiters (the model's own). */
  base: number;
  done: Promise<void>;
  waiters: number;
  /** Lowers the priority again some time after the last waiter left. */
  decay?: NodeJS.Timeout;
}

/**
 * Runs the models' staging jobs: at most one per model (single flight), at the waited-for priority
 * while a pod waits for the model, the outcome recorded in its record; stops them all on drain.
 */
export class StageRunner {
  readonly #host: StageRunnerHost;
  readonly #o: StageRunnerOptions;
  readonly #running = new Map<string, Running>();
  #draining = false;

  constructor(host: StageRunnerHost, options: StageRunnerOptions) {
    this.#host = host;
    this.#o = options;
  }

  /** Set by drain: no new work is taken. */
  get draining(): boolean {
    return this.#draining;
  }

  isRunning(id: string): boolean {
    return this.#running.has(id);
  }

  /** The job staging the model now, if one is. */
  jobOf(id: string): StageJob | undefined {
    return this.#running.get(id)?.job;
  }

  /** The progress of the model's job, if one runs. */
  progressOf(id: string): StageProgress | undefined {
    return this.#running.get(id)?.job.progress();
  }

  /** Each running job's progress, by model id. */
  progress(): [string, StageProgress][] {
    return [...this.#running].map(([id, r]) => [id, r.job.progress()]);
  }

  /**
   * Starts staging the model, unless a job for it runs already. The job is registered and the record
   * set in the registry before anything is awaited (a racing request or DELETE sees it); the record
   * is persisted by the job itself, so a failed write fails the job, visibly.
   */
  start(record: ModelRecord, waited: boolean): void {
    if (this.#running.has(record.id)) return;
    const { bucket, prefix } = parseS3Uri(record.source);
    const job = new StageJob({
      source: this.#o.source,
      bucket,
      prefix,
      dest: this.#host.modelPath(record.id),
      ...this.#o.stage,
      scheduler: this.#o.scheduler,
      priority: waited ? PRIORITY_WAITED : (record.priority ?? 0),
      filters: { include: record.include, exclude: record.exclude },
      logger: this.#o.logger.child({ model: record.id }),
      metrics: this.#o.metrics,
      rateLimiter: this.#o.rateLimiter,
      runPart: this.#o.runPart,
      // A resumed model's lock may belong to the replaced pod of this daemon: wait for it to go stale.
      lockWaitMs: 45_000,
      within: this.#o.root,
      makeRoom: (need, signal) => this.#host.makeRoom(record.id, need, signal),
      // With peers, nodes staging a model at once each start elsewhere in it (see StageJob).
      spreadParts: this.#o.spreadParts,
      ownership: this.#o.cohorts?.ownership(bucket),
    });
    record.state = "staging";
    record.startedAt = new Date(this.#now()).toISOString();
    delete record.error;
    delete record.readyAt;
    const running: Running = { job, base: record.priority ?? 0, waiters: 0, done: Promise.resolve() };
    this.#running.set(record.id, running);
    this.#o.registry.set(record);
    running.done = this.#run(record, job);
  }

  /** Marks the model failed without staging it (persisted). */
  async fail(record: ModelRecord, err: ColdstartError): Promise<void> {
    record.state = "failed";
    record.error = { code: err.code, message: err.message };
    await this.#o.registry.put(record);
  }

  /** The model's own priority changed: its job runs at it whenever no pod waits for the model. */
  setBasePriority(id: string, priority: number): void {
    const running = this.#running.get(id);
    if (!running) return;
    running.base = priority;
    if (running.job.priority !== PRIORITY_WAITED) running.job.setPriority(priority);
  }

  /** Raises the model's priority now and keeps it up for a while after the last waiter's poll. */
  waited(id: string): void {
    const running = this.#running.get(id);
    if (!running) return;
    running.job.setPriority(PRIORITY_WAITED);
    clearTimeout(running.decay);
    running.decay = setTimeout(() => {
      if (running.waiters === 0) running.job.setPriority(running.base);
    }, WAITED_PRIORITY_LINGER_MS);
    running.decay.unref();
  }

  /**
   * A waiter's poll began: the model's job runs at the waited-for priority while anyone waits. Call
   * the returned function when the poll ends; waiters poll in a loop, so the priority lingers through
   * the gap between two polls.
   */
  join(id: string): () => void {
    const running = this.#running.get(id);
    if (!running) return () => {};
    running.waiters++;
    running.job.setPriority(PRIORITY_WAITED);
    return () => {
      if (--running.waiters === 0) this.waited(id);
    };
  }

  /**
   * Stops every job: no part starts from here on, the parts in flight may finish within `graceMs`
   * (or until `hurry`), then they are aborted. Resolves when every job has settled.
   */
  async drain(graceMs: number, hurry?: AbortSignal): Promise<void> {
    this.#draining = true;
    // A job settles as soon as its last part is in, so the daemon exits then, not at the grace's end.
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

  /** Runs the job to its end and records the outcome; never rejects. */
  async #run(record: ModelRecord, job: StageJob): Promise<void> {
    this.#host.changed(record.id);
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
      this.#host.release(record.id);
    }
    // Deleted meanwhile (it cannot be while running, but never resurrect a record that is gone).
    if (this.#o.registry.get(record.id) === record) {
      await this.#o.registry
        .put(record)
        .catch((e) => this.#o.logger.error({ err: String(e) }, "persisting state"));
    }
    await this.#host.settled(record);
  }

  #now(): number {
    return (this.#o.now ?? Date.now)();
  }
}
