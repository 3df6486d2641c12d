import type { FileHandle } from "node:fs/promises";
import { pipeline, Readable, Transform } from "node:stream";
import Fastify, { type FastifyReply, type FastifyRequest } from "fastify";
import type { Logger } from "pino";
import type { CompileCacheManager, Identity } from "../compile-cache/cache-manager.js";
import { ColdstartError } from "../errors.js";
import type { Metrics } from "../metrics/metrics.js";
import type { MirrorCheck } from "../mirror/containerd-check.js";
import type { ImageResolver } from "../mirror/containerd-images.js";
import type { ContentStore } from "../mirror/content-store.js";
import { imageRef } from "../mirror/tags.js";
import type { ModelManager, ModelRequest } from "../models/model-manager.js";
import type { NodeFacts } from "../node/node-facts.js";
import { PIECE_DIGEST_HEADER } from "../peers/http.js";
import type { RateLimiter } from "../staging/rate-limiter.js";
import { openFileBeneath } from "../store/beneath.js";
import { bearerAccepted, type TokenFile } from "./auth.js";
import { answerCatalogError, answerNoRoute } from "./http-errors.js";

/** Which listener an app serves: the authenticated TCP API, or the node-local handshake socket. */
export type Surface = "tcp" | "socket";

export interface AppDeps {
  manager: ModelManager;
  logger: Logger;
  metrics?: Metrics;
  /** Accepted bearer tokens; undefined means `daemon.auth: none` (local demos only). */
  tokens: TokenFile | undefined;
  bodyLimitBytes: number;
  /** True once the store is loaded and the daemon is not draining. */
  isReady: () => boolean;
  /** Keyed torch.compile caches (absent in tests that do not need them). */
  compileCaches?: CompileCacheManager;
  /** Whether containerd uses the mirror (when it is on), for /v1/node. */
  mirrorCheck?: () => MirrorCheck | undefined;
  /** containerd's content store, when the mirror is on: peers' mirrors fetch blobs from it. */
  contentStore?: ContentStore | undefined;
  /** This node's containerd Images API (mirror.containerdSocket): peers' mirrors resolve tags here. */
  images?: ImageResolver | undefined;
  /** Caps what this node serves to peers (peers.maxUploadBytesPerSecond), when set. */
  peerUploadLimiter?: RateLimiter | undefined;
  /** The node's facts (GPUs, GDS, placement), when collected. */
  nodeFacts?: () => NodeFacts;
}

const MAX_WAIT_SECONDS = 300;

const modelBody = {
  type: "object",
  additionalProperties: false,
  required: ["source"],
  properties: {
    source: { type: "string", minLength: 1, maxLength: 2048 },
    include: { type: "array", maxItems: 100, items: { type: "string", minLength: 1, maxLength: 512 } },
    exclude: { type: "array", maxItems: 100, items: { type: "string", minLength: 1, maxLength: 512 } },
    pin: { type: "boolean" },
  },
} as const;

const identityString = { type: "string", minLength: 1, maxLength: 128 } as const;

/** The handshake's restore request: the pod's framework identity (validated in full by the key). */
const restoreBody = {
  type: "object",
  additionalProperties: false,
  properties: {
    torch: identityString,
    torchCuda: identityString,
    triton: identityString,
    vllm: identityString,
    tenant: identityString,
    extra: {
      type: "object",
      maxProperties: 32,
      additionalProperties: { type: "string", minLength: 1, maxLength: 128 },
    },
    remote: { type: "string", minLength: 1, maxLength: 2048 },
    timeoutSeconds: { type: "integer", minimum: 0, maximum: 600 },
  },
} as const;

/** Which object a peer asks about: S3's names and the ETag it staged (S3 stays the authority). */
interface PeerQuery {
  bucket: string;
  key: string;
  etag: string;
  piece?: string;
  /** Milliseconds to wait for a piece this node is fetching from S3 now (0: answer at once). */
  wait?: string;
  /** Where the asker expects the piece to begin; another answers 404. */
  start?: string;
}

/** The longest a peer may wait for a piece this node is fetching (a piece is at most 64 MiB). */
const MAX_PIECE_WAIT_MS = 60_000;

