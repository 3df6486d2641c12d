/**
 * The ModelCache reconciler: what the resources that select this node want, made true on it.
 *
 * A resource that selects this node (its nodeSelector against this Node's labels) has its model
 * staged here, the same model a PUT /v1/models/{id} stages (one registry, one job), pinned under the
 * resource's name while selected when spec.pin is set, at spec.priority against other prefetches. A
 * resource that stops selecting the node, or is deleted, takes its pin away and leaves the model to
 * eviction; nothing is deleted. This node's entry in each resource's status follows the model's
 * state and progress (src/kube/model-cache-status.ts), and Events say when it is staged, failed or
 * evicted.
 *
 * The first wave: when no node holds the model yet, the nodes the resource selects stage it
 * together, each reading its share from S3 (src/peers/cohort.ts). Each writes its entry first, with
 * its peer URL, and starts once the members' list has been quiet a moment (or a bound passed): a
 * node that started alone would read from S3 what the others were about to own, and on slow links
 * they would wait on it. A member that comes later takes over its share of what nobody started.
 */
import type { Logger } from "pino";
import { ColdstartError, toColdstartError } from "../errors.js";
import type { ModelCacheStatusWriter } from "../kube/model-cache-status.js";
import { type ModelCache, type ModelCacheSpec, type StatusEntry, selects } from "../kube/model-caches.js";
import { validateModelId } from "../models/model-id.js";
import type { ModelManager } from "../models/model-manager.js";
import type { ModelStatus } from "../models/status.js";
import type { Cohorts } from "../peers/cohort.js";
import { parseS3Uri } from "../s3/uri.js";

/** The pin holder a resource's name is recorded under (ModelStatus.pinnedBy). */
const PIN_HOLDER_PREFIX = "modelcache/";

export interface ModelCacheSource {
  readonly synced: boolean;
  caches(): ModelCache[];
  nodeLabels(): Record<string, string> | undefined;
}

export interface ModelCacheReconcilerOptions {
  nodeName: string;
  watch: ModelCacheSource;
  status: Pick<ModelCacheStatusWriter, "set" | "remove" | "seen" | "counts" | "retainCounts" | "event">;
  models: ModelManager;
  /** The cooperative first wave; absent: every node reads S3 for itself (and peers as today). */
  cohorts?: Cohorts | undefined;
  /** Restores a compile cache for this node's GPU (CompileCacheManager.restore); absent: not warmed. */
  restoreCompileCache?: (
    identity: NonNullable<ModelCacheSpec["compileCaches"]>[number],
  ) => Promise<{ outcome: string; error?: { code: string; message: string } | undefined }>;
  logger: Logger;
  /**
   * Before a first wave starts, this node's own entry and another's must be in the members' list
   * and the list must have been still for quietMs (default 300 ms); no start waits longer than
   * maxMs (default 3 s) after the resource was seen (a resource that selects one node waits that). Members that come later still take over
   * their share of the parts nobody has started (each job reorders, src/peers/cohort.ts).
   */
  gather?: { quietMs: number; maxMs: number };
  /** How often progress is looked at while a model stages (default 1 s). */
  tickMs?: number;
  now?: () => number;
}

interface Tracked {
  model: string;
  /** When this daemon run first saw the resource select the node. */
  seenAt: number;
  /** The first-wave members as last seen, and since when they are unchanged. */
  members: string;
  membersSince: number;
  /** The spec generation acted on: a change of the spec tries again what failed or was evicted. */
  generation: number;
  /** The model was asked of the manager (staging, or joined). */
  requested: boolean;
  /** Failed or refused attempts in a row, and when the next may start. */
  attempts: number;
  retryAt: number;
  /** Why it could not be (an error for the status), if it could not. */
  refused?: { code: string; message: string } | undefined;
  /** The state last reported, for Events on transitions. */
  lastState?: string | undefined;
  /** It was ready here and is gone since (evicted while unpinned): not staged again on its own. */
  evicted: boolean;
  pinned: boolean;
  /** The compile-cache identities asked for already (JSON), once each per resource. */
  caches: Set<string>;
}

const MEMBER_STATES = new Set(["pending", "staging", "verifying"]);
const RETRY_BASE_MS = 30_000;
const RETRY_MAX_MS = 10 * 60_000;

export class ModelCacheReconciler {
  readonly #o: ModelCacheReconcilerOptions;
  readonly #tracked = new Map<string, Tracked>();
  /** Resources refused as invalid, with why: reported once per reason. */
  readonly #invalid = new Map<string, string>();
  readonly #timer: NodeJS.Timeout;
  #running = false;
  #again = false;
  #stopped = false;
  #orphansReleased = false;

  constructor(options: ModelCacheReconcilerOptions) {
    this.#o = options;
    this.#timer = setInterval(() => this.kick(), options.tickMs ?? 1_000);
    this.#timer.unref();
  }

