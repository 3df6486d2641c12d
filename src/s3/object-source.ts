import type { ObjectChecksum } from "../checksums/types.js";

/** One object from a listing. */
export interface ObjectInfo {
  key: string;
  size: number;
  /** Quoted ETag as S3 returns it, e.g. `"9b2cf535f27731c974343645a3985328-3"`. */
  etag: string;
}

export interface ObjectHead {
  size: number;
  etag: string;
  checksum?: ObjectChecksum;
  /** Number of parts for a multipart object (only when asked with partNumber). */
  partsCount?: number;
}

export interface GetOptions {
  /** Inclusive byte range; absent means the whole object. */
  range?: { start: number; end: number };
  /** S3 answers 412 if the object's ETag differs. */
  ifMatch?: string;
  /** Ask S3 to return the checksum it holds for what is returned (whole object or whole part). */
  checksumMode?: boolean;
  signal?: AbortSignal;
  /** Told before the request goes out whether a peer or S3 will answer it (src/peers). */
  onSource?: ((fromPeer: boolean) => void) | undefined;
  /** A peer failed this attempt already: S3 answers it (src/peers). */
  skipPeers?: boolean | undefined;
}

export interface GetResponse {
  /** HTTP status: 200 for a whole object, 206 for a range. */
  statusCode: number;
  contentLength: number | undefined;
  contentRange: string | undefined;
  etag: string | undefined;
  checksum: ObjectChecksum | undefined;
  /** Must be consumed or destroyed, or its socket stays busy. */
  body: BodyStream;
  /**
   * Whether the server closed the connection (cleanly) while the body was read: a body that then
   * ends short was truncated, not reset. Absent where the transport cannot tell.
   */
  closedByServer?: (() => boolean) | undefined;
  /**
   * The body counts only whole and verified (a peer's piece, read on a part worker): it must hash
   * to this SHA-256, and an attempt that fails partway takes back what it wrote of it.
   */
  wholeSha256?: string | undefined;
  /** Told once how the body went: undefined when read whole (and verified), else the failure. */
  settle?: ((err: unknown) => void) | undefined;
}

/**
 * What a GET's body is read through: a Readable, or the part workers' own socket reader
 * (src/staging/workers/http1.ts), whose chunks are views of a buffer reused after each 'data' event.
 */
export interface BodyStream {
  on(event: "data", listener: (chunk: Buffer) => void): unknown;
  once(event: "end" | "close", listener: () => void): unknown;
  once(event: "error", listener: (err: Error) => void): unknown;
  pause(): unknown;
  resume(): unknown;
  destroy(err?: Error): unknown;
  readonly destroyed: boolean;
  /** Chunks are valid only during their 'data' event: a reader that keeps one must copy it. */
  readonly reusesChunks?: boolean;
}

/**
 * Where one GET goes, for a thread other than the one that decided it (src/staging/workers): a
 * request to send as-is, to S3 (signed) or to a peer that holds the piece asked for.
 */
export interface ResolvedGet {
  url: string;
  /** Every header the signature covers (Range, If-Match, x-amz-checksum-mode): sent unchanged. */
  headers: Record<string, string>;
  /** Bounds the wait for the response head instead of the request timeout (a peer that holds the
   * request until a piece it is fetching is in). */
  headTimeoutMs?: number | undefined;
  /** The answer is a peer's piece (src/peers): how it stands in for the GET asked, and its digest. */
  piece?: PieceAnswer | undefined;
  /**
   * Told the request's outcome once: an HTTP status or "error" (request metrics), and for a piece,
   * how its bytes went once read (only "ok" once they hashed to the piece's digest).
   */
  settled?: ((status: number | "error", piece?: PieceOutcome) => void) | undefined;
}

/**
 * A peer answers 200 with exactly `length` bytes, which stand for the response S3 would have given
 * (status, Content-Range, ETag, the object's checksum); they count only if they hash to `sha256`,
 * or, for a piece the peer was still fetching, to the digest it sends with them.
 */
export interface PieceAnswer {
  length: number;
  sha256: string | undefined;
  /** The response header a peer sends a piece's digest in (for a piece it was still fetching). */
  digestHeader: string;
  statusCode: number;
  contentRange: string | undefined;
  etag: string;
  checksum: ObjectChecksum | undefined;
}

/**
 * How a piece from a peer went: "ok", why S3 serves it after all, or "abandoned" when this node gave
 * it up for its own reasons (its thread died, its disk failed, the part ended): the peer is not judged.
 */
export type PieceOutcome = "ok" | "not_held" | "unreachable" | "corrupt" | "abandoned";

/**
 * The seam between the staging engine and an object store. The engine owns retries, ranges and
 * verification; an implementation only speaks the protocol, one request per call, no retries.
 * Errors are thrown as-is (with an HTTP status where there is one, see `statusOf`).
 */
export interface ObjectSource {
  /** Every object under `prefix`, following pagination. */
  list(bucket: string, prefix: string, signal?: AbortSignal): AsyncIterable<ObjectInfo>;
  /** Size, ETag and (when the store has one) the object's checksum. */
  head(bucket: string, key: string, signal?: AbortSignal): Promise<ObjectHead>;
  /**
   * Sizes of a multipart object's parts, in order (GetObjectAttributes ObjectParts), or undefined
   * when the store cannot say (not implemented, not permitted, not multipart). Never guessed.
   */
  partSizes(bucket: string, key: string, signal?: AbortSignal): Promise<number[] | undefined>;
  /** One GET: the whole object or one range. */
  get(bucket: string, key: string, options: GetOptions): Promise<GetResponse>;
  /**
   * The GET `get` would send, signed now with the current credentials, for another thread to send;
   * absent where the source can only be read in-process. Each attempt resolves anew, so credentials
   * that rotate (IRSA, Pod Identity) are picked up as they are by the SDK's own calls.
   */
  resolveGet?(bucket: string, key: string, options: GetOptions): Promise<ResolvedGet>;
  /** Releases sockets. */
  close(): void;
}
