/** The peer protocol's names, shared by its client (locator, piece-client) and its server (serve). */

/** The SHA-256 (hex) of the piece a peer sends, from its journal or manifest. */
export const PIECE_DIGEST_HEADER = "x-coldstart-piece-sha256";
