import type { PieceHolder } from "../peers/serve.js";
import { parseS3Uri } from "../s3/uri.js";
import type { HeldFile } from "../staging/piece-board.js";
import type { StageJob } from "../staging/stage-job.js";
import { type ManifestFile, ManifestStore } from "../store/manifest.js";
import { RootLayout } from "../store/root-layout.js";
import type { ModelRecord } from "./model-registry.js";

/** What the node's held pieces are read from: the model manager's records and running jobs. */
export interface HeldPiecesHost {
  records(): ModelRecord[];
  record(id: string): ModelRecord | undefined;
  /** The job staging the model now, if one is. */
  jobOf(id: string): StageJob | undefined;
}

/**
 * What this node holds for peers (src/peers/serve.ts): the verified files of ready models, from their
 * manifests, and the parts already durable of models staging now, from their jobs.
 */
export class HeldPieces implements PieceHolder {
  /** The staging root: every HeldFile location is below it. */
  readonly root: string;
  readonly #host: HeldPiecesHost;
  readonly #layout: RootLayout;
  readonly #manifests = new Map<
    string,
    { readyAt: string | undefined; files: ReadonlyMap<string, ManifestFile> }
  >();

  constructor(root: string, host: HeldPiecesHost) {
    this.root = root;
    this.#host = host;
    this.#layout = new RootLayout(root);
  }

  /**
   * What this node can serve a peer of `bucket/key` at ETag `etag`: the verified, committed file of a
   * ready model, else what a model staging now holds of it (StageJob.held: the pieces already
   * durable), else undefined.
   */
  async heldObject(bucket: string, key: string, etag: string): Promise<HeldFile | undefined> {
    let partial: HeldFile | undefined;
    for (const { record, rel, job } of this.#covering(bucket, key)) {
      const dest = this.#layout.modelSegments(record.id);
      if (job) {
        const held = partial ? undefined : job.held(rel, etag);
        if (held) partial = { ...held, locations: held.locations.map((l) => [...dest, ...l]) };
        continue;
      }
      if (record.state !== "ready") continue;
      const file = (await this.#manifestOf(record)).get(rel);
      if (file && file.etag === etag) {
        const location = [...dest, ...rel.split("/")];
        return {
          locations: [location],
          size: file.size,
          bounds: file.bounds,
          pieces: file.pieces,
          fetching: [],
        };
      }
    }
    return partial;
  }

  /**
   * Whether a model staging now covers `bucket/key` but has not listed its files yet: a peer asking
   * about the key is told to ask again soon rather than that nobody has it.
   */
  planning(bucket: string, key: string): boolean {
    for (const { job } of this.#covering(bucket, key)) if (job?.listing) return true;
    return false;
  }

  /**
   * Waits (up to `timeoutMs`) for part `piece` of `bucket/key` at `etag` to be in, in a model staging
   * now (StageJob.whenPiece); false at once when no staging model has that file.
   */
  async whenPiece(
    bucket: string,
    key: string,
    etag: string,
    piece: number,
    timeoutMs: number,
  ): Promise<boolean> {
    for (const { rel, job } of this.#covering(bucket, key))
      if (job?.held(rel, etag)) return job.whenPiece(rel, piece, timeoutMs);
    return false;
  }

  /** The models whose source covers `bucket/key`, with the key relative to it and the job staging it. */
  *#covering(bucket: string, key: string): Generator<{ record: ModelRecord; rel: string; job?: StageJob }> {
    for (const record of this.#host.records()) {
      const { bucket: b, prefix } = parseS3Uri(record.source);
      if (b !== bucket || !key.startsWith(prefix)) continue;
      const job = this.#host.jobOf(record.id);
      yield { record, rel: key.slice(prefix.length), ...(job ? { job } : {}) };
    }
  }

  /** A ready model's manifest entries, read once per readiness (a restage makes a new one). */
  async #manifestOf(r: ModelRecord): Promise<ReadonlyMap<string, ManifestFile>> {
    const cached = this.#manifests.get(r.id);
    if (cached && cached.readyAt === r.readyAt) return cached.files;
    const files = await ManifestStore.read(this.root, this.#layout.modelSegments(r.id), r.source);
    // Models evicted since are forgotten here too.
    for (const id of this.#manifests.keys()) if (!this.#host.record(id)) this.#manifests.delete(id);
    this.#manifests.set(r.id, { readyAt: r.readyAt, files });
    return files;
  }
}
