import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";

/** Values of `operation` on the S3 metrics. */
export const S3_OPERATIONS = ["list", "head", "get", "attributes"] as const;
export type S3Operation = (typeof S3_OPERATIONS)[number];

export { RETRY_REASONS, type RetryReason, retryReason } from "./retry-reason.js";

/** Values of `stage` on `coldstart_stage_duration_seconds`. */
export const STAGES = ["list", "download", "verify", "commit"] as const;
export type Stage = (typeof STAGES)[number];

/** Values of `state` on `coldstart_models`. */
export const MODEL_STATES = ["pending", "staging", "verifying", "ready", "failed", "evicting"] as const;
export type ModelState = (typeof MODEL_STATES)[number];

/** Values of `reason` on `coldstart_evictions_total`. */
export const EVICTION_REASONS = ["watermark", "budget", "api"] as const;
export type EvictionReason = (typeof EVICTION_REASONS)[number];

/** Values of `outcome` on `coldstart_handshake_waits_total`. */
export const HANDSHAKE_OUTCOMES = ["ready", "failed", "timeout", "not_found"] as const;
export type HandshakeOutcome = (typeof HANDSHAKE_OUTCOMES)[number];

/** Values of `outcome` on `coldstart_compile_cache_restores_total` (src/compile-cache). */
export const COMPILE_CACHE_RESTORE_OUTCOMES = ["hit", "local", "miss", "timeout", "error"] as const;
/** Values of `outcome` on `coldstart_compile_cache_publishes_total`. */
export const COMPILE_CACHE_PUBLISH_OUTCOMES = [
  "published",
  "exists",
  "empty",
  "changed",
  "too_large",
  "failed",
] as const;

/** Values of `reason` on `coldstart_peer_fallbacks_total` (src/peers). */
export const PEER_FALLBACK_REASONS = [
  "unreachable",
  "corrupt",
  "unaligned",
  "large",
  "not_held",
  "pending",
  "owner_timeout",
] as const;

/** Buckets for stage durations: 10 ms (a commit rename) up to 1 h (a large model over a slow link). */
export const STAGE_DURATION_BUCKETS: readonly number[] = [
  0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600,
];

/** Buckets for handshake long-polls: an already-local model answers at once, a cold one waits minutes. */
export const HANDSHAKE_WAIT_BUCKETS: readonly number[] = [
  0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600,
];

/** Values of `gate` on `coldstart_gate_wait_seconds`: the wait handshake, a CSI publish. */
const GATES = ["handshake", "csi"] as const;

/** One model being staged now, as the per-model staging gauges show it. */
export interface ModelStagingProgress {
  /** The model id: bounded by the models the node holds. */
  model: string;
  /** Bytes of the model not in place yet. */
  remainingBytes: number;
  /** Seconds to go at the current rate; null while unknown (no bytes arrived yet). */
  etaSeconds: number | null;
}

export interface MetricsOptions {
  /** Also register prom-client's process_* and nodejs_* metrics into the registry. Default true. */
  defaultMetrics?: boolean;
}

/**
 * Every coldstart metric, defined once and registered into one registry (a fresh one unless given).
 * Nothing here touches prom-client's global registry, so several instances can live in one process.
 * Names and labels are documented in docs/metrics.md; a test keeps the two in step.
 */
export class Metrics {
  readonly registry: Registry;

