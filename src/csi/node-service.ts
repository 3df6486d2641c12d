/**
 * The CSI node service's logic, free of gRPC (server.ts speaks the wire): publishing a model into a
 * pod as a read-only volume once it is staged and verified on this node, unpublishing it, and
 * finding the published volumes again after a restart.
 *
 * A published volume is a directory of its own under <root>/csi/ holding `coldstart.json` and
 * `coldstart.env` (the loader advice) beside `model/`, where the model's directory is bind-mounted
 * read-only; that directory is then bind-mounted (with the model inside) read-only at the pod's
 * target path. The pod sees its model and the advice, nothing else of the staging root, and writes
 * nothing into the model.
 */
import { mkdir, rm, statfs } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { Logger } from "pino";
import type { CompileCacheManager } from "../compile-cache/cache-manager.js";
import { ColdstartError, isColdstartError, toColdstartError } from "../errors.js";
import type { CsiPublishOutcome, Metrics } from "../metrics/metrics.js";
import type { ModelManager } from "../models/model-manager.js";
import type { PageCacheWarmer } from "../models/page-cache.js";
import type { ModelStatus } from "../models/status.js";
import type { AccessPolicy } from "./access.js";
import { type LoaderAdvice, writeAdvice } from "./advice.js";
import { type CacheVolumeSpec, invalid, volumeSpec } from "./attributes.js";
import type { Mounter } from "./mounts.js";
import { makeTarget, removeDir, TargetPaths } from "./targets.js";
import type { PublishedVolume, VolumeStore } from "./volumes.js";

/** What the node service needs of the models: the manager's single flight, waits and holds. */
export type ModelVolumes = Pick<
  ModelManager,
  "request" | "waitReady" | "hold" | "release" | "modelPath" | "get"
>;

/** What the node service needs of the compile caches: the handshake's restore, and holds. */
export type CacheVolumes = Pick<CompileCacheManager, "restore" | "hold" | "release" | "remoteFor">;

export interface CsiNodeOptions {
  root: string;
  /** The kubelet's directory: every target path lies below its pods/ (csi.kubeletDir). */
  kubeletDir: string;
  nodeId: string;
  models: ModelVolumes;
  /** Absent: compile-cache volumes are refused. */
  caches?: CacheVolumes | undefined;
  volumes: VolumeStore;
  mounter: Mounter;
  access: AccessPolicy;
  /** The longest a publish call is held while its model stages (csi.publishWaitMs). */
  publishWaitMs: number;
  advice: () => LoaderAdvice;
  /** Reads the model into the page cache before the publish returns (pageCache.warm). */
  pageCache?: Pick<PageCacheWarmer, "warm"> | undefined;
  logger: Logger;
  metrics?: Metrics | undefined;
}

/** Held calls answer this long before the caller's deadline, so the answer arrives in time. */
const DEADLINE_MARGIN_MS = 5_000;

/** The part of NodePublishVolumeRequest the service reads (names as proto-loader gives them). */
export interface PublishRequest {
  volumeId: string;
  targetPath: string;
  volumeCapability: { mount?: unknown; block?: unknown; accessMode?: { mode?: string } | null } | null;
  readonly?: boolean;
  volumeContext: Record<string, string>;
}

export class CsiNode {
  readonly #o: CsiNodeOptions;
  /** One operation at a time per target path: a retried call waits for the one still held. */
  readonly #busy = new Map<string, Promise<unknown>>();
  /** The publish of each target still waiting or running: an unpublish of the target ends it. */
  readonly #publishing = new Map<string, AbortController>();
  readonly #targets: TargetPaths;

  constructor(options: CsiNodeOptions) {
    this.#o = options;
    this.#targets = new TargetPaths(options.kubeletDir, options.root);
  }

  get nodeId(): string {
    return this.#o.nodeId;
  }

