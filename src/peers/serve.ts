/**
 * The peer protocol's serving half (its client: locator.ts and piece-client.ts), a fastify plugin
 * the API mounts: what this node holds verified, one piece of it, and for peers' image mirrors a
 * blob of this node's containerd content store and what a tag points at. TCP with a token only: a
 * peer token (peers.tokenFile) or the API token, checked by the API for every `/v1/peer/*` route (a
 * route mounted here under another prefix would need the API token). Served from this node's own
 * files, never relayed from elsewhere, so answers cannot loop.
 */
import type { FileHandle } from "node:fs/promises";
import { pipeline, Readable, Transform } from "node:stream";
import type { FastifyPluginAsync } from "fastify";
import { ColdstartError } from "../errors.js";
import type { Metrics } from "../metrics/metrics.js";
import type { ImageResolver } from "../mirror/containerd-images.js";
import type { ContentStore } from "../mirror/content-store.js";
import { imageRef } from "../mirror/tags.js";
import type { HeldFile } from "../staging/piece-board.js";
import type { RateLimiter } from "../staging/rate-limiter.js";
import { openFileBeneath } from "../store/beneath.js";
import { PIECE_DIGEST_HEADER } from "./protocol.js";

/** What the node holds for peers: models/held-pieces.ts implements it. */
export interface PieceHolder {
  /** The staging root every held file's locations are relative to. */
  readonly root: string;
  /** A verified copy of the object at that ETag (complete, or the parts journaled so far). */
  heldObject(bucket: string, key: string, etag: string): Promise<HeldFile | undefined>;
  /** A model staging here covers the key but has not listed it yet. */
  planning(bucket: string, key: string): boolean;
  /** Resolves true once piece `i` is in (this node fetches it), false after `waitMs`. */
  whenPiece(bucket: string, key: string, etag: string, i: number, waitMs: number): Promise<boolean>;
}

export interface PeerServeDeps {
  holder: PieceHolder;
  metrics?: Metrics | undefined;
  /** containerd's content store, when the mirror is on: peers' mirrors fetch blobs from it. */
  contentStore?: ContentStore | undefined;
  /** This node's containerd Images API: peers' mirrors resolve tags here. */
  images?: ImageResolver | undefined;
  /** Caps what this node serves to peers (peers.maxUploadBytesPerSecond), when set. */
  peerUploadLimiter?: RateLimiter | undefined;
}

/** Which object a peer asks about: S3's names and the ETag it staged (S3 stays the authority). */
interface PeerQuery {
  bucket: string;
  key: string;
  etag: string;
  piece?: string;
  /** Milliseconds to wait for a piece this node is fetching from S3 now (0: answer at once). */
  wait?: string;
  /** Where the asker expects the piece to begin; another answers 404. */
  start?: string;
}

/** The longest a peer may wait for a piece this node is fetching (a piece is at most 64 MiB). */
const MAX_PIECE_WAIT_MS = 60_000;

const peerQuery = {
  type: "object",
  additionalProperties: false,
  required: ["bucket", "key", "etag"],
  properties: {
    bucket: { type: "string", minLength: 1, maxLength: 255 },
    key: { type: "string", minLength: 1, maxLength: 1024 },
    etag: { type: "string", minLength: 1, maxLength: 256 },
    piece: { type: "string", pattern: "^[0-9]{1,7}$" },
    wait: { type: "string", pattern: "^[0-9]{1,5}$" },
    start: { type: "string", pattern: "^[0-9]{1,16}$" },
  },
} as const;

