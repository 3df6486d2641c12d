import { lstat, open, rename, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import type { Logger } from "pino";
import { ColdstartError, isColdstartError } from "../errors.js";
import type { ShardTensors } from "../safetensors/index-json.js";
import { syncDir } from "../store/atomic-file.js";
import type { JournalEntry } from "../store/journal.js";
import type { HeldLock } from "../store/lock.js";
import type { ManifestStore } from "../store/manifest.js";
import { ioError, prepareTarget } from "../store/paths.js";
import type { FilePlan } from "./plan.js";
import { type FileState, tmpId } from "./temp-file.js";
import { manifestEntry, verifyStaged } from "./verify.js";

/** What committing a job's file needs of the job. */
export interface CommitContext {
  /** The destination: the file is renamed to its plan's segments below it. */
  root: string;
  manifest: ManifestStore;
  /** Each committed shard's tensors, for checking the index against them (verify.ts). */
  headers: Map<string, ShardTensors>;
  /** Every file of the job: given when committing an index, which must name only those. */
  allFiles?: FilePlan[] | undefined;
  /** The destination lock: nothing becomes visible under a lock that is no longer ours. */
  lock?: HeldLock | undefined;
  logger?: Logger | undefined;
}

/**
 * Verifies a fully downloaded temp file and renames it into place, recorded in the manifest first.
 * Returns the milliseconds spent verifying and committing. The caller then drops the file's journal.
 */
export async function commitFile(
  fs: FileState,
  c: CommitContext,
): Promise<{ verifyMs: number; commitMs: number }> {
  const { plan } = fs;
  const entries = Array.from({ length: plan.bounds.length - 1 }, (_, p) => fs.done.get(p));
  if (entries.some((e) => e === undefined)) {
    throw new ColdstartError("CS_INTERNAL", `${plan.key}: committing with parts missing`, {
      details: { key: plan.key },
    });
  }
  const done = entries as JournalEntry[];
  const verifyStarted = Date.now();
  const checksum = await verifyStaged({
    plan,
    tmpPath: fs.tmpPath,
    done,
    offered: fs.checksum ?? (done.length === 1 ? done[0]?.checksum : undefined),
    partStarts: fs.partStarts,
    headers: c.headers,
    allFiles: c.allFiles,
    root: c.root,
    logger: c.logger,
  });
  const commitStarted = Date.now();
  const target = await prepareTarget(c.root, plan.segments, plan.key);
  const entry = manifestEntry(plan, done, checksum);
  // The order makes every crash point resumable without refetching the file: temp durable ->
  // manifest entry -> rename (+ dir fsync) -> journal gone. Killed before the rename: the journal
  // and the complete temp file are still there, so a rerun commits without a byte fetched.
  // Killed after it: the manifest knows the final file, and a leftover journal is dropped.
  // A single part was fdatasync'd by its download, before this commit could start.
  if (done.length > 1) {
    try {
      const fh = await open(fs.tmpPath, "r+");
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
    } catch (e) {
      throw ioError(e as NodeJS.ErrnoException, `syncing ${fs.tmpPath}`, plan.key);
    }
  }
  await c.lock?.verify();
  await c.manifest.put(plan.relPath, entry);
  try {
    await rename(fs.tmpPath, target);
    await syncDir(dirname(target));
  } catch (e) {
    throw ioError(e as NodeJS.ErrnoException, `committing ${target}`, plan.key);
  }
  return { verifyMs: commitStarted - verifyStarted, commitMs: Date.now() - commitStarted };
}

/** Verification failures: the bytes on disk are known bad, so their temp file is discarded. */
const REFUSED_BYTES = new Set([
  "CS_SIZE_MISMATCH",
  "CS_CHECKSUM_MISMATCH",
  "CS_SAFETENSORS_INVALID",
  "CS_SAFETENSORS_INDEX_INVALID",
  "CS_OBJECT_CHANGED",
]);

/** True when a commit failed because the file's bytes are wrong (not for an I/O or lock failure). */
export function refusesBytes(err: unknown): boolean {
  return isColdstartError(err) && REFUSED_BYTES.has(err.code);
}

/**
 * True when the manifest has the file as listed and it is in place with its size: nothing to
 * fetch. A crash between the rename and the journal's removal leaves the journal: it is spent.
 */
export async function isCommitted(
  f: FilePlan,
  manifest: ManifestStore,
  root: string,
  tmpDir: string,
): Promise<boolean> {
  const m = manifest.get(f.relPath);
  if (!m || m.etag !== f.etag || m.size !== f.size) return false;
  const st = await lstat(join(root, ...f.segments)).catch(() => undefined);
  if (st?.isFile() !== true || st.size !== f.size) return false;
  await rm(join(tmpDir, `${tmpId(f.relPath)}.journal`), { force: true });
  return true;
}
