import { existsSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { CoreV1Api, KubeConfig, PatchStrategy, setHeaderOptions } from "@kubernetes/client-node";
import { type Logger, pino } from "pino";
import { ColdstartError } from "../errors.js";
import { backoffDelayMs } from "../lib/backoff.js";
import { apiClient, reasonOf, statusOf } from "./transport.js";

export {
  GDS_LABEL,
  GPU_PRODUCT_LABEL,
  LABEL_PREFIX,
  MODEL_HASH_HEX_CHARS,
  MODEL_LABEL_PREFIX,
  MODELS_ANNOTATION,
  modelHash,
  modelLabelKey,
  READY_VALUE,
} from "./label-keys.js";

import { LABEL_PREFIX, MODEL_LABEL_PREFIX, MODELS_ANNOTATION, modelHash, READY_VALUE } from "./label-keys.js";

/** Standard in-pod location of the service account token and cluster CA. */
export const SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount";

export interface NodeLabelerOptions {
  /** Name of the Node this daemon runs on (the downward API's `spec.nodeName`). */
  nodeName: string;
  /** Where and how to reach the API server; see {@link loadKubeConfig}. */
  kubeConfig: KubeConfig;
  /** Parent logger; the labeler logs through a child with `component: "node-labels"`. Default: silent. */
  logger?: Logger;
  /** Backoff between failed attempts: doubles from `baseDelayMs` up to `maxDelayMs`, with jitter. Default 1 s, 60 s. */
  retry?: { baseDelayMs: number; maxDelayMs: number };
  /** Deadline for one request to the API server, after which it is abandoned and retried. Default 30 s. */
  requestTimeoutMs?: number;
  /**
   * Waits out one backoff; must reject when `signal` aborts (close). Default: a timer that does not
   * hold the process open. Tests pass their own to hold a backoff open or to skip it.
   */
  sleep?: (ms: number, signal: AbortSignal) => Promise<unknown>;
}

const DEFAULT_RETRY = { baseDelayMs: 1_000, maxDelayMs: 60_000 } as const;
const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;

interface Waiter {
  version: number;
  resolve: () => void;
  reject: (err: Error) => void;
}

/**
 * Keeps this node's `coldstart.io/model.<hash>=ready` labels (and the `coldstart.io/models`
 * annotation) equal to the set of models the daemon holds ready.
 *
 * Each sync GETs the Node and sends one JSON merge patch (RFC 7386) that sets missing desired labels
 * to `ready`, sets every other `coldstart.io/model.*` label the Node carries to null, and rewrites the
 * annotation; when the Node is already in step it sends nothing. Reading the Node each time, rather
 * than remembering what was last applied, makes the sync self-healing: a restarted daemon, an older
 * version's leftovers, a label someone deleted by hand or a Node object re-registered without its
 * labels all converge on the next sync. Syncs are rare (a model became ready or was evicted), so the
 * extra GET costs nothing that matters. The patch carries no resourceVersion: it names only keys this
 * daemon owns, and a merge patch leaves every other key alone, so there is nothing to conflict with.
 */
export class NodeLabeler {
  readonly #nodeName: string;
  readonly #api: CoreV1Api;
  readonly #log: Logger;
  readonly #retry: { baseDelayMs: number; maxDelayMs: number };
  readonly #sleep: (ms: number, signal: AbortSignal) => Promise<unknown>;
  readonly #closed = new AbortController();
  /** hash → model id, sorted by hash so the annotation's JSON is stable. */
  #desired: ReadonlyMap<string, string> = new Map();
  #facts: Readonly<Record<string, string | null>> = {};
  /** set() has been called: until then the model labels on the Node are left as they are. */
  #modelsKnown = false;
  #desiredVersion = 0;
  #appliedVersion = 0;
  #running = false;
  #waiters: Waiter[] = [];

  constructor(options: NodeLabelerOptions) {
    this.#nodeName = options.nodeName;
    this.#log = (options.logger ?? pino({ enabled: false })).child({
      component: "node-labels",
      node: options.nodeName,
    });
    this.#retry = options.retry ?? DEFAULT_RETRY;
    this.#sleep = options.sleep ?? ((ms, signal) => sleep(ms, undefined, { signal, ref: false }));
    this.#api = apiClient(
      CoreV1Api,
      options.kubeConfig,
      options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS,
      this.#closed.signal,
      "coldstart-node-labels",
    );
  }

  /**
   * Desired state: exactly these model ids labelled `coldstart.io/model.<hash>=ready`. Coalesces calls
   * (latest wins), serialises patches, retries failures with backoff until a newer desired state
   * supersedes; never throws to the caller.
   */
  set(readyModelIds: readonly string[]): void {
    if (this.#closed.signal.aborted) {
      this.#log.debug("set() after close ignored");
      return;
    }
    const byHash = [...new Set(readyModelIds)].map((id) => [modelHash(id), id] as const);
    byHash.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    this.#desired = new Map(byHash);
    this.#modelsKnown = true;
    this.#kick();
  }

  /**
   * Desired node-fact labels, e.g. `coldstart.io/gds=enabled`; a null value removes the label. Keys
   * must carry the `coldstart.io/` prefix and must not be model labels. Same coalescing as set().
   */
  setFacts(labels: Readonly<Record<string, string | null>>): void {
    if (this.#closed.signal.aborted) return;
    for (const key of Object.keys(labels)) {
      if (!key.startsWith(LABEL_PREFIX) || key.startsWith(MODEL_LABEL_PREFIX)) {
        throw new ColdstartError("CS_INTERNAL", `not a node-fact label key: ${key}`);
      }
    }
    const same =
      Object.keys(labels).length === Object.keys(this.#facts).length &&
      Object.entries(labels).every(([k, v]) => this.#facts[k] === v);
    if (same) return;
    this.#facts = { ...labels };
    this.#kick();
  }

  #kick(): void {
    this.#desiredVersion++;
    if (!this.#running) {
      this.#running = true;
      // Start on a microtask so that a burst of synchronous set() calls costs one sync.
      queueMicrotask(() => {
        this.#run().catch((err: unknown) => this.#log.error({ err }, "node label loop failed"));
      });
    }
  }

  /** Resolves when the latest desired state has been applied (or rejects after close). For tests and shutdown. */
  flush(): Promise<void> {
    if (this.#closed.signal.aborted) return Promise.reject(closedError());
    if (this.#appliedVersion >= this.#desiredVersion) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.#waiters.push({ version: this.#desiredVersion, resolve, reject });
    });
  }

  /** Stops syncing: aborts an in-flight request and a pending retry, and rejects pending flush() calls. */
  close(): void {
    if (this.#closed.signal.aborted) return;
    this.#closed.abort();
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w.reject(closedError());
  }

  async #run(): Promise<void> {
    let attempt = 0;
    try {
      while (!this.#closed.signal.aborted && this.#appliedVersion < this.#desiredVersion) {
        try {
          this.#appliedVersion = await this.#syncOnce();
          attempt = 0;
          this.#settle();
        } catch (err) {
          if (this.#closed.signal.aborted) return;
          attempt++;
          const delayMs = backoffDelayMs(this.#retry, attempt - 1, "equal");
          this.#logFailure(err, attempt, delayMs);
          try {
            // A set() during this wait does not cut it short: the retry applies the newest state.
            await this.#sleep(delayMs, this.#closed.signal);
          } catch {
            return;
          }
        }
      }
    } finally {
      this.#running = false;
    }
  }

  /** One GET and at most one PATCH; returns the desired-state version it applied. */
  async #syncOnce(): Promise<number> {
    const node = await this.#api.readNode({ name: this.#nodeName });
    // Read the desired state after the GET, so that a set() during it is not applied one round late.
    const version = this.#desiredVersion;
    const desired = this.#desired;
    const patch = planPatch(
      node.metadata?.labels ?? {},
      node.metadata?.annotations ?? {},
      this.#modelsKnown ? desired : undefined,
      this.#facts,
    );
    if (patch === undefined) {
      this.#log.debug({ models: desired.size }, "node labels already in step");
      return version;
    }
    await this.#api.patchNode(
      { name: this.#nodeName, body: patch.body },
      setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
    );
    this.#log.info(
      { models: desired.size, added: patch.added, removed: patch.removed },
      "node labels updated",
    );
    return version;
  }

  #settle(): void {
    const done = this.#waiters.filter((w) => w.version <= this.#appliedVersion);
    this.#waiters = this.#waiters.filter((w) => w.version > this.#appliedVersion);
    for (const w of done) w.resolve();
  }

  #logFailure(err: unknown, attempt: number, retryInMs: number): void {
    const status = statusOf(err);
    const reason = reasonOf(err);
    const hint =
      status === 403 || status === 401
        ? "; the service account needs get and patch on nodes, for its own node only (docs/node-labels.md)"
        : "";
    this.#log.warn(
      { status, reason, attempt, retryInMs },
      `updating labels of node ${this.#nodeName} failed (${status ?? "no response"}: ${reason})${hint}`,
    );
  }
}