export const peerRoutes: FastifyPluginAsync<{ deps: PeerServeDeps }> = async (app, { deps }) => {
  // Served from this node's own files: committed, or parts already journaled by a model staging here.
  const held = async (q: PeerQuery) => {
    const h = await deps.holder.heldObject(q.bucket, q.key, q.etag);
    if (!h) {
      // staging: a model here covers the key but is still listing it: ask again soon.
      const staging = deps.holder.planning(q.bucket, q.key);
      throw new ColdstartError(
        "CS_PEER_NOT_HELD",
        `no verified copy of s3://${q.bucket}/${q.key} at ${q.etag}${staging ? " yet: its model is being listed" : ""}`,
        {
          details: { key: q.key, ...(staging ? { staging: true } : {}) },
        },
      );
    }
    return h;
  };
  app.get<{ Querystring: PeerQuery }>(
    "/v1/peer/object",
    { schema: { querystring: peerQuery } },
    async (req) => {
      const { size, bounds, pieces, fetching } = await held(req.query);
      // complete: every piece is in (a ready model, or a file committed already); otherwise the
      // file is staging here, pieces not in yet are null, and `fetching` names those this node is
      // fetching from S3 now: a peer may wait for them (?wait=) instead of fetching them too.
      return { size, bounds, pieces, complete: pieces.every((p) => p !== null), fetching };
    },
  );
  app.get<{ Querystring: PeerQuery }>(
    "/v1/peer/piece",
    { schema: { querystring: peerQuery } },
    async (req, reply) => {
      const { bucket, key, etag } = req.query;
      let file = await held(req.query);
      const i = Number(req.query.piece ?? "-1");
      if (!(i >= 0 && i < file.pieces.length)) {
        throw new ColdstartError(
          "CS_REQUEST_INVALID",
          `piece must be 0 to ${file.pieces.length - 1}, got ${req.query.piece}`,
          {
            details: { field: "piece", value: req.query.piece },
          },
        );
      }
      if (req.query.start !== undefined && Number(req.query.start) !== file.bounds[i]) {
        throw new ColdstartError(
          "CS_PEER_NOT_HELD",
          `piece ${i} of s3://${bucket}/${key} begins at ${file.bounds[i]} here, not ${req.query.start}`,
          { details: { key } },
        );
      }
      const wait = Math.min(Number(req.query.wait ?? "0"), MAX_PIECE_WAIT_MS);
      // Only for a piece this node fetches from S3 itself: one it fetches from a peer could be the
      // asker's own, and two nodes must never wait for each other.
      const waited = file.pieces[i] === null && wait > 0 && file.fetching.includes(i);
      if (waited && (await deps.holder.whenPiece(bucket, key, etag, i, wait))) {
        file = await held(req.query);
      }
      if (file.pieces[i] === null) {
        // Which answer this is (at once, or after the wait ran out) is the asker's to log.
        throw new ColdstartError(
          "CS_PEER_NOT_HELD",
          `piece ${i} of s3://${req.query.bucket}/${req.query.key} is not in yet${waited ? ` after waiting ${wait} ms` : ""}`,
          { details: { key: req.query.key } },
        );
      }
      const start = file.bounds[i] as number;
      const end = file.bounds[i + 1] as number;
      const fh = await openFirst(deps.holder.root, file.locations, req.query.key);
      const stream = fh.createReadStream({ start, end: end - 1 });
      const counted = peerServed(deps);
      reply
        .header("content-type", "application/octet-stream")
        .header("content-length", end - start)
        .header(PIECE_DIGEST_HEADER, file.pieces[i]);
      // pipeline: a read error or a client gone closes the file too, and nothing throws unhandled.
      return reply.send(pipeline(stream, counted, () => {}));
    },
  );

  // A blob of this node's containerd content store, for a peer's mirror. Only local content: a peer
  // never relays, so mirrors cannot loop. The asking mirror verifies the digest.
  app.get<{ Params: { digest: string } }>("/v1/peer/blob/:digest", async (req, reply) => {
    const blob = await deps.contentStore?.open(req.params.digest);
    if (!blob) {
      throw new ColdstartError(
        "CS_PEER_NOT_HELD",
        `no blob ${req.params.digest} in this node's content store`,
        {
          details: { value: req.params.digest },
        },
      );
    }
    reply.header("content-type", "application/octet-stream").header("content-length", blob.size);
    if (req.method === "HEAD" || blob.size === 0) {
      await blob.fh.close();
      // Not send(): Fastify would answer a HEAD with Content-Length 0.
      return reply.send(Readable.from([]));
    }
    return reply.send(pipeline(blob.fh.createReadStream(), peerServed(deps), () => {}));
  });

  // What a tag points at in this node's containerd, for a peer's mirror (mirror.resolveTags there).
  // Only this node's own containerd: a peer never relays, so answers cannot loop.
  app.get<{ Querystring: { ref: string } }>(
    "/v1/peer/tag",
    {
      schema: {
        querystring: {
          type: "object",
          additionalProperties: false,
          required: ["ref"],
          properties: { ref: { type: "string", minLength: 3, maxLength: 512 } },
        },
      },
    },
    async (req) => {
      const { ref } = req.query;
      const m = /^([^/]+)\/(.+):([^:/]+)$/.exec(ref);
      if (!m || imageRef(m[1] ?? "", m[2] ?? "", m[3] ?? "") !== ref) {
        throw new ColdstartError(
          "CS_REQUEST_INVALID",
          `ref must be REGISTRY/REPOSITORY:TAG, got ${JSON.stringify(ref)}`,
          {
            details: { field: "ref", value: ref },
          },
        );
      }
      const resolved = await deps.images?.resolve(ref);
      if (!resolved) {
        throw new ColdstartError("CS_PEER_NOT_HELD", `this node's containerd has no image ${ref}`, {
          details: { value: ref },
        });
      }
      return resolved;
    },
  );
};

/**
 * Opens the first of a held file's locations that exists (a staging file may be renamed meanwhile),
 * below the staging root without following a symlink at any depth: a model directory swapped for a
 * link must not serve bytes from elsewhere (CS_PATH_UNSAFE).
 */
async function openFirst(root: string, locations: string[][], key: string): Promise<FileHandle> {
  for (const segments of locations) {
    const opened = await openFileBeneath(root, segments);
    if (opened) return opened.fh;
  }
  throw new ColdstartError("CS_PEER_NOT_HELD", `no longer holds ${key}`, { details: { key } });
}

/** Counts bytes served to peers and holds them to peers.maxUploadBytesPerSecond. */
function peerServed(deps: PeerServeDeps): Transform {
  const limiter = deps.peerUploadLimiter;
  return new Transform({
    transform(chunk: Buffer, _e, done) {
      deps.metrics?.peerBytes.inc({ direction: "out" }, chunk.length);
      if (!limiter) return done(null, chunk);
      limiter.take(chunk.length).then(() => done(null, chunk), done);
    },
  });
}
