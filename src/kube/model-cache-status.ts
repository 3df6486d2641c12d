/**
 * What this node's daemon writes about ModelCache resources: its own entry in each one's
 * status.nodes, the ready/selected counts, and Events.
 *
 * Entries go by server-side apply under a field manager of this node's own
 * (`coldstart-node/<node>`), each apply naming only this node's entry of the list-map, so daemons
 * never overwrite each other's and need no read-modify-write; applying none removes this node's
 * entry and nobody else's. A change of state is written at once; progress alone at most every
 * `progressIntervalMs`, so a thousand nodes staging at once do not flood the API server. The counts
 * are derived from the entries: one daemon (the first node by name among the entries) applies them
 * under the shared `coldstart-aggregate` manager with the resourceVersion it derived them from, so a
 * stale count loses with 409 instead of landing; the others step in if they stay wrong a while.
 */
import {
  CoreV1Api,
  CustomObjectsApi,
  type KubeConfig,
  PatchStrategy,
  setHeaderOptions,
} from "@kubernetes/client-node";
import type { Logger } from "pino";
import { backoffDelayMs } from "../lib/backoff.js";
import {
  MODELCACHE_GROUP,
  MODELCACHE_PLURAL,
  MODELCACHE_VERSION,
  type ModelCache,
  type StatusEntry,
} from "./model-caches.js";
import { apiClient, reasonOf, statusOf } from "./transport.js";

const NODE_FIELD_MANAGER_PREFIX = "coldstart-node/";
const AGGREGATE_FIELD_MANAGER = "coldstart-aggregate";
/**
 * Where Events about a ModelCache go: the API server takes a core/v1 Event about a cluster-scoped
 * object only in "default" (or ""), which is where client-go's recorder puts them and where
 * `kubectl describe modelcache` finds them.
 */
const EVENT_NAMESPACE = "default";

export interface StatusWriterOptions {
  kubeConfig: KubeConfig;
  nodeName: string;
  logger: Logger;
  /** Progress-only updates of one entry at most this often (default 5 s). */
  progressIntervalMs?: number;
  /** How long counts may stay wrong before a daemon other than the first steps in (default 30 s). */
  countsGraceMs?: number;
  retry?: { baseDelayMs: number; maxDelayMs: number };
  requestTimeoutMs?: number;
}

interface Slot {
  desired: StatusEntry | undefined;
  /** The entry last applied (without updatedAt), as JSON; undefined: none applied yet. */
  applied: string | undefined;
  appliedState: string | undefined;
  lastWriteAt: number;
  writing: boolean;
  timer?: NodeJS.Timeout;
  attempt: number;
  /**
   * The watch has shown this node's entry since the last write: only then does a view without it
   * mean someone took it out (before, it may just predate the write).
   */
  confirmed?: boolean;
}

const APPLY = setHeaderOptions("Content-Type", PatchStrategy.ServerSideApply);
const DEFAULT_RETRY = { baseDelayMs: 1_000, maxDelayMs: 30_000 } as const;

export class ModelCacheStatusWriter {
  readonly #o: StatusWriterOptions;
  readonly #closed = new AbortController();
  readonly #custom: CustomObjectsApi;
  readonly #core: CoreV1Api;
  readonly #slots = new Map<string, Slot>();
  /** Resource name → when its counts were first seen wrong (by a daemon that is not the first). */
  readonly #countsWrongSince = new Map<string, number>();
  readonly #countsWritten = new Map<string, string>();
  #idle: (() => void)[] = [];

  constructor(options: StatusWriterOptions) {
    this.#o = options;
    const timeout = options.requestTimeoutMs ?? 30_000;
    this.#custom = apiClient(CustomObjectsApi, options.kubeConfig, timeout, this.#closed.signal);
    this.#core = apiClient(CoreV1Api, options.kubeConfig, timeout, this.#closed.signal);
  }

