import { parseChecksumHeader } from "../checksums/headers.js";
import { isCrcAlgorithm, type ObjectChecksum } from "../checksums/types.js";
import { ColdstartError } from "../errors.js";
import type { ObjectSource } from "../s3/object-source.js";
import { type RetryPolicy, withRetry } from "../s3/retry.js";
import { alignedBounds, type FilePlan } from "./plan.js";

export interface ChecksumPlanContext {
  source: ObjectSource;
  bucket: string;
  retry: RetryPolicy;
  partSizeBytes: number;
  signal: AbortSignal;
  /** Told of each retried HEAD or GetObjectAttributes (retry metrics). */
  onRetry: (err: unknown, attempt: number) => void;
  logger?: { info(obj: object, msg: string): void } | undefined;
}

/**
 * For a file fetched in several ranges (which carry no checksum from S3), asks HEAD for the
 * object's checksum. A full-object CRC is rebuilt from the ranges' CRCs. A composite checksum
 * (multipart, `…-N`) needs the real part sizes (GetObjectAttributes; never guessed): ranges are
 * then aligned to part boundaries, and SHA parts kept whole since SHA values cannot be combined.
 * Anything else is staged on size and ETag alone.
 */
export async function checksumPlan(
  plan: FilePlan,
  o: ChecksumPlanContext,
): Promise<{ checksum?: ObjectChecksum; bounds?: number[]; partStarts?: number[] }> {
  const signal = o.signal;
  const head = await withRetry(
    o.retry,
    { key: plan.key, action: "HEAD" },
    () => o.source.head(o.bucket, plan.key, signal),
    { signal, onRetry: o.onRetry },
  );
  if (head.etag !== plan.etag || head.size !== plan.size) {
    throw new ColdstartError(
      "CS_OBJECT_CHANGED",
      `HEAD ${plan.key}: now ${head.size} bytes ETag ${head.etag}, listed as ${plan.size} bytes ETag ${plan.etag}`,
      { details: { key: plan.key } },
    );
  }
  const checksum = head.checksum;
  if (!checksum) return {};
  if (checksum.type === "FULL_OBJECT") {
    if (isCrcAlgorithm(checksum.algorithm)) return { checksum };
    o.logger?.info(
      { key: plan.key, checksum },
      "a full-object SHA cannot be rebuilt from ranges; not checked",
    );
    return {};
  }
  const parts = parseChecksumHeader(checksum.value)?.parts;
  const sizes = parts
    ? await withRetry(
        o.retry,
        { key: plan.key, action: "GetObjectAttributes" },
        () => o.source.partSizes(o.bucket, plan.key, signal),
        { signal, onRetry: o.onRetry },
      )
    : undefined;
  if (!sizes || sizes.length !== parts || sizes.reduce((a, b) => a + b, 0) !== plan.size) {
    o.logger?.info(
      { key: plan.key, checksum },
      "part sizes unknown (GetObjectAttributes); composite checksum not checked",
    );
    return {};
  }
  // A running sum: an object has up to 10,000 parts.
  let start = 0;
  const partStarts = sizes.map((n) => {
    const at = start;
    start += n;
    return at;
  });
  const bounds = alignedBounds(sizes, o.partSizeBytes, !isCrcAlgorithm(checksum.algorithm));
  return { checksum, bounds, partStarts };
}
