/**
 * Model pieces from neighbours: an ObjectSource that asks peers (other nodes' daemons) for a piece
 * before S3, and answers from S3 whenever a peer cannot give exactly that piece, verified.
 *
 * S3 stays the authority. Listing, HEAD and part sizes always come from S3, and so do the ETag and
 * the checksums the staging engine checks every file against. A peer only ever serves a piece of a
 * file it staged and verified itself (same key, same ETag), and the piece is hashed here against the
 * SHA-256 in that peer's manifest before a byte of it reaches the staging engine: a piece is held in
 * memory until verified, so a corrupt or truncated one costs a re-fetch from S3, never a bad byte on
 * disk. Objects with an S3 checksum are then also checked end to end by the engine, over peer bytes
 * as over S3 bytes. Peers relay nothing, so there are no loops.
 */
import { createHash } from "node:crypto";
import { Readable } from "node:stream";
import pLimit, { type LimitFunction } from "p-limit";
import type { Logger } from "pino";
import type { Metrics, PEER_FALLBACK_REASONS } from "../metrics/metrics.js";
import type { GetOptions, GetResponse, ObjectHead, ObjectInfo, ObjectSource } from "../s3/object-source.js";
import { anySignal, bearerHeaders } from "./http.js";

export interface PeerOptions {
  /** Base URLs of peers' TCP APIs, asked each time (discovery may change them). */
  urls: () => string[];
  /** Presented as a bearer token: the DaemonSet's shared API token. */
  token: () => string | undefined;
  /** Deadline of "do you hold this?"; a piece gets a longer one (see PIECE_TIMEOUT_MS). */
  timeoutMs: number;
  maxInFlight: number;
  logger: Logger;
  metrics?: Metrics | undefined;
}

/** What a peer holds of one object: its piece bounds and their digests (the peer's manifest). */
interface Held {
  peer: string;
  size: number;
  bounds: number[];
  pieces: string[];
}

/** One piece of one object, asked of the peer that holds it. */
interface PieceWant {
  held: Held;
  bucket: string;
  key: string;
  etag: string;
  piece: number;
  options: GetOptions;
}

/** Why a piece came from S3 after all (label values of coldstart_peer_fallbacks_total). */
export type PeerFallbackReason = (typeof PEER_FALLBACK_REASONS)[number];

/** A peer that sends nothing for this long is cut off (not a total deadline: big pieces take time). */
const STALL_MS = 10_000;
/** Pieces bigger than this come from S3: each is held in memory until verified. */
const MAX_PIECE_BYTES = 64 * 1024 * 1024;
/** Where an object is, remembered this long (its peer may evict it). */
const HIT_TTL_MS = 60_000;
/** A peer that failed is left alone this long. */
const PEER_DOWN_MS = 30_000;
/** "Nobody holds it" is remembered this long: the first node is still staging. */
const MISS_TTL_MS = 10_000;

export class PeerAwareSource implements ObjectSource {
  readonly #inner: ObjectSource;
  readonly #o: PeerOptions;
  readonly #located = new Map<
    string,
    { at: number; ttl: number; held: Promise<Held | undefined>; peer?: string }
  >();
  readonly #downUntil = new Map<string, number>();
  readonly #slots: LimitFunction;

  constructor(inner: ObjectSource, options: PeerOptions) {
    this.#inner = inner;
    this.#o = options;
    this.#slots = pLimit(options.maxInFlight);
  }

  list(bucket: string, prefix: string, signal?: AbortSignal): AsyncIterable<ObjectInfo> {
    return this.#inner.list(bucket, prefix, signal);
  }

  head(bucket: string, key: string, signal?: AbortSignal): Promise<ObjectHead> {
    return this.#inner.head(bucket, key, signal);
  }

  partSizes(bucket: string, key: string, signal?: AbortSignal): Promise<number[] | undefined> {
    return this.#inner.partSizes(bucket, key, signal);
  }

  close(): void {
    this.#inner.close();
  }

