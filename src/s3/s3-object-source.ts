import { Agent as HttpAgent } from "node:http";
import { Agent as HttpsAgent } from "node:https";
import type { Socket } from "node:net";
import type { Readable } from "node:stream";
import {
  GetObjectAttributesCommand,
  GetObjectCommand,
  type GetObjectCommandOutput,
  HeadObjectCommand,
  type HeadObjectCommandOutput,
  paginateListObjectsV2,
  S3Client,
} from "@aws-sdk/client-s3";
import { getSignedUrl } from "@aws-sdk/s3-request-presigner";
import { NodeHttpHandler } from "@smithy/node-http-handler";
import type { MiddlewareStack } from "@smithy/types";
import type { ObjectChecksum } from "../checksums/types.js";
import { ColdstartError } from "../errors.js";
import type { Metrics, S3Operation } from "../metrics/metrics.js";
import type {
  GetOptions,
  GetResponse,
  ObjectHead,
  ObjectInfo,
  ObjectSource,
  ResolvedGet,
} from "./object-source.js";
import { statusOf } from "./retry.js";

export interface S3SourceOptions {
  region: string;
  endpoint?: string | undefined;
  pathStyle?: boolean;
  /** Sockets per origin: the job's concurrency plus a few for listing and HEADs. */
  maxSockets: number;
  /** Time to connect and to receive response headers. */
  requestTimeoutMs: number;
  /** Counts requests by operation and status, and requests in flight. */
  metrics?: Metrics | undefined;
}

/**
 * ObjectSource over @aws-sdk/client-s3. Credentials come from the SDK's standard chain only (env,
 * shared config, web identity for IRSA, container credentials for EKS Pod Identity).
 */
export class S3ObjectSource implements ObjectSource {
  readonly client: S3Client;
  readonly #agents: [HttpAgent, HttpsAgent];
  readonly #metrics: Metrics | undefined;

  constructor(options: S3SourceOptions) {
    const agentOptions = {
      keepAlive: true,
      maxSockets: options.maxSockets,
      maxFreeSockets: options.maxSockets,
    };
    this.#agents = [new HttpAgent(agentOptions), new HttpsAgent(agentOptions)];
    this.#metrics = options.metrics;
    this.client = new S3Client({
      region: options.region,
      ...(options.endpoint ? { endpoint: options.endpoint } : {}),
      forcePathStyle: options.pathStyle ?? false,
      // The staging engine owns retries: it resumes a broken part from the bytes already written.
      maxAttempts: 1,
      // We verify bytes ourselves (size, ETag, S3 checksums where they apply, safetensors); the SDK's
      // default pure-JS response CRC would cost real CPU on every byte.
      responseChecksumValidation: "WHEN_REQUIRED",
      requestChecksumCalculation: "WHEN_REQUIRED",
      requestHandler: new NodeHttpHandler({
        httpAgent: this.#agents[0],
        httpsAgent: this.#agents[1],
        connectionTimeout: options.requestTimeoutMs,
        // The socket's own inactivity timer covers the wait for response headers. A second longer
        // than the body's watch (src/staging/part-download.ts), so a body that stops is always
        // reported as a stall by that watch, not as a reset by this one destroying the socket.
        requestTimeout: options.requestTimeoutMs + SOCKET_TIMEOUT_MARGIN_MS,
      }),
    });
  }

