import { appendFile, readFile, rm } from "node:fs/promises";
import type { ObjectChecksum } from "../checksums/types.js";
import { ioError } from "./paths.js";

/** What a journal was started for; a resume is only valid for the exact same object and plan. */
export interface JournalHeader {
  v: 1;
  key: string;
  size: number;
  etag: string;
  /** Byte offsets where each part starts, plus the size at the end (parts = starts.length - 1). */
  bounds: number[];
}

/** A part whose bytes are durable (fdatasync'd) in the temp file. */
export interface JournalEntry {
  p: number;
  /** SHA-256 of the part's bytes, hex: the manifest's piece digest. */
  sha256: string;
  /** The part's value of the S3 checksum algorithm in use (base64), when the file is checked against one. */
  sum?: string;
  /** The checksum S3 sent with a whole-object GET (single-part files), to compare `sum` with. */
  checksum?: ObjectChecksum;
}

/**
 * Append-only record of completed parts of one file, one JSON line each, beside its temp file.
 * A line is appended only after the part's bytes were fdatasync'd, so the journal never claims bytes
 * that a crash could lose; a torn last line (crash mid-append) is ignored on load.
 */
export class PartJournal {
  readonly path: string;

  private constructor(path: string) {
    this.path = path;
  }

  /** Starts a fresh journal, replacing any old one. */
  static async create(path: string, header: JournalHeader): Promise<PartJournal> {
    await rm(path, { force: true });
    const j = new PartJournal(path);
    await appendFile(path, `${JSON.stringify(header)}\n`).catch((e) => {
      throw ioError(e, `writing journal ${path}`, header.key);
    });
    return j;
  }

  /**
   * Loads the completed parts if the journal exists and was made for `expected`; otherwise returns
   * undefined (the caller starts over).
   */
  static async load(
    path: string,
    expected: JournalHeader,
  ): Promise<{ journal: PartJournal; done: Map<number, JournalEntry> } | undefined> {
    const text = await readFile(path, "utf8").catch(() => undefined);
    if (text === undefined) return undefined;
    const lines = text.split("\n");
    let header: JournalHeader;
    try {
      header = JSON.parse(lines[0] ?? "");
    } catch {
      return undefined;
    }
    if (JSON.stringify(header) !== JSON.stringify(expected)) return undefined;
    const done = new Map<number, JournalEntry>();
    const parts = expected.bounds.length - 1;
    for (const line of lines.slice(1)) {
      if (line === "") continue;
      try {
        const e = JSON.parse(line) as JournalEntry;
        if (Number.isInteger(e.p) && e.p >= 0 && e.p < parts && /^[0-9a-f]{64}$/.test(e.sha256))
          done.set(e.p, e);
      } catch {
        // A torn line from a crash mid-append: that part is simply fetched again.
      }
    }
    return { journal: new PartJournal(path), done };
  }

  async record(entry: JournalEntry, key: string): Promise<void> {
    await appendFile(this.path, `${JSON.stringify(entry)}\n`).catch((e) => {
      throw ioError(e, `writing journal ${this.path}`, key);
    });
  }

  async remove(): Promise<void> {
    await rm(this.path, { force: true });
  }
}