  /** Something changed (the watch, a model's state, a tick): reconcile soon, once. */
  kick(): void {
    if (this.#stopped) return;
    if (this.#running) {
      this.#again = true;
      return;
    }
    this.#running = true;
    queueMicrotask(() => {
      this.#reconcile()
        .catch((err: unknown) => this.#o.logger.error({ err: String(err) }, "reconciling ModelCaches failed"))
        .finally(() => {
          this.#running = false;
          if (this.#again) {
            this.#again = false;
            this.kick();
          }
        });
    });
  }

  stop(): void {
    this.#stopped = true;
    clearInterval(this.#timer);
  }

  async #reconcile(): Promise<void> {
    const w = this.#o.watch;
    const labels = w.nodeLabels();
    if (!w.synced || labels === undefined) return;
    const caches = w.caches();
    const seen = new Set<string>();
    // Two resources may want one model: it stages at the higher of their priorities.
    const priorities = new Map<string, number>();
    const checked = caches.map((mc) => ({ mc, spec: checkedSpec(mc) }));
    for (const { spec } of checked) {
      if ("invalid" in spec || !selects(spec.nodeSelector, labels)) continue;
      const p = priorities.get(spec.model);
      priorities.set(spec.model, p === undefined ? spec.priority : Math.max(p, spec.priority));
    }
    for (const { mc, spec } of checked) {
      seen.add(mc.name);
      if ("invalid" in spec) {
        this.#refuseInvalid(mc, spec.invalid);
        continue;
      }
      if (selects(spec.nodeSelector, labels)) {
        this.#o.status.seen(
          mc.name,
          mc.nodes.some((n) => n.node === this.#o.nodeName),
        );
        await this.#want(mc, spec, priorities.get(spec.model) ?? 0);
      } else await this.#unwant(mc);
      this.#o.status.counts(mc);
    }
    for (const name of [...this.#tracked.keys()]) {
      if (!seen.has(name)) await this.#drop(name, "deleted");
    }
    for (const name of [...this.#invalid.keys()]) if (!seen.has(name)) this.#invalid.delete(name);
    this.#o.status.retainCounts(seen);
    // Pins of resources that no longer select this node can only come from an earlier run (a pass
    // unpins what it drops): looked for once, after the first pass that saw every resource.
    if (!this.#orphansReleased) {
      this.#orphansReleased = true;
      await releaseModelCachePins(this.#o.models, this.#o.logger, new Set(this.#tracked.keys()));
    }
  }

  /** The resource selects this node: stage, pin, report. */
  async #want(mc: ModelCache, spec: ModelCacheSpec, priority: number): Promise<void> {
    const m = this.#o.models;
    const now = this.#now();
    let t = this.#tracked.get(mc.name);
    if (t && t.model !== spec.model) {
      // model is immutable in the CRD; a re-created resource of the same name may name another.
      await this.#drop(mc.name, "replaced");
      t = undefined;
    }
    if (!t) {
      t = {
        model: spec.model,
        seenAt: now,
        members: "",
        membersSince: now,
        generation: mc.generation,
        requested: false,
        attempts: 0,
        retryAt: 0,
        evicted: false,
        pinned: false,
        caches: new Set(),
      };
      this.#tracked.set(mc.name, t);
      this.#o.logger.info({ resource: mc.name, model: spec.model }, "ModelCache selects this node");
    }
    const members = this.#members(mc);
    if (members.join() !== t.members) {
      t.members = members.join();
      t.membersSince = now;
    }
    let status = this.#statusOf(spec.model);
    if (mc.generation !== t.generation) {
      // The spec changed: what was refused, failed or evicted is tried again (a changed source of a
      // model already here is refused as a conflict, visibly).
      t.generation = mc.generation;
      if (t.refused || t.evicted || status?.state === "failed") this.#retry(t, 0);
    }
    if ((t.refused || status?.state === "failed") && t.retryAt > 0 && now >= t.retryAt) {
      // Failed (S3 down, a transient refusal): tried again with backoff, as long as it selects us.
      this.#retry(t, t.retryAt);
    }
    if (!t.requested && !t.refused && !t.evicted) {
      if (!status && !this.#gathered(mc, t, members, now)) {
        this.#o.status.set(mc.name, {
          node: this.#o.nodeName,
          state: "pending",
          peer: this.#o.cohorts?.self,
          message: "waiting for the other nodes of the first wave",
        });
        return;
      }
      try {
        const { bucket, prefix } = parseS3Uri(spec.source, "spec.source");
        this.#setCohort(mc.name, bucket, prefix, members);
        await m.request(
          spec.model,
          { source: spec.source, include: spec.include, exclude: spec.exclude, priority },
          { waited: false },
        );
        t.requested = true;
      } catch (err) {
        const e = toColdstartError(err);
        t.refused = { code: e.code, message: e.message };
        this.#backoff(t, now);
        this.#o.logger.warn({ resource: mc.name, code: e.code, err: e.message }, "ModelCache refused");
        this.#o.status.event(mc, "Warning", "StagingFailed", `${e.code}: ${e.message}`);
      }
      status = this.#statusOf(spec.model);
    }
    if (t.refused) {
      this.#o.status.set(mc.name, {
        node: this.#o.nodeName,
        state: "failed",
        message: `${t.refused.code}: ${t.refused.message}`,
      });
      return;
    }
    if (!status) {
      // It was here and is gone: evicted (only an unpinned model can be) or deleted through the API.
      if (t.requested && !t.evicted) {
        t.evicted = true;
        this.#o.status.event(
          mc,
          "Normal",
          "Evicted",
          `model ${spec.model} was removed from this node (evicted or deleted); it is staged again when the resource's spec changes`,
        );
      }
      this.#o.cohorts?.delete(mc.name);
      this.#o.status.set(mc.name, {
        node: this.#o.nodeName,
        state: "pending",
        message:
          "removed from this node (evicted or deleted); not staged again until the resource's spec changes",
      });
      return;
    }
    if (spec.pin !== t.pinned || (spec.pin && !status.pinnedBy.includes(holder(mc.name)))) {
      await m.pinFor(spec.model, holder(mc.name), spec.pin);
      t.pinned = spec.pin;
    }
    await m.setPriority(spec.model, priority);
    this.#warmCompileCaches(mc, t, spec);
    if (status.state === "failed" && t.retryAt === 0) this.#backoff(t, now);
    if (status.state === "ready") t.attempts = 0;
    if (status.state === "ready" || status.state === "failed") this.#o.cohorts?.delete(mc.name);
    else {
      const { bucket, prefix } = parseS3Uri(spec.source, "spec.source");
      this.#setCohort(mc.name, bucket, prefix, members);
    }
    this.#report(mc, t, status);
  }

  /** Clears a refusal, an eviction or a failure so that the next pass asks for the model again. */
  #retry(t: Tracked, at: number): void {
    t.refused = undefined;
    t.evicted = false;
    t.requested = false;
    if (at === 0) t.attempts = 0;
    t.retryAt = 0;
  }

  /** The next attempt after a failure: 30 s, doubling to 10 minutes. */
  #backoff(t: Tracked, now: number): void {
    t.attempts++;
    t.retryAt = now + Math.min(RETRY_BASE_MS * 2 ** (t.attempts - 1), RETRY_MAX_MS);
  }

  /** Each compile-cache identity the resource names, restored once for this node's GPU. */
  #warmCompileCaches(mc: ModelCache, t: Tracked, spec: ModelCacheSpec): void {
    const restore = this.#o.restoreCompileCache;
    if (!restore) return;
    for (const identity of spec.compileCaches ?? []) {
      const key = JSON.stringify(identity);
      if (t.caches.has(key)) continue;
      t.caches.add(key);
      restore(identity)
        .then((r) => {
          this.#o.logger.info(
            { resource: mc.name, outcome: r.outcome, err: r.error?.message },
            "compile cache warmed",
          );
        })
        .catch((err: unknown) => {
          const e = toColdstartError(err);
          this.#o.logger.warn(
            { resource: mc.name, code: e.code, err: e.message },
            "compile cache not warmed",
          );
          this.#o.status.event(mc, "Warning", "CompileCacheFailed", `${e.code}: ${e.message}`);
        });
    }
  }

  /** Whether a first wave may start: no member is ready, and the members' list has settled. */
  #gathered(mc: ModelCache, t: Tracked, members: string[], now: number): boolean {
    const cohorts = this.#o.cohorts;
    if (!cohorts?.self) return true;
    if (mc.nodes.some((n) => n.state === "ready")) return true;
    const g = this.#o.gather ?? { quietMs: 300, maxMs: 3_000 };
    if (now - t.seenAt >= g.maxMs) return true;
    // Alone so far: the others' entries may be a moment behind (their watch, their write), and a
    // node that started alone would own every part. A resource that selects one node pays maxMs.
    if (members.length < 2) return false;
    return members.includes(cohorts.self) && now - t.membersSince >= g.quietMs;
  }

  /** The peer URLs of the nodes staging the model for this resource now (this node's included once listed). */
  #members(mc: ModelCache): string[] {
    return mc.nodes
      .filter((n) => MEMBER_STATES.has(n.state) && typeof n.peer === "string" && n.peer !== "")
      .map((n) => n.peer as string)
      .sort();
  }

  #setCohort(name: string, bucket: string, prefix: string, members: string[]): void {
    this.#o.cohorts?.set(name, bucket, prefix, members);
  }

  #report(mc: ModelCache, t: Tracked, s: ModelStatus): void {
    const entry: StatusEntry = {
      node: this.#o.nodeName,
      state: s.state,
      bytesDone: s.bytesDone,
      bytesTotal: s.bytesTotal,
      bytesPerSecond: s.bytesPerSecond,
      ...(s.etaSeconds !== null ? { etaSeconds: s.etaSeconds } : {}),
      ...(s.state !== "ready" && s.state !== "failed" && this.#o.cohorts?.self
        ? { peer: this.#o.cohorts.self }
        : {}),
      ...(s.error ? { message: `${s.error.code}: ${s.error.message}`.slice(0, 1024) } : {}),
    };
    this.#o.status.set(mc.name, entry);
    if (t.lastState !== s.state) {
      if (s.state === "ready" && t.lastState !== undefined) {
        this.#o.status.event(
          mc,
          "Normal",
          "Staged",
          `model ${t.model} staged and verified (${s.bytesTotal} bytes, ${s.filesTotal} files)`,
        );
      }
      if (s.state === "failed") {
        this.#o.status.event(
          mc,
          "Warning",
          "StagingFailed",
          `model ${t.model}: ${s.error?.code}: ${s.error?.message}`,
        );
      }
      t.lastState = s.state;
    }
  }

  /** The resource does not select this node (any more): its pin goes, its entry goes. */
  async #unwant(mc: ModelCache): Promise<void> {
    if (this.#tracked.has(mc.name)) await this.#drop(mc.name, "unselected");
    // An entry a previous run of this daemon left behind.
    else if (mc.nodes.some((n) => n.node === this.#o.nodeName)) this.#o.status.remove(mc.name);
  }

  async #drop(name: string, why: "unselected" | "deleted" | "replaced"): Promise<void> {
    const t = this.#tracked.get(name);
    this.#tracked.delete(name);
    this.#o.cohorts?.delete(name);
    if (why !== "deleted") this.#o.status.remove(name);
    if (t) {
      await this.#o.models.pinFor(t.model, holder(name), false);
      this.#o.logger.info(
        { resource: name, model: t.model, why },
        "ModelCache no longer selects this node; model left to eviction",
      );
    }
  }

  #refuseInvalid(mc: ModelCache, why: string): void {
    if (this.#invalid.get(mc.name) === why) return;
    this.#invalid.set(mc.name, why);
    this.#o.logger.warn({ resource: mc.name, why }, "ModelCache spec refused");
    this.#o.status.set(mc.name, {
      node: this.#o.nodeName,
      state: "failed",
      message: `CS_REQUEST_INVALID: ${why}`,
    });
    this.#o.status.event(mc, "Warning", "StagingFailed", `CS_REQUEST_INVALID: ${why}`);
  }

  #statusOf(id: string): ModelStatus | undefined {
    try {
      return this.#o.models.get(id);
    } catch (err) {
      if (err instanceof ColdstartError && err.code === "CS_MODEL_NOT_FOUND") return undefined;
      throw err;
    }
  }

  #now(): number {
    return (this.#o.now ?? Date.now)();
  }
}