  /** coldstart_download_bytes_total{source}: object bytes received from S3; `source` is the bucket name. */
  readonly downloadBytes: Counter<"source">;
  /** coldstart_s3_requests_total{operation,status}: completed S3 requests; status is the HTTP code or "error". */
  readonly s3Requests: Counter<"operation" | "status">;
  /** coldstart_s3_retries_total{operation,reason}: attempts that failed and were retried. */
  readonly s3Retries: Counter<"operation" | "reason">;
  /** coldstart_s3_requests_in_flight: S3 requests started and not yet finished. */
  readonly s3InFlight: Gauge;
  /** coldstart_stage_duration_seconds{stage}: wall time of each phase of staging one model. */
  readonly stageDuration: Histogram<"stage">;
  /** coldstart_models{state}: models known to the daemon, by state. */
  readonly models: Gauge<"state">;
  /** coldstart_models_waiting_for_space: models whose staging waits for room (pinned or in-use models hold it). */
  readonly modelsWaitingForSpace: Gauge;
  /** coldstart_staging_root_used_bytes: bytes of staged models under the staging root. */
  readonly rootUsedBytes: Gauge;
  /** coldstart_staging_root_free_bytes: free bytes on the staging root's file system (statfs). */
  readonly rootFreeBytes: Gauge;
  /** coldstart_evictions_total{reason}: models evicted. */
  readonly evictions: Counter<"reason">;
  /** coldstart_evicted_bytes_total: bytes freed by evictions. */
  readonly evictedBytes: Counter;
  /** coldstart_handshake_waits_total{outcome}: finished pod handshake long-polls, by outcome. */
  readonly handshakeWaits: Counter<"outcome">;
  /** coldstart_handshake_wait_duration_seconds: how long a handshake that ended ready waited for its model. */
  readonly handshakeWaitDuration: Histogram;
  /** coldstart_gate_wait_seconds{gate}: how long pods waited at the gate (handshake, csi) for their model. */
  readonly gateWait: Histogram<"gate">;
  /** coldstart_gate_waiters: long-polls (handshakes, CSI publishes) waiting for a model now. */
  readonly gateWaiters: Gauge;
  /** coldstart_model_remaining_bytes{model}: bytes each model staging now still needs. */
  readonly modelRemainingBytes: Gauge<"model">;
  /** coldstart_model_eta_seconds{model}: seconds to go for each model staging now, once known. */
  readonly modelEtaSeconds: Gauge<"model">;
  /** coldstart_build_info{version,node_version}: 1, labelled with the running build. */
  readonly buildInfo: Gauge<"version" | "node_version">;
  /** coldstart_http_requests_total{route,method,status}: API requests; `route` is the route pattern. */
  readonly httpRequests: Counter<"route" | "method" | "status">;
  /** coldstart_gds_info{verdict,mode,load_format}: 1 for the node's current GDS verdict. */
  readonly gdsInfo: Gauge<"verdict" | "mode" | "load_format">;
  /** coldstart_gds_reasons{code}: 1 per reason the verdict is not "enabled". */
  readonly gdsReasons: Gauge<"code">;
  /** coldstart_placement_info{placement,fstype,device}: 1 for where the staging root lives. */
  readonly placementInfo: Gauge<"placement" | "fstype" | "device">;
  /** coldstart_placement_warnings{code}: 1 per placement warning (staging_on_root_volume, instance_store_unused, ...). */
  readonly placementWarnings: Gauge<"code">;
  /**
   * coldstart_policy_refused{code,field,value}: 1 while the node breaks gds.mode on or
   * placement.require and the daemon (daemon.onRefusal serve) stages nothing.
   */
  readonly policyRefused: Gauge<"code" | "field" | "value">;
  /** coldstart_gpu_info{index,uuid,name,compute_capability,driver_version}: 1 per GPU. */
  readonly gpuInfo: Gauge<"index" | "uuid" | "name" | "compute_capability" | "driver_version">;
  /** coldstart_native_addon_available: 1 when the native probes can run. */
  readonly nativeAvailable: Gauge;

  /** coldstart_compile_cache_restores_total{outcome}: compile-cache restores asked by pods. */
  readonly compileCacheRestores: Counter<"outcome">;
  /** coldstart_compile_cache_restore_bytes_total: unpacked bytes restored from the remote. */
  readonly compileCacheRestoreBytes: Counter;
  /** coldstart_compile_cache_restore_duration_seconds{outcome}: how long restores held the pod. */
  readonly compileCacheRestoreDuration: Histogram<"outcome">;
  /** coldstart_compile_cache_publishes_total{outcome}: publish attempts. */
  readonly compileCachePublishes: Counter<"outcome">;
  /** coldstart_compile_cache_publish_bytes_total: packed bytes uploaded by successful publishes. */
  readonly compileCachePublishBytes: Counter;
  /** coldstart_compile_cache_publish_duration_seconds{outcome}: wall time of publishes. */
  readonly compileCachePublishDuration: Histogram<"outcome">;
  /** coldstart_compile_cache_silent_misses_total: restored keys whose engine compiled again. */
  readonly compileCacheSilentMisses: Counter;
  /** coldstart_compile_cache_evictions_total{reason}: local keyed directories removed. */
  readonly compileCacheEvictions: Counter<"reason">;
  /** coldstart_compile_cache_local_bytes: bytes of keyed directories under the staging root. */
  readonly compileCacheLocalBytes: Gauge;

