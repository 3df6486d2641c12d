/**
 * The byte path off the main thread: a pool of worker threads, each with its own connections, that
 * receive, hash and write parts (src/staging/workers/part-worker.ts). The main thread keeps what
 * needs shared state: where each GET goes (peers, signing with fresh credentials), the rate cap, the
 * journal and the commit. `run` has downloadPart's signature, so StageJob does not know which of
 * the two ran a part; a source that cannot hand a GET to another thread is read in-process.
 */
import { readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { ColdstartError } from "../../errors.js";
import type { ObjectSource, ResolvedGet } from "../../s3/object-source.js";
import { TransientError, toS3Error } from "../../s3/retry.js";
import type { JournalEntry } from "../../store/journal.js";
import { downloadPart, type PartContext, type PartRequest } from "../part-download.js";
import { type FromWorker, fromWire, HALTED, type ToWorker, toWire } from "./protocol.js";

/** Runs one part: downloadPart itself, or a pool that runs it on another thread. */
export type PartRunner = (req: PartRequest, ctx: PartContext) => Promise<JournalEntry>;

export interface PartWorkersOptions {
  /** Threads. Each takes the next part when it has the fewest in flight. */
  size: number;
  /** Told of every thread started (tests hold one to end it mid-part). */
  onSpawn?: ((worker: Worker) => void) | undefined;
}

interface Slot {
  worker: Worker;
  parts: Map<number, Flight>;
  /** What the thread threw, if it died of an uncaught error: said in the retry's reason. */
  error?: string;
}

interface Flight {
  req: PartRequest;
  ctx: PartContext;
  /** The source's resolveGet (run() takes only sources that have one). */
  resolveGet: NonNullable<ObjectSource["resolveGet"]>;
  resolve: (e: JournalEntry) => void;
  reject: (e: unknown) => void;
  /** Resolved GETs awaiting their outcome (metrics), by call. */
  settling: Map<number, ResolvedGet>;
  /** Bytes this attempt reported: undone if its thread dies and the part starts over. */
  bytes: number;
  /** Times the part was started over after its thread died. */
  restarts: number;
  detach: () => void;
}

export class PartWorkers {
  readonly size: number;
  readonly #o: PartWorkersOptions;
  readonly #slots: Slot[] = [];
  #nextId = 0;
  #closed = false;

  constructor(options: PartWorkersOptions) {
    if (!Number.isInteger(options.size) || options.size < 1) {
      throw new ColdstartError("CS_INTERNAL", `part workers: size must be at least 1, got ${options.size}`);
    }
    this.size = options.size;
    this.#o = options;
  }

  /** Same contract as downloadPart: resolves once the part's bytes are written (and durable if asked). */
  run: PartRunner = (req, ctx) => {
    const { source } = ctx;
    if (!source.resolveGet || this.#closed) return downloadPart(req, ctx);
    const resolveGet = source.resolveGet.bind(source);
    return new Promise<JournalEntry>((resolve, reject) => {
      const flight: Flight = {
        req,
        ctx,
        resolveGet,
        resolve,
        reject,
        settling: new Map(),
        bytes: 0,
        restarts: 0,
        detach: () => {},
      };
      this.#start(flight);
    });
  };

  /** Ends every thread; parts still in flight fail (the job is over by then). */
  async close(): Promise<void> {
    this.#closed = true;
    const slots = this.#slots.splice(0);
    await Promise.all(slots.map((s) => s.worker.terminate()));
  }

  #start(flight: Flight): void {
    const slot = this.#pick();
    const id = this.#nextId++;
    slot.parts.set(id, flight);
    // A thread with parts in flight keeps the process alive (a CLI pull has nothing else pending).
    if (slot.parts.size === 1) slot.worker.ref();
    const { ctx } = flight;
    const post = (m: ToWorker) => slot.worker.postMessage(m);
    const onAbort = () => post({ t: "abort", id, reason: toWire(ctx.signal.reason) });
    if (ctx.signal.aborted) onAbort();
    else ctx.signal.addEventListener("abort", onAbort, { once: true });
    flight.detach = () => ctx.signal.removeEventListener("abort", onAbort);
    // A job that is stopping refuses the part's first GET at "resolve", as every later one.
    post({
      t: "part",
      id,
      req: flight.req,
      settings: {
        retry: ctx.retry,
        requestTimeoutMs: ctx.requestTimeoutMs,
        lowSpeed: ctx.lowSpeed,
        rateLimited: ctx.rateLimiter !== undefined,
      },
    });
  }

  /** The live thread with the fewest parts in flight (a new one while the pool is not full). */
  #pick(): Slot {
    if (this.#slots.length < this.size) return this.#spawn();
    return this.#slots.reduce((a, b) => (b.parts.size < a.parts.size ? b : a));
  }

  #spawn(): Slot {
    const worker = newWorker();
    const slot: Slot = { worker, parts: new Map() };
    this.#slots.push(slot);
    // An idle pool does not keep the process alive; a part in flight holds its own promise.
    worker.unref();
    worker.on("message", (m: FromWorker) => this.#onMessage(slot, m));
    worker.on("error", (err) => {
      slot.error = err instanceof Error ? err.message : String(err);
    });
    worker.on("exit", (code) => this.#onExit(slot, code));
    this.#o.onSpawn?.(worker);
    return slot;
  }

  #onMessage(slot: Slot, m: FromWorker): void {
    const flight = slot.parts.get(m.id);
    if (!flight) return;
    const { ctx } = flight;
    const post = (msg: ToWorker) => slot.worker.postMessage(msg);
    switch (m.t) {
      case "resolve": {
        // The job is stopping: no new request goes out (the worker then stops the part as halted).
        if (ctx.halted?.()) {
          post({ t: "resolved", id: m.id, call: m.call, error: { name: HALTED, message: "stopping" } });
          return;
        }
        flight
          .resolveGet(flight.req.bucket, flight.req.key, {
            ...(m.range ? { range: m.range } : {}),
            ...(m.ifMatch ? { ifMatch: m.ifMatch } : {}),
            checksumMode: m.checksumMode,
            skipPeers: m.skipPeers,
            signal: ctx.signal,
            onSource: ctx.onSource,
          })
          .then(
            (resolved) => {
              // The part ended meanwhile (its thread died, or it was restarted elsewhere): nobody
              // will send this request, and a peer's slots must not wait for a settle that never comes.
              if (slot.parts.get(m.id) !== flight) {
                resolved.settled?.("error", resolved.piece ? "abandoned" : undefined);
                return;
              }
              flight.settling.set(m.call, resolved);
              const { settled: _, ...wire } = resolved;
              slot.worker.postMessage({ t: "resolved", id: m.id, call: m.call, resolved: wire });
            },
            (err) => post({ t: "resolved", id: m.id, call: m.call, error: toWire(err) }),
          );
        return;
      }
      case "settled": {
        const resolved = flight.settling.get(m.call);
        flight.settling.delete(m.call);
        resolved?.settled?.(m.status, m.piece);
        return;
      }
      case "take":
        if (!ctx.rateLimiter) {
          post({ t: "granted", id: m.id, call: m.call });
          return;
        }
        ctx.rateLimiter.take(m.n, ctx.signal).then(
          () => post({ t: "granted", id: m.id, call: m.call }),
          (err) => post({ t: "granted", id: m.id, call: m.call, error: toWire(err) }),
        );
        return;
      case "bytes":
        flight.bytes += m.n;
        ctx.onBytes(m.n);
        return;
      case "discard":
        flight.bytes -= m.n;
        ctx.onDiscard?.(m.n);
        return;
      case "retry":
        ctx.onRetry(fromWire(m.error), m.attempt);
        return;
      case "done":
        this.#finish(slot, m.id, flight);
        flight.resolve(m.entry);
        return;
      case "failed": {
        this.#finish(slot, m.id, flight);
        // The same error objects the in-process path throws: StageJob tells a stop by identity.
        const halt = m.halted ? ctx.halted?.() : undefined;
        if (halt) flight.reject(halt);
        else if (ctx.signal.aborted) flight.reject(toS3Error(ctx.signal.reason, flight.req.key, "GET"));
        else flight.reject(fromWire(m.error));
        return;
      }
    }
  }

  #finish(slot: Slot, id: number, flight: Flight): void {
    slot.parts.delete(id);
    if (slot.parts.size === 0) slot.worker.unref();
    flight.detach();
    // Requests the part no longer waits on: not the peer's fault (our thread died, or the part ended).
    for (const r of flight.settling.values()) r.settled?.("error", r.piece ? "abandoned" : undefined);
    flight.settling.clear();
  }

  /**
   * A thread that exits with parts in flight (a crash, out of memory) loses their digests, so each
   * part starts over on another thread: nothing of it was journaled, and the bytes it wrote are
   * written again. Its progress is taken back so bytesDone stays true.
   */
  #onExit(slot: Slot, code: number): void {
    const i = this.#slots.indexOf(slot);
    if (i >= 0) this.#slots.splice(i, 1);
    for (const [id, flight] of slot.parts) {
      this.#finish(slot, id, flight);
      const { ctx } = flight;
      if (ctx.signal.aborted) {
        flight.reject(toS3Error(ctx.signal.reason, flight.req.key, "GET"));
        continue;
      }
      const halt = ctx.halted?.();
      if (this.#closed || halt) {
        flight.reject(halt ?? new ColdstartError("CS_ABORTED", `GET ${flight.req.key} was cancelled`));
        continue;
      }
      const err = new TransientError(
        `the part worker thread exited (code ${code}${slot.error ? `: ${slot.error}` : ""}) during the part`,
      );
      if (++flight.restarts >= flight.ctx.retry.maxAttempts) {
        flight.reject(
          new ColdstartError(
            "CS_RETRIES_EXHAUSTED",
            `GET ${flight.req.key} failed ${flight.restarts} times in a row: ${err.message}`,
            { cause: err, details: { key: flight.req.key } },
          ),
        );
        continue;
      }
      ctx.onDiscard?.(flight.bytes);
      flight.bytes = 0;
      ctx.onRetry(err, flight.restarts);
      this.#start(flight);
    }
  }
}

