import type { Logger } from "pino";
import type { Config } from "../config/schema.js";
import { ColdstartError } from "../errors.js";
import type { EvictionReason, Metrics } from "../metrics/metrics.js";
import type { Evictable, EvictableStore } from "../store/eviction.js";
import { isPinned, type ModelRecord } from "./model-registry.js";

/** What eviction needs of the models it may take: the model manager gives it. */
export interface EvictionHost {
  /** Every model record (the registry). */
  records(): ModelRecord[];
  /** The record the registry holds under `id` now. */
  record(id: string): ModelRecord | undefined;
  /** Each running job's progress, by model id. */
  running(): Iterable<[string, { bytesDone: number; resumedBytes: number; bytesTotal: number }]>;
  isRunning(id: string): boolean;
  /** True while a volume has the model mounted into a pod: never evicted then. */
  mounted(id: string): boolean;
  /** Takes the model off the disk now: renamed away, deleted, forgotten, counted. */
  remove(r: ModelRecord, reason: EvictionReason): Promise<void>;
  /** The staging root's disk. */
  disk(): Promise<{ totalBytes: number; freeBytes: number }>;
  /** A model started or stopped waiting for room: its status changed. */
  changed(id: string): void;
}

/** Why a job waits for room: how many bytes it needs and why it cannot have them yet. */
export interface SpaceWait {
  reason: "space";
  needBytes: number;
  since: string;
  message: string;
}

export interface ModelEvictionOptions {
  config: Config["eviction"];
  /** Other things free-space eviction may take (compile caches), merged with models by last use. */
  extra?: EvictableStore | undefined;
  logger: Logger;
  metrics?: Metrics | undefined;
  now: () => number;
}

/** One candidate of free-space eviction: a model or something ModelEvictionOptions.extra offers. */
interface Victim extends Pick<Evictable, "bytes" | "lastUse"> {
  model: boolean;
  evict(reason: "watermark" | "budget"): Promise<boolean>;
}

/** A model handed to a pod stays this long (eviction.inUseGraceMs) out of every eviction's reach. */
export function inUseGrace(r: ModelRecord, now: number): boolean {
  return r.inUseUntil !== undefined && Date.parse(r.inUseUntil) > now;
}

/** Of the bytes a job reserved when admitted, those it has not written yet (resumed bytes were on disk). */
function stillToWrite(reserved: number, p: { bytesDone: number; resumedBytes: number }): number {
  return Math.max(reserved - (p.bytesDone - p.resumedBytes), 0);
}

export function lastUseOf(r: ModelRecord): number {
  return Date.parse(r.lastUsedAt ?? r.readyAt ?? r.startedAt ?? "1970-01-01");
}

/**
 * LRU eviction of the node's models under the disk watermarks and the byte budget, and the room a
 * job needs before it downloads: never a pinned model, one being staged, or one handed to a pod
 * within the grace period. Evictions and room-making run one at a time (`exclusive`).
 */
export class ModelEviction {
  readonly #host: EvictionHost;
  readonly #o: ModelEvictionOptions;
  /** Evictions (and the room-making that picks them) run one at a time. */
  #evicting: Promise<unknown> = Promise.resolve();
  /** Jobs waiting for room (makeRoom), by model id: shown in their status. */
  readonly #waitingForSpace = new Map<string, SpaceWait>();
  /** Woken by every change that may free room (a model settles, is unpinned, evicted or deleted). */
  readonly #spaceWaiters = new Set<() => void>();
  /** Bytes each running job still had to write when it was admitted (makeRoom). */
  readonly #reserved = new Map<string, number>();

  constructor(host: EvictionHost, options: ModelEvictionOptions) {
    this.#host = host;
    this.#o = options;
  }

  /** Why a job waits for room, when it does (its status shows it). */
  waiting(id: string): SpaceWait | undefined {
    return this.#waitingForSpace.get(id);
  }

  /** The job of `id` settled: what it reserved is free for the others. */
  release(id: string): void {
    this.#reserved.delete(id);
  }

