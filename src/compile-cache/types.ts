import type { COMPILE_CACHE_PUBLISH_OUTCOMES, COMPILE_CACHE_RESTORE_OUTCOMES } from "../metrics/metrics.js";
import type { CacheKeyInput } from "./key.js";

export type RestoreOutcome = (typeof COMPILE_CACHE_RESTORE_OUTCOMES)[number];
export type PublishOutcome = (typeof COMPILE_CACHE_PUBLISH_OUTCOMES)[number];

/** The framework identity a pod declares; the GPU part of the key comes from this node's facts. */
export type Identity = Omit<CacheKeyInput, "gpuProduct" | "computeCapability" | "driverMajor">;
export type GpuIdentity = Pick<CacheKeyInput, "gpuProduct" | "computeCapability" | "driverMajor">;

/** A keyed cache as the API shows it. */
export interface CacheStatus {
  key: string;
  path: string;
  bytes: number;
  files: number;
  createdAt: string;
  lastUsedAt: string;
  changedAt: string | null;
  origin: "restored" | "local";
  restoredAt: string | null;
  silentMissAt: string | null;
  busy: "restoring" | "publishing" | null;
  remote: {
    uri: string | null;
    state: "present" | "absent" | "unknown";
    checkedAt: string | null;
    publishedAt: string | null;
  };
}

export interface RestoreRequest {
  identity: Identity;
  /** Another remote than compileCache.remote; must be in compileCache.allow. */
  remote?: string | undefined;
  timeoutMs: number;
}

export interface RestoreResult {
  key: string;
  path: string;
  outcome: RestoreOutcome;
  bytes: number;
  files: number;
  seconds: number;
  remote: string | null;
  error?: { code: string; message: string };
}

export interface PublishResult {
  key: string;
  outcome: PublishOutcome;
  bytes: number;
  files: number;
  packBytes: number;
  seconds: number;
  error?: { code: string; message: string };
}