interface PlannedPatch {
  body: { metadata: { labels?: Record<string, string | null>; annotations?: Record<string, string | null> } };
  added: number;
  removed: number;
}

/** The merge patch that brings the Node's model labels and annotation to `desired`, or undefined if none is needed. */
function planPatch(
  labels: Readonly<Record<string, string>>,
  annotations: Readonly<Record<string, string>>,
  /** The ready models; undefined: not known yet, leave model labels and the annotation alone. */
  desired: ReadonlyMap<string, string> | undefined,
  facts: Readonly<Record<string, string | null>>,
): PlannedPatch | undefined {
  const labelPatch: Record<string, string | null> = {};
  let added = 0;
  let removed = 0;
  for (const [key, value] of Object.entries(facts)) {
    if ((labels[key] ?? null) === value) continue;
    labelPatch[key] = value;
    if (value === null) removed++;
    else added++;
  }
  for (const hash of desired?.keys() ?? []) {
    const key = `${MODEL_LABEL_PREFIX}${hash}`;
    if (labels[key] !== READY_VALUE) {
      labelPatch[key] = READY_VALUE;
      added++;
    }
  }
  for (const key of Object.keys(labels)) {
    if (desired && key.startsWith(MODEL_LABEL_PREFIX) && !desired.has(key.slice(MODEL_LABEL_PREFIX.length))) {
      labelPatch[key] = null;
      removed++;
    }
  }
  const annotation = !desired?.size ? null : JSON.stringify(Object.fromEntries(desired));
  const annotationChanged = desired !== undefined && (annotations[MODELS_ANNOTATION] ?? null) !== annotation;
  if (added === 0 && removed === 0 && !annotationChanged) return undefined;
  const metadata: PlannedPatch["body"]["metadata"] = {};
  if (added + removed > 0) metadata.labels = labelPatch;
  if (annotationChanged) metadata.annotations = { [MODELS_ANNOTATION]: annotation };
  return { body: { metadata }, added, removed };
}

