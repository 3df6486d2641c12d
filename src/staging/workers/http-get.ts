import { checksumFromHeaders } from "../../checksums/headers.js";
import type { ObjectChecksum } from "../../checksums/types.js";
import { ColdstartError } from "../../errors.js";
import type { GetResponse, PieceAnswer } from "../../s3/object-source.js";
import { Http1Client, type Http1Response, type SocketBody } from "./http1.js";
import type { WireResolved } from "./protocol.js";

/** An S3 error body is a few hundred bytes of XML; more than this is not read. */
const MAX_ERROR_BODY = 64 * 1024;

/**
 * The worker's S3 GET: one keep-alive pool per worker (src/staging/workers/http1.ts), a request per
 * call, the response in the shape the SDK gives (status errors carry `$metadata.httpStatusCode` and
 * S3's `<Code>` as `name`), so src/s3/retry.ts decides about them exactly as about the SDK's.
 */
export class WorkerHttp {
  readonly #client = new Http1Client();

  /**
   * Sends one GET, signed or to a peer. `timeoutMs` bounds the connection and the wait for the
   * response head (a peer's own bound where it holds the request for a piece it is fetching).
   */
  async get(to: WireResolved, timeoutMs: number, signal: AbortSignal): Promise<GetResponse> {
    const res = await this.#client.get(new URL(to.url), to.headers, to.headTimeoutMs ?? timeoutMs, signal);
    if (res.status < 200 || res.status >= 300)
      throw await statusError(res.body, res.status, timeoutMs, signal);
    if (to.piece) return pieceResponse(to.piece, res);
    return {
      statusCode: res.status,
      contentLength: numberHeader(res.headers["content-length"]),
      contentRange: res.headers["content-range"],
      etag: res.headers.etag,
      checksum: checksumOf(res.headers),
      body: res.body,
      closedByServer: res.closedByServer,
    };
  }

  close(): void {
    this.#client.close();
  }
}

/**
 * Reads an S3 error document into an error shaped like the SDK's (name = <Code>). The status is what
 * matters: the document is read for at most `timeoutMs` and MAX_ERROR_BODY bytes, and an abort ends
 * it too, so a sender that stalls mid-document cannot hold the part.
 */
async function statusError(
  body: SocketBody,
  status: number,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<Error> {
  const text = await new Promise<string>((resolve) => {
    let read = "";
    const stop = () => body.destroy();
    const timer = setTimeout(stop, timeoutMs);
    signal.addEventListener("abort", stop, { once: true });
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", stop);
      resolve(read);
    };
    body.on("data", (chunk: Buffer) => {
      read += chunk.toString("utf8");
      if (read.length >= MAX_ERROR_BODY) stop();
    });
    body.once("end", done);
    // A body cut short (or cut here) only loses the message.
    body.once("error", done);
    body.once("close", done);
    if (signal.aborted) stop();
  });
  const code = /<Code>([^<]{1,128})<\/Code>/.exec(text)?.[1] ?? statusName(status);
  const message = /<Message>([^<]{0,512})<\/Message>/.exec(text)?.[1] ?? "";
  const err = new Error(message || `${status} ${code}`) as Error & Record<string, unknown>;
  err.name = code;
  err.Code = code;
  err.$metadata = { httpStatusCode: status };
  return err;
}

/**
 * A peer's 200 for a piece, standing for the response S3 would have given. What its head can tell
 * is checked here (digest, length); its bytes are checked against the digest as they are written.
 */
function pieceResponse(piece: PieceAnswer, res: Http1Response): GetResponse {
  const sent = res.headers[piece.digestHeader];
  const expected = piece.sha256 ?? sent;
  const refuse = (why: string) => {
    res.body.destroy();
    return new ColdstartError("CS_S3_RESPONSE_INVALID", `peer ${why}`);
  };
  if (res.status !== 200) throw refuse(`answered ${res.status} for a piece`);
  if (!expected || (sent !== undefined && sent !== expected))
    throw refuse(`sent a piece with digest ${sent}, expected ${expected}`);
  const length = numberHeader(res.headers["content-length"]);
  if (length !== piece.length) throw refuse(`announced ${length} bytes for a ${piece.length}-byte piece`);
  return {
    statusCode: piece.statusCode,
    contentLength: piece.length,
    contentRange: piece.contentRange,
    etag: piece.etag,
    checksum: piece.checksum,
    body: res.body,
    closedByServer: res.closedByServer,
    wholeSha256: expected,
  };
}

/** The SDK names a body-less error by its status (HEAD-like answers, proxies). */
function statusName(status: number): string {
  if (status === 304) return "NotModified";
  if (status === 403) return "Forbidden";
  if (status === 404) return "NotFound";
  if (status === 412) return "PreconditionFailed";
  return "UnknownError";
}

function numberHeader(v: string | undefined): number | undefined {
  if (v === undefined || !/^\d+$/.test(v)) return undefined;
  return Number(v);
}

/** The x-amz-checksum-* S3 sent (a malformed one counts as absent), with its value as sent. */
function checksumOf(headers: Record<string, string>): ObjectChecksum | undefined {
  const found = checksumFromHeaders(headers);
  const value = found && headers[`x-amz-checksum-${found.alg.toLowerCase()}`];
  return found && value ? { algorithm: found.alg, value, type: found.type } : undefined;
}