/**
 * The worker thread from the compiled file next to this one, or, running from the TypeScript
 * sources (tests, `tsx`), the same file through tsx's loader, which a worker does not inherit.
 */
function newWorker(): Worker {
  const self = import.meta.url;
  if (self.endsWith(".ts")) {
    const entry = new URL("./part-worker.ts", self).href;
    const boot = `import("tsx/esm/api").then(({ register }) => { register(); return import(${JSON.stringify(entry)}); })`;
    return new Worker(boot, { eval: true });
  }
  return new Worker(new URL("./part-worker.js", self));
}

/**
 * download.workers "auto": the cores this process may use, its cgroup's CPU quota included (a pod's
 * limits.cpu), at most 16. One core still gets one worker: the byte path then shares it, but the
 * event loop that answers the API does not wait on it.
 */
export function defaultWorkerCount(): number {
  let cores = availableParallelism();
  const quota = cgroupCpuQuota();
  if (quota !== undefined) cores = Math.min(cores, Math.max(1, Math.ceil(quota)));
  return Math.max(1, Math.min(16, cores));
}

/** cgroup v2's cpu.max ("max 100000" or "200000 100000"): CPUs' worth of quota, or undefined. */
function cgroupCpuQuota(): number | undefined {
  try {
    const [quota, period] = readFileSync("/sys/fs/cgroup/cpu.max", "utf8").trim().split(/\s+/);
    if (!quota || quota === "max" || !period) return undefined;
    const q = Number(quota) / Number(period);
    return Number.isFinite(q) && q > 0 ? q : undefined;
  } catch {
    return undefined;
  }
}

/** The pool for download.workers: undefined for 0 (every part in-process, as before workers). */
export function partWorkersFor(workers: number | "auto"): PartWorkers | undefined {
  const size = workers === "auto" ? defaultWorkerCount() : workers;
  return size > 0 ? new PartWorkers({ size }) : undefined;
}