function closedError(): ColdstartError {
  return new ColdstartError("CS_ABORTED", "the node labeler was closed before the labels were applied");
}

/**
 * KubeConfig for the daemon, or undefined when there is none (node labels are then disabled).
 *
 * An explicit `kubeconfigPath` wins, as in client-go. Otherwise, inside a pod (KUBERNETES_SERVICE_HOST
 * and KUBERNETES_SERVICE_PORT set, and a service account token and CA mounted under
 * `serviceAccountDir`), the in-cluster config: https to that host and port, the CA file, and the
 * token file, which client-node re-reads every minute so that rotated projected tokens are picked up.
 * The environment is a parameter so that only src/config/ reads process.env.
 */
export function loadKubeConfig(
  env: Readonly<Record<string, string | undefined>>,
  kubeconfigPath?: string,
  serviceAccountDir: string = SERVICE_ACCOUNT_DIR,
): KubeConfig | undefined {
  const kc = new KubeConfig();
  if (kubeconfigPath !== undefined && kubeconfigPath !== "") {
    try {
      kc.loadFromFile(kubeconfigPath);
    } catch (err) {
      throw new ColdstartError("CS_CONFIG_INVALID", `kubeconfig ${kubeconfigPath} cannot be loaded`, {
        cause: err,
        details: { field: "kubeconfig", value: kubeconfigPath },
      });
    }
    if (!kc.getCurrentCluster()) {
      throw new ColdstartError("CS_CONFIG_INVALID", `kubeconfig ${kubeconfigPath} names no current cluster`, {
        details: { field: "kubeconfig", value: kubeconfigPath },
      });
    }
    return kc;
  }
  const host = env.KUBERNETES_SERVICE_HOST;
  const port = env.KUBERNETES_SERVICE_PORT;
  const tokenFile = join(serviceAccountDir, "token");
  const caFile = join(serviceAccountDir, "ca.crt");
  if (!host || !port || !existsSync(tokenFile) || !existsSync(caFile)) return undefined;
  const serverHost = host.includes(":") ? `[${host}]` : host;
  kc.loadFromClusterAndUser(
    { name: "in-cluster", server: `https://${serverHost}:${port}`, caFile, skipTLSVerify: false },
    { name: "in-cluster", authProvider: { name: "tokenFile", config: { tokenFile } } },
  );
  return kc;
}
