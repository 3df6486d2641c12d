import { createHash } from "node:crypto";
import { open, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import type { ObjectChecksum } from "../checksums/types.js";
import { type JournalEntry, PartJournal } from "../store/journal.js";
import { ioError } from "../store/paths.js";
import type { PartRequest } from "./part-download.js";
import type { FilePlan } from "./plan.js";

/** One file of a job while it stages: its plan, temp file, journal and the parts in and in flight. */
export interface FileState {
  plan: FilePlan;
  id: string;
  tmpPath: string;
  /** Absent for single-part files: they either commit whole or are fetched again. */
  journal: PartJournal | undefined;
  done: Map<number, JournalEntry>;
  /** Parts in flight, until journaled, by who answers their current attempt (see #downloadTracked). */
  inFlight: Map<number, "s3" | "peer">;
  /** The object's checksum (full-object CRC, or composite) the ranges' values rebuild, if S3 has one. */
  checksum?: ObjectChecksum | undefined;
  /** For a composite checksum: where each S3 part starts. */
  partStarts?: number[] | undefined;
  /** Set once its commit is started: a file is committed once, whoever finished its last part. */
  committing?: boolean;
}

/** The name a file's temp file and journal share in .coldstart/tmp/. */
export function tmpId(relPath: string): string {
  return createHash("sha256").update(relPath).digest("hex").slice(0, 32);
}

/**
 * A file's temp file (`<id>.partial`, sparse at full size) and its part journal (`<id>.journal`,
 * for files in several parts). Both are resumed when the journal matches the plan and the temp file
 * has its size; else they are made anew, the old journal removed first, so that a crash never
 * leaves a journal beside a fresh zero-filled temp file (a resume would trust zeros). Returns the
 * bytes already journaled (resumed).
 */
export async function openTempFile(
  plan: FilePlan,
  tmpDir: string,
  check: { checksum?: ObjectChecksum; partStarts?: number[] },
): Promise<{ file: FileState; resumedBytes: number }> {
  const id = tmpId(plan.relPath);
  const tmpPath = join(tmpDir, `${id}.partial`);
  const journalPath = join(tmpDir, `${id}.journal`);
  const header = { v: 1 as const, key: plan.key, size: plan.size, etag: plan.etag, bounds: plan.bounds };
  const base = {
    plan,
    id,
    tmpPath,
    checksum: check.checksum,
    partStarts: check.partStarts,
    inFlight: new Map<number, "s3" | "peer">(),
  };
  if (plan.bounds.length === 2) {
    // Aligned to a single S3 part after all: nothing to resume and no journal. A journal left by a
    // listing that had the object in more parts goes.
    await rm(journalPath, { force: true });
    return { file: { ...base, journal: undefined, done: new Map() }, resumedBytes: 0 };
  }
  const loaded = await PartJournal.load(journalPath, header);
  const tmpSize = await stat(tmpPath).then(
    (s) => s.size,
    () => -1,
  );
  if (loaded && tmpSize === plan.size) {
    let resumedBytes = 0;
    for (const p of loaded.done.keys())
      resumedBytes += (plan.bounds[p + 1] as number) - (plan.bounds[p] as number);
    // A resumed file must keep its checksum plan: parts journaled without a value cannot be
    // combined, so then the file is staged on size, ETag and piece digests alone.
    const sums = [...loaded.done.values()].every((e) => e.sum !== undefined);
    return {
      file: { ...base, ...(sums ? {} : { checksum: undefined }), journal: loaded.journal, done: loaded.done },
      resumedBytes,
    };
  }
  // The old journal goes first: a crash below must never leave it beside a fresh, zero-filled
  // temp file whose size matches (a resume would trust zeros).
  await rm(journalPath, { force: true });
  const fh = await open(tmpPath, "w").catch((e) => {
    throw ioError(e, `creating ${tmpPath}`, plan.key);
  });
  try {
    await fh.truncate(plan.size);
  } catch (e) {
    throw ioError(e as NodeJS.ErrnoException, `sizing ${tmpPath}`, plan.key);
  } finally {
    await fh.close();
  }
  const journal = await PartJournal.create(journalPath, header);
  return { file: { ...base, journal, done: new Map() }, resumedBytes: 0 };
}

/** A single-part file's state: no journal (it commits whole or is fetched again). */
export function singleFile(plan: FilePlan, tmpDir: string): FileState {
  const id = tmpId(plan.relPath);
  return {
    plan,
    id,
    tmpPath: join(tmpDir, `${id}.partial`),
    journal: undefined,
    done: new Map(),
    inFlight: new Map(),
  };
}

/** Removes a file's temp file and journal. */
export async function discardTempFile(fs: FileState, tmpDir: string): Promise<void> {
  await rm(fs.tmpPath, { force: true });
  await rm(join(tmpDir, `${fs.id}.journal`), { force: true });
}

/** Part `p` of a file as a download request (part-download.ts, or a worker thread). */
export function partRequest(fs: FileState, p: number, bucket: string): PartRequest {
  const { plan } = fs;
  const parts = plan.bounds.length - 1;
  return {
    bucket,
    key: plan.key,
    etag: plan.etag,
    size: plan.size,
    tmpPath: fs.tmpPath,
    index: p,
    start: plan.bounds[p] as number,
    end: plan.bounds[p + 1] as number,
    whole: parts === 1,
    create: parts === 1,
    durable: fs.journal !== undefined || parts === 1,
    sumAlgorithm: fs.checksum?.algorithm,
  };
}
