/**
 * The checksums S3 keeps for objects, as this program names and encodes them: shared by the object
 * source (src/s3), the staging engine, the journal and the manifest.
 */

export type ChecksumAlgorithm = "CRC32" | "CRC32C" | "CRC64NVME" | "SHA1" | "SHA256";
export type CrcAlgorithm = "CRC32" | "CRC32C" | "CRC64NVME";

/** What S3 says about an object's integrity data (x-amz-checksum-*), when it has any. */
export interface ObjectChecksum {
  algorithm: ChecksumAlgorithm;
  /** base64 value as sent, possibly with a composite "-N" suffix. */
  value: string;
  type: "FULL_OBJECT" | "COMPOSITE";
}

export interface StreamingChecksum {
  /** Feeds the next bytes of the stream; chunks may have any size, including zero. */
  update(chunk: Uint8Array): void;
  /**
   * The checksum of all bytes fed so far, as the raw big-endian bytes S3 base64-encodes in its
   * headers. It does not end the stream: update() may continue and digest() be called again.
   */
  digest(): Buffer;
}

/** Digest size in bytes of each algorithm, as S3 encodes it. */
export const DIGEST_BYTES: Readonly<Record<ChecksumAlgorithm, number>> = {
  CRC32: 4,
  CRC32C: 4,
  CRC64NVME: 8,
  SHA1: 20,
  SHA256: 32,
};

/** True for the CRC algorithms, whose full-object values can be combined from ranges (combine.ts). */
export function isCrcAlgorithm(alg: ChecksumAlgorithm): alg is CrcAlgorithm {
  return alg === "CRC32" || alg === "CRC32C" || alg === "CRC64NVME";
}
