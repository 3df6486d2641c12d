/**
 * The ModelCache resources (deploy/components/modelcache) as this node's daemon sees them: a
 * list-and-watch of every ModelCache and of this node's own Node object, through client-node's
 * informer. The informer relists by itself after a `410 Gone` (its resourceVersion was compacted
 * away) and after a watch that ends cleanly; after any other failure (the connection reset, the API
 * server down, a 403) it stops, and this restarts it with backoff. Every spec is validated here again
 * (the CRD's schema is the first check; an older CRD or a hand-made object must not reach staging).
 */

import { setTimeout as sleep } from "node:timers/promises";
import {
  CoreV1Api,
  CustomObjectsApi,
  type KubeConfig,
  type KubernetesListObject,
  type KubernetesObject,
  ListWatch,
  type V1Node,
  Watch,
} from "@kubernetes/client-node";
import type { Logger } from "pino";
import { z } from "zod";
import { backoffDelayMs } from "../lib/backoff.js";
import { apiClient, reasonOf, statusOf } from "./transport.js";

export const MODELCACHE_GROUP = "coldstart.io";
export const MODELCACHE_VERSION = "v1alpha1";
export const MODELCACHE_PLURAL = "modelcaches";
const MODELCACHE_PATH = `/apis/${MODELCACHE_GROUP}/${MODELCACHE_VERSION}/${MODELCACHE_PLURAL}`;

/** The states a node's entry in status.nodes may have (the CRD's enum). */
export type EntryState = "pending" | "staging" | "verifying" | "ready" | "failed" | "evicting";

/** One node's line in a ModelCache's status.nodes. */
export interface StatusEntry {
  node: string;
  state: EntryState;
  /** The node's peer URL while it stages the model with others (the cooperative first wave). */
  peer?: string | undefined;
  bytesDone?: number | undefined;
  bytesTotal?: number | undefined;
  bytesPerSecond?: number | undefined;
  etaSeconds?: number | undefined;
  message?: string | undefined;
  updatedAt?: string | undefined;
}

const labelSelector = z
  .object({
    matchLabels: z.record(z.string(), z.string()).optional(),
    matchExpressions: z
      .array(
        z.object({
          key: z.string().min(1),
          operator: z.enum(["In", "NotIn", "Exists", "DoesNotExist"]),
          values: z.array(z.string()).optional(),
        }),
      )
      .optional(),
  })
  .strict();

const cacheIdentity = z
  .object({
    torch: z.string().max(128).optional(),
    torchCuda: z.string().max(128).optional(),
    triton: z.string().max(128).optional(),
    vllm: z.string().max(128).optional(),
    extra: z.record(z.string(), z.string().max(128)).optional(),
  })
  .strict();

const specSchema = z
  .object({
    model: z.string().min(1).max(200),
    source: z.string().min(1).max(1024),
    include: z.array(z.string().min(1).max(256)).max(64).optional(),
    exclude: z.array(z.string().min(1).max(256)).max(64).optional(),
    nodeSelector: labelSelector.optional(),
    pin: z.boolean().default(true),
    priority: z.number().int().min(-100).max(100).default(0),
    compileCaches: z.array(cacheIdentity).max(8).optional(),
  })
  .strict();

export type ModelCacheSpec = z.infer<typeof specSchema>;
export type LabelSelector = z.infer<typeof labelSelector>;

/** A ModelCache as the daemon acts on it. */
export interface ModelCache {
  name: string;
  uid: string;
  resourceVersion: string;
  /** metadata.generation: moves with every change of the spec. */
  generation: number;
  /** The validated spec, or why it is refused (the field and the value). */
  spec: ModelCacheSpec | { invalid: string };
  nodes: StatusEntry[];
  selectedNodes: number | undefined;
  readyNodes: number | undefined;
}

interface ModelCacheObject extends KubernetesObject {
  spec?: unknown;
  status?: { nodes?: StatusEntry[]; selectedNodes?: number; readyNodes?: number };
}

