import { type FileHandle, open, readFile } from "node:fs/promises";
import { join } from "node:path";
import type { ObjectChecksum } from "../checksums/types.js";
import { writeFileAtomic } from "./atomic-file.js";
import { readFileBeneath } from "./beneath.js";
import { ioError, STATE_DIR } from "./paths.js";

/**
 * What coldstart knows about a staged, verified file. Piece digests are SHA-256 of each downloaded
 * part, computed while the bytes streamed in (no second read); peers will serve and verify by piece.
 */
export interface ManifestFile {
  key: string;
  size: number;
  etag: string;
  /** Byte offsets of the pieces plus the size at the end. */
  bounds: number[];
  /** SHA-256 (hex) of each piece, in order. */
  pieces: string[];
  /** SHA-256 (hex) over the concatenated raw piece digests: one value that names the whole file. */
  root: string;
  /** The S3 checksum the bytes were checked against, if S3 had one that applied. */
  checksum?: ObjectChecksum;
  stagedAt: string;
}

interface Header {
  version: 1;
  source: string;
}

type Line = { path: string; file: ManifestFile | null };

export const MANIFEST_FILE = "manifest.jsonl";

/**
 * The destination's manifest, `.coldstart/manifest.jsonl`: a header line, then one line per committed
 * (or removed) file, the last line for a path winning. Appending is O(1) per file, so staging
 * thousands of small files stays cheap, and a line is appended right after its file is renamed into
 * place, so a crash loses at most the entry of the file being committed (it is fetched again; a file
 * is never trusted without its entry). `compact()` rewrites it atomically to one line per file.
 */
export class ManifestStore {
  readonly path: string;
  readonly #header: Header;
  readonly #files: Map<string, ManifestFile>;
  #lines: number;
  #fh: FileHandle | undefined;
  #appending: Promise<void> = Promise.resolve();

  private constructor(path: string, header: Header, files: Map<string, ManifestFile>, lines: number) {
    this.path = path;
    this.#header = header;
    this.#files = files;
    this.#lines = lines;
  }

  static async open(root: string, source: string): Promise<ManifestStore> {
    const { path, header, files, lines, first } = await readManifest(root, source);
    const store = new ManifestStore(path, header, files, lines);
    // Another source's manifest (or none, or a damaged header) says nothing about these files; a
    // log with superseded lines is rewritten. An already compact one is left alone: no rewrite (and
    // fsync) on every run over a staged model.
    if (!first || !sameHeader(first, header) || lines > files.size) await store.compact();
    return store;
  }

  /**
   * The committed files of the destination `dest` (segments under `root`), read only: never
   * compacted, never written. Peers' questions read this, so it is opened without following a
   * symlink anywhere below `root` (CS_PATH_UNSAFE otherwise; src/store/beneath.ts).
   */
  static async read(
    root: string,
    dest: readonly string[],
    source: string,
  ): Promise<ReadonlyMap<string, ManifestFile>> {
    const segments = [...dest, STATE_DIR, MANIFEST_FILE];
    const bytes = await readFileBeneath(root, segments);
    return parseManifest(bytes?.toString("utf8") ?? "", { version: 1, source }).files;
  }

  get(relPath: string): ManifestFile | undefined {
    return this.#files.get(relPath);
  }

  /** Records a file (call after it is renamed into place). */
  put(relPath: string, entry: ManifestFile): Promise<void> {
    this.#files.set(relPath, entry);
    return this.#append({ path: relPath, file: entry });
  }

  delete(relPath: string): Promise<void> {
    this.#files.delete(relPath);
    return this.#append({ path: relPath, file: null });
  }

  /** Rewrites the manifest with one line per file, atomically. */
  async compact(): Promise<void> {
    await this.#appending;
    await this.#fh?.close();
    this.#fh = undefined;
    const body = [this.#header, ...[...this.#files].map(([path, file]) => ({ path, file }))];
    try {
      await writeFileAtomic(this.path, `${body.map((l) => JSON.stringify(l)).join("\n")}\n`);
    } catch (e) {
      throw ioError(e as NodeJS.ErrnoException, `writing manifest ${this.path}`);
    }
    this.#lines = this.#files.size;
  }

  /** Closes the manifest, compacting it if it holds superseded lines. */
  async close(): Promise<void> {
    try {
      if (this.#lines > this.#files.size) await this.compact();
      await this.#appending;
    } finally {
      await this.#fh?.close();
      this.#fh = undefined;
    }
  }

  #append(line: Line): Promise<void> {
    const run = async () => {
      try {
        this.#fh ??= await open(this.path, "a");
        await this.#fh.write(`${JSON.stringify(line)}\n`);
        this.#lines++;
      } catch (e) {
        throw ioError(e as NodeJS.ErrnoException, `appending to manifest ${this.path}`);
      }
    };
    this.#appending = this.#appending.then(run, run);
    return this.#appending;
  }
}

async function readManifest(root: string, source: string) {
  const path = join(root, STATE_DIR, MANIFEST_FILE);
  const header: Header = { version: 1, source };
  // Only "no manifest yet" means empty: an unreadable one must not be compacted over.
  const text = await readFile(path, "utf8").catch((e: NodeJS.ErrnoException) => {
    if (e.code === "ENOENT") return "";
    throw ioError(e, `reading manifest ${path}`);
  });
  return { path, header, ...parseManifest(text, header) };
}

function parseManifest(text: string, header: Header) {
  const files = new Map<string, ManifestFile>();
  const [first, ...rest] = text.split("\n");
  let lines = 0;
  if (first && sameHeader(first, header)) {
    for (const raw of rest) {
      if (raw === "") continue;
      try {
        const l = JSON.parse(raw) as Line;
        if (l.file) files.set(l.path, l.file);
        else files.delete(l.path);
        lines++;
      } catch {
        // A torn last line from a crash mid-append: that file is simply fetched again.
      }
    }
  }
  return { files, lines, first };
}

function sameHeader(line: string, header: Header): boolean {
  try {
    const h = JSON.parse(line) as Header;
    return h.version === header.version && h.source === header.source;
  } catch {
    return false;
  }
}
