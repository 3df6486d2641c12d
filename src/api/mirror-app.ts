/**
 * The pull-through OCI mirror for this node's containerd (docs/peers.md): the distribution API's pull
 * side, by digest, from the node's own content store, else relayed from a peer's and verified. Tags
 * are resolved only with mirror.resolveTags (src/mirror/tags.ts; hosts.toml then gives the mirror
 * `capabilities = ["pull", "resolve"]`); otherwise containerd resolves them at the registry and
 * fetches content by digest. A 404 sends containerd to the next host.
 */
import { pipeline, Readable } from "node:stream";
import Fastify, { type FastifyReply, type FastifyRequest } from "fastify";
import type { Logger } from "pino";
import type { Metrics } from "../metrics/metrics.js";
import { type ContentStore, DIGEST, manifestMediaType } from "../mirror/content-store.js";
import { type BlobRelay, verifyingStream } from "../mirror/relay.js";
import { imageRef, type TagResolver } from "../mirror/tags.js";
import { bearerAccepted, type TokenFile } from "./auth.js";

export interface MirrorDeps {
  store: ContentStore;
  relay?: BlobRelay | undefined;
  /** Resolves tags (mirror.resolveTags); absent: tags are a miss. */
  tags?: TagResolver | undefined;
  /** Registries mirrored (containerd's ?ns=); empty: any. */
  registries: string[];
  tokens: TokenFile | undefined;
  logger: Logger;
  metrics?: Metrics | undefined;
}

/** Manifests are small; one bigger than this is not a manifest. */
const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

type Kind = "manifest" | "blob";

export function buildMirrorApp(deps: MirrorDeps) {
  const app = Fastify({
    loggerInstance: deps.logger.child({ component: "mirror" }),
    forceCloseConnections: true,
    return503OnClosing: true,
  });
  app.addHook("onRequest", async (req, reply) => {
    if (!bearerAccepted(deps.tokens, req.headers.authorization)) {
      return reply.code(401).send(ociError("UNAUTHORIZED", "a bearer token is required (hosts.toml header)"));
    }
  });
  app.get("/v2/", async (_req, reply) =>
    reply.header("docker-distribution-api-version", "registry/2.0").send({}),
  );
  app.get("/v2/*", async (req, reply) => {
    const m = /^\/v2\/(.+)\/(manifests|blobs)\/([^/?]+)$/.exec((req.raw.url ?? "").split("?")[0] ?? "");
    const ns = (req.query as Record<string, unknown>).ns;
    if (!m) return reply.code(404).send(ociError("NAME_UNKNOWN", "not a pull route"));
    const kind: Kind = m[2] === "manifests" ? "manifest" : "blob";
    const ref = decodeURIComponent(m[3] ?? "");
    if (deps.registries.length > 0 && (typeof ns !== "string" || !deps.registries.includes(ns))) {
      return miss(deps, reply, kind, `registry ${String(ns)} is not mirrored here`);
    }
    if (DIGEST.test(ref)) return serve(deps, req, reply, kind, ref);
    // A tag: only with mirror.resolveTags, and only for manifests.
    if (!deps.tags || kind !== "manifest")
      return miss(deps, reply, kind, "tags are resolved at the registry (pull-only mirror)");
    const image = typeof ns === "string" ? imageRef(ns, m[1] ?? "", ref) : undefined;
    if (!image) return miss(deps, reply, kind, "not a valid registry, repository and tag");
    const resolved = await deps.tags.resolve(image);
    deps.metrics?.mirrorTagResolutions.inc({
      outcome: !resolved ? "miss" : resolved.from === "local" ? "local" : "peer",
    });
    if (!resolved) return miss(deps, reply, kind, `no node's containerd knows ${image}`);
    req.log.debug({ image, digest: resolved.digest, from: resolved.from }, "tag resolved");
    return serve(deps, req, reply, kind, resolved.digest);
  });
  return app;
}

