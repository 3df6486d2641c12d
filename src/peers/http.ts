/** Small pieces every peer client shares (model pieces, the image mirror's relay). */

/** The shared bearer token as request headers; none without a token (`daemon.auth: none`). */
export function bearerHeaders(token: string | undefined): Record<string, string> {
  return token ? { authorization: `Bearer ${token}` } : {};
}

/** The caller's signal, if any, together with a deadline of our own. */
export function anySignal(a: AbortSignal | undefined, b: AbortSignal): AbortSignal {
  return a ? AbortSignal.any([a, b]) : b;
}

/** The SHA-256 (hex) of the piece a peer sends, from its journal or manifest. */
export const PIECE_DIGEST_HEADER = "x-coldstart-piece-sha256";