/** A raw object as the informer holds it, validated. */
export function toModelCache(o: ModelCacheObject): ModelCache {
  const parsed = specSchema.safeParse(o.spec ?? {});
  const spec = parsed.success
    ? parsed.data
    : {
        invalid: parsed.error.issues
          .map((i) => {
            const at = ["spec", ...i.path.map(String)].join(".");
            // An unknown field is named by its own path: the issue itself sits on the object.
            if (i.code === "unrecognized_keys")
              return i.keys.map((k) => `${at}.${k}: unknown field`).join("; ");
            return `${at}: ${i.message}`;
          })
          .join("; ")
          .slice(0, 900),
      };
  const nodes = Array.isArray(o.status?.nodes)
    ? o.status.nodes.filter((n) => typeof n?.node === "string")
    : [];
  return {
    name: o.metadata?.name ?? "",
    uid: o.metadata?.uid ?? "",
    resourceVersion: o.metadata?.resourceVersion ?? "",
    generation: o.metadata?.generation ?? 0,
    spec,
    nodes,
    selectedNodes: o.status?.selectedNodes,
    readyNodes: o.status?.readyNodes,
  };
}

/** Kubernetes label-selector semantics: every matchLabels pair and every expression must hold. */
export function selects(
  selector: LabelSelector | undefined,
  labels: Readonly<Record<string, string>>,
): boolean {
  if (!selector) return true;
  for (const [k, v] of Object.entries(selector.matchLabels ?? {})) if (labels[k] !== v) return false;
  for (const e of selector.matchExpressions ?? []) {
    const has = Object.hasOwn(labels, e.key);
    const inValues = has && (e.values ?? []).includes(labels[e.key] as string);
    const ok =
      e.operator === "In"
        ? inValues
        : e.operator === "NotIn"
          ? !inValues
          : e.operator === "Exists"
            ? has
            : !has;
    if (!ok) return false;
  }
  return true;
}

export interface ModelCacheWatchOptions {
  kubeConfig: KubeConfig;
  nodeName: string;
  logger: Logger;
  /** Something changed (a resource, its status, or this Node's labels); coalesced per tick. */
  onChange: () => void;
  /** Told each time a watch starts over from a fresh list (first start, or after 410 Gone). */
  onRelist?: (what: "modelcaches" | "node") => void;
  retry?: { baseDelayMs: number; maxDelayMs: number };
  requestTimeoutMs?: number;
}

const DEFAULT_RETRY = { baseDelayMs: 1_000, maxDelayMs: 30_000 } as const;

/** The ModelCaches and this node's labels, kept current by two informers. */
export class ModelCacheWatch {
  readonly #o: ModelCacheWatchOptions;
  readonly #closed = new AbortController();
  readonly #caches: ListWatch<ModelCacheObject>;
  readonly #node: ListWatch<V1Node>;
  readonly #listed = { modelcaches: false, node: false };
  /** The last validation of each object (by uid): the reconciler asks every second. */
  #parsed = new Map<string, ModelCache>();
  #queued = false;

  constructor(options: ModelCacheWatchOptions) {
    this.#o = options;
    const timeout = options.requestTimeoutMs ?? 30_000;
    const custom = apiClient(CustomObjectsApi, options.kubeConfig, timeout, this.#closed.signal);
    const core = apiClient(CoreV1Api, options.kubeConfig, timeout, this.#closed.signal);
    const watch = new Watch(options.kubeConfig);
    this.#caches = new ListWatch<ModelCacheObject>(
      MODELCACHE_PATH,
      watch,
      () =>
        custom.listClusterCustomObject({
          group: MODELCACHE_GROUP,
          version: MODELCACHE_VERSION,
          plural: MODELCACHE_PLURAL,
        }) as Promise<KubernetesListObject<ModelCacheObject>>,
      false,
    );
    this.#node = new ListWatch<V1Node>(
      "/api/v1/nodes",
      watch,
      () => core.listNode({ fieldSelector: `metadata.name=${options.nodeName}` }),
      false,
      undefined,
      `metadata.name=${options.nodeName}`,
    );
    this.#wire("modelcaches", this.#caches);
    this.#wire("node", this.#node);
  }