  /** This node's entry in the resource's status (undefined: take it out). Coalesced; never throws. */
  set(name: string, entry: StatusEntry | undefined): void {
    if (this.#closed.signal.aborted) return;
    let slot = this.#slots.get(name);
    if (!slot) {
      if (entry === undefined) return; // never written by this daemon run: see remove()
      slot = {
        desired: undefined,
        applied: undefined,
        appliedState: undefined,
        lastWriteAt: 0,
        writing: false,
        attempt: 0,
      };
      this.#slots.set(name, slot);
    }
    slot.desired = entry;
    this.#schedule(name, slot);
  }

  /** Takes this node's entry out of the resource even if this daemon run never wrote it. */
  remove(name: string): void {
    if (this.#closed.signal.aborted) return;
    const slot = this.#slots.get(name) ?? {
      desired: undefined,
      applied: "unknown",
      appliedState: "unknown",
      lastWriteAt: 0,
      writing: false,
      attempt: 0,
    };
    slot.desired = undefined;
    this.#slots.set(name, slot);
    this.#schedule(name, slot);
  }

  /**
   * The resource as last seen has (or lacks) this node's entry. One this daemon wrote and that is
   * gone (an admin's or a client's update of the status took it out) is written again: coalescing
   * alone would wait for the next change of state. Only after the watch has shown the entry since
   * the last write: a view from before that write lacks it too, and must not start a write loop.
   */
  seen(name: string, hasEntry: boolean): void {
    const slot = this.#slots.get(name);
    if (!slot) return;
    if (hasEntry) {
      slot.confirmed = true;
      return;
    }
    if (!slot.confirmed || slot.writing || slot.desired === undefined || slot.applied === undefined) return;
    slot.confirmed = false;
    slot.applied = undefined;
    slot.appliedState = "absent"; // as it is: written again at once, not at the next progress tick
    this.#schedule(name, slot);
  }

  /** Forgets the count bookkeeping of resources not in `names` (deleted ones), which would pile up. */
  retainCounts(names: ReadonlySet<string>): void {
    for (const map of [this.#countsWrongSince, this.#countsWritten]) {
      for (const name of map.keys()) if (!names.has(name)) map.delete(name);
    }
  }

  /** Brings the resource's counts in line with its entries, if it is this daemon's turn. */
  counts(mc: ModelCache): void {
    if (this.#closed.signal.aborted) return;
    const selected = mc.nodes.length;
    const ready = mc.nodes.filter((n) => n.state === "ready").length;
    if (mc.selectedNodes === selected && mc.readyNodes === ready) {
      this.#countsWrongSince.delete(mc.name);
      return;
    }
    const first = mc.nodes.map((n) => n.node).sort()[0];
    const now = Date.now();
    if (first !== this.#o.nodeName && first !== undefined) {
      const since = this.#countsWrongSince.get(mc.name) ?? now;
      this.#countsWrongSince.set(mc.name, since);
      if (now - since < (this.#o.countsGraceMs ?? 30_000)) return;
    }
    // One attempt per resourceVersion: a 409 means a newer version is on its way through the watch.
    if (this.#countsWritten.get(mc.name) === mc.resourceVersion) return;
    this.#countsWritten.set(mc.name, mc.resourceVersion);
    this.#custom
      .patchClusterCustomObjectStatus(
        {
          group: MODELCACHE_GROUP,
          version: MODELCACHE_VERSION,
          plural: MODELCACHE_PLURAL,
          name: mc.name,
          fieldManager: AGGREGATE_FIELD_MANAGER,
          force: true,
          body: {
            apiVersion: `${MODELCACHE_GROUP}/${MODELCACHE_VERSION}`,
            kind: "ModelCache",
            metadata: { name: mc.name, resourceVersion: mc.resourceVersion },
            status: { selectedNodes: selected, readyNodes: ready },
          },
        },
        APPLY,
      )
      .catch((err: unknown) => {
        const status = statusOf(err);
        if (status === 409 || status === 404 || this.#closed.signal.aborted) return;
        this.#o.logger.warn(
          { resource: mc.name, status, reason: reasonOf(err) },
          "writing ModelCache counts failed",
        );
      });
  }

  /** A Kubernetes Event on the resource (kubectl describe modelcache shows it). Never throws. */
  event(
    mc: Pick<ModelCache, "name" | "uid">,
    type: "Normal" | "Warning",
    reason: string,
    message: string,
  ): void {
    if (this.#closed.signal.aborted) return;
    const now = new Date().toISOString();
    this.#core
      .createNamespacedEvent({
        namespace: EVENT_NAMESPACE,
        body: {
          metadata: { generateName: `${mc.name}.`, namespace: EVENT_NAMESPACE },
          involvedObject: {
            apiVersion: `${MODELCACHE_GROUP}/${MODELCACHE_VERSION}`,
            kind: "ModelCache",
            name: mc.name,
            uid: mc.uid,
          },
          type,
          reason,
          message: `${this.#o.nodeName}: ${message}`.slice(0, 1024),
          source: { component: "coldstart", host: this.#o.nodeName },
          reportingComponent: "coldstart.io/daemon",
          reportingInstance: this.#o.nodeName,
          firstTimestamp: new Date(now),
          lastTimestamp: new Date(now),
          count: 1,
        },
      })
      .catch((err: unknown) => {
        if (this.#closed.signal.aborted) return;
        this.#o.logger.warn(
          { resource: mc.name, reason: reason, status: statusOf(err), err: reasonOf(err) },
          "recording an Event failed",
        );
      });
  }

  /** Resolves once nothing is waiting to be written (for tests and shutdown). */
  flush(): Promise<void> {
    if (this.#busy()) return new Promise((resolve) => this.#idle.push(resolve));
    return Promise.resolve();
  }

  close(): void {
    this.#closed.abort();
    for (const slot of this.#slots.values()) clearTimeout(slot.timer);
    const idle = this.#idle;
    this.#idle = [];
    for (const resolve of idle) resolve();
  }

  #busy(): boolean {
    for (const s of this.#slots.values()) if (s.writing || s.timer || this.#pending(s)) return true;
    return false;
  }

  #pending(slot: Slot): boolean {
    return slot.applied !== (slot.desired ? JSON.stringify(slot.desired) : undefined);
  }

  #schedule(name: string, slot: Slot): void {
    if (slot.writing || slot.timer || !this.#pending(slot)) {
      this.#settle();
      return;
    }
    const stateChanged = (slot.desired?.state ?? "absent") !== slot.appliedState;
    const wait = stateChanged ? 0 : slot.lastWriteAt + (this.#o.progressIntervalMs ?? 5_000) - Date.now();
    if (wait <= 0) {
      void this.#write(name, slot);
      return;
    }
    slot.timer = setTimeout(() => {
      slot.timer = undefined;
      this.#schedule(name, slot);
    }, wait);
    slot.timer.unref();
  }

  async #write(name: string, slot: Slot): Promise<void> {
    slot.writing = true;
    const entry = slot.desired;
    const json = entry ? JSON.stringify(entry) : undefined;
    try {
      await this.#custom.patchClusterCustomObjectStatus(
        {
          group: MODELCACHE_GROUP,
          version: MODELCACHE_VERSION,
          plural: MODELCACHE_PLURAL,
          name,
          fieldManager: `${NODE_FIELD_MANAGER_PREFIX}${this.#o.nodeName}`,
          body: {
            apiVersion: `${MODELCACHE_GROUP}/${MODELCACHE_VERSION}`,
            kind: "ModelCache",
            metadata: { name },
            status: { nodes: entry ? [{ ...entry, updatedAt: new Date().toISOString() }] : [] },
          },
        },
        APPLY,
      );
      slot.applied = json;
      slot.appliedState = entry?.state ?? "absent";
      slot.attempt = 0;
      slot.confirmed = false;
    } catch (err) {
      if (this.#closed.signal.aborted) return;
      const status = statusOf(err);
      if (status === 404) {
        // The resource is gone, and this node's entry with it.
        slot.applied = json;
        slot.appliedState = entry?.state ?? "absent";
      } else {
        slot.attempt++;
        const delayMs = backoffDelayMs(this.#o.retry ?? DEFAULT_RETRY, slot.attempt - 1, "equal");
        this.#o.logger.warn(
          { resource: name, status, reason: reasonOf(err), attempt: slot.attempt, retryInMs: delayMs },
          `writing this node's status of ModelCache ${name} failed${status === 403 ? " (the service account needs patch on modelcaches/status: deploy/components/modelcache)" : ""}`,
        );
        slot.writing = false;
        slot.timer = setTimeout(() => {
          slot.timer = undefined;
          this.#schedule(name, slot);
        }, delayMs);
        slot.timer.unref();
        return;
      }
    } finally {
      slot.lastWriteAt = Date.now();
    }
    slot.writing = false;
    if (slot.desired === undefined && slot.applied === undefined) this.#slots.delete(name);
    this.#schedule(name, slot);
  }

  #settle(): void {
    // Every set() ends here: look over every slot only when a flush() waits on it.
    if (this.#idle.length === 0 || this.#busy()) return;
    const idle = this.#idle;
    this.#idle = [];
    for (const resolve of idle) resolve();
  }
}
