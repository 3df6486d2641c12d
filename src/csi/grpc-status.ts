/**
 * The one mapping from the error catalog to gRPC status codes for the CSI services (docs/deploy.md
 * has the table). The message starts with the catalog code, so `kubectl describe pod` shows it.
 * The kubelet retries every failed publish with its backoff; it treats UNAVAILABLE as "maybe in
 * progress" and calls unpublish when the pod goes, which is harmless here.
 */
import { status } from "@grpc/grpc-js";
import { type ErrorCode, toColdstartError } from "../errors.js";

const CODES: Partial<Record<ErrorCode, status>> = {
  CS_CSI_VOLUME_INVALID: status.INVALID_ARGUMENT,
  CS_MODEL_ID_INVALID: status.INVALID_ARGUMENT,
  CS_SOURCE_URI_INVALID: status.INVALID_ARGUMENT,
  CS_CSI_NAMESPACE_DENIED: status.PERMISSION_DENIED,
  CS_SOURCE_NOT_ALLOWED: status.PERMISSION_DENIED,
  CS_CSI_TARGET_BUSY: status.ALREADY_EXISTS,
  CS_CSI_VOLUME_NOT_FOUND: status.NOT_FOUND,
  CS_NOT_READY: status.UNAVAILABLE,
  CS_SHUTTING_DOWN: status.UNAVAILABLE,
  CS_MODEL_IN_USE: status.UNAVAILABLE,
  CS_MODEL_NOT_FOUND: status.UNAVAILABLE,
  CS_INSUFFICIENT_SPACE: status.RESOURCE_EXHAUSTED,
  CS_MODEL_SOURCE_CONFLICT: status.FAILED_PRECONDITION,
  CS_MODEL_ID_CONFLICT: status.FAILED_PRECONDITION,
  CS_MODEL_FAILED: status.FAILED_PRECONDITION,
  CS_CACHE_KEY_INVALID: status.INVALID_ARGUMENT,
  CS_CACHE_NO_REMOTE: status.FAILED_PRECONDITION,
  CS_ABORTED: status.CANCELLED,
};

export interface GrpcError {
  code: status;
  details: string;
}

export function grpcError(err: unknown): GrpcError {
  const e = toColdstartError(err);
  return { code: CODES[e.code] ?? status.INTERNAL, details: `${e.code}: ${e.message}` };
}
