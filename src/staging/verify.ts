import { combineCrc, compositeOf } from "../checksums/combine.js";
import { parseChecksumHeader } from "../checksums/headers.js";
import { isCrcAlgorithm, type ObjectChecksum } from "../checksums/types.js";
import { ColdstartError } from "../errors.js";
import type { JournalEntry } from "../store/journal.js";
import type { FilePlan } from "./plan.js";

/**
 * Checks the staged bytes against the checksum S3 holds, from the values computed over each range
 * while it streamed in (no second read of the file):
 * - FULL_OBJECT: the single whole-object GET's value, or the ranges' CRCs combined in order
 *   (CRC(A‖B) from CRC(A), CRC(B) and len(B));
 * - COMPOSITE (`…-N`): each S3 part's value (its ranges' CRCs combined, or its one SHA range), then
 *   the checksum of the concatenated part values, as S3 computes it.
 * Returns true when checked and equal, false when it could not judge (values missing: a resumed
 * file journaled without them), and throws CS_CHECKSUM_MISMATCH when they differ.
 */
export function verifyChecksum(
  plan: FilePlan,
  checksum: ObjectChecksum,
  ranges: JournalEntry[],
  partStarts?: number[],
): boolean {
  const expected = parseChecksumHeader(checksum.value);
  if (!expected || ranges.some((r) => r.sum === undefined)) return false;
  const { algorithm } = checksum;
  const rangeValue = (i: number): Buffer => Buffer.from(ranges[i]?.sum as string, "base64");
  const rangeLength = (i: number) => (plan.bounds[i + 1] as number) - (plan.bounds[i] as number);

  /** Value over ranges [from, to): one range as is, several combined (CRC only). */
  const over = (from: number, to: number): Buffer | undefined => {
    if (to - from === 1) return rangeValue(from);
    if (!isCrcAlgorithm(algorithm)) return undefined;
    let acc: Buffer = rangeValue(from);
    for (let i = from + 1; i < to; i++) acc = combineCrc(algorithm, acc, rangeValue(i), rangeLength(i));
    return acc;
  };

  let actual: Buffer | undefined;
  if (checksum.type === "FULL_OBJECT") {
    actual = over(0, ranges.length);
  } else {
    if (!partStarts || expected.parts !== partStarts.length) return false;
    const firstRange = partStarts.map((start) => plan.bounds.indexOf(start));
    if (firstRange.some((i) => i < 0)) return false;
    const values: Buffer[] = [];
    for (const [p, from] of firstRange.entries()) {
      const v = over(from, firstRange[p + 1] ?? ranges.length);
      if (!v) return false;
      values.push(v);
    }
    actual = compositeOf(algorithm, values);
  }
  if (!actual) return false;
  if (!actual.equals(expected.raw)) {
    const shown = `${actual.toString("base64")}${checksum.type === "COMPOSITE" ? `-${expected.parts}` : ""}`;
    throw new ColdstartError(
      "CS_CHECKSUM_MISMATCH",
      `${plan.key}: ${algorithm} of the staged bytes is ${shown}, S3 holds ${checksum.value}`,
      { details: { key: plan.key } },
    );
  }
  return true;
}
