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
 *
 * This file chooses the peer and judges it; who holds what is locator.ts, one piece is piece-client.ts.
 */
import { Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import pLimit, { type LimitFunction } from "p-limit";
import { ColdstartError } from "../errors.js";
import type { PEER_FALLBACK_REASONS } from "../metrics/metrics.js";
import type {
  GetOptions,
  GetResponse,
  ObjectHead,
  ObjectInfo,
  ObjectSource,
  ResolvedGet,
} from "../s3/object-source.js";
import type { Cohorts } from "./cohort.js";
import { type Held, type LocatorOptions, PeerLocator, pieceOf } from "./locator.js";
import { PieceClient, type PieceClientOptions, type PieceWant } from "./piece-client.js";

/** The locator's and the piece client's options (one peer timeout serves both), and the slots. */
export interface PeerOptions extends LocatorOptions, PieceClientOptions {
  maxInFlight: number;
  /** Pieces asked of any one peer at once, so a node's parts spread over every peer that holds them. */
  maxInFlightPerPeer: number;
  /** The nodes staging a model together (the cooperative first wave), if this node takes part. */
  cohorts?: Cohorts | undefined;
  /** How long a part another member of the cohort reads from S3 is waited for before S3 (default 30 s). */
  cohortWaitMs?: number | undefined;
}

/** Between two looks at whether the part's owner has it or reads it now. */
const OWNER_POLL_MS = 100;
const DEFAULT_COHORT_WAIT_MS = 30_000;

/** Why a piece came from S3 after all (label values of coldstart_peer_fallbacks_total). */
export type PeerFallbackReason = (typeof PEER_FALLBACK_REASONS)[number];

/** Pieces bigger than this come from S3: each is held in memory until verified. */
const MAX_PIECE_BYTES = 64 * 1024 * 1024;

export class PeerAwareSource implements ObjectSource {
  readonly #inner: ObjectSource;
  readonly #o: PeerOptions;
  readonly #locator: PeerLocator;
  readonly #pieces: PieceClient;
  readonly #slots: LimitFunction;
  readonly #perPeer = new Map<string, LimitFunction>();

  constructor(inner: ObjectSource, options: PeerOptions) {
    this.#inner = inner;
    this.#o = options;
    this.#locator = new PeerLocator(options);
    this.#pieces = new PieceClient(inner, options);
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
    const piece = await this.#fromPeers(bucket, key, options, async (want) => ({
      value: await this.#pieces.fetch(want),
    }));
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
    const piece = await this.#fromPeers(bucket, key, options, async (want) => {
      const { request, settled } = await this.#pieces.request(want);
      // The slots stay taken until the worker has read the piece (or given up on it).
      const until = settled.then((outcome) => {
        if (outcome !== "ok" && outcome !== "abandoned" && !options.signal?.aborted)
          this.#judge(want, outcome, `the piece came ${outcome}`);
      });
      return { value: request, until };
    });
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
      let choice = this.#choose(await this.#locator.locate(bucket, key, etag, options.signal), want);
      // Peers staging it said "not this piece" a while ago: they may have it, or fetch it, by now.
      if (choice.why === "pending" && this.#locator.recheckDue(bucket, key, etag))
        choice = this.#choose(await this.#locator.locate(bucket, key, etag, options.signal, true), want);
      // In a cohort, a part another member owns is that member's to read from S3: wait for it to
      // have it or to read it now (then the usual wait for a piece in flight), within a bound.
      if (!choice.pick && choice.why !== "unaligned" && choice.why !== "large") {
        const owner = this.#otherOwner(bucket, key, options);
        if (owner) {
          const deadline = Date.now() + (this.#o.cohortWaitMs ?? DEFAULT_COHORT_WAIT_MS);
          while (!choice.pick && Date.now() < deadline && this.#locator.live(owner)) {
            await sleep(OWNER_POLL_MS, undefined, { signal: options.signal });
            choice = this.#choose(await this.#locator.locate(bucket, key, etag, options.signal, true), want);
          }
          if (!choice.pick && this.#locator.live(owner)) choice = { why: "owner_timeout" };
        }
      }
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

  /** The live cohort member, not this node, that reads this part from S3, if there is one. */
  #otherOwner(bucket: string, key: string, options: GetOptions): string | undefined {
    const cohorts = this.#o.cohorts;
    const owner = cohorts?.owner(bucket, key, options.range?.start ?? 0, (u) => this.#locator.live(u));
    return owner !== undefined && owner !== cohorts?.self ? owner : undefined;
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
    const live = holders.filter((held) => this.#locator.live(held.peer, now));
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
            if (!this.#locator.live(held.peer)) return resolve(this.#fallback("unreachable"));
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
    if (why === "not_held") this.#locator.forget(held.peer, bucket, key, etag);
    else this.#locator.down(held.peer);
    return this.#fallback(why);
  }

  #fallback(reason: PeerFallbackReason): undefined {
    this.#o.metrics?.peerFallbacks.inc({ reason });
    return undefined;
  }
}

/** What a peer gave, and until when it keeps its slots (a worker still reading the piece). */
interface Slotted<T> {
  value: T | undefined;
  until?: Promise<unknown>;
}