  /** Jobs waiting for room look again (each waiter's callback removes itself). */
  wake(): void {
    for (const wake of [...this.#spaceWaiters]) wake();
  }

  /**
   * Evicts least recently used models while disk use is over the high watermark (down to low), and
   * while ready models exceed the byte budget; then jobs waiting for room look again.
   */
  async enforceWatermarks(): Promise<void> {
    await this.#enforceWatermarks();
    this.wake();
  }

  /** Takes `r` unless something spared it since it was chosen (pinned, handed to a pod, restaged). */
  async #evict(r: ModelRecord, reason: "watermark" | "budget"): Promise<boolean> {
    if (!this.#evictable(r)) return false;
    await this.#host.remove(r, reason);
    return true;
  }

  /** Runs `fn` after every eviction (or room-making) queued before it: one at a time. */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#evicting.then(fn, fn);
    this.#evicting = run.catch(() => {});
    return run;
  }

  async #enforceWatermarks(): Promise<void> {
    return this.exclusive(async () => {
      const { highWatermarkPercent: high, lowWatermarkPercent: low, maxBytes } = this.#o.config;
      const overBudget = () => maxBytes > 0 && this.#readyBytes() > maxBytes;
      while (overBudget()) {
        const victim = this.#evictionCandidates()[0];
        if (!victim) break;
        await this.#evict(victim, "budget");
      }
      let use = await this.#diskUsePercent();
      if (use <= high) return;
      for (const victim of this.#victims()) {
        if (use <= low) break;
        if (await victim.evict("watermark")) use = await this.#diskUsePercent();
      }
    });
  }

  /**
   * Before a job downloads: evict least recently used models until its remaining bytes fit the free
   * space (less what other running jobs still have to write) and the byte budget (counting those
   * jobs too). When they cannot fit now but could once models leave their in-use grace, are unpinned
   * or other jobs settle, the job waits (status `waiting`), looking again at every change and at
   * least every 30 s; only a model that could never fit, everything evictable gone, fails at once
   * with CS_INSUFFICIENT_SPACE. Nothing is evicted for a model that cannot fit yet.
   */
  async makeRoom(forId: string, need: number, signal: AbortSignal): Promise<void> {
    try {
      for (;;) {
        const verdict = await this.exclusive(() => this.#tryMakeRoom(forId, need));
        if (verdict === "done") return;
        if (!this.#waitingForSpace.has(forId)) {
          this.#waitingForSpace.set(forId, {
            reason: "space",
            needBytes: need,
            since: new Date(this.#now()).toISOString(),
            message: verdict.message,
          });
          this.#o.logger.warn({ model: forId, needBytes: need }, `waiting for space: ${verdict.message}`);
          this.#o.metrics?.modelsWaitingForSpace.set(this.#waitingForSpace.size);
          this.#host.changed(forId);
        }
        await this.#spaceMayHaveChanged(verdict.retryInMs, signal);
      }
    } finally {
      if (this.#waitingForSpace.delete(forId)) {
        this.#o.metrics?.modelsWaitingForSpace.set(this.#waitingForSpace.size);
        this.#host.changed(forId);
      }
    }
  }