  /**
   * Stages the model (or joins its staging), holds the call while it stages up to the wait bound
   * (and safely inside `deadline`), then mounts it read-only at the target. Not ready by then:
   * CS_NOT_READY whose message says the progress, and the kubelet calls again.
   */
  async publish(
    req: PublishRequest,
    signal: AbortSignal,
    deadline = Number.POSITIVE_INFINITY,
  ): Promise<void> {
    const started = Date.now();
    let outcome: CsiPublishOutcome = "error";
    try {
      requireString(req.volumeId, "volume_id");
      requireString(req.targetPath, "target_path");
      if (!req.volumeCapability) throw invalid("volume_capability", undefined, "is required");
      if (!req.volumeCapability.mount) {
        throw invalid("volume_capability", "block", "must be a mount volume: the driver serves directories");
      }
      const target = await this.#targets.check(req.targetPath, true);
      // An unpublish of the target, or the caller giving up, ends this publish (waiting or queued).
      const mine = new AbortController();
      this.#publishing.get(target)?.abort(cancelled("a newer publish of the target"));
      this.#publishing.set(target, mine);
      const stop = AbortSignal.any([signal, mine.signal]);
      try {
        await this.#serial(target, () => {
          if (stop.aborted) throw toColdstartError(stop.reason, "CS_ABORTED");
          return this.#publish({ ...req, targetPath: target }, stop, deadline);
        });
      } finally {
        if (this.#publishing.get(target) === mine) this.#publishing.delete(target);
      }
      outcome = "ok";
    } catch (err) {
      outcome = publishOutcome(err);
      throw err;
    } finally {
      this.#o.metrics?.csiPublishes.inc({ outcome });
      this.#o.metrics?.csiPublishDuration.observe({ outcome }, (Date.now() - started) / 1000);
      this.#o.metrics?.csiVolumes.set(this.#o.volumes.all().length);
    }
  }

  async #publish(req: PublishRequest, signal: AbortSignal, deadline: number): Promise<void> {
    const o = this.#o;
    const parsed = volumeSpec(req.volumeContext ?? {});
    const existing = o.volumes.get(req.targetPath);
    if (existing) {
      const same =
        existing.volumeId === req.volumeId &&
        (existing.kind ?? "model") === parsed.kind &&
        (parsed.kind === "compile-cache" ||
          (existing.modelId === parsed.modelId && existing.source === parsed.source));
      if (!same) {
        throw new ColdstartError(
          "CS_CSI_TARGET_BUSY",
          `target ${req.targetPath} holds volume ${existing.volumeId} (${existing.kind ?? "model"} ${existing.modelId || existing.cacheKey || ""}); refusing ${req.volumeId}`,
          { details: { field: "target_path", value: req.targetPath } },
        );
      }
      if (await o.mounter.isMounted(req.targetPath)) return;
    }
    if (parsed.kind === "compile-cache") return this.#publishCache(req, parsed, signal, deadline);
    const spec = parsed;
    o.access.check(spec.pod.namespace, spec.source);
    await o.models.request(
      spec.modelId,
      { source: spec.source, include: spec.include, exclude: spec.exclude },
      { waited: true },
    );
    const holdMs = Math.max(Math.min(o.publishWaitMs, deadline - Date.now() - DEADLINE_MARGIN_MS), 0);
    // The target path names this pod's volume across the kubelet's retries: its own gate wait.
    const { outcome, status } = await o.models.waitReady(spec.modelId, holdMs, signal, req.targetPath);
    if (signal.aborted) throw toColdstartError(signal.reason, "CS_ABORTED");
    if (outcome === "failed") {
      throw new ColdstartError(
        "CS_MODEL_FAILED",
        `model ${spec.modelId} failed to stage: ${status.error?.code}: ${status.error?.message}`,
        { details: { field: "volumeAttributes.model", value: spec.modelId } },
      );
    }
    if (outcome === "timeout") throw notReady(status);

    const dir = o.volumes.dirFor(req.targetPath);
    const volume: PublishedVolume = {
      kind: "model",
      volumeId: req.volumeId,
      targetPath: req.targetPath,
      modelId: spec.modelId,
      source: spec.source,
      include: spec.include,
      exclude: spec.exclude,
      namespace: spec.pod.namespace,
      podName: spec.pod.name,
      podUid: spec.pod.uid,
      dir,
      publishedAt: new Date().toISOString(),
    };
    // Held before anything is mounted: eviction cannot take the model between the check and the mount.
    const held = await o.models.hold(spec.modelId, req.targetPath);
    if (!held) throw notReady(o.models.get(spec.modelId));
    try {
      // Recorded before the target's mount: a crash after it leaves a mount the restart finds.
      await o.volumes.put(volume);
      await this.#prepareDir(volume, held);
      await makeTarget(req.targetPath);
      await o.mounter.bind(dir, req.targetPath, { readOnly: true, recursive: true });
    } catch (err) {
      await this.#teardown(volume).catch((e) =>
        o.logger.error({ err: String(e), target: req.targetPath }, "cleaning up a failed publish"),
      );
      throw toColdstartError(err, "CS_CSI_MOUNT_FAILED");
    }
    // Held, so eviction cannot take it while its pages are read in. The gate waits for the warm
    // only within the call's deadline; a warm still running then goes on without holding the pod.
    const warm = o.pageCache?.warm(spec.modelId, o.models.modelPath(spec.modelId));
    if (warm) await within(warm, deadline - Date.now() - DEADLINE_MARGIN_MS, signal);
    o.logger.info(
      { model: spec.modelId, target: req.targetPath, namespace: spec.pod.namespace, pod: spec.pod.name },
      "published a model volume",
    );
  }

  /**
   * A compile-cache volume: the keyed directory for this node's GPU and the pod's identity, restored
   * from the remote first (within the publish bound), mounted read-write. Like the handshake, a node
   * without a key (no GPU yet, two kinds) or a slow remote does not stop the pod: it gets a scratch
   * directory of its own (removed with the volume) and compiles.
   */
  async #publishCache(
    req: PublishRequest,
    spec: CacheVolumeSpec,
    signal: AbortSignal,
    deadline: number,
  ): Promise<void> {
    const o = this.#o;
    if (!o.caches) throw invalid("volumeAttributes.kind", "compile-cache", "is not served on this node");
    // The remote the restore will use (compileCache.allow is checked there); null: node-local.
    const remote = o.caches.remoteFor(spec.remote);
    // What csi.allow checks for a cache: where it is shared (its remote), or "compile-cache" when local.
    o.access.check(spec.pod.namespace, remote ?? "compile-cache");
    const holdMs = Math.max(Math.min(o.publishWaitMs, deadline - Date.now() - DEADLINE_MARGIN_MS), 1_000);
    // The namespace is the tenant: pods of one namespace share a key's compiled code, never another's.
    const restored = await o.caches.restore({
      identity: { ...spec.identity, tenant: spec.pod.namespace },
      remote: spec.remote,
      timeoutMs: holdMs,
    });
    if (signal.aborted) throw toColdstartError(signal.reason, "CS_ABORTED");
    const dir = o.volumes.dirFor(req.targetPath);
    const volume: PublishedVolume = {
      kind: "compile-cache",
      volumeId: req.volumeId,
      targetPath: req.targetPath,
      modelId: "",
      cacheKey: restored.path ? restored.key : undefined,
      source: restored.remote ?? "",
      include: [],
      exclude: [],
      namespace: spec.pod.namespace,
      podName: spec.pod.name,
      podUid: spec.pod.uid,
      dir,
      publishedAt: new Date().toISOString(),
    };
    if (restored.path) o.caches.hold(restored.key, req.targetPath);
    try {
      await o.volumes.put(volume);
      let source = restored.path;
      if (!source) {
        source = join(dir, "scratch");
        await mkdir(source, { recursive: true, mode: 0o777 });
        o.logger.warn(
          { target: req.targetPath, code: restored.error?.code, err: restored.error?.message },
          "no compile-cache key on this node: the pod gets a scratch directory and compiles",
        );
      }
      await makeTarget(req.targetPath);
      // Read-write unless the pod mounts it read-only (a pod that only reads what others compiled).
      await o.mounter.bind(source, req.targetPath, { readOnly: req.readonly === true });
    } catch (err) {
      await this.#teardown(volume).catch((e) =>
        o.logger.error({ err: String(e), target: req.targetPath }, "cleaning up a failed publish"),
      );
      throw toColdstartError(err, "CS_CSI_MOUNT_FAILED");
    }
    o.logger.info(
      { key: restored.key, outcome: restored.outcome, target: req.targetPath, namespace: spec.pod.namespace },
      "published a compile-cache volume",
    );
  }

  /** The volume's directory: the advice files and the model bind-mounted read-only into model/. */
  async #prepareDir(v: PublishedVolume, status: ModelStatus): Promise<void> {
    const o = this.#o;
    const modelDir = join(v.dir, "model");
    await mkdir(modelDir, { recursive: true });
    await writeAdvice(v, status, o.advice(), o.nodeId);
    if (!(await o.mounter.isMounted(modelDir))) {
      await o.mounter.bind(o.models.modelPath(v.modelId), modelDir, { readOnly: true });
    }
  }

  /**
   * Unmounts the target and removes what publish made there and under <root>/csi/, then releases the
   * model. Idempotent: a target already gone is not an error. A target this driver has no record of
   * is not touched beyond removing it if it is an empty directory: nothing is unmounted that publish
   * did not mount.
   */
  async unpublish(req: { volumeId: string; targetPath: string }): Promise<void> {
    requireString(req.volumeId, "volume_id");
    requireString(req.targetPath, "target_path");
    const target = await this.#targets.check(req.targetPath, false);
    this.#publishing.get(target)?.abort(cancelled("the volume was unpublished"));
    await this.#serial(target, async () => {
      const o = this.#o;
      const v = o.volumes.get(target);
      if (!v) {
        if (!(await o.mounter.isMounted(target))) await removeDir(target).catch(() => {});
        return;
      }
      if (v.volumeId !== req.volumeId) {
        throw new ColdstartError(
          "CS_CSI_VOLUME_NOT_FOUND",
          `target ${target} holds volume ${v.volumeId}, not ${req.volumeId}`,
          { details: { field: "volume_id", value: req.volumeId } },
        );
      }
      await this.#teardown(v);
      o.metrics?.csiVolumes.set(o.volumes.all().length);
    });
  }

  /** Bytes and inodes of the filesystem the volume's files live on (NodeGetVolumeStats). */
  async stats(req: { volumeId: string; volumePath: string }): Promise<{ bytes: Usage; inodes: Usage }> {
    requireString(req.volumeId, "volume_id");
    requireString(req.volumePath, "volume_path");
    const v = this.#o.volumes.get(req.volumePath);
    if (!v || v.volumeId !== req.volumeId || !(await this.#o.mounter.isMounted(req.volumePath))) {
      throw new ColdstartError(
        "CS_CSI_VOLUME_NOT_FOUND",
        `no volume ${req.volumeId} is published at ${req.volumePath} on this node`,
        { details: { field: "volume_path", value: req.volumePath } },
      );
    }
    const s = await statfs(req.volumePath);
    const bytes = (n: number | bigint) => Number(n) * Number(s.bsize);
    return {
      bytes: {
        total: bytes(s.blocks),
        available: bytes(s.bavail),
        used: bytes(BigInt(s.blocks) - BigInt(s.bfree)),
      },
      inodes: { total: Number(s.files), available: Number(s.ffree), used: Number(s.files) - Number(s.ffree) },
    };
  }

  /**
   * At start, before anything may evict: every recorded volume still mounted holds its model again;
   * one whose target is gone (the pod went while the daemon was down) is cleaned up.
   */
  async recover(): Promise<void> {
    const o = this.#o;
    const mounted = await o.mounter.mountPoints();
    for (const v of o.volumes.all()) {
      if (mounted.has(v.targetPath)) {
        if (v.kind === "compile-cache") {
          if (v.cacheKey) o.caches?.hold(v.cacheKey, v.targetPath);
          continue;
        }
        const held = await o.models.hold(v.modelId, v.targetPath, { evenIfNotReady: true });
        if (!held)
          o.logger.warn(
            { model: v.modelId, target: v.targetPath },
            "a mounted model is not ready here any more",
          );
        continue;
      }
      await this.#teardown(v).catch((e) =>
        o.logger.warn({ err: String(e), target: v.targetPath }, "cleaning up a volume whose pod is gone"),
      );
    }
    o.metrics?.csiVolumes.set(o.volumes.all().length);
  }

  /**
   * Unmounts the target and the volume's own mounts, and only once nothing is mounted there any more
   * removes the target directory and the volume's directory (ours, under <root>/csi/, named by the
   * target), then forgets the volume and releases what it held. Whatever publish left half-made (a
   * temp file of a crashed write, a scratch directory) goes too, so a retry cannot wedge on it.
   */
  async #teardown(v: PublishedVolume): Promise<void> {
    const o = this.#o;
    const modelDir = join(v.dir, "model");
    await o.mounter.unmount(v.targetPath);
    await o.mounter.unmount(modelDir);
    const mounted = await o.mounter.mountPoints();
    for (const p of [v.targetPath, modelDir]) {
      if (mounted.has(p)) {
        throw new ColdstartError("CS_CSI_MOUNT_FAILED", `${p} is still mounted after umount`, {
          details: { field: "target_path", value: v.targetPath },
        });
      }
    }
    await removeDir(v.targetPath).catch((e) =>
      o.logger.warn({ err: String(e), target: v.targetPath }, "could not remove the target directory"),
    );
    await rm(v.dir, { recursive: true, force: true });
    await o.volumes.delete(v.targetPath);
    if (v.kind === "compile-cache") o.caches?.release(v.targetPath);
    else await o.models.release(v.targetPath);
  }

  #serial<T>(target: string, op: () => Promise<T>): Promise<T> {
    const before = this.#busy.get(target) ?? Promise.resolve();
    const next = before.then(op, op);
    const settled = next.catch(() => {});
    this.#busy.set(target, settled);
    void settled.then(() => {
      if (this.#busy.get(target) === settled) this.#busy.delete(target);
    });
    return next;
  }
}