  async *list(bucket: string, prefix: string, signal?: AbortSignal): AsyncIterable<ObjectInfo> {
    const pages = paginateListObjectsV2(
      { client: this.client, pageSize: 1000, ...(signal ? { abortSignal: signal } : {}) },
      { Bucket: bucket, Prefix: prefix },
    );
    for await (const page of pages) {
      this.#metrics?.s3Requests.inc({
        operation: "list",
        status: String(page.$metadata.httpStatusCode ?? 200),
      });
      for (const o of page.Contents ?? []) {
        if (o.Key === undefined) continue;
        yield { key: o.Key, size: o.Size ?? 0, etag: o.ETag ?? "" };
      }
    }
  }

  async head(bucket: string, key: string, signal?: AbortSignal): Promise<ObjectHead> {
    const cmd = new HeadObjectCommand({ Bucket: bucket, Key: key });
    askForChecksum(cmd);
    const out = await this.#count("head", () => this.client.send(cmd, signal ? { abortSignal: signal } : {}));
    const checksum = checksumOf(out);
    return {
      size: out.ContentLength ?? 0,
      etag: out.ETag ?? "",
      ...(checksum ? { checksum } : {}),
      ...(out.PartsCount !== undefined ? { partsCount: out.PartsCount } : {}),
    };
  }

  async partSizes(bucket: string, key: string, signal?: AbortSignal): Promise<number[] | undefined> {
    const sizes: number[] = [];
    let marker: string | undefined;
    try {
      for (;;) {
        const out = await this.#count("attributes", () =>
          this.client.send(
            new GetObjectAttributesCommand({
              Bucket: bucket,
              Key: key,
              ObjectAttributes: ["ObjectParts"],
              MaxParts: 1000,
              ...(marker ? { PartNumberMarker: marker } : {}),
            }),
            signal ? { abortSignal: signal } : {},
          ),
        );
        const parts = out.ObjectParts;
        for (const p of parts?.Parts ?? []) {
          if (p.PartNumber !== sizes.length + 1 || p.Size === undefined) return undefined;
          sizes.push(p.Size);
        }
        if (!parts?.IsTruncated || !parts.NextPartNumberMarker) break;
        marker = parts.NextPartNumberMarker;
      }
    } catch (err) {
      // Older S3-compatible stores lack the call, and it needs s3:GetObjectAttributes: either way
      // the parts are unknown, which only means the per-part checksum cannot be checked. Anything
      // else (503, reset, timeout) is thrown so the caller retries it.
      const status = statusOf(err);
      if (status === 400 || status === 403 || status === 405 || status === 501) return undefined;
      if ((err as { name?: string }).name === "NotImplemented") return undefined;
      // RGW 16.2 ignores ?attributes and answers 200 with the object itself: no XML to parse.
      if (status !== undefined && status >= 200 && status < 300) return undefined;
      throw err;
    }
    return sizes.length > 0 ? sizes : undefined;
  }

  async get(bucket: string, key: string, options: GetOptions): Promise<GetResponse> {
    const cmd = getCommand(bucket, key, options);
    const out = await this.#count("get", () =>
      this.client.send(cmd, options.signal ? { abortSignal: options.signal } : {}),
    );
    const body = out.Body as Readable & { socket?: Socket | null };
    return {
      statusCode: out.$metadata.httpStatusCode ?? 0,
      contentLength: out.ContentLength,
      contentRange: out.ContentRange,
      etag: out.ETag,
      checksum: checksumOf(out),
      body,
      closedByServer: watchServerClose(body),
    };
  }

  async resolveGet(bucket: string, key: string, options: GetOptions): Promise<ResolvedGet> {
    const cmd = getCommand(bucket, key, options);
    // The headers the command puts on the request, as the worker must send them.
    const headers: Record<string, string> = {};
    if (cmd.input.Range) headers.range = cmd.input.Range;
    if (cmd.input.IfMatch) headers["if-match"] = cmd.input.IfMatch;
    if (options.checksumMode) headers["x-amz-checksum-mode"] = "ENABLED";
    // Signed now, with the credentials the SDK's chain holds now (it refreshes them before they
    // expire); the URL is used at once, for this one attempt. Range, If-Match and the checksum mode
    // stay headers, covered by the signature, so the URL is good for exactly this request.
    const url = await getSignedUrl(this.client, cmd, {
      expiresIn: PRESIGN_EXPIRES_S,
      unhoistableHeaders: new Set(["x-amz-checksum-mode"]),
    });
    const signed = new URL(url).searchParams.get("X-Amz-SignedHeaders")?.split(";") ?? [];
    const missing = signed.filter((h) => h !== "host" && headers[h] === undefined);
    if (missing.length > 0) {
      throw new ColdstartError(
        "CS_INTERNAL",
        `GET ${key}: the signature covers headers not sent: ${missing.join(", ")}`,
      );
    }
    const m = this.#metrics;
    m?.s3InFlight.inc();
    let open = m !== undefined;
    return {
      url,
      headers,
      settled: (status) => {
        if (!open) return;
        open = false;
        m?.s3InFlight.dec();
        m?.s3Requests.inc({ operation: "get", status: String(status) });
      },
    };
  }

  /** Counts one request by operation and outcome (the status, or "error" without one). */
  async #count<T extends { $metadata: { httpStatusCode?: number } }>(
    op: S3Operation,
    send: () => Promise<T>,
  ): Promise<T> {
    const m = this.#metrics;
    if (!m) return send();
    m.s3InFlight.inc();
    try {
      const out = await send();
      m.s3Requests.inc({ operation: op, status: String(out.$metadata.httpStatusCode ?? "error") });
      return out;
    } catch (err) {
      m.s3Requests.inc({ operation: op, status: String(statusOf(err) ?? "error") });
      throw err;
    } finally {
      m.s3InFlight.dec();
    }
  }

  close(): void {
    this.client.destroy();
    for (const a of this.#agents) a.destroy();
  }
}