  /**
   * One attempt at making room (inside the eviction queue): "done" (room made and reserved),
   * CS_INSUFFICIENT_SPACE thrown when the model could never fit, or why it cannot fit yet and when
   * a model now spared leaves its in-use grace.
   */
  async #tryMakeRoom(forId: string, need: number): Promise<"done" | { message: string; retryInMs: number }> {
    const budget = this.#o.config.maxBytes;
    // Measured inside the queue: other jobs' reservations and evictions are settled.
    const free = (await this.#host.disk()).freeBytes;
    const others = this.#othersBytes(forId);
    const avail = (freeNow: number) => freeNow - others.toWrite;
    const used = this.#readyBytes() + others.total;
    const fitsBudget = (freed: number) => budget === 0 || used - freed + need <= budget;
    const fits = (freeNow: number, freed: number) => need <= avail(freeNow) && fitsBudget(freed);
    this.#neverFits(forId, need, free, budget);
    const candidates = this.#victims(forId);
    // Something other than a model frees disk but not budget: taken only while space is short.
    const helps = (c: Victim, freeNow: number) => c.model || need > avail(freeNow);
    let possible = 0;
    let possibleModels = 0;
    for (const c of candidates) {
      if (fits(free + possible, possibleModels)) break;
      if (!helps(c, free + possible)) continue;
      possible += c.bytes;
      if (c.model) possibleModels += c.bytes;
    }
    if (!fits(free + possible, possibleModels)) {
      const message =
        `needs ${need} more bytes; ${Math.max(avail(free), 0)} free after running jobs` +
        (budget ? `, ${used} of the ${budget}-byte budget in use` : "") +
        `; evicting every model evictable now would free only ${possible}` +
        `; the rest is held by pinned models, models in use or within eviction.inUseGraceMs, models mounted into pods (CSI volumes), and running jobs`;
      return { message, retryInMs: this.#nextGraceEndMs() };
    }
    let freed = 0;
    let freeNow = free;
    for (const c of candidates) {
      if (fits(freeNow, freed)) break;
      if (!helps(c, freeNow)) continue;
      if (await c.evict(fitsBudget(freed) ? "watermark" : "budget")) {
        if (c.model) freed += c.bytes;
        freeNow = (await this.#host.disk()).freeBytes;
      }
    }
    if (!fits(freeNow, freed)) {
      return {
        message: `needs ${need} more bytes; ${Math.max(avail(freeNow), 0)} free after evicting ${freed}`,
        retryInMs: this.#nextGraceEndMs(),
      };
    }
    // Reserved until the job settles, so the next job's check counts these bytes.
    this.#reserved.set(forId, need);
    return "done";
  }

  /**
   * Throws CS_INSUFFICIENT_SPACE when `need` could not fit even with every model that is not pinned
   * gone (ready, in use or staging) and every other evictable thing: waiting would be for nothing.
   */
  #neverFits(forId: string, need: number, free: number, budget: number): void {
    let pinnedReady = 0;
    let unpinnedReady = 0;
    for (const r of this.#host.records()) {
      if (r.id === forId || r.state !== "ready") continue;
      if (isPinned(r)) pinnedReady += r.bytesTotal;
      else unpinnedReady += r.bytesTotal;
    }
    let pinnedOthersToWrite = 0;
    let pinnedOthersTotal = 0;
    let unpinnedOthersOnDisk = 0;
    for (const [id, p] of this.#host.running()) {
      // A job that is itself waiting for room is not admitted: its bytes free nothing while it waits
      // (counting them, two waiting jobs could each wait for the other for ever).
      if (id === forId || !this.#reserved.has(id)) continue;
      const reserved = this.#reserved.get(id) ?? 0;
      const other = this.#host.record(id);
      if (other && isPinned(other)) {
        pinnedOthersToWrite += stillToWrite(reserved, p);
        pinnedOthersTotal += p.bytesTotal;
      } else unpinnedOthersOnDisk += p.bytesDone;
    }
    // Every compile cache, evictable now or once its grace or quiet period ends.
    const extras = this.#o.extra?.localBytes() ?? 0;
    const eventually = free + unpinnedReady + extras + unpinnedOthersOnDisk - pinnedOthersToWrite;
    const budgetLeft = budget - pinnedReady - pinnedOthersTotal;
    if (need <= eventually && (budget === 0 || need <= budgetLeft)) return;
    throw new ColdstartError(
      "CS_INSUFFICIENT_SPACE",
      `model ${forId} needs ${need} more bytes and can never have them: ` +
        (need > eventually
          ? `${Math.max(eventually, 0)} bytes would be free with every model that is not pinned evicted (pinned models hold ${pinnedReady})`
          : `the ${budget}-byte budget (eviction.maxBytes) leaves ${Math.max(budgetLeft, 0)} beside pinned models`),
      { details: { value: need } },
    );
  }

  /** Milliseconds until the first model now spared for its in-use grace becomes evictable (≤ 30 s). */
  #nextGraceEndMs(): number {
    const grace = this.#o.config.inUseGraceMs;
    const now = this.#now();
    let next = now + 30_000;
    for (const r of this.#host.records()) {
      if (r.state !== "ready" || isPinned(r)) continue;
      for (const end of [
        r.inUseUntil && Date.parse(r.inUseUntil),
        r.readyAt && Date.parse(r.readyAt) + grace,
      ]) {
        if (typeof end === "number" && end > now && end < next) next = end;
      }
    }
    return Math.max(next - now, 1);
  }

  /** Resolves at the next change that may free room (or after `ms`); rejects when `signal` aborts. */
  #spaceMayHaveChanged(ms: number, signal: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        this.#spaceWaiters.delete(wake);
        signal.removeEventListener("abort", onAbort);
      };
      const onAbort = () => {
        done();
        reject(signal.reason);
      };
      const wake = () => {
        done();
        resolve();
      };
      const timer = setTimeout(wake, ms);
      this.#spaceWaiters.add(wake);
      if (signal.aborted) onAbort();
      else signal.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** Bytes of ready models. */
  #readyBytes(): number {
    return this.#host.records().reduce((n, r) => n + (r.state === "ready" ? r.bytesTotal : 0), 0);
  }

  /**
   * Other running jobs: bytes they reserved and have not written yet (space they will still take),
   * and their whole size (what they count against the byte budget once ready).
   */
  #othersBytes(exceptId: string): { toWrite: number; total: number } {
    let toWrite = 0;
    let total = 0;
    for (const [id, p] of this.#host.running()) {
      if (id === exceptId) continue;
      const reserved = this.#reserved.get(id);
      if (reserved === undefined) continue;
      toWrite += stillToWrite(reserved, p);
      total += p.bytesTotal;
    }
    return { toWrite, total };
  }

  /** Ready, unpinned, not staging, past the in-use grace; least recently used first. */
  #evictionCandidates(): ModelRecord[] {
    return this.#host
      .records()
      .filter((r) => this.#evictable(r))
      .sort((a, b) => lastUseOf(a) - lastUseOf(b));
  }

  /** Models and the extra evictables, least recently used first. */
  #victims(exceptId?: string): Victim[] {
    const models: Victim[] = this.#evictionCandidates()
      .filter((r) => r.id !== exceptId)
      .map((r) => ({
        bytes: r.bytesTotal,
        lastUse: lastUseOf(r),
        model: true,
        evict: (reason) => this.#evict(r, reason),
      }));
    const extra: Victim[] = (this.#o.extra?.evictables() ?? []).map((e) => ({
      bytes: e.bytes,
      lastUse: e.lastUse,
      model: false,
      evict: () => e.evict(),
    }));
    return [...models, ...extra].sort((a, b) => a.lastUse - b.lastUse);
  }

  /**
   * Whether automatic eviction (watermarks, budget, room-making) may take the model. A model that
   * became ready within the grace period is spared too: it was just staged for someone, and the
   * watermark pass right after its job must not take it before the pod's hand-over does.
   */
  #evictable(r: ModelRecord): boolean {
    const fresh =
      r.readyAt !== undefined && Date.parse(r.readyAt) + this.#o.config.inUseGraceMs > this.#now();
    return (
      this.#host.record(r.id) === r &&
      r.state === "ready" &&
      !isPinned(r) &&
      !fresh &&
      !this.#host.isRunning(r.id) &&
      !this.#host.mounted(r.id) &&
      !inUseGrace(r, this.#now())
    );
  }

  async #diskUsePercent(): Promise<number> {
    const d = await this.#host.disk();
    return d.totalBytes > 0 ? ((d.totalBytes - d.freeBytes) / d.totalBytes) * 100 : 0;
  }

  #now(): number {
    return this.#o.now();
  }
}