function holder(name: string): string {
  return `${PIN_HOLDER_PREFIX}${name}`;
}

/**
 * Takes away the pins an earlier run took for resources other than `keep` (resource names), so that
 * they neither hold the disk nor block DELETE for good: all of them with kube.modelCaches off, those
 * of resources that no longer select this node at the reconciler's first pass.
 */
export async function releaseModelCachePins(
  models: Pick<ModelManager, "list" | "pinFor">,
  logger: Logger,
  keep: ReadonlySet<string> = new Set(),
): Promise<void> {
  for (const s of models.list()) {
    for (const h of s.pinnedBy) {
      if (!h.startsWith(PIN_HOLDER_PREFIX) || keep.has(h.slice(PIN_HOLDER_PREFIX.length))) continue;
      await models.pinFor(s.id, h, false);
      logger.info({ model: s.id, holder: h }, "ModelCache pin released: no resource here holds it");
    }
  }
}

/**
 * The spec to act on, or why it is refused: the schema's reason, or what the API refuses in the same
 * values (a model id with a ".." segment, a source that is no s3:// URI), which a CRD of another
 * version, or none, lets through: refused by name here, not thrown from the model store mid-pass.
 */
export function checkedSpec(mc: ModelCache): ModelCache["spec"] {
  if ("invalid" in mc.spec) return mc.spec;
  const { model, source } = mc.spec;
  for (const [field, check] of [
    ["spec.model", () => validateModelId(model)],
    ["spec.source", () => parseS3Uri(source, "spec.source")],
  ] as const) {
    try {
      check();
    } catch (err) {
      return { invalid: `${field}: ${(err as Error).message}` };
    }
  }
  return mc.spec;
}
