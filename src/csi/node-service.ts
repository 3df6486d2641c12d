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
import { mkdir, rm, rmdir, statfs } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "pino";
import type { CompileCacheManager } from "../compile-cache/cache-manager.js";
import { ColdstartError, isColdstartError, toColdstartError } from "../errors.js";
import type { CsiPublishOutcome, Metrics } from "../metrics/metrics.js";
import type { ModelManager } from "../models/model-manager.js";
import type { PageCacheWarmer } from "../models/page-cache.js";
import type { ModelStatus } from "../models/status.js";
import { writeFileAtomic } from "../store/atomic-file.js";
import type { AccessPolicy } from "./access.js";
import { type CacheVolumeSpec, invalid, volumeSpec } from "./attributes.js";
import type { Mounter } from "./mounts.js";
import type { PublishedVolume, VolumeStore } from "./volumes.js";

/** What the node service needs of the models: the manager's single flight, waits and holds. */
export type ModelVolumes = Pick<
  ModelManager,
  "request" | "waitReady" | "hold" | "release" | "modelPath" | "get"
>;

/** What the node service needs of the compile caches: the handshake's restore, and holds. */
export type CacheVolumes = Pick<CompileCacheManager, "restore" | "hold" | "release">;

/** What a pod's loader should know of this node (the same facts `coldstart wait` writes). */
export interface LoaderAdvice {
  loadFormat: string;
  gds: string;
  gpuProduct: string;
}

export interface CsiNodeOptions {
  root: string;
  nodeId: string;
  models: ModelVolumes;
  /** Absent: compile-cache volumes are refused. */
  caches?: CacheVolumes | undefined;
  /** compileCache.remote: what a compile-cache volume without its own `remote` is checked against. */
  defaultCacheRemote?: string | null | undefined;
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