  async get(bucket: string, key: string, options: GetOptions): Promise<GetResponse> {
    const etag = options.ifMatch;
    if (etag && this.#o.urls().length > 0) {
      const held = await this.#locate(bucket, key, etag, options.signal);
      if (held) {
        const piece = pieceOf(held, options.range);
        if (piece === undefined) this.#fallback("unaligned");
        else if ((held.bounds[piece + 1] as number) - (held.bounds[piece] as number) > MAX_PIECE_BYTES)
          this.#fallback("large");
        else {
          const got = await this.#fromPeer({ held, bucket, key, etag, piece, options });
          if (got) return got;
        }
      }
    }
    return this.#inner.get(bucket, key, options);
  }

  /** One piece from the peer that holds it, or undefined (counted, and the peer judged) for S3. */
  async #fromPeer(want: PieceWant): Promise<GetResponse | undefined> {
    const { held, bucket, key, etag, piece, options } = want;
    // A slot, or a wait for one: a piece is held in memory until verified, so slots bound memory
    // (maxInFlight x part size); the peer is still nearer than S3.
    return this.#slots(async () => {
      try {
        options.signal?.throwIfAborted();
        // The peer may have failed while this part waited for its slot.
        if ((this.#downUntil.get(held.peer) ?? 0) > Date.now()) {
          this.#fallback("unreachable");
          return undefined;
        }
        return await this.#fetchPiece(want);
      } catch (err) {
        if (options.signal?.aborted) throw err;
        const why = (err as { why?: PeerFallbackReason }).why ?? "unreachable";
        this.#fallback(why);
        this.#o.logger.warn(
          { peer: held.peer, key, piece, why, err: (err as Error).message },
          "piece from S3 instead of the peer",
        );
        // Evicted there since: only this object is gone. Anything else: the peer is left alone a while.
        if (why === "not_held") this.#located.delete(locKey(bucket, key, etag));
        else this.#down(held.peer);
        return undefined;
      }
    });
  }

  /** Leaves a peer alone for PEER_DOWN_MS, and forgets every object located there. */
  #down(peer: string): void {
    this.#downUntil.set(peer, Date.now() + PEER_DOWN_MS);
    for (const [k, entry] of this.#located) if (entry.peer === peer) this.#located.delete(k);
  }

  /** Asks every live peer at once whether it holds the object; the first that does wins. */
  #locate(bucket: string, key: string, etag: string, signal?: AbortSignal): Promise<Held | undefined> {
    const k = locKey(bucket, key, etag);
    const cached = this.#located.get(k);
    if (cached && Date.now() - cached.at < cached.ttl) return cached.held;
    const now = Date.now();
    const live = this.#o.urls().filter((u) => (this.#downUntil.get(u) ?? 0) <= now);
    const query = new URLSearchParams({ bucket, key, etag }).toString();
    const held = Promise.any(
      live.map(async (peer) => {
        const res = await fetch(new URL(`/v1/peer/object?${query}`, peer), {
          headers: bearerHeaders(this.#o.token()),
          signal: anySignal(signal, AbortSignal.timeout(this.#o.timeoutMs)),
        }).catch((err: unknown) => {
          // Unreachable or too slow: not asked again for a while, so a dead peer costs one timeout.
          if (!signal?.aborted) this.#downUntil.set(peer, Date.now() + PEER_DOWN_MS);
          throw err;
        });
        if (res.status !== 200) {
          await res.body?.cancel();
          throw new Error(`peer ${peer} answered ${res.status}`);
        }
        const body = (await res.json()) as Omit<Held, "peer">;
        if (!validHeld(body)) throw new Error(`peer ${peer} answered a malformed object description`);
        return { peer, ...body };
      }),
    ).catch(() => undefined);
    this.#located.set(k, { at: now, ttl: MISS_TTL_MS, held });
    // A hit is kept longer than a miss, and dropped at once when its peer fails.
    void held.then((h) => {
      if (h && this.#located.get(k)?.held === held)
        this.#located.set(k, { at: Date.now(), ttl: HIT_TTL_MS, held, peer: h.peer });
    });
    return held;
  }

  async #fetchPiece(want: PieceWant): Promise<GetResponse> {
    const { held, bucket, key, etag, piece, options } = want;
    const start = held.bounds[piece] as number;
    const end = held.bounds[piece + 1] as number;
    const query = new URLSearchParams({ bucket, key, etag, piece: String(piece) }).toString();
    // Headers within timeoutMs; then the body may take as long as it keeps flowing (STALL_MS).
    const stall = new AbortController();
    const headersTimer = setTimeout(() => stall.abort(new Error("peer did not answer")), this.#o.timeoutMs);
    const res = await fetch(new URL(`/v1/peer/piece?${query}`, held.peer), {
      headers: bearerHeaders(this.#o.token()),
      signal: anySignal(options.signal, stall.signal),
    }).finally(() => clearTimeout(headersTimer));
    if (res.status !== 200) {
      await res.body?.cancel();
      throw Object.assign(new Error(`peer answered ${res.status} for piece ${piece}`), {
        why: res.status === 404 ? "not_held" : "unreachable",
      });
    }
    const length = end - start;
    if (Number(res.headers.get("content-length")) !== length || !res.body) {
      await res.body?.cancel();
      throw Object.assign(
        new Error(`peer announced ${res.headers.get("content-length")} bytes for a ${length}-byte piece`),
        {
          why: "corrupt",
        },
      );
    }
    // Read into a buffer of exactly the piece's size; a peer that stops sending for STALL_MS is cut.
    const bytes = Buffer.allocUnsafe(length);
    let at = 0;
    const reader = res.body.getReader();
    let timer = setTimeout(() => stall.abort(new Error("peer stalled")), STALL_MS);
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        if (at + value.length > length)
          throw Object.assign(new Error("peer sent more than the piece"), { why: "corrupt" });
        bytes.set(value, at);
        at += value.length;
        clearTimeout(timer);
        timer = setTimeout(() => stall.abort(new Error("peer stalled")), STALL_MS);
      }
    } finally {
      clearTimeout(timer);
      reader.releaseLock();
    }
    const digest = createHash("sha256").update(bytes.subarray(0, at)).digest("hex");
    if (at !== length || digest !== held.pieces[piece]) {
      throw Object.assign(
        new Error(
          `piece ${piece} of ${key}: ${at} bytes with SHA-256 ${digest}, expected ${length} bytes with ${held.pieces[piece]}`,
        ),
        { why: "corrupt" },
      );
    }
    this.#o.metrics?.peerBytes.inc({ direction: "in" }, bytes.length);
    const ranged = options.range !== undefined;
    // A whole-object GET from S3 carries the object's checksum, which the engine checks; a peer
    // cannot vouch for it, so S3 is asked (HEAD: metadata only) and the engine checks the peer's bytes.
    const checksum = ranged ? undefined : (await this.#inner.head(bucket, key, options.signal)).checksum;
    return {
      statusCode: ranged ? 206 : 200,
      contentLength: bytes.length,
      contentRange: ranged ? `bytes ${start}-${end - 1}/${held.size}` : undefined,
      etag,
      checksum: checksum?.type === "FULL_OBJECT" ? checksum : undefined,
      body: Readable.from([bytes]),
    };
  }

  #fallback(reason: PeerFallbackReason): void {
    this.#o.metrics?.peerFallbacks.inc({ reason });
  }
}

/** The piece whose bounds are exactly the requested range (or the whole object, in one piece). */
function pieceOf(held: Held, range: GetOptions["range"]): number | undefined {
  if (!range) return held.bounds.length === 2 && held.bounds[1] === held.size ? 0 : undefined;
  const i = held.bounds.indexOf(range.start);
  if (i < 0 || i >= held.pieces.length) return undefined;
  return held.bounds[i + 1] === range.end + 1 ? i : undefined;
}

function validHeld(b: unknown): b is Omit<Held, "peer"> {
  const h = b as Partial<Held> | null;
  if (!h || !Number.isSafeInteger(h.size) || !Array.isArray(h.bounds) || !Array.isArray(h.pieces))
    return false;
  if (h.bounds.length !== h.pieces.length + 1 || h.bounds[0] !== 0 || h.bounds.at(-1) !== h.size)
    return false;
  for (let i = 1; i < h.bounds.length; i++) {
    const a = h.bounds[i - 1] as number;
    const z = h.bounds[i] as number;
    if (!Number.isSafeInteger(z) || z <= a) return false;
  }
  return h.pieces.every((p) => typeof p === "string" && /^[0-9a-f]{64}$/.test(p));
}

function locKey(bucket: string, key: string, etag: string): string {
  return `${bucket}\0${key}\0${etag}`;
}