  /** coldstart_peer_bytes_total{direction}: verified model bytes received from (in) or served to (out) peers. */
  readonly peerBytes: Counter<"direction">;
  /** coldstart_peer_fallbacks_total{reason}: pieces a peer held that came from S3 after all. */
  readonly peerFallbacks: Counter<"reason">;

  /** coldstart_mirror_requests_total{kind,outcome}: OCI mirror pulls (local, peer, miss, corrupt, unsafe). */
  readonly mirrorRequests: Counter<"kind" | "outcome">;
  /** coldstart_mirror_bytes_total{source}: image bytes the mirror served, from the local store or a peer. */
  readonly mirrorBytes: Counter<"source">;
  /** coldstart_mirror_digest_mismatches_total{source}: blobs whose bytes were not their digest (local, peer). */
  readonly mirrorDigestMismatches: Counter<"source">;
  readonly mirrorTagResolutions: Counter<"outcome">;

  /** coldstart_mirror_config_problems{code}: 1 per containerd setting that bypasses the mirror. */
  readonly mirrorConfigProblems: Gauge<"code">;

  /** coldstart_csi_publishes_total{outcome}: NodePublishVolume answers (ok, not_ready, failed, denied, invalid, error). */
  readonly csiPublishes: Counter<"outcome">;
  /** coldstart_csi_publish_duration_seconds{outcome}: how long each NodePublishVolume call was held. */
  readonly csiPublishDuration: Histogram<"outcome">;
  /** coldstart_csi_volumes: CSI volumes published on this node now. */
  readonly csiVolumes: Gauge;

  /** coldstart_page_cache_warms_total{outcome}: page-cache warms before a gate opened. */
  readonly pageCacheWarms: Counter<"outcome">;
  /** coldstart_page_cache_warm_bytes_total: model bytes read into the page cache by warms. */
  readonly pageCacheWarmBytes: Counter;
  /** coldstart_page_cache_warm_duration_seconds: how long each warm that read anything took. */
  readonly pageCacheWarmDuration: Histogram;

  /** What the per-model staging gauges read at each scrape; none until the daemon sets it. */
  #staging: () => Iterable<ModelStagingProgress> = () => [];

