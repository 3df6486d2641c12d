/**
 * Model pieces from neighbours: an ObjectSource that asks peers (other nodes' daemons) for a piece
 * before S3, and answers from S3 whenever a peer cannot give exactly that piece, verified.
 *
 * S3 stays the authority. Listing, HEAD and part sizes always come from S3, and so do the ETag and
 * the checksums the staging engine checks every file against. A peer only ever serves pieces of a
 * file it staged itself from the same key at the same ETag: a verified file of a ready model, or the
 * parts already journaled by a model it is staging now. Each piece is hashed against the SHA-256 the
 * peer gives (its manifest's or journal's): on a part worker (src/staging/workers) as it is written,
 * its bytes taken back if it does not match; in process, in memory before the engine sees a byte. A
 * corrupt or truncated piece costs a re-fetch from S3, never a bad byte in a journaled part or a
 * committed file. The engine then checks every whole file against S3's checksums and the
 * safetensors header, over peer bytes as over S3 bytes. Peers relay nothing, so there are no loops.
 *
 * Nodes staging one model at once take its parts in random order (StageJob spreadParts) and wait
 * for a part a peer is fetching from S3 instead of fetching it too. A node offers to be waited for
 * only on parts it fetches from S3 itself, so no two nodes can wait for each other.
 */
import { createHash } from "node:crypto";
import { Readable } from "node:stream";
import pLimit, { type LimitFunction } from "p-limit";
import type { Logger } from "pino";
import { ColdstartError } from "../errors.js";
import { anySignal, bearerHeaders, PeerCooldown } from "../lib/node-client.js";
import { shuffle } from "../lib/shuffle.js";
import type { Metrics, PEER_FALLBACK_REASONS } from "../metrics/metrics.js";
import type {
  GetOptions,
  GetResponse,
  ObjectHead,
  ObjectInfo,
  ObjectSource,
  PieceOutcome,
  ResolvedGet,
} from "../s3/object-source.js";
import { PIECE_DIGEST_HEADER } from "./protocol.js";

export interface PeerOptions {
  /** Base URLs of peers' TCP APIs, asked each time (discovery may change them). */
  urls: () => string[];
  /** Presented as a bearer token: the DaemonSet's shared API token. */
  token: () => string | undefined;
  /** Deadline of "do you hold this?" and of a piece's first byte (then STALL_MS between bytes). */
  timeoutMs: number;
  maxInFlight: number;
  /** Pieces asked of any one peer at once, so a node's parts spread over every peer that holds them. */
  maxInFlightPerPeer: number;
  logger: Logger;
  metrics?: Metrics | undefined;
}

/**
 * What a peer holds of one object: its piece bounds and their digests (the peer's manifest, or its
 * journal while it stages the file: null where a piece is not in yet).
 */
interface Held {
  peer: string;
  size: number;
  bounds: number[];
  pieces: (string | null)[];
  complete: boolean;
  /** Pieces the peer is fetching from S3 right now: worth waiting for (?wait=). */
  fetching: number[];
}

/** Who holds one object, as last asked (holders are added as late answers arrive). */
interface Located {
  at: number;
  /** Complete holders are trusted for HIT_TTL_MS; partial ones are asked again after PARTIAL_TTL_MS. */
  ttl: number;
  holders: Held[];
  asked: Promise<Held[]>;
  /** When every live peer was last asked (in between, only known holders are). */
  everyoneAt: number;
  /** Rounds in a row in which nobody held it: "nobody" is then remembered longer. */
  misses: number;
  /** Peers that are still listing a model that covers the object: they will have it soon. */
  soon: string[];
}

/** One piece of one object, asked of a peer that holds it. */
interface PieceWant {
  held: Held;
  bucket: string;
  key: string;
  etag: string;
  piece: number;
  options: GetOptions;
  /** The peer is fetching the piece from S3: it answers once the piece is in (or 404). */
  wait: boolean;
}

/** Why a piece came from S3 after all (label values of coldstart_peer_fallbacks_total). */
export type PeerFallbackReason = (typeof PEER_FALLBACK_REASONS)[number];

/** A peer that sends nothing for this long is cut off (not a total deadline: big pieces take time). */
const STALL_MS = 10_000;
/** Pieces bigger than this come from S3: each is held in memory until verified. */
const MAX_PIECE_BYTES = 64 * 1024 * 1024;
/** Where a whole object is, remembered this long (its peer may evict it). */
const HIT_TTL_MS = 60_000;
/** What peers staging an object hold of it, remembered this long: they add pieces all the time. */
const PARTIAL_TTL_MS = 250;
/** A peer that failed is left alone this long. */
const PEER_DOWN_MS = 30_000;
/** Before a piece goes to S3 because peers staging the object lack it, they are asked again if
 * their answer is older than this. */