  /** Starts both informers; failures are retried in the background (see the log), never thrown. */
  start(): void {
    void this.#start("modelcaches", this.#caches, 0);
    void this.#start("node", this.#node, 0);
  }

  stop(): void {
    this.#closed.abort();
    void this.#caches.stop();
    void this.#node.stop();
  }

  /** Both lists have arrived at least once: what follows is the cluster's state, not a partial one. */
  get synced(): boolean {
    return this.#listed.modelcaches && this.#listed.node;
  }

  /** Every ModelCache, validated; an object is validated again only when its resourceVersion moves. */
  caches(): ModelCache[] {
    const seen = new Map<string, ModelCache>();
    const out = this.#caches.list().map((o) => {
      const uid = o.metadata?.uid ?? "";
      const was = this.#parsed.get(uid);
      const mc = was && was.resourceVersion === (o.metadata?.resourceVersion ?? "") ? was : toModelCache(o);
      seen.set(uid, mc);
      return mc;
    });
    this.#parsed = seen;
    return out;
  }

  /** This node's labels (undefined until its Node is listed, or when it has none). */
  nodeLabels(): Record<string, string> | undefined {
    const node = this.#node.get(this.#o.nodeName);
    return node ? (node.metadata?.labels ?? {}) : undefined;
  }

  #wire<T extends KubernetesObject>(what: "modelcaches" | "node", informer: ListWatch<T>): void {
    let attempt = 0;
    const changed = () => {
      attempt = 0;
      this.#changed();
    };
    informer.on("add", changed);
    informer.on("update", changed);
    informer.on("delete", changed);
    informer.on("connect", () => {
      // No resourceVersion to resume from: a fresh list follows (the first, or after 410 Gone).
      if (informer.latestResourceVersion() === "") {
        this.#o.logger.info({ what }, "listing (first start, or the watch's resourceVersion expired)");
        this.#o.onRelist?.(what);
      }
    });
    informer.on("error", (err: unknown) => {
      if (this.#closed.signal.aborted) return;
      attempt++;
      const delayMs = backoffDelayMs(this.#o.retry ?? DEFAULT_RETRY, attempt - 1, "equal");
      const status = statusOf(err);
      const hint =
        status === 404 && what === "modelcaches"
          ? "; is the ModelCache CRD installed (deploy/components/modelcache)?"
          : status === 403
            ? "; the service account needs list and watch on modelcaches.coldstart.io and nodes (deploy/components/modelcache)"
            : "";
      this.#o.logger.warn(
        { what, status, reason: reasonOf(err), attempt, retryInMs: delayMs },
        `watching ${what} failed; retrying${hint}`,
      );
      void this.#start(what, informer, delayMs);
    });
  }

  async #start<T extends KubernetesObject>(
    what: "modelcaches" | "node",
    informer: ListWatch<T>,
    delayMs: number,
  ): Promise<void> {
    // Ended early by stop(); a listener per retry on the long-lived signal would pile up otherwise.
    if (delayMs > 0)
      await sleep(delayMs, undefined, { signal: this.#closed.signal, ref: false }).catch(() => {});
    if (this.#closed.signal.aborted) return;
    try {
      await informer.start();
      // start() resolves once the list is in and the watch is open, or once a failed list has been
      // reported through "error" (no resourceVersion then).
      if (!this.#listed[what] && informer.latestResourceVersion() !== "") {
        this.#listed[what] = true;
        this.#changed();
      }
    } catch (err) {
      // The informer reports its own failures through "error"; this is only a failure to even begin.
      this.#o.logger.warn({ what, reason: reasonOf(err) }, "starting the watch failed");
    }
  }

  #changed(): void {
    if (this.#queued || this.#closed.signal.aborted) return;
    this.#queued = true;
    queueMicrotask(() => {
      this.#queued = false;
      if (!this.#closed.signal.aborted) this.#o.onChange();
    });
  }
}
