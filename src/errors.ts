/**
 * The one error catalog. Every failure coldstart reports carries one of these stable codes; callers
 * (and users' automation) match on `code`, never on message text. docs/errors.md documents each code,
 * and test/errors.test.ts fails if one is missing there.
 */
export const errorCodes = {
  CS_CONFIG_INVALID:
    "A configuration value, flag or environment variable is missing, unknown or out of range.",
  CS_SOURCE_URI_INVALID: "The source is not of the form s3://BUCKET/PREFIX.",
  CS_DEST_INVALID: "The destination directory cannot be used (not a directory, a symlink, or not writable).",
  CS_DEST_LOCKED: "Another live coldstart process is staging into the same destination.",
  CS_NO_OBJECTS: "The source prefix, after include/exclude filters, holds no objects.",
  CS_KEY_UNSAFE:
    "An object key would land outside the destination (.., absolute path, NUL, backslash, planted symlink).",
  CS_PATH_UNSAFE:
    "A file a request asked for is reached through a symlink or a non-directory under the staging root (or the content store); refused, never followed.",
  CS_S3_ACCESS_DENIED: "S3 refused the request (403): credentials or bucket policy.",
  CS_S3_NOT_FOUND: "The bucket or object does not exist (404).",
  CS_S3_REQUEST_FAILED: "S3 answered with an error that is not worth retrying.",
  CS_S3_RESPONSE_INVALID:
    "A response broke the protocol: wrong Content-Range or Content-Length, 200 where 206 was asked, short body.",
  CS_RETRIES_EXHAUSTED: "A request kept failing with retryable errors until the retry budget was spent.",
  CS_OBJECT_CHANGED: "The object changed during the download (ETag differs, or S3 answered 412 to If-Match).",
  CS_SIZE_MISMATCH: "The staged file's size differs from the size S3 reported.",
  CS_CHECKSUM_MISMATCH: "The staged bytes do not match the checksum S3 holds for the object or part.",
  CS_SAFETENSORS_INVALID: "A .safetensors file's header is malformed or does not describe the file.",
  CS_SAFETENSORS_INDEX_INVALID:
    "model.safetensors.index.json is malformed or disagrees with the shards it names.",
  CS_INSUFFICIENT_SPACE: "The files do not fit in the free space of the destination filesystem.",
  CS_DISK_FULL: "The destination filesystem filled up (ENOSPC) during the download.",
  CS_IO_ERROR: "A local filesystem operation failed.",
  CS_ABORTED: "The operation was cancelled (signal or shutdown).",
  CS_MODEL_ID_INVALID: "A model id is not 1-200 characters of [A-Za-z0-9._/-] in safe path segments.",
  CS_MODEL_ID_CONFLICT: "The model id would nest inside (or around) another model's directory.",
  CS_MODEL_NOT_FOUND: "No model with that id is known to this daemon.",
  CS_MODEL_SOURCE_CONFLICT: "The model id is already registered with another source (or filters).",
  CS_MODEL_FAILED: "Staging the model failed; the status carries the underlying error.",
  CS_MODEL_PINNED: "The model is pinned and cannot be deleted or evicted; unpin it first.",
  CS_MODEL_IN_USE:
    "The model is being staged, is mounted into a pod (CSI volume), or was handed to a pod within the grace period.",
  CS_SOURCE_NOT_ALLOWED: "The source is not in the daemon's allowlist (sources.allow).",
  CS_UNAUTHORIZED: "The request carries no valid bearer token.",
  CS_FORBIDDEN:
    "The bearer token is valid but scoped elsewhere: a peer's or the mirror's token on a route only the API token reaches.",
  CS_REQUEST_INVALID: "The request body or query does not match the API's schema, or is not valid JSON.",
  CS_REQUEST_TOO_LARGE: "The request body exceeds the API's size limit.",
  CS_UNSUPPORTED_MEDIA_TYPE: "The request body is not application/json.",
  CS_NOT_READY: "The model did not become ready within the wait's timeout.",
  CS_DAEMON_UNREACHABLE: "coldstart wait could not reach the daemon within its timeout.",
  CS_SHUTTING_DOWN: "The daemon is draining and accepts no new work.",
  CS_GDS_UNAVAILABLE:
    "gds.mode is on but GPUDirect Storage is not enabled on this node (the reasons say why).",
  CS_PLACEMENT_REFUSED: "The staging root's placement is not one placement.require allows.",
  CS_CACHE_KEY_INVALID:
    "A compile-cache key input (GPU facts, framework identity, tenant) is missing or malformed.",
  CS_CACHE_NOT_FOUND: "No compile cache with that key is on this node.",
  CS_CACHE_REMOTE_INVALID:
    "A remote compile cache's manifest or pack is malformed, or its bytes do not match the manifest.",
  CS_CACHE_BUSY: "The compile cache is being restored, published or evicted; retry shortly.",
  CS_CACHE_NO_REMOTE: "No remote store is configured for compile caches (compileCache.remote).",
  CS_PEER_NOT_HELD: "This node holds no verified copy of the object asked for by a peer.",
  CS_CONTAINERD_UNAVAILABLE:
    "containerd's API on mirror.containerdSocket did not answer (no socket, containerd down, or too slow).",
  CS_CSI_VOLUME_INVALID:
    "A CSI request or its volume attributes miss a required field, hold an unknown key or an invalid value (the message names it).",
  CS_CSI_NAMESPACE_DENIED: "No csi.allow rule lets the pod's namespace mount that source (default deny).",
  CS_CSI_TARGET_BUSY: "The CSI target path already holds another volume (the CSI spec's ALREADY_EXISTS).",
  CS_CSI_VOLUME_NOT_FOUND: "No volume with that id is published at that path on this node.",
  CS_CSI_MOUNT_FAILED: "Mounting or unmounting a published volume failed; mount's own message is kept.",
  CS_INTERNAL: "A bug: an invariant coldstart relies on did not hold.",
} as const;

export type ErrorCode = keyof typeof errorCodes;

/** Context that makes an error actionable: which object, which field, which value. */
export interface ErrorDetails {
  /** S3 key the error concerns, when there is one. */
  key?: string;
  /** Config option or request field the error concerns. */
  field?: string;
  /** Offending value (stringified for display). */
  value?: unknown;
  /** CS_PEER_NOT_HELD: a model covering the key is still being listed here; ask again soon. */
  staging?: boolean;
}

export class ColdstartError extends Error {
  override readonly name = "ColdstartError";
  readonly code: ErrorCode;
  readonly details: ErrorDetails;

  constructor(code: ErrorCode, message: string, options: { cause?: unknown; details?: ErrorDetails } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.details = options.details ?? {};
  }
}

export function isColdstartError(err: unknown, code?: ErrorCode): err is ColdstartError {
  return err instanceof ColdstartError && (code === undefined || err.code === code);
}

/** Wraps anything thrown into a ColdstartError, keeping an existing code and chaining the cause. */
export function toColdstartError(err: unknown, fallback: ErrorCode = "CS_INTERNAL"): ColdstartError {
  if (err instanceof ColdstartError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new ColdstartError(fallback, message, { cause: err });
}