const peerQuery = {
  type: "object",
  additionalProperties: false,
  required: ["bucket", "key", "etag"],
  properties: {
    bucket: { type: "string", minLength: 1, maxLength: 255 },
    key: { type: "string", minLength: 1, maxLength: 1024 },
    etag: { type: "string", minLength: 1, maxLength: 256 },
    piece: { type: "string", pattern: "^[0-9]{1,7}$" },
    wait: { type: "string", pattern: "^[0-9]{1,5}$" },
    start: { type: "string", pattern: "^[0-9]{1,16}$" },
  },
} as const;

interface RestoreBody extends Identity {
  remote?: string;
  timeoutSeconds?: number;
}

const patchBody = {
  type: "object",
  additionalProperties: false,
  required: ["pin"],
  properties: { pin: { type: "boolean" } },
} as const;

/**
 * The HTTP API v1 (docs/api.md), not listening: main.ts listens. Model ids may contain "/": in a path
 * they are sent percent-encoded (`meta-llama%2FLlama-3.1-8B`) or raw; a trailing raw `/ready` is the
 * long-poll, so a model whose last segment is "ready" must be addressed encoded.
 */
export function buildApp(deps: AppDeps, surface: Surface) {
  const app = Fastify({
    loggerInstance: deps.logger.child({ component: "api", surface }),
    bodyLimit: deps.bodyLimitBytes,
    // Strict bodies: unknown fields are an error, not silently dropped; no "true" -> true coercion.
    ajv: {
      customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: false, allErrors: false },
    },
    return503OnClosing: true,
    // close() must not wait out long-polls (up to 300 s): waiters reconnect to the next daemon.
    forceCloseConnections: true,
  });

  // JSON only: anything else is 415, not a string handed to the schema.
  app.removeContentTypeParser("text/plain");

  app.setErrorHandler(answerCatalogError);
  app.setNotFoundHandler(answerNoRoute);
  app.addHook("onResponse", async (req, reply) => {
    deps.metrics?.httpRequests.inc({
      route: req.routeOptions.url ?? "unmatched",
      method: req.method,
      status: String(reply.statusCode),
    });
  });

  // Authorization, deny by default: only the probes and /metrics are public; on the socket the
  // handshake calls are free too. Decided on the matched route, never on the raw target (an
  // absolute-form target such as `PUT http://x/v1/models/m` routes like `/v1/models/m`).
  app.decorateRequest("authenticated", false);
  app.addHook("onRequest", async (req) => {
    if (!req.url.startsWith("/")) {
      throw new ColdstartError("CS_REQUEST_INVALID", "the request target must be a path (origin-form)");
    }
    req.authenticated = bearerAccepted(deps.tokens, req.headers.authorization);
    const route = req.routeOptions.url;
    if (req.authenticated || (route !== undefined && PUBLIC_ROUTES.has(route))) return;
    if (surface === "socket" && route === "/v1/models/*" && (req.method === "PUT" || req.method === "GET"))
      return;
    // The handshake reads the loader choice and GPU product for the pod's env file.
    if (surface === "socket" && route === "/v1/node" && req.method === "GET") return;
    // And restores its compile cache, or publishes it (which the quiet period would do anyway).
    if (surface === "socket" && route !== undefined && SOCKET_CACHE_ROUTES.has(`${req.method} ${route}`))
      return;
    throw new ColdstartError(
      "CS_UNAUTHORIZED",
      "missing or invalid bearer token (Authorization: Bearer <token>)",
    );
  });

  app.get("/livez", async () => ({ status: "ok" }));
  app.get("/readyz", async (_req, reply) => {
    if (!deps.isReady()) return reply.code(503).send({ status: "not ready" });
    return { status: "ok" };
  });
  app.get("/metrics", async (_req, reply) => {
    if (!deps.metrics) return reply.code(404).send();
    reply.header("content-type", deps.metrics.registry.contentType);
    return deps.metrics.registry.metrics();
  });

  app.get("/v1/models", async () => ({ models: deps.manager.list() }));
  app.get("/v1/node", async () => {
    const mirror = deps.mirrorCheck?.();
    return { disk: await deps.manager.disk(), ...deps.nodeFacts?.(), ...(mirror ? { mirror } : {}) };
  });

  app.put<{ Body: ModelRequest }>("/v1/models/*", { schema: { body: modelBody } }, async (req, reply) => {
    const { id } = parseModelPath(req);
    if (req.body.pin !== undefined && !req.authenticated) {
      // The tokenless handshake may ask for a model, not change what protects other models.
      throw new ColdstartError("CS_UNAUTHORIZED", "pin needs a bearer token; the handshake cannot set it");
    }
    const { status, created } = await deps.manager.request(id, req.body, { waited: surface === "socket" });
    return reply.code(status.state === "ready" && !created ? 200 : 202).send(status);
  });

  app.patch<{ Body: { pin: boolean } }>("/v1/models/*", { schema: { body: patchBody } }, async (req) => {
    return deps.manager.setPin(parseModelPath(req).id, req.body.pin);
  });

  app.delete("/v1/models/*", async (req, reply) => {
    await deps.manager.remove(parseModelPath(req).id);
    return reply.code(204).send();
  });

  app.get("/v1/models/*", async (req, reply) => {
    const { id, ready } = parseModelPath(req, true);
    if (!ready) return deps.manager.get(id);
    return longPoll(deps, req, reply, id);
  });

  // Peers (src/peers/peer-source.ts): what this node holds verified, and one piece of it. TCP with a
  // token only; served from this node's own files (committed, or parts already journaled by a model
  // staging here), never relayed from elsewhere.
  const held = async (q: PeerQuery) => {
    const h = await deps.manager.heldObject(q.bucket, q.key, q.etag);
    if (!h) {
      // staging: a model here covers the key but is still listing it: ask again soon.
      const staging = deps.manager.planning(q.bucket, q.key);
      throw new ColdstartError(
        "CS_PEER_NOT_HELD",
        `no verified copy of s3://${q.bucket}/${q.key} at ${q.etag}${staging ? " yet: its model is being listed" : ""}`,
        {
          details: { key: q.key, ...(staging ? { staging: true } : {}) },
        },
      );
    }
    return h;
  };
  app.get<{ Querystring: PeerQuery }>(
    "/v1/peer/object",
    { schema: { querystring: peerQuery } },
    async (req) => {
      const { size, bounds, pieces, fetching } = await held(req.query);
      // complete: every piece is in (a ready model, or a file committed already); otherwise the
      // file is staging here, pieces not in yet are null, and `fetching` names those this node is
      // fetching from S3 now: a peer may wait for them (?wait=) instead of fetching them too.
      return { size, bounds, pieces, complete: pieces.every((p) => p !== null), fetching };
    },
  );
  app.get<{ Querystring: PeerQuery }>(
    "/v1/peer/piece",
    { schema: { querystring: peerQuery } },
    async (req, reply) => {
      const { bucket, key, etag } = req.query;
      let file = await held(req.query);
      const i = Number(req.query.piece ?? "-1");
      if (!(i >= 0 && i < file.pieces.length)) {
        throw new ColdstartError(
          "CS_REQUEST_INVALID",
          `piece must be 0 to ${file.pieces.length - 1}, got ${req.query.piece}`,
          {
            details: { field: "piece", value: req.query.piece },
          },
        );
      }
      if (req.query.start !== undefined && Number(req.query.start) !== file.bounds[i]) {
        throw new ColdstartError(
          "CS_PEER_NOT_HELD",
          `piece ${i} of s3://${bucket}/${key} begins at ${file.bounds[i]} here, not ${req.query.start}`,
          { details: { key } },
        );
      }
      const wait = Math.min(Number(req.query.wait ?? "0"), MAX_PIECE_WAIT_MS);
      // Only for a piece this node fetches from S3 itself: one it fetches from a peer could be the
      // asker's own, and two nodes must never wait for each other.
      const waited = file.pieces[i] === null && wait > 0 && file.fetching.includes(i);
      if (waited && (await deps.manager.whenPiece(bucket, key, etag, i, wait))) {
        file = await held(req.query);
      }
      if (file.pieces[i] === null) {
        // Which answer this is (at once, or after the wait ran out) is the asker's to log.
        throw new ColdstartError(
          "CS_PEER_NOT_HELD",
          `piece ${i} of s3://${req.query.bucket}/${req.query.key} is not in yet${waited ? ` after waiting ${wait} ms` : ""}`,
          { details: { key: req.query.key } },
        );
      }
      const start = file.bounds[i] as number;
      const end = file.bounds[i + 1] as number;
      const fh = await openFirst(deps.manager.root, file.locations, req.query.key);
      const stream = fh.createReadStream({ start, end: end - 1 });
      const counted = peerServed(deps);
      reply
        .header("content-type", "application/octet-stream")
        .header("content-length", end - start)
        .header(PIECE_DIGEST_HEADER, file.pieces[i]);
      // pipeline: a read error or a client gone closes the file too, and nothing throws unhandled.
      return reply.send(pipeline(stream, counted, () => {}));
    },
  );

  // A blob of this node's containerd content store, for a peer's mirror. Only local content: a peer
  // never relays, so mirrors cannot loop. The asking mirror verifies the digest.
  app.get<{ Params: { digest: string } }>("/v1/peer/blob/:digest", async (req, reply) => {
    const blob = await deps.contentStore?.open(req.params.digest);
    if (!blob) {
      throw new ColdstartError(
        "CS_PEER_NOT_HELD",
        `no blob ${req.params.digest} in this node's content store`,
        {
          details: { value: req.params.digest },
        },
      );
    }
    reply.header("content-type", "application/octet-stream").header("content-length", blob.size);
    if (req.method === "HEAD" || blob.size === 0) {
      await blob.fh.close();
      // Not send(): Fastify would answer a HEAD with Content-Length 0.
      return reply.send(Readable.from([]));
    }
    return reply.send(pipeline(blob.fh.createReadStream(), peerServed(deps), () => {}));
  });

  // What a tag points at in this node's containerd, for a peer's mirror (mirror.resolveTags there).
  // Only this node's own containerd: a peer never relays, so answers cannot loop.
  app.get<{ Querystring: { ref: string } }>(
    "/v1/peer/tag",
    {
      schema: {
        querystring: {
          type: "object",
          additionalProperties: false,
          required: ["ref"],
          properties: { ref: { type: "string", minLength: 3, maxLength: 512 } },
        },
      },
    },
    async (req) => {
      const { ref } = req.query;
      const m = /^([^/]+)\/(.+):([^:/]+)$/.exec(ref);
      if (!m || imageRef(m[1] ?? "", m[2] ?? "", m[3] ?? "") !== ref) {
        throw new ColdstartError(
          "CS_REQUEST_INVALID",
          `ref must be REGISTRY/REPOSITORY:TAG, got ${JSON.stringify(ref)}`,
          {
            details: { field: "ref", value: ref },
          },
        );
      }
      const resolved = await deps.images?.resolve(ref);
      if (!resolved) {
        throw new ColdstartError("CS_PEER_NOT_HELD", `this node's containerd has no image ${ref}`, {
          details: { value: ref },
        });
      }
      return resolved;
    },
  );

  const caches = () => {
    if (!deps.compileCaches) throw new ColdstartError("CS_INTERNAL", "compile caches are not wired");
    return deps.compileCaches;
  };
  app.get("/v1/compile-caches", async () => ({
    caches: caches().list(),
  }));
  app.post<{ Body: RestoreBody }>("/v1/compile-caches", { schema: { body: restoreBody } }, async (req) => {
    const { remote, timeoutSeconds, ...identity } = req.body ?? {};
    return caches().restore({ identity, remote, timeoutMs: (timeoutSeconds ?? 120) * 1000 });
  });
  app.get<{ Params: { key: string } }>("/v1/compile-caches/:key", async (req) =>
    caches().get(req.params.key),
  );
  app.post<{ Params: { key: string } }>("/v1/compile-caches/:key/publish", async (req, reply) => {
    const result = await caches().publish(req.params.key, "api");
    if (result.outcome !== "failed") return result;
    return reply.code(502).send(result);
  });
  app.delete<{ Params: { key: string } }>("/v1/compile-caches/:key", async (req, reply) => {
    await caches().remove(req.params.key);
    return reply.code(204).send();
  });

  return app;
}

