/**
 * A keyed compile-cache directory as files with sizes and digests, packed into one tar.gz for upload
 * and unpacked from one with every entry checked against the manifest. One packed object per cache:
 * a cache is thousands of small files, and one request per file would cost more than the bytes.
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { chmod, lstat, readdir } from "node:fs/promises";
import { join, relative } from "node:path";
import { Readable } from "node:stream";
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

export interface DirListing {
  /** Regular, non-noise files, sorted by path. */
  files: { path: string; bytes: number; mtimeMs: number }[];
  bytes: number;
  /** Changes whenever a file is added, removed, resized or rewritten. */
  fingerprint: string;
}

/** Lists a keyed directory without reading file contents (cheap: the periodic scan runs this). */
export async function listCacheDir(dir: string): Promise<DirListing> {
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
    files.push({ path, bytes: st.size, mtimeMs: st.mtimeMs });
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
  return Readable.from(tar.c({ cwd: dir, gzip: { level: 1 }, portable: true, noDirRecurse: true }, paths), {
    objectMode: false,
  });
}

/**
 * Unpacks `body` into the empty directory `dest`, accepting only regular files and directories
 * whose paths the manifest names (or lead to one), then checks every manifest file's size and digest.
 * Throws CS_CACHE_REMOTE_INVALID naming the first entry or file at fault; the caller discards `dest`.
 */
export async function unpackVerified(body: Readable, dest: string, files: CacheFile[]): Promise<void> {
  const wanted = new Map(files.map((f) => [f.path, f]));
  const dirs = new Set<string>();
  for (const f of files) {
    const parts = f.path.split("/");
    for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join("/"));
  }
  let refused: string | undefined;
  const extract = tar.x({
    cwd: dest,
    strict: true,
    preserveOwner: false,
    // The pod's user is not the daemon's: it must be able to add new artifacts beside these.
    dmode: 0o777,
    fmode: 0o666,
    filter: (raw, entry) => {
      const path = raw.replace(/\/+$/, "");
      const type = "type" in entry ? entry.type : undefined;
      const ok =
        (type === "File" && wanted.has(path)) || (type === "Directory" && (dirs.has(path) || path === "."));
      if (!ok) refused ??= `${type ?? "entry"} ${JSON.stringify(raw)} is not in the manifest`;
      return ok;
    },
  });
  try {
    await pipeline(body, extract);
  } catch (err) {
    if (isColdstartError(err)) throw err;
    throw remoteInvalid(`the pack cannot be unpacked: ${(err as Error).message}`, err);
  }
  if (refused) throw remoteInvalid(`the pack holds ${refused}`);
  const limit = pLimit(8);
  await Promise.all(
    files.map((f) =>
      limit(async () => {
        const abs = join(dest, f.path);
        const st = await lstat(abs).catch(() => undefined);
        if (!st?.isFile()) throw remoteInvalid(`the pack lacks ${f.path}, which the manifest lists`);
        if (st.size !== f.bytes)
          throw remoteInvalid(`${f.path} is ${st.size} bytes in the pack, ${f.bytes} in the manifest`);
        const digest = await sha256File(abs);
        if (digest !== f.sha256)
          throw remoteInvalid(`${f.path} has SHA-256 ${digest}, the manifest says ${f.sha256}`);
        // umask may have narrowed fmode; the pod must be able to replace what it finds.
        await chmod(abs, 0o666);
      }),
    ),
  );
  for (const d of dirs) await chmod(join(dest, d), 0o777);
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
