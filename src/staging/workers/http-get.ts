import { checksumFromHeaders } from "../../s3/checksum.js";
import type { GetResponse, ObjectChecksum } from "../../s3/object-source.js";
import { Http1Client, type SocketBody } from "./http1.js";
import type { WireRequest } from "./protocol.js";

/** An S3 error body is a few hundred bytes of XML; more than this is not read. */
const MAX_ERROR_BODY = 64 * 1024;

/**
 * The worker's S3 GET: one keep-alive pool per worker (src/staging/workers/http1.ts), a request per
 * call, the response in the shape the SDK gives (status errors carry `$metadata.httpStatusCode` and
 * S3's `<Code>` as `name`), so src/s3/retry.ts decides about them exactly as about the SDK's.
 */
export class WorkerHttp {
  readonly #client = new Http1Client();

  /** Sends one signed GET. `timeoutMs` bounds the connection and the wait for the response head. */
  async get(signed: WireRequest, timeoutMs: number, signal: AbortSignal): Promise<GetResponse> {
    const res = await this.#client.get(new URL(signed.url), signed.headers, timeoutMs, signal);
    if (res.status < 200 || res.status >= 300) throw await statusError(res.body, res.status);
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

/** Reads an S3 error document into an error shaped like the SDK's (name = <Code>). */
async function statusError(body: SocketBody, status: number): Promise<Error> {
  const text = await new Promise<string>((resolve) => {
    let read = "";
    body.on("data", (chunk: Buffer) => {
      if (read.length < MAX_ERROR_BODY) read += chunk.toString("utf8");
    });
    body.once("end", () => resolve(read));
    // The status is what matters; a body cut short only loses the message.
    body.once("error", () => resolve(read));
    body.once("close", () => resolve(read));
  });
  const code = /<Code>([^<]{1,128})<\/Code>/.exec(text)?.[1] ?? statusName(status);
  const message = /<Message>([^<]{0,512})<\/Message>/.exec(text)?.[1] ?? "";
  const err = new Error(message || `${status} ${code}`) as Error & Record<string, unknown>;
  err.name = code;
  err.Code = code;
  err.$metadata = { httpStatusCode: status };
  return err;
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
