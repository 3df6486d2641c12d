/**
 * A keyed compile-cache directory as files with sizes and digests, packed into one tar.gz for upload
 * and unpacked from one with every entry checked against the manifest. One packed object per cache:
 * a cache is thousands of small files, and one request per file would cost more than the bytes.
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { chmod, link, lstat, mkdir, open, readdir, rm } from "node:fs/promises";
import { dirname, join, relative } from "node:path";
import { Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import pLimit from "p-limit";
import picomatch from "picomatch";
import * as tar from "tar";
import { ColdstartError, isColdstartError } from "../errors.js";
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
 * follows a link: a keyed directory that is not a real directory lists as empty, and symlinked
 * entries inside it are not descended into.
 */
export async function listCacheDir(dir: string): Promise<DirListing> {
  const top = await lstat(dir).catch(() => undefined);
  if (!top?.isDirectory()) return { files: [], bytes: 0, fingerprint: top ? "not-a-directory" : "" };
  const entries = await readdir(dir, { recursive: true, withFileTypes: true }).catch(
    (e: NodeJS.ErrnoException) => {
      if (e.code === "ENOENT") return [];
      throw e;
    },
  );
  const files: DirListing["files"] = [];
  for (const e of entries) {
    // Symlinks and devices are not artifacts, and a link could point a publish outside the root.
    if (!e.isFile()) continue;
    const abs = join(e.parentPath, e.name);
    const path = relative(dir, abs).split("\\").join("/");
    if (isNoise(path)) continue;
    const st = await lstat(abs).catch(() => undefined);
    if (!st?.isFile()) continue;
    files.push({ path, bytes: st.size, mtimeMs: st.mtimeMs, dev: st.dev, ino: st.ino });
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

/**
 * Hard-links the listed files into `into` (daemon-private, on the same filesystem) and checks that
 * each link is the very inode that was listed. The pod owns the keyed directory and may swap a
 * subdirectory for a symlink at any moment; packing from the checked links means the daemon never
 * reads, through such a link, a file outside the keyed directory. Throws CS_KEY_UNSAFE.
 */
export async function snapshotFiles(dir: string, files: ListedFile[], into: string): Promise<void> {
  for (const f of files) {
    const target = join(into, f.path);
    await mkdir(dirname(target), { recursive: true });
    await link(join(dir, f.path), target);
    const st = await lstat(target);
    if (!st.isFile() || st.ino !== f.ino || st.dev !== f.dev) {
      await rm(target, { force: true });
      throw new ColdstartError(
        "CS_KEY_UNSAFE",
        `compile cache: ${f.path} changed into another file while being published (a symlinked directory?)`,
        { details: { value: f.path } },
      );
    }
  }
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
 * `dest`), or the abort reason when `signal` fires. The body is always consumed or destroyed.
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
  const mkdirs = async (dir: string) => {
    if (made.has(dir)) return;
    await mkdir(join(dest, dir), { recursive: true, mode: 0o777 });
    made.add(dir);
  };
  const onEntry = (entry: tar.ReadEntry) => {
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
    pending.push(
      (async () => {
        const hash = createHash("sha256");
        const parent = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : "";
        await mkdirs(parent);
        // O_EXCL: a fresh file in a directory only the daemon writes; never an existing path.
        const fh = await open(join(dest, path), "wx", 0o666);
        try {
          for await (const chunk of entry as AsyncIterable<Buffer>) {
            hash.update(chunk);
            await fh.write(chunk);
          }
        } finally {
          await fh.close();
        }
        const digest = hash.digest("hex");
        if (digest !== f.sha256) refuse(`${path} has SHA-256 ${digest}, the manifest says ${f.sha256}`);
      })().catch((err: unknown) => {
        entry.resume();
        problem ??= isColdstartError(err)
          ? err
          : remoteInvalid(`writing ${path}: ${(err as Error).message}`, err);
      }),
    );
  };
  const parser = new tar.Parser({ strict: true, noResume: true, onReadEntry: onEntry });
  const tap = sha256Tap();
  try {
    await pipeline(body, tap.stream, parser as unknown as NodeJS.WritableStream, signal ? { signal } : {});
    await Promise.all(pending);
  } catch (err) {
    await Promise.allSettled(pending);
    if (signal?.aborted) throw signal.reason ?? err;
    if (isColdstartError(err)) throw err;
    throw remoteInvalid(`the pack cannot be unpacked: ${(err as Error).message}`, err);
  } finally {
    body.destroy();
  }
  if (problem) throw problem;
  for (const f of files)
    if (!written.has(f.path)) throw remoteInvalid(`the pack lacks ${f.path}, which the manifest lists`);
  // umask narrowed the modes: the pod's user must be able to add and replace artifacts.
  for (const f of files) await chmod(join(dest, f.path), 0o666);
  for (const d of made) await chmod(join(dest, d), 0o777);
  return tap.result();
}

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