/**
 * Opens the first of a held file's locations that exists (a staging file may be renamed meanwhile),
 * below the staging root without following a symlink at any depth: a model directory swapped for a
 * link must not serve bytes from elsewhere (CS_PATH_UNSAFE).
 */
async function openFirst(root: string, locations: string[][], key: string): Promise<FileHandle> {
  for (const segments of locations) {
    const opened = await openFileBeneath(root, segments);
    if (opened) return opened.fh;
  }
  throw new ColdstartError("CS_PEER_NOT_HELD", `no longer holds ${key}`, { details: { key } });
}

/** Counts bytes served to peers and holds them to peers.maxUploadBytesPerSecond. */
function peerServed(deps: AppDeps): Transform {
  const limiter = deps.peerUploadLimiter;
  return new Transform({
    transform(chunk: Buffer, _e, done) {
      deps.metrics?.peerBytes.inc({ direction: "out" }, chunk.length);
      if (!limiter) return done(null, chunk);
      limiter.take(chunk.length).then(() => done(null, chunk), done);
    },
  });
}

/** Compile-cache calls the tokenless handshake socket may make: restore, publish, list. */
const SOCKET_CACHE_ROUTES = new Set([
  "POST /v1/compile-caches",
  "POST /v1/compile-caches/:key/publish",
  "GET /v1/compile-caches",
]);

