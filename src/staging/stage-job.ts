import { setMaxListeners } from "node:events";
import { readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { ColdstartError, isColdstartError, toColdstartError } from "../errors.js";
import { shuffle } from "../lib/shuffle.js";
import type { Stage } from "../metrics/metrics.js";
import { retryReason } from "../metrics/retry-reason.js";
import { describe, toS3Error, withRetry } from "../s3/retry.js";
import type { ShardTensors } from "../safetensors/index-json.js";
import { freeBytes } from "../store/disk.js";
import type { JournalEntry } from "../store/journal.js";
import { acquireLock, type HeldLock } from "../store/lock.js";
import { ManifestStore } from "../store/manifest.js";
import { STATE_DIR } from "../store/paths.js";
import { checksumPlan } from "./checksum-plan.js";
import { commitFile, isCommitted, refusesBytes } from "./commit.js";
import { prepareDestination } from "./destination.js";
import type { StageJobOptions, StageProgress, StageResult } from "./job-types.js";
import { downloadPart } from "./part-download.js";
import { type HeldFile, PieceBoard } from "./piece-board.js";
import { type FilePlan, planJob } from "./plan.js";
import { SlotScheduler, type TaskOwner } from "./scheduler.js";
import { discardTempFile, type FileState, openTempFile, partRequest, singleFile } from "./temp-file.js";
import { INDEX_SUFFIX } from "./verify.js";

/**
 * Stages every object under an S3 prefix into a directory: parallel ranged GETs under one
 * concurrency budget, each file written to a temp file inside the destination, verified (size,
 * ETag, S3 checksum where one applies, safetensors header, index consistency), fsynced and renamed
 * into place. A journal of durable parts makes a restart after a crash fetch only what is missing.
 */
export class StageJob implements TaskOwner {
  readonly #o: StageJobOptions;
  readonly #p: StageProgress;
  readonly #abort = new AbortController();
  readonly #scheduler: SlotScheduler;
  #priority: number;
  #partsLeft = 0;
  #lock: HeldLock | undefined;
  #downloadStarted = 0;
  /** Milliseconds spent verifying and committing files, observed once at the end. */
  #verifyMs = 0;
  #commitMs = 0;
  #root = "";
  #tmpDir = "";
  /** What peers may read of the files being staged and committed. */
  readonly #board = new PieceBoard();
  #listing = false;
  /** Files in several parts, opened (journal loaded or created) before any byte is fetched. */
  readonly #opened: FileState[] = [];
  /** Single-part files a worker took that are not committed yet (see #stageFiles). */
  readonly #singles = new Map<string, FileState>();
  /** Set by stop(): no part starts or retries after it. */
  #stopping: ColdstartError | undefined;

  constructor(options: StageJobOptions) {
    this.#o = options;
    this.#scheduler = options.scheduler ?? new SlotScheduler(options.concurrency);
    this.#priority = options.priority ?? 0;
    this.#p = {
      phase: "listing",
      filesTotal: 0,
      filesDone: 0,
      bytesTotal: 0,
      bytesDone: 0,
      resumedBytes: 0,
      retries: 0,
      startedAt: Date.now(),
    };
  }

  /** The job's priority on its scheduler (read whenever a slot frees). */
  get priority(): number {
    return this.#priority;
  }

  /** Raises or lowers the job's priority; takes effect for its parts still waiting for a slot. */
  setPriority(priority: number): void {
    this.#priority = priority;
  }

  /** Aborts the job: in-flight parts stop, journals keep what is durable. */
  abort(reason?: unknown): void {
    this.#abort.abort(reason);
  }

  /**
   * Starts nothing new: parts still waiting for a slot settle with `reason` at once, a part in
   * flight does not retry, and the job settles with `reason` as soon as the parts in flight are in
   * (journaled) or failed. A job still listing or opening its files has no part in flight and is
   * aborted outright. SIGTERM's drain: the daemon exits when nothing is in flight, not at the end of
   * its grace, and no GET starts after the signal.
   */
  stop(reason: ColdstartError): void {
    if (this.#stopping) return;
    this.#stopping = reason;
    if (this.#p.phase === "listing") {
      this.#abort.abort(reason);
      return;
    }
    this.#scheduler.cancel(this, reason);
  }

  #cancelQueued = () => {
    const reason: unknown = this.#abort.signal.reason;
    this.#scheduler.cancel(
      this,
      isColdstartError(reason)
        ? reason
        : new ColdstartError("CS_ABORTED", `cancelled: ${describe(reason)}`, { cause: reason }),
    );
  };

  /** What this job holds of one file, for peers (see PieceBoard.held). */
  held(relPath: string, etag: string): HeldFile | undefined {
    return this.#board.held(relPath, etag);
  }

  /** Resolves true once part `p` of a file is durable, false after `timeoutMs` or the job's end. */
  whenPiece(relPath: string, p: number, timeoutMs: number): Promise<boolean> {
    return this.#board.whenPiece(relPath, p, timeoutMs);
  }

  /** True from when the job holds its lock until its files are listed and opened (see held). */
  get listing(): boolean {
    return this.#listing;
  }

  /** A snapshot of the counters (cheap; poll it for progress display). */
  progress(): StageProgress {
    return { ...this.#p };
  }

  async run(): Promise<StageResult> {
    // Every in-flight request listens on the job's signal (the SDK's and ours): that is not a leak.
    setMaxListeners(4 * this.#scheduler.concurrency + 16, this.#abort.signal);
    // Parts still waiting for a slot on a shared scheduler settle at once instead of when it frees.
    this.#abort.signal.addEventListener("abort", this.#cancelQueued, { once: true });
    const outer = this.#o.signal;
    const onOuterAbort = () => this.#abort.abort(outer?.reason);
    if (outer?.aborted) onOuterAbort();
    outer?.addEventListener("abort", onOuterAbort, { once: true });
    let lock: HeldLock | undefined;
    try {
      ({ root: this.#root, tmpDir: this.#tmpDir } = await prepareDestination(this.#o.dest, this.#o.within));
      lock = await acquireLock(join(this.#root, STATE_DIR, "lock"), {
        waitMs: this.#o.lockWaitMs ?? 0,
        signal: this.#abort.signal,
        onLost: (why) =>
          this.#abort.abort(new ColdstartError("CS_DEST_LOCKED", `lost the destination lock: ${why}`)),
      });
      this.#lock = lock;
      return await this.#stage();
    } catch (err) {
      this.#p.phase = "failed";
      throw toColdstartError(err);
    } finally {
      outer?.removeEventListener("abort", onOuterAbort);
      this.#board.end();
      this.#listing = false;
      await lock?.release();
    }
  }

  async #stage(): Promise<StageResult> {
    const o = this.#o;
    const signal = this.#abort.signal;
    const source = `s3://${o.bucket}/${o.prefix}`;
    const listStarted = Date.now();
    this.#listing = true;
    const { files, listed, filteredOut } = await withRetry(
      o.retry,
      { key: source, action: "LIST" },
      () => planJob(o.source, o.bucket, o.prefix, o.filters, o.partSizeBytes, signal),
      { signal, onRetry: this.#onRetry(source, "list") },
    );
    this.#observe("list", Date.now() - listStarted);
    if (files.length === 0) {
      const { include, exclude } = o.filters;
      const why =
        listed === 0
          ? "the listing returned no objects (is the prefix right, and may these credentials list it?)"
          : `${listed} listed, all ${filteredOut} removed by the filters (include ${JSON.stringify(include)}, exclude ${JSON.stringify(exclude)})`;
      throw new ColdstartError("CS_NO_OBJECTS", `no objects under ${source} to stage: ${why}`, {
        details: { key: o.prefix },
      });
    }
    this.#p.filesTotal = files.length;
    this.#p.bytesTotal = files.reduce((n, f) => n + f.size, 0);

    const manifest = await ManifestStore.open(this.#root, source);
    this.#board.manifest = manifest;
    try {
      await this.#stageFiles(files, manifest);
    } catch (err) {
      // Keep the manifest's appended entries: a rerun skips what was committed. Never mask `err`.
      await manifest.close().catch(() => {});
      await this.#reclaim();
      throw err;
    }
    await manifest.close();
    await this.#removeOrphans();
    this.#observe("verify", this.#verifyMs);
    this.#observe("commit", this.#commitMs);

    this.#p.phase = "done";
    const seconds = (Date.now() - this.#p.startedAt) / 1000;
    const transferred = this.#p.bytesTotal - this.#p.resumedBytes;
    return {
      files: files.length,
      bytes: this.#p.bytesTotal,
      seconds,
      bytesPerSecond: seconds > 0 ? Math.round(transferred / seconds) : 0,
      retries: this.#p.retries,
      resumedBytes: this.#p.resumedBytes,
    };
  }

  /**
   * Downloads and commits every file not staged yet. Memory follows the work in flight, not the
   * number of files: a file in several parts is opened up front (its checksum plan, its journal,
   * what peers may read of it), but a single-part file has no state until a worker takes it, and
   * `concurrency` workers each take one part at a time from one list of (file, part) pairs.
   */
  async #stageFiles(files: FilePlan[], manifest: ManifestStore): Promise<void> {
    const o = this.#o;
    const signal = this.#abort.signal;
    const limit: Limit = (task) =>
      this.#stopping ? Promise.reject(this.#stopping) : this.#scheduler.run(this, task);
    const pending: FilePlan[] = [];
    for (const f of files) {
      if (await isCommitted(f, manifest, this.#root, this.#tmpDir)) {
        this.#p.filesDone++;
        this.#p.bytesDone += f.size;
        this.#p.resumedBytes += f.size;
      } else pending.push(f);
    }
    const multi = pending.filter((f) => f.bounds.length > 2);
    const openings = await Promise.allSettled(multi.map((f) => limit(() => this.#openFile(f))));
    for (const r of openings) if (r.status === "fulfilled") this.#opened.push(r.value);
    throwFirst(openings);
    await this.#checkSpace(pending);
    const opened = new Map(this.#opened.map((fs) => [fs.plan.relPath, fs]));
    for (const fs of this.#opened) this.#board.track(fs);
    this.#listing = false;

    // One work list for the whole model: a file's parts, or a single-part file's plan.
    const work: Work[] = [];
    for (const f of pending) {
      if (f.bounds.length <= 2) work.push({ single: f });
      else {
        const fs = opened.get(f.relPath) as FileState;
        for (let p = 0; p < fs.plan.bounds.length - 1; p++) if (!fs.done.has(p)) work.push({ fs, p });
      }
    }
    // With spreadParts, each node takes the parts in its own random order: nodes staging one model
    // at once then mostly fetch different parts from S3 and the rest from each other
    // (src/peers/peer-source.ts). A random order beats each node starting at a random point: two
    // nodes that start near each other would race for the same parts all the way.
    if (o.spreadParts) shuffle(work);
    // In a cohort, this node's own parts first; ordered again when the members change.
    let ownedAt = Number.NaN;
    const order = (from: number) => {
      const ownership = o.ownership;
      if (!ownership || ownership.version() === ownedAt) return;
      ownedAt = ownership.version();
      const mine = (w: Work) =>
        "single" in w
          ? ownership.owns(w.single.key, 0)
          : ownership.owns(w.fs.plan.key, w.fs.plan.bounds[w.p] as number);
      const rest = work.slice(from);
      const flags = rest.map(mine);
      work.splice(from, rest.length, ...rest.filter((_, i) => flags[i]), ...rest.filter((_, i) => !flags[i]));
    };
    order(0);
    this.#partsLeft = work.length;
    this.#p.phase = work.length > 0 ? "downloading" : "verifying";
    this.#downloadStarted = Date.now();
    const headers = new Map<string, ShardTensors>();
    const commits = new Set<Promise<void>>();
    // Workers waiting for a commit to finish (one resolver each; no Promise.race over the set, which
    // would leave a reaction on every pending commit each time it is asked).
    const commitDone: (() => void)[] = [];
    const commit = (fs: FileState) => {
      if (fs.plan.relPath.endsWith(INDEX_SUFFIX) || fs.committing) return;
      fs.committing = true;
      const c = this.#commitOrDiscard(fs, manifest, headers).finally(() => {
        commits.delete(c);
        commitDone.shift()?.();
      });
      commits.add(c);
      c.catch((err) => this.#abort.abort(err));
    };
    // Files resumed with every part in: nothing to fetch, only to check and commit.
    for (const fs of this.#opened) if (fs.done.size === fs.plan.bounds.length - 1) commit(fs);
    let next = 0;
    const worker = async () => {
      while (next < work.length && !signal.aborted && !this.#stopping) {
        order(next);
        const item = work[next++] as Work;
        const fs = "single" in item ? this.#startSingle(item.single) : item.fs;
        await this.#runPart(fs, "single" in item ? 0 : item.p, limit);
        if (fs.done.size === fs.plan.bounds.length - 1) commit(fs);
        // Commits run beside the downloads (each waits on fsyncs), bounded so that a slow disk
        // holds the downloads back instead of piling up finished files in memory.
        while (commits.size >= COMMITS_PER_WORKER * this.#scheduler.concurrency)
          await new Promise<void>((resolve) => commitDone.push(resolve));
      }
    };
    // One more worker than slots: a job holding every slot still has a part queued when one frees,
    // so the scheduler's priorities hold (a waited-for model keeps its slots against prefetches).
    const workers = Array.from({ length: Math.min(this.#scheduler.concurrency + 1, work.length) }, worker);
    throwFirst([...(await Promise.allSettled(workers)), ...(await Promise.allSettled([...commits]))]);
    if (signal.aborted) throw toColdstartError(signal.reason);
    if (next < work.length && this.#stopping) throw this.#stopping;
    // Indexes last: they are checked against every shard's header before they become visible.
    for (const fs of [...this.#opened, ...this.#singles.values()]) {
      if (fs.plan.relPath.endsWith(INDEX_SUFFIX)) await this.#commitOrDiscard(fs, manifest, headers, files);
    }
  }

  /** A single-part file's state, made when a worker takes it (and dropped once it is committed). */
  #startSingle(plan: FilePlan): FileState {
    const fs = singleFile(plan, this.#tmpDir);
    this.#singles.set(plan.relPath, fs);
    return fs;
  }

  /**
   * Commits a downloaded file; a file whose bytes failed verification is discarded (temp file and
   * journal), since a rerun would only find the same bytes wanting: it is fetched again instead.
   */
  async #commitOrDiscard(
    fs: FileState,
    manifest: ManifestStore,
    headers: Map<string, ShardTensors>,
    allFiles?: FilePlan[],
  ): Promise<void> {
    try {
      const o = this.#o;
      const ms = await commitFile(fs, {
        root: this.#root,
        manifest,
        headers,
        allFiles,
        lock: this.#lock,
        logger: o.logger,
      });
      const dropped = Date.now();
      this.#board.committed(fs.plan.relPath);
      this.#singles.delete(fs.plan.relPath);
      await fs.journal?.remove();
      this.#verifyMs += ms.verifyMs;
      this.#commitMs += ms.commitMs + (Date.now() - dropped);
      this.#p.filesDone++;
    } catch (err) {
      if (refusesBytes(err)) await this.#discard(fs);
      throw err;
    }
  }

  /** Removes a file's temp file and journal. */
  async #discard(fs: FileState): Promise<void> {
    this.#singles.delete(fs.plan.relPath);
    await discardTempFile(fs, this.#tmpDir);
  }

  /**
   * After a failed (or stopped) job: what can never be resumed goes. A file in parts with no part
   * journaled is only a sparse temp file and an empty journal; a single-part file that did not commit
   * has no journal to resume from. Files with journaled parts stay for the next run.
   */
  async #reclaim(): Promise<void> {
    const gone = [...this.#opened.filter((fs) => fs.done.size === 0), ...this.#singles.values()];
    for (const fs of gone) await this.#discard(fs).catch(() => {});
  }

  /**
   * For a file listed in several parts: decides how it is cut and checked (checksum-plan.ts), then
   * loads a valid journal (resume) or starts a fresh temp file and journal.
   */
  async #openFile(listed: FilePlan): Promise<FileState> {
    const o = this.#o;
    const check = await checksumPlan(listed, {
      source: o.source,
      bucket: o.bucket,
      retry: o.retry,
      partSizeBytes: o.partSizeBytes,
      signal: this.#abort.signal,
      onRetry: this.#onRetry(listed.key, "head"),
      logger: o.logger,
    });
    const plan = check.bounds ? { ...listed, bounds: check.bounds } : listed;
    const { file, resumedBytes } = await openTempFile(plan, this.#tmpDir, check);
    this.#p.resumedBytes += resumedBytes;
    this.#p.bytesDone += resumedBytes;
    return file;
  }

  async #checkSpace(pending: FilePlan[]): Promise<void> {
    let need = 0;
    for (const f of pending) need += f.size;
    for (const fs of this.#opened) {
      for (const p of fs.done.keys())
        need -= (fs.plan.bounds[p + 1] as number) - (fs.plan.bounds[p] as number);
    }
    await this.#o.makeRoom?.(need, this.#abort.signal);
    const free = await freeBytes(this.#root);
    // Temp files are sparse: space is taken as parts land, so the whole remainder must fit.
    if (need > free) {
      throw new ColdstartError(
        "CS_INSUFFICIENT_SPACE",
        `${this.#root} has ${free} bytes free, the remaining files need ${need}`,
        { details: { field: "dest", value: this.#root } },
      );
    }
  }

  /** Downloads part `p` of a file under a download slot and records it (see #downloadTracked). */
  async #runPart(fs: FileState, p: number, limit: Limit): Promise<void> {
    const o = this.#o;
    const signal = this.#abort.signal;
    const { plan } = fs;
    try {
      await limit(async () => {
        if (signal.aborted) throw toS3Error(signal.reason, plan.key, "GET");
        if (this.#stopping) throw this.#stopping;
        await this.#downloadTracked(fs, p, (onSource) =>
          (o.runPart ?? downloadPart)(partRequest(fs, p, o.bucket), {
            source: o.source,
            retry: o.retry,
            requestTimeoutMs: o.requestTimeoutMs,
            lowSpeed: o.lowSpeed,
            signal,
            onBytes: (n) => {
              this.#p.bytesDone += n;
              // Bytes from S3 only: a peer's are coldstart_peer_bytes_total{direction="in"}.
              if (fs.inFlight.get(p) !== "peer") o.metrics?.downloadBytes.inc({ source: o.bucket }, n);
            },
            onDiscard: (n) => {
              this.#p.bytesDone -= n;
            },
            onRetry: this.#onRetry(plan.key, "get"),
            rateLimiter: o.rateLimiter,
            onSource,
            halted: () => this.#stopping,
          }),
        );
      });
    } catch (err) {
      // First failure stops the job: a model with a missing file is not usable anyway, and the
      // journal keeps every finished part for the next run. A part that did not start because the
      // job is stopping leaves the parts in flight to finish.
      if (err !== this.#stopping) this.#abort.abort(err);
      throw err;
    }
    if (--this.#partsLeft === 0) {
      this.#p.phase = "verifying";
      this.#observe("download", Date.now() - this.#downloadStarted);
    }
  }

  /**
   * Runs one part's download and records it (journal, done, waiting peers). While the part's bytes
   * come from S3 and until it is journaled, `fs.inFlight` says so: peers may wait for it then. A part
   * that comes from a peer is never offered, so no two nodes wait for each other.
   */
  async #downloadTracked(
    fs: FileState,
    p: number,
    run: (onSource: (fromPeer: boolean) => void) => Promise<JournalEntry>,
  ): Promise<void> {
    try {
      const entry = await run((fromPeer) => fs.inFlight.set(p, fromPeer ? "peer" : "s3"));
      await fs.journal?.record(entry, fs.plan.key);
      fs.done.set(p, entry);
      this.#board.pieceIn(fs.plan.relPath, p);
    } finally {
      fs.inFlight.delete(p);
    }
  }

  #onRetry(key: string, operation: "list" | "head" | "get") {
    return (err: unknown, attempt: number) => {
      this.#p.retries++;
      const reason = retryReason(err);
      this.#o.metrics?.s3Retries.inc({ operation, reason });
      this.#o.logger?.warn({ key, attempt, reason, err: describe(err) }, "retrying");
    };
  }

  #observe(stage: Stage, ms: number): void {
    this.#o.metrics?.stageDuration.observe({ stage }, ms / 1000);
  }

  /**
   * After a job that staged every file: whatever is left in the temp directory is stale (objects no
   * longer in the source or filtered out, a journal of a file now fetched in one part) and would
   * otherwise leak forever.
   */
  async #removeOrphans(): Promise<void> {
    for (const name of await readdir(this.#tmpDir).catch(() => [] as string[])) {
      await rm(join(this.#tmpDir, name), { force: true });
    }
  }
}

type Limit = <T>(task: () => Promise<T>) => Promise<T>;

/** Commits in flight per download worker: a few, so fsync latency does not stall the downloads. */
const COMMITS_PER_WORKER = 8;

/** One item of a job's work list: a part of a file in several parts, or a whole single-part file. */
type Work = { fs: FileState; p: number } | { single: FilePlan };

/** Rethrows the first real failure; CS_ABORTED from parts cancelled because of it comes second. */
function throwFirst(results: PromiseSettledResult<unknown>[]): void {
  const errors = results.flatMap((r) => (r.status === "rejected" ? [toColdstartError(r.reason)] : []));
  if (errors.length === 0) return;
  throw errors.find((e) => e.code !== "CS_ABORTED") ?? errors[0];
}