const RECHECK_MS = 50;
/**
 * "Nobody holds or stages it" is remembered this long at first, then twice as long each round
 * nobody does, up to MAX_MISS_TTL_MS: a peer may start staging it any moment, but a node staging
 * what no peer has must not ask every peer about every file every second.
 */
const MISS_TTL_MS = 1_000;
const MAX_MISS_TTL_MS = 16_000;
/** Between rounds that ask every peer, only known holders are asked again, at most this many. */
const HOLDER_SAMPLE = 8;
/** How often every peer is asked while only peers staging the object are known to hold it. */
const EVERYONE_MS = 5_000;
/** How long a peer is asked to hold a request for a piece it is fetching from S3. */
const PIECE_WAIT_MS = 30_000;

export class PeerAwareSource implements ObjectSource {
  readonly #inner: ObjectSource;
  readonly #o: PeerOptions;
  readonly #located = new Map<string, Located>();
  readonly #resting = new PeerCooldown(PEER_DOWN_MS);
  readonly #slots: LimitFunction;
  readonly #perPeer = new Map<string, LimitFunction>();
  #sweptAt = Date.now();

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
    const piece = await this.#fromPeers(bucket, key, options, (want) => this.#fetchPiece(want));
    if (piece) {
      const { body, ...rest } = piece;
      return { ...rest, body: Readable.from([body]) };
    }
    return this.#inner.get(bucket, key, options);
  }

  /**
   * For a part worker: a request for the piece to a peer that holds it (the worker reads it, checks
   * it against the piece's digest as it writes, and reports back), else S3's signed GET.
   */
  async resolveGet(bucket: string, key: string, options: GetOptions): Promise<ResolvedGet> {
    const piece = await this.#fromPeers(bucket, key, options, (want) => this.#pieceRequest(want));
    if (piece) return piece;
    if (!this.#inner.resolveGet) {
      throw new ColdstartError("CS_INTERNAL", `GET ${key}: the source behind the peers cannot sign a GET`);
    }
    return this.#inner.resolveGet(bucket, key, options);
  }

  /** The piece from a peer (as `ask` gets it), or undefined for S3 (told to `onSource` either way). */
  async #fromPeers<T>(
    bucket: string,
    key: string,
    options: GetOptions,
    ask: (want: PieceWant) => Promise<Slotted<T>>,
  ): Promise<T | undefined> {
    const etag = options.ifMatch;
    if (etag && !options.skipPeers && this.#o.urls().length > 0) {
      const want = { bucket, key, etag, options };
      let choice = this.#choose(await this.#locate(bucket, key, etag, options.signal), want);
      // Peers staging it said "not this piece" a while ago: they may have it, or fetch it, by now.
      if (choice.why === "pending" && this.#age(bucket, key, etag) > RECHECK_MS)
        choice = this.#choose(await this.#locate(bucket, key, etag, options.signal, true), want);
      if (choice.why) this.#fallback(choice.why);
      else if (choice.pick) {
        options.onSource?.(true);
        const got = await this.#withSlots({ ...want, ...choice.pick }, ask);
        if (got) return got;
      }
    }
    options.onSource?.(false);
    return undefined;
  }

  /**
   * Which peer to ask for the piece (the least busy that holds it, else one fetching it from S3 now,
   * to wait for), or why none: S3 then. Nobody holding the object is no fallback at all.
   */
  #choose(
    holders: Held[],
    want: Omit<PieceWant, "held" | "piece" | "wait">,
  ): { pick?: Pick<PieceWant, "held" | "piece" | "wait">; why?: PeerFallbackReason } {
    if (holders.length === 0) return {};
    const now = Date.now();
    const live = holders.filter((held) => this.#resting.ready(held.peer, now));
    if (live.length === 0) return { why: "unreachable" };
    const aligned = live.flatMap((held) => {
      const piece = pieceOf(held, want.options.range);
      return piece === undefined ? [] : [{ held, piece }];
    });
    const first = aligned[0];
    if (!first) return { why: "unaligned" };
    if (
      (first.held.bounds[first.piece + 1] as number) - (first.held.bounds[first.piece] as number) >
      MAX_PIECE_BYTES
    )
      return { why: "large" };
    let ready = aligned.filter(({ held, piece }) => held.pieces[piece] !== null);
    let wait = false;
    if (ready.length === 0) {
      // Nodes staging the object at once: a peer fetching this piece from S3 now is waited for, so
      // S3 serves each piece once.
      ready = aligned.filter(({ held, piece }) => held.fetching.includes(piece));
      wait = true;
    }
    // Held by peers still staging it, none of which has or fetches this piece: S3 (and they may ask us).
    if (ready.length === 0) return { why: "pending" };
    const load = (peer: string) => {
      const l = this.#perPeer.get(peer);
      return l ? l.activeCount + l.pendingCount : 0;
    };
    const pick = ready.reduce((a, b) => (load(b.held.peer) < load(a.held.peer) ? b : a));
    return { pick: { ...pick, wait } };
  }

  /** How long ago peers were asked about the object. */
  #age(bucket: string, key: string, etag: string): number {
    const entry = this.#located.get(locKey(bucket, key, etag));
    return entry ? Date.now() - entry.at : Number.POSITIVE_INFINITY;
  }

  /**
   * `ask` within one of that peer's slots and one of the node's, which it keeps until its `until`
   * (a worker reading the piece); a failure judges the peer. Undefined for S3.
   */
  #withSlots<T>(want: PieceWant, ask: (want: PieceWant) => Promise<Slotted<T>>): Promise<T | undefined> {
    const { held, options } = want;
    let limit = this.#perPeer.get(held.peer);
    if (!limit) {
      limit = pLimit(this.#o.maxInFlightPerPeer);
      this.#perPeer.set(held.peer, limit);
    }
    // A slot on that peer, then one of the node's: an in-process piece is held in memory until
    // verified, so the node's slots bound memory (maxInFlight x part size). Waiting is still nearer
    // than S3.
    return new Promise<T | undefined>((resolve, reject) => {
      limit(() =>
        this.#slots(async () => {
          try {
            options.signal?.throwIfAborted();
            // The peer may have failed while this part waited for its slot.
            if (!this.#resting.ready(held.peer)) return resolve(this.#fallback("unreachable"));
            const got = await ask(want);
            resolve(got.value);
            await got.until;
          } catch (err) {
            if (options.signal?.aborted) return reject(err);
            resolve(this.#judge(want, (err as { why?: PeerFallbackReason }).why ?? "unreachable", err));
          }
        }),
      ).finally(() => {
        // Pod IPs come and go: a peer's limiter lives while it has work.
        if (limit.activeCount + limit.pendingCount === 0) this.#perPeer.delete(held.peer);
      });
    });
  }

  /** A piece the peer did not give: counted, logged, and the peer or its copy set aside. */
  #judge(want: PieceWant, why: PeerFallbackReason, err: unknown): undefined {
    const { held, bucket, key, etag, piece } = want;
    // A piece waited for that did not come (its S3 fetch failed or took too long there).
    if (want.wait && why === "not_held") return this.#fallback("pending");
    this.#o.logger.warn(
      { peer: held.peer, key, piece, why, err: err instanceof Error ? err.message : String(err) },
      "piece from S3 instead of the peer",
    );
    // Evicted or restaged there since: only that peer's copy of this object is forgotten.
    // Anything else: the peer is left alone a while.
    if (why === "not_held") this.#forget(held.peer, locKey(bucket, key, etag));
    else this.#down(held.peer);
    return this.#fallback(why);
  }

  /**
   * The request for a piece, for a part worker to send. It keeps its slots until the worker says how
   * the piece went (its bytes hashed to the digest, or why not), and the peer is judged by that.
   */
  async #pieceRequest(want: PieceWant): Promise<Slotted<ResolvedGet>> {
    const { held, bucket, key, etag, piece, options } = want;
    const start = held.bounds[piece] as number;
    const end = held.bounds[piece + 1] as number;
    const ranged = options.range !== undefined;
    // As for an in-process piece: a whole-object GET's checksum is S3's word, asked with a HEAD.
    const checksum = ranged ? undefined : (await this.#inner.head(bucket, key, options.signal)).checksum;
    let settle: (status: number | "error", outcome?: PieceOutcome) => void = () => {};
    const settled = new Promise<PieceOutcome>((resolve) => {
      settle = (_status, outcome) => resolve(outcome ?? "unreachable");
    });
    const value: ResolvedGet = {
      url: this.#pieceUrl(want).href,
      headers: bearerHeaders(this.#o.token()),
      headTimeoutMs: this.#o.timeoutMs + (want.wait ? PIECE_WAIT_MS : 0),
      piece: {
        length: end - start,
        sha256: held.pieces[piece] ?? undefined,
        statusCode: ranged ? 206 : 200,
        contentRange: ranged ? `bytes ${start}-${end - 1}/${held.size}` : undefined,
        etag,
        checksum: checksum?.type === "FULL_OBJECT" ? checksum : undefined,
      },
      settled: (status, outcome) => settle(status, outcome),
    };
    // The slots stay taken until the worker has read the piece (or given up on it).
    const until = settled.then((outcome) => {
      if (outcome === "ok") this.#o.metrics?.peerBytes.inc({ direction: "in" }, end - start);
      else if (outcome !== "abandoned" && !options.signal?.aborted)
        this.#judge(want, outcome, `the piece came ${outcome}`);
    });
    return { value, until };
  }

  /** Leaves a peer alone for PEER_DOWN_MS, and forgets everything located there. */
  #down(peer: string): void {
    this.#resting.rest(peer);
    for (const k of this.#located.keys()) this.#forget(peer, k);
  }

  #forget(peer: string, k: string): void {
    const entry = this.#located.get(k);
    if (!entry) return;
    const i = entry.holders.findIndex((h) => h.peer === peer);
    if (i >= 0) entry.holders.splice(i, 1);
    // Nobody left: asked again next time rather than "nobody" remembered for a minute.
    if (entry.holders.length === 0) this.#located.delete(k);
  }

  /**
   * Who holds the object: every live peer is asked at once. The answer is settled by the first peer
   * that holds it whole, or by the last answer (or timeout); a peer answering later still joins.
   */
  #locate(bucket: string, key: string, etag: string, signal?: AbortSignal, again = false): Promise<Held[]> {
    const k = locKey(bucket, key, etag);
    const cached = this.#located.get(k);
    // Asked again: parts asking at once share one round of questions.
    if (cached && Date.now() - cached.at < (again ? RECHECK_MS : cached.ttl)) return cached.asked;
    const now = Date.now();
    this.#sweep(now);
    const isLive = (u: string) => this.#resting.ready(u, now);
    // Peers staging it are asked again often, so only they are (a few of them) between rounds that
    // ask everyone: the traffic grows with the holders sampled, not with the cluster.
    const known = cached ? [...cached.holders.map((h) => h.peer), ...cached.soon] : [];
    const holdersOnly = known.length > 0 && now - (cached?.everyoneAt ?? 0) < EVERYONE_MS;
    const ask = holdersOnly
      ? shuffle(known.filter(isLive)).slice(0, HOLDER_SAMPLE)
      : this.#o.urls().filter(isLive);
    // A round in which only peers still listing answered is no miss, and no reason to wait longer.
    const misses = cached && cached.holders.length === 0 && cached.soon.length === 0 ? cached.misses + 1 : 0;
    const soon: string[] = [];
    const query = new URLSearchParams({ bucket, key, etag }).toString();
    const holders: Held[] = [];
    const entry: Located = {
      at: now,
      ttl: MISS_TTL_MS,
      holders,
      asked: Promise.resolve(holders),
      everyoneAt: holdersOnly ? (cached?.everyoneAt ?? now) : now,
      misses,
      soon,
    };
    entry.asked = new Promise<Held[]>((resolve) => {
      let left = ask.length;
      const settle = () => {
        // A complete copy is trusted a while; peers staging it are asked again soon.
        entry.ttl = holders.some((h) => h.complete)
          ? HIT_TTL_MS
          : holders.length > 0
            ? PARTIAL_TTL_MS
            : soon.length > 0
              ? MISS_TTL_MS
              : Math.min(MISS_TTL_MS * 2 ** misses, MAX_MISS_TTL_MS);
        resolve(holders);
      };
      if (left === 0) settle();
      for (const peer of ask) {
        this.#describe(peer, query, signal)
          .then((held) => {
            if (held === "soon") soon.push(peer);
            if (!held || held === "soon") return;
            holders.push(held);
            if (held.complete) settle();
          })
          .finally(() => {
            if (--left === 0) settle();
          });
      }
    });
    this.#located.set(k, entry);
    return entry.asked;
  }

  /** Once a minute: forgets answers long expired (each holds its holders' piece lists). */
  #sweep(now: number): void {
    if (now - this.#sweptAt < 60_000) return;
    this.#sweptAt = now;
    for (const [k, e] of this.#located) if (now - e.at > e.ttl + EVERYONE_MS) this.#located.delete(k);
  }

  /** One peer's answer to "do you hold this?", or undefined. */
  async #describe(peer: string, query: string, signal?: AbortSignal): Promise<Held | "soon" | undefined> {
    try {
      const res = await fetch(new URL(`/v1/peer/object?${query}`, peer), {
        headers: bearerHeaders(this.#o.token()),
        signal: anySignal(signal, AbortSignal.timeout(this.#o.timeoutMs)),
      });
      if (res.status !== 200) {
        // 404 with details.staging: the peer is listing the model: it will have the file soon.
        const answer = (await res.json().catch(() => undefined)) as
          | { error?: { details?: { staging?: unknown } } }
          | undefined;
        return res.status === 404 && answer?.error?.details?.staging === true ? "soon" : undefined;
      }
      const body: unknown = await res.json();
      if (!validHeld(body)) throw new Error(`peer ${peer} answered a malformed object description`);
      return {
        peer,
        size: body.size,
        bounds: body.bounds,
        pieces: body.pieces,
        complete: body.pieces.every((p) => p !== null),
        fetching: body.fetching ?? [],
      };
    } catch (err) {
      // Unreachable, too slow or talking nonsense: not asked again for a while, so a dead peer costs
      // one timeout.
      if (!signal?.aborted) {
        this.#resting.rest(peer);
        this.#o.logger.warn({ peer, err: (err as Error).message }, "peer left alone for 30 s");
      }
      return undefined;
    }
  }

  /** Where a piece is asked for. `start`: the peer refuses if its piece no longer begins there. */
  #pieceUrl(want: PieceWant): URL {
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

  /** The piece, read into memory here and verified before the engine sees a byte of it. */
  async #fetchPiece(want: PieceWant): Promise<Slotted<PieceResponse>> {
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
    const res = await fetch(this.#pieceUrl(want), {
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
    const checksum = ranged ? undefined : (await this.#inner.head(bucket, key, options.signal)).checksum;
    return {
      value: {
        statusCode: ranged ? 206 : 200,
        contentLength: bytes.length,
        contentRange: ranged ? `bytes ${start}-${end - 1}/${held.size}` : undefined,
        etag: want.etag,
        checksum: checksum?.type === "FULL_OBJECT" ? checksum : undefined,
        body: bytes,
      },
    };
  }

  #fallback(reason: PeerFallbackReason): undefined {
    this.#o.metrics?.peerFallbacks.inc({ reason });
    return undefined;
  }
}

/** A verified piece, held in memory: the engine reads it as a GET's response. */
type PieceResponse = Omit<GetResponse, "body"> & { body: Buffer };

/** What a peer gave, and until when it keeps its slots (a worker still reading the piece). */
interface Slotted<T> {
  value: T | undefined;
  until?: Promise<unknown>;
}

/** The piece whose bounds are exactly the requested range (or the whole object, in one piece). */
function pieceOf(held: Held, range: GetOptions["range"]): number | undefined {
  if (!range) return held.bounds.length === 2 && held.bounds[1] === held.size ? 0 : undefined;
  const i = held.bounds.indexOf(range.start);
  if (i < 0 || i >= held.pieces.length) return undefined;
  return held.bounds[i + 1] === range.end + 1 ? i : undefined;
}

/** A peer's object description, as it may come over the wire (older peers send no `fetching`). */
type HeldWire = Omit<Held, "peer" | "complete" | "fetching"> & { fetching?: number[] };

function validHeld(b: unknown): b is HeldWire {
  const h = b as Partial<HeldWire> | null;
  if (!h || !Number.isSafeInteger(h.size) || !Array.isArray(h.bounds) || !Array.isArray(h.pieces))
    return false;
  if (h.bounds.length !== h.pieces.length + 1 || h.bounds[0] !== 0 || h.bounds.at(-1) !== h.size)
    return false;
  const parts = h.pieces.length;
  if (
    h.fetching !== undefined &&
    (!Array.isArray(h.fetching) || !h.fetching.every((i) => Number.isInteger(i) && i >= 0 && i < parts))
  )
    return false;
  for (let i = 1; i < h.bounds.length; i++) {
    const a = h.bounds[i - 1] as number;
    const z = h.bounds[i] as number;
    if (!Number.isSafeInteger(z) || z <= a) return false;
  }
  return h.pieces.every((p) => p === null || (typeof p === "string" && /^[0-9a-f]{64}$/.test(p)));
}

function locKey(bucket: string, key: string, etag: string): string {
  return `${bucket}\0${key}\0${etag}`;
}
