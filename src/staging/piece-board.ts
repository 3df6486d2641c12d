import type { ManifestStore } from "../store/manifest.js";
import { STATE_DIR } from "../store/paths.js";
import type { FileState } from "./temp-file.js";

/** What a job holds of one file (see PieceBoard.held): null pieces are not in yet. */
export interface HeldFile {
  /**
   * Where its bytes are, tried in order: path segments below the destination (PieceBoard.held) or,
   * from HeldPieces.heldObject (src/models/held-pieces.ts), below the staging root. Opened with openFileBeneath, never by a
   * joined path: nothing below the root is followed if it is a symlink.
   */
  locations: string[][];
  size: number;
  bounds: number[];
  pieces: (string | null)[];
  /** Pieces not in yet that this node is fetching from S3 now: a peer may wait for them. */
  fetching: number[];
}

/**
 * A staging job's pieces as peers see them: the files being staged (their durable parts), the
 * manifest of those committed, and the peers waiting for a part this node is fetching. The job
 * tells it what moves (`track`, `pieceIn`, `committed`); peers ask (`held`, `whenPiece`).
 */
export class PieceBoard {
  /** Files being staged, by relative path. */
  readonly #files = new Map<string, FileState>();
  #manifest: ManifestStore | undefined;
  /** Peers waiting for a part to be in, by relative path and part. */
  readonly #waiters = new Map<string, Set<(inNow: boolean) => void>>();

  /** The job's manifest, once opened: committed files are served from it. */
  set manifest(m: ManifestStore) {
    this.#manifest = m;
  }

  /** A file in several parts, opened: its journaled parts may be served from now on. */
  track(fs: FileState): void {
    this.#files.set(fs.plan.relPath, fs);
  }

  /** The file is renamed into place: it is served from the manifest from now on. */
  committed(relPath: string): void {
    this.#files.delete(relPath);
  }

  /** Part `p` of a file is durable (journaled): peers waiting for it are answered. */
  pieceIn(relPath: string, p: number): void {
    for (const finish of [...(this.#waiters.get(waitKey(relPath, p)) ?? [])]) finish(true);
  }

  /** The job ended: peers waiting for its parts get S3's answer instead, and nothing is held. */
  end(): void {
    for (const waiters of [...this.#waiters.values()]) for (const finish of [...waiters]) finish(false);
    this.#files.clear();
  }

  /**
   * What the job holds of one file, for peers: the committed file with every piece, or a file still
   * staging with the pieces already durable in its temp file (their digests from the journal, so
   * null where a piece is not in yet). A single-part file is held only once committed: its one part
   * is not journaled. The asking node checks every piece's digest and then the whole file against
   * S3's checksums and the safetensors header, as it does bytes from S3.
   */
  held(relPath: string, etag: string): HeldFile | undefined {
    const final = relPath.split("/");
    // Staging first: the manifest has a file's entry a moment before the rename puts it in place.
    const fs = this.#files.get(relPath);
    if (fs) {
      if (!fs.journal || fs.plan.etag !== etag) return undefined;
      return {
        // Renamed meanwhile (same inode, same bytes): then it is at its final path.
        locations: [[STATE_DIR, "tmp", `${fs.id}.partial`], final],
        size: fs.plan.size,
        bounds: fs.plan.bounds,
        pieces: fs.plan.bounds.slice(1).map((_, p) => fs.done.get(p)?.sha256 ?? null),
        fetching: [...fs.inFlight].flatMap(([p, from]) => (from === "s3" ? [p] : [])),
      };
    }
    const committed = this.#manifest?.get(relPath);
    if (!committed || committed.etag !== etag) return undefined;
    return {
      locations: [final],
      size: committed.size,
      bounds: committed.bounds,
      pieces: committed.pieces,
      fetching: [],
    };
  }

  /**
   * Resolves true once part `p` of a file being staged is durable (journaled), false if it is not
   * within `timeoutMs` or the job ends first. A peer waits here for a part this node is fetching.
   */
  whenPiece(relPath: string, p: number, timeoutMs: number): Promise<boolean> {
    const fs = this.#files.get(relPath);
    if (!fs) return Promise.resolve(this.#manifest?.get(relPath) !== undefined);
    if (fs.done.has(p)) return Promise.resolve(true);
    const k = waitKey(relPath, p);
    return new Promise((resolve) => {
      const waiters = this.#waiters.get(k) ?? new Set();
      this.#waiters.set(k, waiters);
      const finish = (inNow: boolean) => {
        clearTimeout(timer);
        waiters.delete(finish);
        if (waiters.size === 0) this.#waiters.delete(k);
        resolve(inNow);
      };
      const timer = setTimeout(() => finish(false), timeoutMs);
      waiters.add(finish);
    });
  }
}

function waitKey(relPath: string, p: number): string {
  return `${relPath}\0${p}`;
}