/**
 * A presigned GET is sent within milliseconds of signing; the window only has to cover a clock
 * that is a little off and a queue on the worker's side.
 */
const PRESIGN_EXPIRES_S = 300;

/** See `requestTimeout` above. */
const SOCKET_TIMEOUT_MARGIN_MS = 1000;

/** The one GetObject `get` sends and `resolveGet` signs. */
function getCommand(bucket: string, key: string, options: GetOptions): GetObjectCommand {
  const cmd = new GetObjectCommand({
    Bucket: bucket,
    Key: key,
    ...(options.range ? { Range: `bytes=${options.range.start}-${options.range.end}` } : {}),
    ...(options.ifMatch ? { IfMatch: options.ifMatch } : {}),
  });
  if (options.checksumMode) askForChecksum(cmd);
  return cmd;
}

/**
 * Sends `x-amz-checksum-mode: ENABLED` as a raw header rather than the ChecksumMode input member:
 * the member would also switch on the SDK's own (CPU-heavy) validation, which we do not want.
 */
function askForChecksum(cmd: GetObjectCommand | HeadObjectCommand): void {
  const stack = cmd.middlewareStack as unknown as MiddlewareStack<object, object>;
  stack.add(
    (next) => async (args) => {
      const req = args.request as { headers?: Record<string, string> };
      if (req.headers) req.headers["x-amz-checksum-mode"] = "ENABLED";
      return next(args);
    },
    { step: "build", name: "coldstartChecksumMode" },
  );
}

function checksumOf(out: GetObjectCommandOutput | HeadObjectCommandOutput): ObjectChecksum | undefined {
  const pairs: [ObjectChecksum["algorithm"], string | undefined][] = [
    ["CRC64NVME", out.ChecksumCRC64NVME],
    ["CRC32C", out.ChecksumCRC32C],
    ["CRC32", out.ChecksumCRC32],
    ["SHA256", out.ChecksumSHA256],
    ["SHA1", out.ChecksumSHA1],
  ];
  for (const [algorithm, value] of pairs) {
    if (!value) continue;
    const type = out.ChecksumType ?? (/-\d+$/.test(value) ? "COMPOSITE" : "FULL_OBJECT");
    return { algorithm, value, type: type === "COMPOSITE" ? "COMPOSITE" : "FULL_OBJECT" };
  }
  return undefined;
}

/**
 * Whether the server closed its side of the connection (FIN) while this body was being read: then a
 * body that ends short was truncated, where a reset (RST) would have been a socket error. Node's
 * response stream reports both as "aborted"; only the socket can tell them apart.
 */
function watchServerClose(body: Readable & { socket?: Socket | null }): () => boolean {
  const socket = body.socket;
  if (!socket) return () => false;
  let closed = false;
  const onEnd = () => {
    closed = true;
  };
  socket.once("end", onEnd);
  // The socket goes back to the pool (keep-alive) when the body is done: leave it as found.
  body.once("close", () => socket.off("end", onEnd));
  return () => closed;
}
