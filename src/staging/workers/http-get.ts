import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from "node:http";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";
import { checksumFromHeaders } from "../../s3/checksum.js";
import { type GetResponse, type ObjectChecksum, watchServerClose } from "../../s3/object-source.js";
import type { WireRequest } from "./protocol.js";

/** An S3 error body is a few hundred bytes of XML; more than this is not read. */
const MAX_ERROR_BODY = 64 * 1024;

/**
 * The worker's HTTP client: one keep-alive pool per worker, a request per call, the response in the
 * shape the SDK gives (status errors carry `$metadata.httpStatusCode` and S3's `<Code>` as `name`),
 * so src/s3/retry.ts decides about them exactly as about the SDK's.
 */
export class WorkerHttp {
  readonly #agents: [HttpAgent, HttpsAgent];

  constructor() {
    // Sockets are bounded by the parts this worker is given at once (the job's scheduler).
    const options = { keepAlive: true, scheduling: "lifo" as const };
    this.#agents = [new HttpAgent(options), new HttpsAgent(options)];
  }

  /**
   * Sends one signed GET. `timeoutMs` bounds the connection and the wait for headers (the socket's
   * inactivity timer is a second longer: the body's own stall watch reports first).
   */
  get(signed: WireRequest, timeoutMs: number, signal: AbortSignal): Promise<GetResponse> {
    const url = new URL(signed.url);
    const https = url.protocol === "https:";
    return new Promise<GetResponse>((resolve, reject) => {
      const req = (https ? httpsRequest : httpRequest)(url, {
        method: "GET",
        headers: signed.headers,
        agent: https ? this.#agents[1] : this.#agents[0],
        signal,
        timeout: timeoutMs + 1000,
      });
      const headersTimer = setTimeout(
        () =>
          req.destroy(
            Object.assign(new Error(`no response within ${timeoutMs} ms`), { name: "TimeoutError" }),
          ),
        timeoutMs,
      );
      req.once("timeout", () =>
        req.destroy(
          Object.assign(new Error("socket timed out"), { name: "TimeoutError", code: "ETIMEDOUT" }),
        ),
      );
      req.once("error", (err) => {
        clearTimeout(headersTimer);
        reject(err);
      });
      req.once("response", (res) => {
        clearTimeout(headersTimer);
        const status = res.statusCode ?? 0;
        if (status < 200 || status >= 300) {
          statusError(res, status).then(reject, reject);
          return;
        }
        resolve({
          statusCode: status,
          contentLength: numberHeader(res.headers["content-length"]),
          contentRange: res.headers["content-range"],
          etag: stringHeader(res.headers.etag),
          checksum: checksumOf(res.headers),
          body: res,
          closedByServer: watchServerClose(res),
        });
      });
      req.end();
    });
  }

  close(): void {
    for (const a of this.#agents) a.destroy();
  }
}

/** Reads an S3 error document into an error shaped like the SDK's (name = <Code>). */
async function statusError(res: IncomingMessage, status: number): Promise<Error> {
  let body = "";
  try {
    for await (const chunk of res as AsyncIterable<Buffer>) {
      if (body.length < MAX_ERROR_BODY) body += chunk.toString("utf8");
    }
  } catch {
    // The status is what matters; a body cut short only loses the message.
  }
  const code = /<Code>([^<]{1,128})<\/Code>/.exec(body)?.[1] ?? statusName(status);
  const message = /<Message>([^<]{0,512})<\/Message>/.exec(body)?.[1] ?? "";
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

function stringHeader(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

/** The x-amz-checksum-* S3 sent (a malformed one counts as absent), with its value as sent. */
function checksumOf(headers: IncomingMessage["headers"]): ObjectChecksum | undefined {
  const flat: Record<string, string | undefined> = {};
  for (const [name, v] of Object.entries(headers)) flat[name] = stringHeader(v);
  const found = checksumFromHeaders(flat);
  const value = found && flat[`x-amz-checksum-${found.alg.toLowerCase()}`];
  return found && value ? { algorithm: found.alg, value, type: found.type } : undefined;
}