  constructor(registry?: Registry, options: MetricsOptions = {}) {
    const { defaultMetrics = true } = options;
    this.registry = registry ?? new Registry();
    const registers = [this.registry];

    if (defaultMetrics) collectDefaultMetrics({ register: this.registry });

    this.downloadBytes = new Counter({
      name: "coldstart_download_bytes_total",
      help: "Object bytes received from S3, by bucket.",
      labelNames: ["source"] as const,
      registers,
    });
    this.s3Requests = new Counter({
      name: "coldstart_s3_requests_total",
      help: "Completed S3 requests by operation (list, head, get, attributes) and HTTP status or 'error'.",
      labelNames: ["operation", "status"] as const,
      registers,
    });
    this.s3Retries = new Counter({
      name: "coldstart_s3_retries_total",
      help: "S3 attempts that failed and were retried, by operation and reason.",
      labelNames: ["operation", "reason"] as const,
      registers,
    });
    this.s3InFlight = new Gauge({
      name: "coldstart_s3_requests_in_flight",
      help: "S3 requests started and not yet finished.",
      registers,
    });
    this.stageDuration = new Histogram({
      name: "coldstart_stage_duration_seconds",
      help: "Wall time of each staging phase (list, download, verify, commit) for one model.",
      labelNames: ["stage"] as const,
      buckets: [...STAGE_DURATION_BUCKETS],
      registers,
    });
    this.models = new Gauge({
      name: "coldstart_models",
      help: "Models known to the daemon, by state.",
      labelNames: ["state"] as const,
      registers,
    });
    this.modelsWaitingForSpace = new Gauge({
      name: "coldstart_models_waiting_for_space",
      help: "Models whose staging waits for room that pinned models or models in use hold now.",
      registers,
    });
    this.rootUsedBytes = new Gauge({
      name: "coldstart_staging_root_used_bytes",
      help: "Bytes of staged models under the staging root.",
      registers,
    });
    this.rootFreeBytes = new Gauge({
      name: "coldstart_staging_root_free_bytes",
      help: "Free bytes on the staging root's file system (statfs, available to unprivileged users).",
      registers,
    });
    this.evictions = new Counter({
      name: "coldstart_evictions_total",
      help: "Models evicted from the staging root, by reason (watermark, budget, api).",
      labelNames: ["reason"] as const,
      registers,
    });
    this.evictedBytes = new Counter({
      name: "coldstart_evicted_bytes_total",
      help: "Bytes freed by evicting models.",
      registers,
    });
    this.handshakeWaits = new Counter({
      name: "coldstart_handshake_waits_total",
      help: "Finished pod handshake waits, by outcome (ready, failed, timeout, not_found).",
      labelNames: ["outcome"] as const,
      registers,
    });
    this.handshakeWaitDuration = new Histogram({
      name: "coldstart_handshake_wait_duration_seconds",
      help: 'How long each wait handshake that ended ready waited for its model (the same as coldstart_gate_wait_seconds{gate="handshake"}).',
      buckets: [...HANDSHAKE_WAIT_BUCKETS],
      registers,
    });
    this.gateWait = new Histogram({
      name: "coldstart_gate_wait_seconds",
      help: "How long pods waited at the gate for their model, from the first wait that found it not ready to its hand-over, by gate (handshake, csi).",
      labelNames: ["gate"] as const,
      buckets: [...HANDSHAKE_WAIT_BUCKETS],
      registers,
    });
    this.gateWaiters = new Gauge({
      name: "coldstart_gate_waiters",
      help: "Long-polls (wait handshakes, CSI publishes) waiting for a model to be ready now: pods held at the gate.",
      registers,
    });
    // Read at each scrape from what the jobs report, so a model leaves these gauges as its staging ends.
    const staging = () => this.#staging();
    this.modelRemainingBytes = new Gauge({
      name: "coldstart_model_remaining_bytes",
      help: "Bytes each model being staged now still needs (label: the model id); no series once it is not staging.",
      labelNames: ["model"] as const,
      registers,
      collect() {
        this.reset();
        for (const p of staging()) this.set({ model: p.model }, p.remainingBytes);
      },
    });
    this.modelEtaSeconds = new Gauge({
      name: "coldstart_model_eta_seconds",
      help: "Seconds until each model being staged now is in place at its current rate (label: the model id); no series while unknown or once it is not staging.",
      labelNames: ["model"] as const,
      registers,
      collect() {
        this.reset();
        for (const p of staging()) if (p.etaSeconds !== null) this.set({ model: p.model }, p.etaSeconds);
      },
    });
    this.buildInfo = new Gauge({
      name: "coldstart_build_info",
      help: "1, labelled with the coldstart version and the Node.js version that runs it.",
      labelNames: ["version", "node_version"] as const,
      registers,
    });
    this.httpRequests = new Counter({
      name: "coldstart_http_requests_total",
      help: "Control API requests by route pattern, method and HTTP status.",
      labelNames: ["route", "method", "status"] as const,
      registers,
    });

    this.gdsInfo = new Gauge({
      name: "coldstart_gds_info",
      help: "1 for the node's GPUDirect Storage verdict (enabled, compat, unavailable) and the vLLM load format it implies.",
      labelNames: ["verdict", "mode", "load_format"] as const,
      registers,
    });
    this.gdsReasons = new Gauge({
      name: "coldstart_gds_reasons",
      help: "1 per reason code the GDS verdict is not enabled (docs/node-facts.md).",
      labelNames: ["code"] as const,
      registers,
    });
    this.placementInfo = new Gauge({
      name: "coldstart_placement_info",
      help: "1 for where the staging root lives: placement, filesystem type and block device.",
      labelNames: ["placement", "fstype", "device"] as const,
      registers,
    });
    this.placementWarnings = new Gauge({
      name: "coldstart_placement_warnings",
      help: "1 per placement warning code for the staging root, e.g. instance_store_unused: on the root volume of a node with instance storage (docs/node-facts.md).",
      labelNames: ["code"] as const,
      registers,
    });
    this.policyRefused = new Gauge({
      name: "coldstart_policy_refused",
      help: "1 while the daemon refuses to stage because the node breaks a policy: code CS_PLACEMENT_REFUSED (field placement.require, value the staging root's placement) or CS_GDS_UNAVAILABLE (field gds.mode); the reason is on /readyz (docs/node-facts.md).",
      labelNames: ["code", "field", "value"] as const,
      registers,
    });
    this.gpuInfo = new Gauge({
      name: "coldstart_gpu_info",
      help: "1 per GPU the node has, keyed by UUID.",
      labelNames: ["index", "uuid", "name", "compute_capability", "driver_version"] as const,
      registers,
    });
    this.nativeAvailable = new Gauge({
      name: "coldstart_native_addon_available",
      help: "1 when the native addon loads and its probes run; 0 when GPU and GDS facts are degraded.",
      registers,
    });

    this.compileCacheRestores = new Counter({
      name: "coldstart_compile_cache_restores_total",
      help: "Compile-cache restores asked by pods, by outcome (hit, local, miss, timeout, error).",
      labelNames: ["outcome"] as const,
      registers,
    });
    this.compileCacheRestoreBytes = new Counter({
      name: "coldstart_compile_cache_restore_bytes_total",
      help: "Unpacked bytes of compile caches restored from the remote store.",
      registers,
    });
    this.compileCacheRestoreDuration = new Histogram({
      name: "coldstart_compile_cache_restore_duration_seconds",
      help: "How long each compile-cache restore took (and held the pod), by outcome.",
      labelNames: ["outcome"] as const,
      buckets: [...STAGE_DURATION_BUCKETS],
      registers,
    });
    this.compileCachePublishes = new Counter({
      name: "coldstart_compile_cache_publishes_total",
      help: "Compile-cache publish attempts, by outcome (published, exists, empty, changed, too_large, failed).",
      labelNames: ["outcome"] as const,
      registers,
    });
    this.compileCachePublishBytes = new Counter({
      name: "coldstart_compile_cache_publish_bytes_total",
      help: "Packed bytes uploaded by successful compile-cache publishes.",
      registers,
    });
    this.compileCachePublishDuration = new Histogram({
      name: "coldstart_compile_cache_publish_duration_seconds",
      help: "Wall time of compile-cache publishes, by outcome.",
      labelNames: ["outcome"] as const,
      buckets: [...STAGE_DURATION_BUCKETS],
      registers,
    });
    this.compileCacheSilentMisses = new Counter({
      name: "coldstart_compile_cache_silent_misses_total",
      help: "Restored compile caches whose directory then grew with new artifacts: the engine missed its own cache.",
      registers,
    });
    this.compileCacheEvictions = new Counter({
      name: "coldstart_compile_cache_evictions_total",
      help: "Local compile-cache directories removed, by reason (watermark, api).",
      labelNames: ["reason"] as const,
      registers,
    });
    this.compileCacheLocalBytes = new Gauge({
      name: "coldstart_compile_cache_local_bytes",
      help: "Bytes of keyed compile-cache directories under the staging root.",
      registers,
    });

    this.peerBytes = new Counter({
      name: "coldstart_peer_bytes_total",
      help: "Model bytes received from peers (in, verified) or served to them (out).",
      labelNames: ["direction"] as const,
      registers,
    });
    this.peerFallbacks = new Counter({
      name: "coldstart_peer_fallbacks_total",
      help: "Pieces a peer held that were fetched from S3 after all, by reason (unreachable, corrupt, unaligned, large, not_held).",
      labelNames: ["reason"] as const,
      registers,
    });

    this.mirrorRequests = new Counter({
      name: "coldstart_mirror_requests_total",
      help: "OCI mirror requests by kind (manifest, blob) and outcome (local, peer, miss, corrupt, unsafe).",
      labelNames: ["kind", "outcome"] as const,
      registers,
    });
    this.mirrorBytes = new Counter({
      name: "coldstart_mirror_bytes_total",
      help: "Image bytes the OCI mirror served to containerd, by source (local, peer).",
      labelNames: ["source"] as const,
      registers,
    });
    this.mirrorDigestMismatches = new Counter({
      name: "coldstart_mirror_digest_mismatches_total",
      help: "Blobs the OCI mirror found not to be their digest, by whose store held them (local, peer).",
      labelNames: ["source"] as const,
      registers,
    });
    this.mirrorTagResolutions = new Counter({
      name: "coldstart_mirror_tag_resolutions_total",
      help: "Tags the OCI mirror resolved (mirror.resolveTags), by whose containerd answered (local, peer) or miss.",
      labelNames: ["outcome"] as const,
      registers,
    });

    this.mirrorConfigProblems = new Gauge({
      name: "coldstart_mirror_config_problems",
      help: "1 per containerd setting that makes containerd bypass the OCI mirror (docs/peers.md), 0 otherwise.",
      labelNames: ["code"] as const,
      registers,
    });

    this.csiPublishes = new Counter({
      name: "coldstart_csi_publishes_total",
      help: "NodePublishVolume answers by outcome: ok, not_ready (still staging: retried), failed (staging failed), denied (csi.allow), invalid (request or attributes), error.",
      labelNames: ["outcome"] as const,
      registers,
    });
    this.csiPublishDuration = new Histogram({
      name: "coldstart_csi_publish_duration_seconds",
      help: "How long each NodePublishVolume call was held (staging, mounting) before its answer, by outcome.",
      labelNames: ["outcome"] as const,
      buckets: [...HANDSHAKE_WAIT_BUCKETS],
      registers,
    });
    this.csiVolumes = new Gauge({
      name: "coldstart_csi_volumes",
      help: "CSI volumes published (mounted into pods) on this node now.",
      registers,
    });

    this.pageCacheWarms = new Counter({
      name: "coldstart_page_cache_warms_total",
      help: "Page-cache warms before a gate opened (wait handshake, CSI publish), by outcome: warmed, partial (memory bound or a read failed), skipped_bypass (the loader bypasses the page cache), skipped_memory, off.",
      labelNames: ["outcome"] as const,
      registers,
    });
    this.pageCacheWarmBytes = new Counter({
      name: "coldstart_page_cache_warm_bytes_total",
      help: "Model bytes read into the page cache before a gate opened.",
      registers,
    });
    this.pageCacheWarmDuration = new Histogram({
      name: "coldstart_page_cache_warm_duration_seconds",
      help: "How long each page-cache warm that read anything held the gate.",
      buckets: [...HANDSHAKE_WAIT_BUCKETS],
      registers,
    });

    // Export every value of the small closed label sets from the start, so that rate() and absent-vs-zero
    // alerts work before the first event (a series that appears late loses its first increase).
    for (const state of MODEL_STATES) this.models.set({ state }, 0);
    for (const reason of EVICTION_REASONS) this.evictions.inc({ reason }, 0);
    for (const outcome of HANDSHAKE_OUTCOMES) this.handshakeWaits.inc({ outcome }, 0);
    for (const outcome of COMPILE_CACHE_RESTORE_OUTCOMES) this.compileCacheRestores.inc({ outcome }, 0);
    for (const outcome of COMPILE_CACHE_PUBLISH_OUTCOMES) this.compileCachePublishes.inc({ outcome }, 0);
    for (const reason of ["watermark", "api"]) this.compileCacheEvictions.inc({ reason }, 0);
    for (const direction of ["in", "out"]) this.peerBytes.inc({ direction }, 0);
    for (const kind of ["manifest", "blob"])
      for (const outcome of ["local", "peer", "miss", "corrupt", "unsafe"])
        this.mirrorRequests.inc({ kind, outcome }, 0);
    for (const source of ["local", "peer"]) this.mirrorDigestMismatches.inc({ source }, 0);
    for (const reason of PEER_FALLBACK_REASONS) this.peerFallbacks.inc({ reason }, 0);
    for (const outcome of ["local", "peer", "miss"]) this.mirrorTagResolutions.inc({ outcome }, 0);
    for (const outcome of CSI_PUBLISH_OUTCOMES) this.csiPublishes.inc({ outcome }, 0);
    for (const outcome of PAGE_CACHE_WARM_OUTCOMES) this.pageCacheWarms.inc({ outcome }, 0);
    for (const gate of GATES) this.gateWait.zero({ gate });
  }

  /**
   * Where coldstart_model_remaining_bytes and coldstart_model_eta_seconds read from, at each scrape:
   * the models being staged now (the daemon's model manager).
   */
  stagingFrom(source: () => Iterable<ModelStagingProgress>): void {
    this.#staging = source;
  }
}

/** How a NodePublishVolume call ended (coldstart_csi_publishes_total{outcome}). */
export const CSI_PUBLISH_OUTCOMES = ["ok", "not_ready", "failed", "denied", "invalid", "error"] as const;
export type CsiPublishOutcome = (typeof CSI_PUBLISH_OUTCOMES)[number];

/** How a page-cache warm ended (coldstart_page_cache_warms_total{outcome}). */
export const PAGE_CACHE_WARM_OUTCOMES = [
  "warmed",
  "partial",
  "skipped_bypass",
  "skipped_memory",
  "off",
] as const;
export type PageCacheWarmOutcome = (typeof PAGE_CACHE_WARM_OUTCOMES)[number];

/** Names of all coldstart_* metrics registered by `m` (default process metrics left out). */
export function metricNames(m: Metrics): string[] {
  return m.registry
    .getMetricsAsArray()
    .map((metric) => metric.name)
    .filter((name) => name.startsWith("coldstart_"));
}
