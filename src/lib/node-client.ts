/**
 * What every client of another node's daemon shares: peers' model pieces (src/peers) and the image
 * mirror's relay and tags (src/mirror).
 */

/** A bearer token (the peer token) as request headers; none without a token (`daemon.auth: none`). */
export function bearerHeaders(token: string | undefined): Record<string, string> {
  return token ? { authorization: `Bearer ${token}` } : {};
}

/** The caller's signal, if any, together with a deadline of our own. */
export function anySignal(a: AbortSignal | undefined, b: AbortSignal): AbortSignal {
  return a ? AbortSignal.any([a, b]) : b;
}

/**
 * Peers left alone for a while after they failed (unreachable, too slow, talking nonsense), so a
 * dead peer costs one timeout per period, not one per request.
 */
export class PeerCooldown {
  readonly #until = new Map<string, number>();
  readonly #ms: number;

  constructor(ms = 30_000) {
    this.#ms = ms;
  }

  rest(peer: string): void {
    this.#until.set(peer, Date.now() + this.#ms);
  }

  /** Whether `peer` may be asked now (a rest that is over is forgotten). */
  ready(peer: string, now = Date.now()): boolean {
    const until = this.#until.get(peer);
    if (until === undefined) return true;
    if (until > now) return false;
    this.#until.delete(peer);
    return true;
  }
}