async function serve(deps: MirrorDeps, req: FastifyRequest, reply: FastifyReply, kind: Kind, digest: string) {
  const head = req.method === "HEAD";
  reply.header("docker-content-digest", digest);
  const local = await deps.store.open(digest);
  if (local) {
    count(deps, kind, "local");
    if (kind === "manifest") {
      const bytes = Buffer.alloc(Math.min(local.size, MAX_MANIFEST_BYTES));
      await local.fh.read(bytes, 0, bytes.length, 0).finally(() => local.fh.close());
      const type = manifestMediaType(bytes);
      if (local.size > MAX_MANIFEST_BYTES || !type) return miss(deps, reply, kind, "not a manifest");
      reply.header("content-type", type).header("content-length", bytes.length);
      return reply.send(head ? noBody() : bytes);
    }
    const range = parseRange(req.headers.range, local.size);
    if (range === "invalid") {
      await local.fh.close();
      return reply.code(416).header("content-range", `bytes */${local.size}`).send();
    }
    reply.header("content-type", "application/octet-stream").header("accept-ranges", "bytes");
    const [start, end] = range ?? [0, local.size - 1];
    if (range) reply.code(206).header("content-range", `bytes ${start}-${end}/${local.size}`);
    reply.header("content-length", end - start + 1);
    if (head || local.size === 0) {
      await local.fh.close();
      return reply.send(noBody());
    }
    deps.metrics?.mirrorBytes.inc({ source: "local" }, end - start + 1);
    return reply.send(local.fh.createReadStream({ start, end }));
  }
  // Not here: a peer's content store, whole blobs only (a range cannot be checked against a digest).
  if (!deps.relay || req.headers.range) return miss(deps, reply, kind, "not in this node's content store");
  const relayed = await deps.relay.open(digest);
  if (!relayed) return miss(deps, reply, kind, "neither here nor at a peer");
  count(deps, kind, "peer");
  const onMismatch = (why: string) => {
    count(deps, kind, "corrupt");
    deps.relay?.distrust(relayed.peer, digest);
    deps.logger.warn({ peer: relayed.peer, digest, why }, "peer served a blob that is not its digest; cut");
  };
  if (kind === "manifest") {
    if (relayed.size > MAX_MANIFEST_BYTES) {
      relayed.body.destroy();
      return miss(deps, reply, kind, "not a manifest");
    }
    const chunks: Buffer[] = [];
    try {
      for await (const c of pipeline(
        relayed.body,
        verifyingStream(digest, relayed.size, onMismatch),
        () => {},
      ))
        chunks.push(c);
    } catch {
      return miss(deps, reply, kind, "a peer served a different manifest");
    }
    const bytes = Buffer.concat(chunks);
    const type = manifestMediaType(bytes);
    if (!type) return miss(deps, reply, kind, "not a manifest");
    reply.header("content-type", type).header("content-length", bytes.length);
    return reply.send(head ? noBody() : bytes);
  }
  reply.header("content-type", "application/octet-stream").header("content-length", relayed.size);
  if (head) {
    relayed.body.destroy();
    return reply.send(noBody());
  }
  deps.metrics?.mirrorBytes.inc({ source: "peer" }, relayed.size);
  // pipeline: a peer that drops mid-blob ends this response with an error (containerd retries), and
  // a client that goes away closes the peer's body; neither throws unhandled.
  return reply.send(pipeline(relayed.body, verifyingStream(digest, relayed.size, onMismatch), () => {}));
}

function count(deps: MirrorDeps, kind: Kind, outcome: "local" | "peer" | "miss" | "corrupt") {
  deps.metrics?.mirrorRequests.inc({ kind, outcome });
}

/** 404: containerd then tries the next host in hosts.toml, finally the registry itself. */
function miss(deps: MirrorDeps, reply: FastifyReply, kind: Kind, why: string) {
  count(deps, kind, "miss");
  reply.log.debug({ kind, why }, "mirror miss");
  return reply.code(404).send(ociError(kind === "manifest" ? "MANIFEST_UNKNOWN" : "BLOB_UNKNOWN", why));
}

/**
 * The body of a HEAD answer: an empty stream, because Fastify's HEAD handling would replace a
 * Content-Length we set with 0 for an empty payload, and would read a real stream to its end.
 */
function noBody(): Readable {
  return Readable.from([]);
}

function ociError(code: string, message: string) {
  return { errors: [{ code, message }] };
}

/** A single `bytes=a-b`, `bytes=a-` or `bytes=-n` range; undefined for none; "invalid" otherwise. */
function parseRange(header: string | undefined, size: number): [number, number] | undefined | "invalid" {
  if (!header) return undefined;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === "" && m[2] === "")) return "invalid";
  // bytes=-N: the last N bytes.
  const start = m[1] === "" ? Math.max(size - Number(m[2]), 0) : Number(m[1]);
  const end = m[1] !== "" && m[2] ? Math.min(Number(m[2]), size - 1) : size - 1;
  if (!Number.isSafeInteger(start) || start > end || start >= size) return "invalid";
  return [start, end];
}