async function longPoll(deps: AppDeps, req: FastifyRequest, reply: FastifyReply, id: string) {
  const raw = (req.query as Record<string, unknown>).timeoutSeconds ?? "30";
  const timeoutSeconds = Number(raw);
  if (typeof raw !== "string" || !/^\d+$/.test(raw) || timeoutSeconds > MAX_WAIT_SECONDS) {
    throw new ColdstartError(
      "CS_REQUEST_INVALID",
      `timeoutSeconds must be a whole number from 0 to ${MAX_WAIT_SECONDS}, got ${JSON.stringify(raw)}`,
      { details: { field: "timeoutSeconds", value: raw } },
    );
  }
  // The client going away ends the wait (and lowers the model's priority again). The listener goes
  // with the response: a keep-alive connection serves many polls.
  const gone = new AbortController();
  const onClose = () => gone.abort();
  reply.raw.once("close", onClose);
  let result: Awaited<ReturnType<ModelManager["waitReady"]>>;
  try {
    result = await deps.manager.waitReady(id, timeoutSeconds * 1000, gone.signal);
  } finally {
    reply.raw.off("close", onClose);
  }
  const { outcome, status } = result;
  // Metrics count handshakes, not polls: only a terminal answer ends one.
  if (outcome === "ready") {
    const handed = await deps.manager.markInUse(id);
    if (handed) {
      deps.metrics?.handshakeWaits.inc({ outcome: "ready" });
      deps.metrics?.handshakeWaitDuration.observe(handed.waitedSeconds);
      return reply.code(200).send(handed.status);
    }
    // Evicted between ready and this answer: not ready after all.
    return reply.code(503).header("retry-after", "5").send(deps.manager.get(id));
  }
  if (outcome === "failed") {
    deps.metrics?.handshakeWaits.inc({ outcome: "failed" });
    const cause = status.error;
    return reply.code(409).send({
      error: {
        code: "CS_MODEL_FAILED",
        message: `staging ${id} failed: ${cause ? `${cause.code}: ${cause.message}` : "unknown error"}`,
        cause,
      },
      status,
    });
  }
  return reply
    .code(503)
    .header("retry-after", "5")
    .send({ ...status, error: undefined, waitedSeconds: timeoutSeconds });
}

/** Splits `/v1/models/<id>[/ready]` (id raw or percent-encoded) and validates nothing yet. */
function parseModelPath(req: FastifyRequest, allowReady = false): { id: string; ready: boolean } {
  const path = (req.raw.url ?? "").split("?")[0] ?? "";
  let rest = path.slice("/v1/models/".length);
  const ready = allowReady && rest.endsWith("/ready");
  if (ready) rest = rest.slice(0, -"/ready".length);
  let id: string;
  try {
    id = decodeURIComponent(rest);
  } catch {
    throw new ColdstartError(
      "CS_MODEL_ID_INVALID",
      `model id ${JSON.stringify(rest)} is not valid percent-encoding`,
    );
  }
  return { id, ready };
}

/** Routes anyone may call: probes and metrics, nothing that reads or changes models. */
const PUBLIC_ROUTES = new Set(["/livez", "/readyz", "/metrics"]);

declare module "fastify" {
  interface FastifyRequest {
    /** The request carried a valid bearer token (always true with `daemon.auth: none`). */
    authenticated: boolean;
  }
}
