/**
 * A keyed compile-cache directory as files with sizes and digests, packed into one tar.gz for upload
 * and unpacked from one with every entry checked against the manifest. One packed object per cache:
 * a cache is thousands of small files, and one request per file would cost more than the bytes.
 */
import { createHash } from "node:crypto";
import { constants, createReadStream } from "node:fs";
import { chmod, type FileHandle, link, lstat, mkdir, open, readdir, rm } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import pLimit from "p-limit";
import picomatch from "picomatch";
import * as tar from "tar";
import { ColdstartError, isColdstartError } from "../errors.js";
import { openFileBeneath } from "../store/beneath.js";
import { safeRelativePath } from "../store/paths.js";

export interface CacheFile {
  /** Relative to the keyed directory, "/"-separated. */
  path: string;
  bytes: number;
  /** Hex SHA-256 of the file's bytes. */
  sha256: string;
}

/**
 * Files that are not artifacts: locks (filelock), temp files and Triton's in-progress directories,
 * bytecode of the generated modules. Never published, never counted as growth.
 */
const NOISE = ["**/*.lock", "**/*.tmp", "**/tmp.*/**", "**/__pycache__/**", "**/*.pyc"];
const isNoiseMatch = picomatch(NOISE, { dot: true });

export function isNoise(path: string): boolean {
  return isNoiseMatch(path);
}

export interface ListedFile {
  path: string;
  bytes: number;
  mtimeMs: number;
  /** Which inode was listed: a snapshot must link exactly these (see snapshotFiles). */
  dev: number;
  ino: number;
}

export interface DirListing {
  /** Regular, non-noise files, sorted by path. */
  files: ListedFile[];
  bytes: number;
  /** Changes whenever a file is added, removed, resized or rewritten. */
  fingerprint: string;
}

/**
 * Lists a keyed directory without reading file contents (cheap: the periodic scan runs this). Never
 * goes through a link: a keyed directory that is not a real directory lists as empty, and each
 * directory is opened O_NOFOLLOW and read through its descriptor, so a symlink planted at any depth,
 * or a directory swapped for one while the walk is under way, is never descended into.
 */
export async function listCacheDir(dir: string): Promise<DirListing> {
  const top = await openDir(dir);
  if (top === "missing" || top === "not-a-directory")
    return { files: [], bytes: 0, fingerprint: top === "missing" ? "" : top };
  const files: DirListing["files"] = [];
  const walk = async (fh: FileHandle, rel: string): Promise<void> => {
    // The directory itself, not a path that could be redirected (see src/store/beneath.ts).
    const here = `/proc/self/fd/${fh.fd}`;
    const entries = await readdir(here, { withFileTypes: true });
    for (const e of entries) {
      const path = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) {
        const sub = await openDir(`${here}/${e.name}`);
        if (typeof sub === "string") continue;
        try {
          await walk(sub, path);
        } finally {
          await sub.close();
        }
        continue;
      }
      // Symlinks and devices are not artifacts, and a link could point a publish outside the root.
      if (!e.isFile() || isNoise(path)) continue;
      const st = await lstat(`${here}/${e.name}`).catch(() => undefined);
      if (!st?.isFile()) continue;
      files.push({ path, bytes: st.size, mtimeMs: st.mtimeMs, dev: st.dev, ino: st.ino });
    }
  };
  try {
    await walk(top, "");
  } finally {
    await top.close();
  }
  files.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  const h = createHash("sha256");
  let bytes = 0;
  for (const f of files) {
    h.update(`${f.path}\0${f.bytes}\0${f.mtimeMs}\n`);
    bytes += f.bytes;
  }
  return { files, bytes, fingerprint: h.digest("hex").slice(0, 32) };
}

