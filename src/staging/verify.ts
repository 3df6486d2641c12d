import { createHash } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { join, posix } from "node:path";
import type { Logger } from "pino";
import { combineCrc, compositeOf } from "../checksums/combine.js";
import { parseChecksumHeader } from "../checksums/headers.js";
import { isCrcAlgorithm, type ObjectChecksum } from "../checksums/types.js";
import { ColdstartError } from "../errors.js";
import { readSafetensorsHeader } from "../safetensors/header.js";
import {
  checkIndexAgainstShards,
  checkIndexSize,
  parseSafetensorsIndex,
  type ShardTensors,
  shardTensors,
} from "../safetensors/index-json.js";
import type { JournalEntry } from "../store/journal.js";
import type { ManifestFile } from "../store/manifest.js";
import { ioError } from "../store/paths.js";
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
    const rangeAt = new Map(plan.bounds.map((b, i) => [b, i]));
    const firstRange = partStarts.map((start) => rangeAt.get(start) ?? -1);
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

export const INDEX_SUFFIX = ".safetensors.index.json";

/**
 * Checks a fully downloaded temp file before it may be committed: its size against the listing,
 * S3's checksum where one was offered (rebuilt from the ranges' values), a shard's safetensors
 * header, an index against the shards it names (read from `headers`, or from the destination for a
 * shard staged before). Returns the checksum the bytes were checked against: only that one goes into
 * the manifest.
 */
export async function verifyStaged(o: {
  plan: FilePlan;
  tmpPath: string;
  done: JournalEntry[];
  offered: ObjectChecksum | undefined;
  partStarts: number[] | undefined;
  /** Tensors of the shards checked so far, by relative path: indexes are checked against them. */
  headers: Map<string, ShardTensors>;
  /** Every file of the job: an index is checked only when it is given. */
  allFiles: FilePlan[] | undefined;
  /** The destination, where shards staged before are. */
  root: string;
  logger?: Logger | undefined;
}): Promise<ObjectChecksum | undefined> {
  const { plan } = o;
  const st = await stat(o.tmpPath);
  if (st.size !== plan.size) {
    throw new ColdstartError(
      "CS_SIZE_MISMATCH",
      `${plan.key}: staged ${st.size} bytes, S3 lists ${plan.size}`,
      {
        details: { key: plan.key },
      },
    );
  }
  const checksum = o.offered && verifyChecksum(plan, o.offered, o.done, o.partStarts) ? o.offered : undefined;
  if (o.offered && !checksum) {
    o.logger?.warn(
      { key: plan.key, checksum: o.offered },
      "S3 checksum could not be checked (values missing)",
    );
  }
  if (plan.relPath.endsWith(".safetensors")) {
    o.headers.set(plan.relPath, shardTensors(await readSafetensorsHeader(o.tmpPath, plan.key)));
  } else if (plan.relPath.endsWith(INDEX_SUFFIX) && o.allFiles) {
    await checkIndex(plan, o.tmpPath, o.headers, o.allFiles, o.root);
  }
  return checksum;
}

/** The manifest's record of a verified file: its pieces' SHA-256, their root, S3's checksum if checked. */
export function manifestEntry(
  plan: FilePlan,
  done: JournalEntry[],
  checksum: ObjectChecksum | undefined,
): ManifestFile {
  const pieces = done.map((e) => e.sha256);
  return {
    key: plan.key,
    size: plan.size,
    etag: plan.etag,
    bounds: plan.bounds,
    pieces,
    root: createHash("sha256")
      .update(Buffer.concat(pieces.map((h) => Buffer.from(h, "hex"))))
      .digest("hex"),
    ...(checksum ? { checksum } : {}),
    stagedAt: new Date().toISOString(),
  };
}

async function checkIndex(
  plan: FilePlan,
  tmpPath: string,
  headers: Map<string, ShardTensors>,
  allFiles: FilePlan[],
  root: string,
): Promise<void> {
  checkIndexSize(plan.size, plan.key);
  const text = await readFile(tmpPath, "utf8").catch((e) => {
    throw ioError(e, `reading ${tmpPath}`, plan.key);
  });
  const index = parseSafetensorsIndex(text, plan.key);
  const dir = posix.dirname(plan.relPath);
  const shards = new Map<string, ShardTensors>();
  const staged = new Set(allFiles.map((f) => f.relPath));
  for (const shard of new Set(index.weightMap.values())) {
    const rel = dir === "." ? shard : `${dir}/${shard}`;
    let h = headers.get(rel);
    if (!h && staged.has(rel)) {
      h = shardTensors(await readSafetensorsHeader(join(root, ...rel.split("/")), rel));
      headers.set(rel, h);
    }
    if (h) shards.set(shard, h);
  }
  checkIndexAgainstShards(index, shards, plan.key);
}
