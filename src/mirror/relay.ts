/**
 * Blobs from peers' content stores, for the mirror: which peer holds a digest (HEAD on each, first
 * yes wins), and a stream of its bytes that never hands over a complete wrong blob. Peers answer
 * from their own content store only (GET /v1/peer/blob), so a relay never relays: no loops.
 */
import { createHash } from "node:crypto";
import { Readable, Transform } from "node:stream";
import type { ReadableStream as WebReadableStream } from "node:stream/web";
import type { Logger } from "pino";
import { anySignal, bearerHeaders } from "../lib/node-client.js";

export interface RelayOptions {
  urls: () => string[];
  /** Presented to peers as a bearer token: the peer token (peers.tokenFile), else the API token. */
  token: () => string | undefined;
  timeoutMs: number;
  logger: Logger;
}

export interface RelayedBlob {
  peer: string;
  size: number;
  body: Readable;
}

/** How long a peer that served a wrong blob is not asked for that digest. */
const DISTRUST_MS = 10 * 60_000;

export class BlobRelay {
  readonly #o: RelayOptions;
  readonly #bad = new Map<string, number>();

  constructor(options: RelayOptions) {
    this.#o = options;
  }

  /** A peer that served bytes that are not `digest`: not asked for that digest again for a while. */
  distrust(peer: string, digest: string): void {
    const now = Date.now();
    for (const [k, until] of this.#bad) if (until <= now) this.#bad.delete(k);
    this.#bad.set(`${peer}\0${digest}`, now + DISTRUST_MS);
  }

  /**
   * Opens the blob at the first peer that holds it; undefined when none does, none answers, or the
   * holder fails before its body starts (the mirror then answers 404 and containerd moves on).
   */
  async open(digest: string, signal?: AbortSignal): Promise<RelayedBlob | undefined> {
    try {
      return await this.#open(digest, signal);
    } catch (err) {
      this.#o.logger.warn({ digest, err: (err as Error).message }, "relaying a blob from a peer failed");
      return undefined;
    }
  }

  async #open(digest: string, signal?: AbortSignal): Promise<RelayedBlob | undefined> {
    const path = `/v1/peer/blob/${digest}`;
    const headers = bearerHeaders(this.#o.token());
    const now = Date.now();
    const trusted = this.#o.urls().filter((p) => (this.#bad.get(`${p}\0${digest}`) ?? 0) <= now);
    const holder = await Promise.any(
      trusted.map(async (peer) => {
        const res = await fetch(new URL(path, peer), {
          method: "HEAD",
          headers,
          signal: anySignal(signal, AbortSignal.timeout(this.#o.timeoutMs)),
        });
        if (res.status !== 200) throw new Error(`${peer}: ${res.status}`);
        return peer;
      }),
    ).catch(() => undefined);
    if (!holder) return undefined;
    // The holder must answer within timeoutMs; its body then streams as long as it flows (a
    // client that gives up closes it through the mirror's pipeline).
    const answered = new AbortController();
    const timer = setTimeout(() => answered.abort(new Error("peer did not answer")), this.#o.timeoutMs);
    const res = await fetch(new URL(path, holder), {
      headers,
      signal: anySignal(signal, answered.signal),
    }).finally(() => clearTimeout(timer));
    const size = Number(res.headers.get("content-length"));
    if (res.status !== 200 || !res.body || !Number.isSafeInteger(size)) {
      await res.body?.cancel();
      this.#o.logger.warn(
        { peer: holder, digest, status: res.status },
        "peer failed to serve a blob it holds",
      );
      return undefined;
    }
    return { peer: holder, size, body: Readable.fromWeb(res.body as WebReadableStream<Uint8Array>) };
  }
}

/**
 * Passes a blob's bytes through while hashing them, and holds back the last chunk until the digest
 * and size are confirmed: a wrong blob ends in an error (the response is cut), so the client never
 * receives all of a blob that is not the one it asked for. `onMatch` is told when the whole blob
 * passed and matched, `onMismatch` when it did not (`digest` is a sha256 digest).
 */
export function verifyingStream(
  digest: string,
  size: number,
  onMismatch: (why: string) => void,
  onMatch?: () => void,
): Transform {
  const hash = createHash("sha256");
  let seen = 0;
  let held: Buffer | undefined;
  return new Transform({
    transform(chunk: Buffer, _e, done) {
      hash.update(chunk);
      seen += chunk.length;
      const out = held;
      held = chunk;
      done(null, out);
    },
    flush(done) {
      const why = digestMismatch(digest, size, seen, hash.digest("hex"));
      if (why !== undefined) {
        onMismatch(why);
        done(new Error(why));
        return;
      }
      onMatch?.();
      done(null, held);
    },
  });
}

/** Why `seen` bytes hashing to `sha256Hex` are not `size` bytes of `digest`; undefined when they are. */
export function digestMismatch(
  digest: string,
  size: number,
  seen: number,
  sha256Hex: string,
): string | undefined {
  if (seen === size && digest === `sha256:${sha256Hex}`) return undefined;
  return `got ${seen} bytes with sha256:${sha256Hex}, expected ${size} bytes of ${digest}`;
}