  constructor(options: CsiNodeOptions) {
    this.#o = options;
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
      await this.#serial(req.targetPath, () => this.#publish(req, signal, deadline));
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
    const existing = o.volumes.get(req.targetPath);
    if (existing && existing.volumeId !== req.volumeId) {
      throw new ColdstartError(
        "CS_CSI_TARGET_BUSY",
        `target ${req.targetPath} holds volume ${existing.volumeId}; refusing ${req.volumeId}`,
        { details: { field: "target_path", value: req.targetPath } },
      );
    }
    if (existing && (await o.mounter.isMounted(req.targetPath))) return;

    const parsed = volumeSpec(req.volumeContext ?? {});
    if (parsed.kind === "compile-cache") return this.#publishCache(req, parsed, deadline);
    const spec = parsed;
    o.access.check(spec.pod.namespace, spec.source);
    await o.models.request(
      spec.modelId,
      { source: spec.source, include: spec.include, exclude: spec.exclude },
      { waited: true },
    );
    const holdMs = Math.max(Math.min(o.publishWaitMs, deadline - Date.now() - DEADLINE_MARGIN_MS), 0);
    const { outcome, status } = await o.models.waitReady(spec.modelId, holdMs, signal);
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
      await mkdir(req.targetPath).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== "EEXIST") throw e;
      });
      await o.mounter.bind(dir, req.targetPath, { readOnly: true, recursive: true });
      // Held, so eviction cannot take it while its pages are read in; the pod starts after.
      await o.pageCache?.warm(spec.modelId, o.models.modelPath(spec.modelId));
    } catch (err) {
      await this.#teardown(volume).catch((e) =>
        o.logger.error({ err: String(e), target: req.targetPath }, "cleaning up a failed publish"),
      );
      throw toColdstartError(err, "CS_CSI_MOUNT_FAILED");
    }
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
  async #publishCache(req: PublishRequest, spec: CacheVolumeSpec, deadline: number): Promise<void> {
    const o = this.#o;
    if (!o.caches) throw invalid("volumeAttributes.kind", "compile-cache", "is not served on this node");
    const remote = spec.remote ?? o.defaultCacheRemote ?? null;
    // What csi.allow checks for a cache: where it is shared (its remote), or "compile-cache" when local.
    o.access.check(spec.pod.namespace, remote ?? "compile-cache");
    const holdMs = Math.max(Math.min(o.publishWaitMs, deadline - Date.now() - DEADLINE_MARGIN_MS), 1_000);
    const restored = await o.caches.restore({
      identity: spec.identity,
      remote: spec.remote,
      timeoutMs: holdMs,
    });
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
      await mkdir(req.targetPath).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== "EEXIST") throw e;
      });
      await o.mounter.bind(source, req.targetPath, { readOnly: false });
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
    const advice = o.advice();
    const facts = {
      modelId: v.modelId,
      source: v.source,
      modelDir: "model",
      bytes: status.bytesTotal,
      files: status.filesTotal,
      readyAt: status.readyAt,
      loadFormat: advice.loadFormat,
      gds: advice.gds,
      gpuProduct: advice.gpuProduct,
      node: o.nodeId,
    };
    await writeFileAtomic(join(v.dir, "coldstart.json"), `${JSON.stringify(facts, null, 2)}\n`);
    const quote = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;
    const env = [
      `COLDSTART_MODEL_ID=${quote(v.modelId)}`,
      `COLDSTART_MODEL_SUBDIR=${quote("model")}`,
      `COLDSTART_LOAD_FORMAT=${quote(advice.loadFormat)}`,
      `COLDSTART_GDS=${quote(advice.gds)}`,
      `COLDSTART_GPU_PRODUCT=${quote(advice.gpuProduct)}`,
    ];
    await writeFileAtomic(join(v.dir, "coldstart.env"), `${env.join("\n")}\n`);
    if (!(await o.mounter.isMounted(modelDir))) {
      await o.mounter.bind(o.models.modelPath(v.modelId), modelDir, { readOnly: true });
    }
  }

  /**
   * Unmounts the target and removes what publish made there and under <root>/csi/, then releases the
   * model. Idempotent: a target that is not mounted or not known is not an error.
   */
  async unpublish(req: { volumeId: string; targetPath: string }): Promise<void> {
    requireString(req.volumeId, "volume_id");
    requireString(req.targetPath, "target_path");
    await this.#serial(req.targetPath, async () => {
      const o = this.#o;
      await o.mounter.unmount(req.targetPath);
      await removeDir(req.targetPath);
      const v = o.volumes.get(req.targetPath);
      if (v) await this.#teardown(v);
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
    for (const v of o.volumes.all()) {
      if (await o.mounter.isMounted(v.targetPath)) {
        if (v.kind === "compile-cache") {
          if (v.cacheKey) o.caches?.hold(v.cacheKey, v.targetPath);
          continue;
        }
        const held = await o.models.hold(v.modelId, v.targetPath);
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

  /** Removes a volume's directory (never recursively: only what publish made), forgets it, releases. */
  async #teardown(v: PublishedVolume): Promise<void> {
    const o = this.#o;
    if (v.kind === "compile-cache") {
      // The pod's scratch directory goes whole; checked unmounted first, so nothing is followed.
      const scratch = join(v.dir, "scratch");
      if (!(await o.mounter.isMounted(v.targetPath))) await rm(scratch, { recursive: true, force: true });
      await removeDir(v.dir);
      await o.volumes.delete(v.targetPath);
      o.caches?.release(v.targetPath);
      return;
    }
    const modelDir = join(v.dir, "model");
    await o.mounter.unmount(modelDir);
    await removeDir(modelDir);
    await rm(join(v.dir, "coldstart.json"), { force: true });
    await rm(join(v.dir, "coldstart.env"), { force: true });
    await removeDir(v.dir);
    await o.volumes.delete(v.targetPath);
    await o.models.release(v.targetPath);
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

function requireString(v: unknown, field: string): void {
  if (typeof v !== "string" || v === "") throw invalid(field, undefined, "is required");
}

/** rmdir, not rm -r: a directory that still holds anything (a mount that did not go) stays. */
async function removeDir(path: string): Promise<void> {
  try {
    await rmdir(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
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
