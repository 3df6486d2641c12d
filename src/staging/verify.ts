import { ColdstartError } from "../errors.js";
import { combineCrc, parseChecksumHeader } from "../s3/checksum.js";
import type { ObjectChecksum } from "../s3/object-source.js";
import type { JournalEntry } from "../store/journal.js";
import type { FilePlan } from "./plan.js";

/**
 * Checks the staged bytes against the full-object checksum S3 holds: either the value of a single
 * whole-object GET, or the parts' CRCs combined in order (CRC(A‖B) from CRC(A), CRC(B), len(B)), so
 * the check costs no second read of the file.
 */
export function verifyChecksum(plan: FilePlan, checksum: ObjectChecksum, parts: JournalEntry[]): void {
  const expected = parseChecksumHeader(checksum.value);
  if (!expected || expected.parts !== undefined) return;
  let actual: Buffer | undefined;
  for (const [p, e] of parts.entries()) {
    if (e.sum === undefined) return;
    const value = Buffer.from(e.sum, "base64");
    if (actual === undefined) {
      actual = value;
      continue;
    }
    if (
      checksum.algorithm !== "CRC32" &&
      checksum.algorithm !== "CRC32C" &&
      checksum.algorithm !== "CRC64NVME"
    )
      return;
    const len = (plan.bounds[p + 1] as number) - (plan.bounds[p] as number);
    actual = combineCrc(checksum.algorithm, actual, value, len);
  }
  if (actual && !actual.equals(expected.raw)) {
    throw new ColdstartError(
      "CS_CHECKSUM_MISMATCH",
      `${plan.key}: ${checksum.algorithm} of the staged bytes is ${actual.toString("base64")}, S3 holds ${checksum.value}`,
      { details: { key: plan.key } },
    );
  }
}
