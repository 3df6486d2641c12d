/**
 * Opening a path below a root without following a symlink anywhere on the way: the one way any
 * request (a peer's piece, a mirror's blob, a status read) reaches a file. `O_NOFOLLOW` guards only
 * the last component of a path; a directory swapped for a symlink higher up would still be
 * followed, out of the root.
 *
 * The walk opens each component relative to the directory opened before it, `O_NOFOLLOW` every
 * time (`O_DIRECTORY` for directories). Node has no openat(2), so "relative to a descriptor" is
 * spelled `/proc/self/fd/<dirfd>/<name>`: the kernel resolves that magic link to the open
 * directory itself, not to a path it re-reads, so renaming or replacing anything above cannot
 * redirect the next step. It needs procfs (every container has it) and no native addon, so the
 * guard is the same on every node, with or without the addon's build. openat2's
 * RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS would do it in one call, but through an optional addon;
 * a walk of a few components costs microseconds against the megabytes read afterwards.
 */
import { constants } from "node:fs";
import { type FileHandle, mkdir, open, rename } from "node:fs/promises";
import { ColdstartError } from "../errors.js";

const DIR = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;
// O_NONBLOCK: a FIFO planted where a file should be must not hang the open.
const FILE = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

/** A file opened beneath a root: its handle (the caller closes it) and its size. */
export interface OpenedFile {
  fh: FileHandle;
  size: number;
}

/**
 * Opens the regular file `segments` names under `root` for reading. Resolves undefined when a
 * component does not exist; throws CS_PATH_UNSAFE when any component is a symlink, a directory
 * component is not a directory, or the file is not a regular file. `root` itself is trusted (it is
 * configuration, and may be a symlink an operator made).
 */
export async function openFileBeneath(
  root: string,
  segments: readonly string[],
): Promise<OpenedFile | undefined> {
  checkSegments(root, segments);
  const last = segments.length - 1;
  let dir = await openOrMissing(root, constants.O_RDONLY | constants.O_DIRECTORY, root, segments);
  if (!dir) return undefined;
  try {
    for (let i = 0; i < last; i++) {
      const next = await openOrMissing(at(dir, segments[i] as string), DIR, root, segments);
      if (!next) return undefined;
      await dir.close();
      dir = next;
    }
    const fh = await openOrMissing(at(dir, segments[last] as string), FILE, root, segments);
    if (!fh) return undefined;
    const st = await fh.stat();
    if (!st.isFile()) {
      await fh.close();
      throw unsafe(root, segments, "is not a regular file");
    }
    return { fh, size: st.size };
  } finally {
    await dir.close().catch(() => {});
  }
}

/** Like {@link openFileBeneath}, the whole file read into memory (for small files: manifests). */
export async function readFileBeneath(
  root: string,
  segments: readonly string[],
): Promise<Buffer | undefined> {
  const f = await openFileBeneath(root, segments);
  if (!f) return undefined;
  try {
    return await f.fh.readFile();
  } finally {
    await f.fh.close();
  }
}

/**
 * Renames what `segments` names below `root` to `to`, reaching its parent without following a
 * symlink (CS_PATH_UNSAFE otherwise); the entry itself is moved as it is, a link as a link, never
 * what it points at. False when it does not exist. For eviction: what is then deleted under `to`
 * was below the root.
 */
export async function renameBeneath(root: string, segments: readonly string[], to: string): Promise<boolean> {
  checkSegments(root, segments);
  let dir = await openOrMissing(root, constants.O_RDONLY | constants.O_DIRECTORY, root, segments);
  if (!dir) return false;
  try {
    for (const s of segments.slice(0, -1)) {
      const next = await openOrMissing(at(dir, s), DIR, root, segments);
      if (!next) return false;
      await dir.close();
      dir = next;
    }
    await rename(at(dir, segments[segments.length - 1] as string), to);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw e;
  } finally {
    await dir.close().catch(() => {});
  }
}

/**
 * Makes the directories `segments` names below `root`, one at a time, refusing (CS_PATH_UNSAFE)
 * where one exists as a symlink or a non-directory: what is then created or written below them
 * stays below the root.
 */
export async function mkdirBeneath(root: string, segments: readonly string[]): Promise<void> {
  checkSegments(root, segments);
  let dir = await open(root, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    for (const s of segments) {
      await mkdir(at(dir, s)).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== "EEXIST") throw e;
      });
      const next = await openOrMissing(at(dir, s), DIR, root, segments);
      if (!next) throw unsafe(root, segments, "vanished while being created");
      await dir.close();
      dir = next;
    }
  } finally {
    await dir.close().catch(() => {});
  }
}

function at(dir: FileHandle, name: string): string {
  return `/proc/self/fd/${dir.fd}/${name}`;
}

async function openOrMissing(
  path: string,
  flags: number,
  root: string,
  segments: readonly string[],
): Promise<FileHandle | undefined> {
  try {
    return await open(path, flags);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return undefined;
    // ELOOP: a symlink where O_NOFOLLOW forbids one; ENOTDIR: a file (or a link) where a directory
    // was expected. Either way the layout was tampered with, not merely incomplete.
    if (code === "ELOOP" || code === "ENOTDIR" || code === "EMLINK") {
      throw unsafe(root, segments, "crosses a symlink or a non-directory", e);
    }
    throw new ColdstartError(
      "CS_IO_ERROR",
      `opening ${describePath(root, segments)}: ${code ?? ""} ${(e as Error).message}`.trim(),
      { cause: e },
    );
  }
}

function checkSegments(root: string, segments: readonly string[]): void {
  if (segments.length === 0) throw unsafe(root, segments, "names no file");
  for (const s of segments) {
    if (s === "" || s === "." || s === ".." || s.includes("/") || s.includes("\0")) {
      throw unsafe(root, segments, `has the path segment ${JSON.stringify(s)}`);
    }
  }
}

function unsafe(root: string, segments: readonly string[], why: string, cause?: unknown): ColdstartError {
  const path = describePath(root, segments);
  return new ColdstartError("CS_PATH_UNSAFE", `refusing ${path}: it ${why}`, {
    ...(cause === undefined ? {} : { cause }),
    details: { value: path },
  });
}

function describePath(root: string, segments: readonly string[]): string {
  return [root.replace(/\/+$/, ""), ...segments].join("/");
}