export interface Usage {
  total: number;
  available: number;
  used: number;
}

/** Waits for `p` at most `ms` (and not past `signal`); `p` goes on either way. */
async function within(p: Promise<unknown>, ms: number, signal: AbortSignal): Promise<void> {
  if (ms <= 0 || signal.aborted) return;
  const done = new AbortController();
  await Promise.race([
    p.catch(() => {}),
    sleep(ms, undefined, { signal: AbortSignal.any([signal, done.signal]) }).catch(() => {}),
  ]);
  done.abort(); // the timer goes with it
}

function cancelled(why: string): ColdstartError {
  return new ColdstartError("CS_ABORTED", `publish ended: ${why}`);
}

function requireString(v: unknown, field: string): void {
  if (typeof v !== "string" || v === "") throw invalid(field, undefined, "is required");
}

function gib(n: number): string {
  return `${(n / 2 ** 30).toFixed(1)} GiB`;
}

/** Still staging: the message `kubectl describe pod` shows, with the progress and the ETA. */
function notReady(s: ModelStatus): ColdstartError {
  const pct = s.bytesTotal > 0 ? Math.floor((s.bytesDone / s.bytesTotal) * 100) : 0;
  const rate = s.bytesPerSecond > 0 ? `, ${gib(s.bytesPerSecond)}/s` : "";
  const eta = s.etaSeconds !== null && s.etaSeconds > 0 ? `, about ${s.etaSeconds} s left` : "";
  const room = s.waiting ? `; waiting for room: ${s.waiting.message}` : "";
  return new ColdstartError(
    "CS_NOT_READY",
    `model ${s.id} is ${s.state}: ${gib(s.bytesDone)} of ${gib(s.bytesTotal)} (${pct}%)${rate}${eta}${room}; the kubelet retries`,
    { details: { field: "volumeAttributes.model", value: s.id } },
  );
}

function publishOutcome(err: unknown): CsiPublishOutcome {
  if (!isColdstartError(err)) return "error";
  switch (err.code) {
    case "CS_NOT_READY":
    case "CS_SHUTTING_DOWN":
      return "not_ready";
    case "CS_MODEL_FAILED":
      return "failed";
    case "CS_CSI_NAMESPACE_DENIED":
    case "CS_SOURCE_NOT_ALLOWED":
      return "denied";
    case "CS_CSI_VOLUME_INVALID":
    case "CS_MODEL_ID_INVALID":
    case "CS_SOURCE_URI_INVALID":
      return "invalid";
    default:
      return "error";
  }
}