/** A directory opened without following a link; what it is instead when it cannot be. */
async function openDir(path: string): Promise<FileHandle | "missing" | "not-a-directory"> {
  try {
    return await open(path, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return "missing";
    // ELOOP: a symlink; ENOTDIR: a file or a link where the directory was.
    if (code === "ELOOP" || code === "ENOTDIR") return "not-a-directory";
    throw e;
  }
}

/**
 * Hard-links the listed files into `into` (daemon-private, on the same filesystem) and checks that
 * each link is the very inode that was listed, and one that lies below the keyed directory. The pod
 * owns the keyed directory and may swap it, a subdirectory or a file for a symlink at any moment,
 * between listing and linking or in the middle of a listing. So each file is first opened one
 * component at a time from the directory above the keyed one, never through a symlink
 * (openFileBeneath), and held open while it is linked: its inode cannot be freed and reused
 * meanwhile, and a link made through a path that was redirected names another inode and is
 * refused. Packing from the checked links means the daemon never reads, through such a link, a
 * file outside the keyed directory. Throws CS_KEY_UNSAFE. Resolves false, having linked only some,
 * when a listed file is gone: the directory changed since it was listed.
 */
export async function snapshotFiles(dir: string, files: ListedFile[], into: string): Promise<boolean> {
  const above = dirname(dir);
  const keyed = basename(dir);
  const unsafe = (f: ListedFile, why: string, cause?: unknown) =>
    new ColdstartError("CS_KEY_UNSAFE", `compile cache: ${f.path} ${why} while being published`, {
      ...(cause === undefined ? {} : { cause }),
      details: { value: f.path },
    });
  for (const f of files) {
    const opened = await openFileBeneath(above, [keyed, ...f.path.split("/")]).catch((err: unknown) => {
      if (isColdstartError(err) && err.code === "CS_PATH_UNSAFE")
        throw unsafe(f, "is reached through a symlink or a non-directory", err);
      throw err;
    });
    if (!opened) return false;
    try {
      const held = await opened.fh.stat();
      if (held.ino !== f.ino || held.dev !== f.dev) throw unsafe(f, "changed into another file");
      const target = join(into, f.path);
      await mkdir(dirname(target), { recursive: true });
      await link(join(dir, f.path), target);
      const st = await lstat(target);
      if (!st.isFile() || st.ino !== held.ino || st.dev !== held.dev) {
        await rm(target, { force: true });
        throw unsafe(f, "changed into another file (a symlinked directory?)");
      }
    } finally {
      await opened.fh.close();
    }
  }
  return true;
}

/** SHA-256 of each listed file, a few at a time. */
export async function digestFiles(dir: string, files: DirListing["files"]): Promise<CacheFile[]> {
  const limit = pLimit(8);
  return Promise.all(
    files.map((f) =>
      limit(async () => ({ path: f.path, bytes: f.bytes, sha256: await sha256File(join(dir, f.path)) })),
    ),
  );
}

export async function sha256File(path: string): Promise<string> {
  const h = createHash("sha256");
  await pipeline(createReadStream(path), h);
  return h.digest("hex");
}

/**
 * The listed files as a gzip'd tar stream, paths relative to `dir`. Level 1: most of a cache is
 * generated source and JSON, which compresses well even at the fastest level, and packing runs on
 * a node that is also serving.
 */
export function packStream(dir: string, paths: string[]): Readable {
  // tar streams are minipass streams: wrapped, so pipeline and lib-storage see a Node Readable.
  // "./": tar reads an argument starting with "@" as an archive to splice in, not a file.
  const args = paths.map((p) => `./${p}`);
  return Readable.from(tar.c({ cwd: dir, gzip: { level: 1 }, portable: true, noDirRecurse: true }, args), {
    objectMode: false,
  });
}

/**
 * Unpacks `body` (a tar.gz) into the empty, daemon-private directory `dest`, checking as it goes:
 * only regular files the manifest names, each once, of the manifest's size, and directories leading
 * to them; every file's SHA-256 is computed while it is written and compared at its end. tar's parser
 * reads the format; the files are written here, with O_EXCL, so no entry can overwrite, follow a
 * link or outgrow what the manifest declared. Returns the packed stream's size and SHA-256.
 * Throws CS_CACHE_REMOTE_INVALID naming the first entry or file at fault (the caller discards
 * `dest`), the body's own error when the transfer breaks, or the abort reason when `signal`
 * fires. The body is always consumed or destroyed, and every file this opened is closed before it
 * settles, however the pack is damaged.
 */
export async function unpackVerified(
  body: Readable,
  dest: string,
  files: CacheFile[],
  signal?: AbortSignal,
): Promise<{ bytes: number; sha256: string }> {
  const wanted = new Map(files.map((f) => [f.path, f]));
  const dirs = new Set<string>([""]);
  for (const f of files) {
    const parts = f.path.split("/");
    for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join("/"));
  }
  const made = new Set<string>([""]);
  const written = new Set<string>();
  const pending: Promise<void>[] = [];
  let problem: ColdstartError | undefined;
  const refuse = (why: string) => {
    problem ??= remoteInvalid(why);
  };
  // Why the unpack stopped early (a damaged stream, a bad header, the signal), once it has.
  let stopped: unknown;
  // Entries a writer is still reading. When tar's parser gives up (a zlib error, a bad or truncated
  // header), it neither ends nor errors the entry it was feeding: that entry's writer would wait
  // for the rest of the file for ever, holding its file open and its restore unanswered. So every
  // way the unpack stops destroys these entries, which wakes a writer waiting for its next chunk
  // (minipass rejects a pending read of a destroyed stream); a writer between two chunks checks
  // `stopped` before it reads again. The parser may still hand a destroyed entry bytes it had
  // decompressed; minipass answers that with an 'error' event, which must have a listener.
  const feeding = new Set<tar.ReadEntry>();
  const stop = (why: unknown) => {
    if (stopped) return;
    stopped = why ?? new Error("the unpack stopped");
    for (const e of feeding) {
      e.on("error", ignore);
      e.destroy();
    }
  };
  // One level at a time, never recursive: a writer still running after its caller removed `dest`
  // (a restore abandoned at its deadline) fails with ENOENT instead of making `dest` again.
  const mkdirs = async (dir: string): Promise<void> => {
    if (made.has(dir)) return;
    await mkdirs(dir.includes("/") ? dir.slice(0, dir.lastIndexOf("/")) : "");
    await mkdir(join(dest, dir), { mode: 0o777 }).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== "EEXIST") throw e;
    });
    made.add(dir);
  };
  const write = async (entry: tar.ReadEntry, f: CacheFile): Promise<void> => {
    const hash = createHash("sha256");
    await mkdirs(f.path.includes("/") ? f.path.slice(0, f.path.lastIndexOf("/")) : "");
    if (stopped) throw stopped;
    // O_EXCL: a fresh file in a directory only the daemon writes; never an existing path.
    const fh = await open(join(dest, f.path), "wx", 0o666);
    try {
      const chunks = entry[Symbol.asyncIterator]();
      for (;;) {
        if (stopped) throw stopped;
        const next = await chunks.next();
        if (next.done) break;
        hash.update(next.value);
        await fh.write(next.value);
      }
    } finally {
      await fh.close();
    }
    const digest = hash.digest("hex");
    if (digest !== f.sha256) refuse(`${f.path} has SHA-256 ${digest}, the manifest says ${f.sha256}`);
  };
  const onEntry = (entry: tar.ReadEntry) => {
    if (stopped) {
      entry.resume();
      return;
    }
    const path = entry.path.replace(/^(\.\/)+/, "").replace(/\/+$/, "");
    const f = wanted.get(path);
    if (entry.type === "Directory" && dirs.has(path)) {
      entry.resume();
      return;
    }
    if (entry.type !== "File" || !f) {
      refuse(`the pack holds ${entry.type} ${JSON.stringify(entry.path)}, which is not in the manifest`);
      entry.resume();
      return;
    }
    if (written.has(path)) {
      refuse(`the pack holds ${path} twice`);
      entry.resume();
      return;
    }
    if (entry.size !== f.bytes) {
      refuse(`${path} is ${entry.size} bytes in the pack, ${f.bytes} in the manifest`);
      entry.resume();
      return;
    }
    written.add(path);
    feeding.add(entry);
    pending.push(
      write(entry, f)
        .catch((err: unknown) => {
          // Stopped: the reason the unpack stopped is the error, not this writer's wake-up.
          if (stopped) return;
          problem ??= isColdstartError(err)
            ? err
            : remoteInvalid(`writing ${path}: ${(err as Error).message}`, err);
        })
        .finally(() => {
          feeding.delete(entry);
          // Whatever is left of a refused file is drained, so the parser moves on.
          if (!entry.destroyed) entry.resume();
        }),
    );
  };
  const parser = new tar.Parser({ strict: true, noResume: true, onReadEntry: onEntry });
  const tap = sha256Tap();
  // Synchronously, before the caller's own abort handling runs: no writer starts another file then.
  const onAbort = () => stop(signal?.reason);
  signal?.addEventListener("abort", onAbort, { once: true });
  // A body that fails first, by itself (a connection cut mid-pack), is a failed request, not a bad
  // pack; once the parser has failed, the pipeline destroys the body with the parser's error. The
  // parser's listener stays for good: its decompressor may still fail on bytes it took before the
  // pipeline ended, and an 'error' with no listener left would throw out of the daemon.
  let failedFirst: "body" | "parser" | undefined;
  body.on("error", () => {
    failedFirst ??= "body";
  });
  parser.on("error", () => {
    failedFirst ??= "parser";
  });
  try {
    await pipeline(body, tap.stream, parser as unknown as NodeJS.WritableStream, signal ? { signal } : {});
    await Promise.all(pending);
  } catch (err) {
    stop(err);
    await Promise.allSettled(pending);
    if (signal?.aborted) throw signal.reason ?? err;
    if (failedFirst === "body") throw err;
    if (isColdstartError(err)) throw err;
    throw remoteInvalid(`the pack cannot be unpacked: ${(err as Error).message}`, err);
  } finally {
    signal?.removeEventListener("abort", onAbort);
    body.destroy();
  }
  if (stopped) throw stopped;
  if (problem) throw problem;
  for (const f of files)
    if (!written.has(f.path)) throw remoteInvalid(`the pack lacks ${f.path}, which the manifest lists`);
  // umask narrowed the modes: the pod's user must be able to add and replace artifacts.
  for (const f of files) await chmod(join(dest, f.path), 0o666);
  for (const d of made) await chmod(join(dest, d), 0o777);
  return tap.result();
}

function ignore(): void {}

/** A pass-through that counts and SHA-256-hashes what flows through it (a pack, up or down). */
export function sha256Tap(): { stream: Transform; result: () => { bytes: number; sha256: string } } {
  const hash = createHash("sha256");
  let bytes = 0;
  const stream = new Transform({
    transform(chunk: Buffer, _enc, done) {
      hash.update(chunk);
      bytes += chunk.length;
      done(null, chunk);
    },
  });
  return { stream, result: () => ({ bytes, sha256: hash.digest("hex") }) };
}

/** A manifest path must be one a file may take under the keyed directory. */
export function checkManifestPath(path: string): void {
  try {
    safeRelativePath(path, path);
  } catch (err) {
    throw remoteInvalid(`the manifest lists an unsafe path: ${(err as Error).message}`, err);
  }
}

export function remoteInvalid(message: string, cause?: unknown): ColdstartError {
  return new ColdstartError("CS_CACHE_REMOTE_INVALID", `remote compile cache: ${message}`, { cause });
}
