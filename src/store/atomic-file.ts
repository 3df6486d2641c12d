import { randomUUID } from "node:crypto";
import { open, rename, rm } from "node:fs/promises";
import { dirname } from "node:path";

/**
 * Replaces `path` with `data` so that a reader (or a crash) sees the old content or the new, never
 * a mix: a temporary file beside it, fdatasync, rename, then fsync of the directory so the rename
 * itself survives a power loss. Errors are thrown as-is (callers map them to the catalog).
 */
export async function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o644): Promise<void> {
  const tmp = `${path}.${randomUUID().slice(0, 8)}.tmp`;
  try {
    const fh = await open(tmp, "w", mode);
    try {
      await fh.writeFile(data);
      await fh.datasync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  await syncDir(dirname(path));
}

/**
 * fsync of a directory: makes renames and creations inside it durable (once they are done: call it
 * after them). Calls on one directory share syncs (group commit): a sync that is already running
 * may have started before the caller's rename, so the caller shares the one that starts after it.
 * Many small files committed at once into one directory then cost a few syncs, not one each.
 */
export function syncDir(dir: string): Promise<void> {
  const entry = dirSyncs.get(dir);
  if (!entry) return startDirSync(dir);
  entry.next ??= entry.running.then(noop, noop).then(() => {
    entry.next = undefined;
    return startDirSync(dir);
  });
  return entry.next;
}

interface DirSync {
  running: Promise<void>;
  /** The sync that starts when `running` ends, shared by every caller that came meanwhile. */
  next: Promise<void> | undefined;
}
const dirSyncs = new Map<string, DirSync>();
const noop = () => {};

function startDirSync(dir: string): Promise<void> {
  const running = fsyncDir(dir).finally(() => {
    const entry = dirSyncs.get(dir);
    if (entry?.running === running && !entry.next) dirSyncs.delete(dir);
  });
  const entry = dirSyncs.get(dir);
  if (entry) entry.running = running;
  else dirSyncs.set(dir, { running, next: undefined });
  return running;
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
