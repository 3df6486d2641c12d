/**
 * One piece from one peer: the peer protocol's piece-fetching half (who holds it: locator.ts). A
 * piece is either read into memory here and verified against its SHA-256 before anyone sees a byte,
 * or handed to a part worker as a request that it checks as it writes and reports back on.
 */
import { createHash } from "node:crypto";
import { anySignal, bearerHeaders } from "../lib/node-client.js";
import type { Metrics } from "../metrics/metrics.js";
import type {
  GetOptions,
  GetResponse,
  ObjectSource,
  PieceOutcome,
  ResolvedGet,
} from "../s3/object-source.js";
import type { Held } from "./locator.js";
import { PIECE_DIGEST_HEADER } from "./protocol.js";

export interface PieceClientOptions {
  /** Presented as a bearer token: the peer token (peers.tokenFile), else the API token. */
  token: () => string | undefined;
  /** Deadline of a piece's first byte, after any wait (then STALL_MS between bytes). */
  timeoutMs: number;
  metrics?: Metrics | undefined;
}

/** One piece of one object, asked of a peer that holds it. */
export interface PieceWant {
  held: Held;
  bucket: string;
  key: string;
  etag: string;
  piece: number;
  options: GetOptions;
  /** The peer is fetching the piece from S3: it answers once the piece is in (or 404). */
  wait: boolean;
}

/** A verified piece, held in memory: the engine reads it as a GET's response. */
export type PieceResponse = Omit<GetResponse, "body"> & { body: Buffer };

/** A peer that sends nothing for this long is cut off (not a total deadline: big pieces take time). */
const STALL_MS = 10_000;
/** How long a peer is asked to hold a request for a piece it is fetching from S3. */
const PIECE_WAIT_MS = 30_000;

export class PieceClient {
  readonly #s3: Pick<ObjectSource, "head">;
  readonly #o: PieceClientOptions;

  /** `s3` answers the HEAD for a whole object's checksum, which a peer cannot vouch for. */
  constructor(s3: Pick<ObjectSource, "head">, options: PieceClientOptions) {
    this.#s3 = s3;
    this.#o = options;
  }

  /**
   * The piece, read into memory here and verified before the engine sees a byte of it. Throws an
   * Error whose `why` (a PeerFallbackReason) says why the peer did not give it.
   */
  async fetch(want: PieceWant): Promise<PieceResponse> {
    const { held, bucket, key, piece, options } = want;
    const start = held.bounds[piece] as number;
    const end = held.bounds[piece + 1] as number;
    const wait = want.wait ? PIECE_WAIT_MS : 0;
    // Headers within timeoutMs (after the wait); then the body may take as long as it keeps flowing
    // (STALL_MS).
    const stall = new AbortController();
    const headersTimer = setTimeout(
      () => stall.abort(new Error("peer did not answer")),
      this.#o.timeoutMs + wait,
    );
    const res = await fetch(this.#url(want), {
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
    // A piece waited for was not in when the peer described the object: its digest comes with it
    // (the same peer's word as a description's, and the bytes are checked against it all the same).
    const sent = res.headers.get(PIECE_DIGEST_HEADER);
    const expected = held.pieces[piece] ?? sent;
    if (!expected || (sent !== null && sent !== expected)) {
      await res.body?.cancel();
      throw Object.assign(new Error(`peer sent piece ${piece} with digest ${sent}, expected ${expected}`), {
        why: "corrupt",
      });
    }
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
    if (at !== length || digest !== expected) {
      throw Object.assign(
        new Error(
          `piece ${piece} of ${key}: ${at} bytes with SHA-256 ${digest}, expected ${length} bytes with ${expected}`,
        ),
        { why: "corrupt" },
      );
    }
    this.#o.metrics?.peerBytes.inc({ direction: "in" }, bytes.length);
    const ranged = options.range !== undefined;
    // A whole-object GET from S3 carries the object's checksum, which the engine checks; a peer
    // cannot vouch for it, so S3 is asked (HEAD: metadata only) and the engine checks the peer's bytes.
    const checksum = ranged ? undefined : (await this.#s3.head(bucket, key, options.signal)).checksum;
    return {
      statusCode: ranged ? 206 : 200,
      contentLength: bytes.length,
      contentRange: ranged ? `bytes ${start}-${end - 1}/${held.size}` : undefined,
      etag: want.etag,
      checksum: checksum?.type === "FULL_OBJECT" ? checksum : undefined,
      body: bytes,
    };
  }

  /**
   * The request for a piece, for a part worker to send, and how the piece went once the worker says
   * (its bytes hashed to the digest, or why not). Bytes that came are counted here.
   */
  async request(want: PieceWant): Promise<{ request: ResolvedGet; settled: Promise<PieceOutcome> }> {
    const { held, bucket, key, etag, piece, options } = want;
    const start = held.bounds[piece] as number;
    const end = held.bounds[piece + 1] as number;
    const ranged = options.range !== undefined;
    // As for an in-process piece: a whole-object GET's checksum is S3's word, asked with a HEAD.
    const checksum = ranged ? undefined : (await this.#s3.head(bucket, key, options.signal)).checksum;
    let settle: (status: number | "error", outcome?: PieceOutcome) => void = () => {};
    const settled = new Promise<PieceOutcome>((resolve) => {
      settle = (_status, outcome) => resolve(outcome ?? "unreachable");
    });
    const request: ResolvedGet = {
      url: this.#url(want).href,
      headers: bearerHeaders(this.#o.token()),
      headTimeoutMs: this.#o.timeoutMs + (want.wait ? PIECE_WAIT_MS : 0),
      piece: {
        length: end - start,
        sha256: held.pieces[piece] ?? undefined,
        digestHeader: PIECE_DIGEST_HEADER,
        statusCode: ranged ? 206 : 200,
        contentRange: ranged ? `bytes ${start}-${end - 1}/${held.size}` : undefined,
        etag,
        checksum: checksum?.type === "FULL_OBJECT" ? checksum : undefined,
      },
      settled: (status, outcome) => settle(status, outcome),
    };
    return {
      request,
      settled: settled.then((outcome) => {
        if (outcome === "ok") this.#o.metrics?.peerBytes.inc({ direction: "in" }, end - start);
        return outcome;
      }),
    };
  }

  /** Where a piece is asked for. `start`: the peer refuses if its piece no longer begins there. */
  #url(want: PieceWant): URL {
    const { held, bucket, key, etag, piece } = want;
    const query = new URLSearchParams({
      bucket,
      key,
      etag,
      piece: String(piece),
      start: String(held.bounds[piece]),
      wait: String(want.wait ? PIECE_WAIT_MS : 0),
    });
    return new URL(`/v1/peer/piece?${query}`, held.peer);
  }
}
