/**
 * Who holds what: the peer protocol's discovery half (its pieces are fetched by piece-client.ts).
 * Every live peer is asked "do you hold this object at this ETag?" and the answers are remembered:
 * a complete copy for a minute, a copy still staging for a moment (it gains pieces all the time),
 * "nobody" for longer each round nobody does. A peer that fails is left alone a while and
 * everything located there is forgotten.
 */
import type { Logger } from "pino";
import { anySignal, bearerHeaders, PeerCooldown } from "../lib/node-client.js";
import { shuffle } from "../lib/shuffle.js";
import type { GetOptions } from "../s3/object-source.js";

export interface LocatorOptions {
  /** Base URLs of peers' TCP APIs, asked each time (discovery may change them). */
  urls: () => string[];
  /** Presented as a bearer token: the peer token (peers.tokenFile), else the API token. */
  token: () => string | undefined;
  /** Deadline of "do you hold this?" (and of a piece's first byte: piece-client.ts). */
  timeoutMs: number;
  logger: Logger;
}

/**
 * What a peer holds of one object: its piece bounds and their digests (the peer's manifest, or its
 * journal while it stages the file: null where a piece is not in yet).
 */
export interface Held {
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

export class PeerLocator {
  readonly #o: LocatorOptions;
  readonly #located = new Map<string, Located>();
  readonly #resting = new PeerCooldown(PEER_DOWN_MS);
  #sweptAt = Date.now();

  constructor(options: LocatorOptions) {
    this.#o = options;
  }

  /** Whether `peer` may be asked now (it has not failed within PEER_DOWN_MS). */
  live(peer: string, now = Date.now()): boolean {
    return this.#resting.ready(peer, now);
  }

  /** Whether the peers' answer about the object is old enough to ask again before going to S3. */
  recheckDue(bucket: string, key: string, etag: string): boolean {
    const entry = this.#located.get(locKey(bucket, key, etag));
    return (entry ? Date.now() - entry.at : Number.POSITIVE_INFINITY) > RECHECK_MS;
  }

  /** Leaves a peer alone for PEER_DOWN_MS, and forgets everything located there. */
  down(peer: string): void {
    this.#resting.rest(peer);
    for (const k of this.#located.keys()) this.#forget(peer, k);
  }

  /** Forgets that peer's copy of the object only (evicted or restaged there since). */
  forget(peer: string, bucket: string, key: string, etag: string): void {
    this.#forget(peer, locKey(bucket, key, etag));
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
   * `recheck`: an answer older than RECHECK_MS is not reused.
   */
  locate(bucket: string, key: string, etag: string, signal?: AbortSignal, recheck = false): Promise<Held[]> {
    const k = locKey(bucket, key, etag);
    const cached = this.#located.get(k);
    // Asked again: parts asking at once share one round of questions.
    if (cached && Date.now() - cached.at < (recheck ? RECHECK_MS : cached.ttl)) return cached.asked;
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
}

/** The piece whose bounds are exactly the requested range (or the whole object, in one piece). */
export function pieceOf(held: Held, range: GetOptions["range"]): number | undefined {
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
