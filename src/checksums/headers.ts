/**
 * S3's x-amz-checksum-* response headers: a base64 value, a "-N" suffix for a composite of N parts,
 * and x-amz-checksum-type.
 */
import { type ChecksumAlgorithm, DIGEST_BYTES } from "./types.js";

/**
 * Header lookup order when a response carries more than one checksum (S3 sends one; a proxy or a
 * future S3 might send more): full-object-capable CRCs first, since ranges can be verified with them.
 */
const HEADER_PREFERENCE: readonly ChecksumAlgorithm[] = ["CRC64NVME", "CRC32C", "CRC32", "SHA256", "SHA1"];

/** S3 allows at most 10,000 parts, so a composite suffix above that is malformed. */
const MAX_PARTS = 10_000;

const HEADER_VALUE = /^([A-Za-z0-9+/]+={0,2})(?:-([1-9][0-9]{0,4}))?$/;

/** Parses an x-amz-checksum-* header value: base64, optionally "-N" composite suffix. Throws nothing; returns undefined for malformed. */
export function parseChecksumHeader(value: string): { raw: Buffer; parts?: number } | undefined {
  if (typeof value !== "string") return undefined;
  const match = HEADER_VALUE.exec(value.trim());
  if (match === null) return undefined;
  const b64 = match[1] as string;
  if (b64.length % 4 !== 0) return undefined;
  const raw = Buffer.from(b64, "base64");
  // Node's decoder is lenient; a round trip rejects stray padding and non-zero pad bits.
  if (raw.length === 0 || raw.toString("base64") !== b64) return undefined;
  if (match[2] === undefined) return { raw };
  const parts = Number(match[2]);
  if (parts > MAX_PARTS) return undefined;
  return { raw, parts };
}

/**
 * Finds the checksum headers on a response (header names lowercase): returns alg, value, and type
 * (FULL_OBJECT|COMPOSITE from x-amz-checksum-type if present, else inferred from "-N").
 *
 * A value that is malformed, or whose length does not fit its algorithm, counts as absent. With
 * more than one checksum header, CRC64NVME, CRC32C, CRC32, SHA256, SHA1 is the order of preference.
 * Note that a `partNumber` or part-aligned GET of a composite object answers the part's own
 * checksum: type COMPOSITE with no `parts`.
 */
export function checksumFromHeaders(
  headers: Record<string, string | undefined>,
): { alg: ChecksumAlgorithm; raw: Buffer; type: "FULL_OBJECT" | "COMPOSITE"; parts?: number } | undefined {
  const declared = headers["x-amz-checksum-type"]?.trim().toUpperCase();
  for (const alg of HEADER_PREFERENCE) {
    const value = headers[`x-amz-checksum-${alg.toLowerCase()}`];
    if (value === undefined) continue;
    const parsed = parseChecksumHeader(value);
    if (parsed === undefined || parsed.raw.length !== DIGEST_BYTES[alg]) continue;
    const type =
      declared === "FULL_OBJECT" || declared === "COMPOSITE"
        ? declared
        : parsed.parts !== undefined
          ? "COMPOSITE"
          : "FULL_OBJECT";
    return parsed.parts === undefined
      ? { alg, raw: parsed.raw, type }
      : { alg, raw: parsed.raw, type, parts: parsed.parts };
  }
  return undefined;
}
