/**
 * What the mirror has learned about the bytes of this node's local blobs: a verdict (matches its
 * digest, or not) per digest, for one exact file (`Blob.stamp`: device, inode, size, change times).
 *
 * A whole blob is checked on its way out (relay.ts `verifyingStream`), and its verdict kept here. A
 * range cannot be checked against the digest of the whole blob, so a range is served only of a
 * blob with a good verdict; without one, the whole file is read and hashed first (once: requests
 * for the same file at the same time share the read). A blob with a bad verdict is a miss, so
 * containerd goes to the next host instead of failing on the same wrong bytes again.
 *
 * A verdict lasts `ttlMs` (or until the file changes: a new stamp), so bytes that rot in place
 * without touching the file's times are found again within that time, at the cost of one more read
 * per blob that is asked for by range.
 */
import { createHash } from "node:crypto";
import type { Blob } from "./content-store.js";
import { digestMismatch } from "./relay.js";

export interface VerifiedBlobsOptions {
  /** How long a verdict holds before the blob is read again. Default 1 hour. */
  ttlMs?: number;
  /** Verdicts kept at most; the oldest are forgotten first. Default 4096. */
  maxEntries?: number;
  /** The clock, in ms (tests). Default Date.now. */
  now?: () => number;
}

/** Whether a blob's bytes are its digest; `why` says what was found instead. */
export type Verdict = { ok: true } | { ok: false; why: string };

/** Read size for hashing a whole blob: large reads, few promises. */
const READ_BYTES = 1024 * 1024;

export class VerifiedBlobs {
  readonly #ttlMs: number;
  readonly #max: number;
  readonly #now: () => number;
  readonly #verdicts = new Map<string, { stamp: string; verdict: Verdict; until: number }>();
  readonly #reading = new Map<string, Promise<Verdict>>();

  constructor(options: VerifiedBlobsOptions = {}) {
    this.#ttlMs = options.ttlMs ?? 60 * 60_000;
    this.#max = options.maxEntries ?? 4096;
    this.#now = options.now ?? Date.now;
  }

  /** The verdict on this exact file while it holds; undefined when there is none. */
  get(digest: string, stamp: string): Verdict | undefined {
    const v = this.#verdicts.get(digest);
    if (!v || v.stamp !== stamp) return undefined;
    if (v.until <= this.#now()) {
      this.#verdicts.delete(digest);
      return undefined;
    }
    return v.verdict;
  }

  /** Records a verdict on this exact file (from a whole transfer that hashed it on the way). */
  set(digest: string, stamp: string, verdict: Verdict): void {
    this.#verdicts.delete(digest);
    this.#verdicts.set(digest, { stamp, verdict, until: this.#now() + this.#ttlMs });
    while (this.#verdicts.size > this.#max) {
      const oldest = this.#verdicts.keys().next().value as string;
      this.#verdicts.delete(oldest);
    }
  }

  /**
   * The verdict on `blob`, reading and hashing all of it through `blob.fh` (by position; the handle
   * stays open) when no verdict holds. `onMismatch` is called by the one call that found a mismatch,
   * not by those that shared its read. Rejects when the file cannot be read (no verdict is kept).
   */
  verify(digest: string, blob: Blob, onMismatch: (why: string) => void): Promise<Verdict> {
    const known = this.get(digest, blob.stamp);
    if (known) return Promise.resolve(known);
    const key = `${digest}\0${blob.stamp}`;
    const reading = this.#reading.get(key);
    if (reading) return reading;
    const read = hashWhole(digest, blob)
      .then((verdict) => {
        this.set(digest, blob.stamp, verdict);
        if (!verdict.ok) onMismatch(verdict.why);
        return verdict;
      })
      .finally(() => this.#reading.delete(key));
    this.#reading.set(key, read);
    return read;
  }
}

async function hashWhole(digest: string, blob: Blob): Promise<Verdict> {
  const hash = createHash("sha256");
  const buf = Buffer.allocUnsafe(Math.max(1, Math.min(blob.size, READ_BYTES)));
  let seen = 0;
  // To the end of the file, not just `size` bytes: a file that grew is not the blob either. A
  // file that keeps growing is cut off one buffer past its size.
  while (seen <= blob.size) {
    const { bytesRead } = await blob.fh.read(buf, 0, buf.length, seen);
    if (bytesRead === 0) break;
    hash.update(buf.subarray(0, bytesRead));
    seen += bytesRead;
  }
  const why = digestMismatch(digest, blob.size, seen, hash.digest("hex"));
  return why === undefined ? { ok: true } : { ok: false, why };
}
