/**
 * The pull-through OCI mirror for this node's containerd (docs/peers.md): the distribution API's pull
 * side, by digest, from the node's own content store, else relayed from a peer's and verified. Tags
 * are resolved only with mirror.resolveTags (src/mirror/tags.ts; hosts.toml then gives the mirror
 * `capabilities = ["pull", "resolve"]`); otherwise containerd resolves them at the registry and
 * fetches content by digest. A 404 sends containerd to the next host.
 */
import { createHash } from "node:crypto";
import { pipeline, Readable } from "node:stream";
import Fastify, { type FastifyReply, type FastifyRequest } from "fastify";
import type { Logger } from "pino";
import { isColdstartError } from "../errors.js";
import type { Metrics } from "../metrics/metrics.js";
import { type Blob, type ContentStore, DIGEST, manifestMediaType } from "../mirror/content-store.js";
import { type InvalidPullPath, type Kind, parsePullPath } from "../mirror/reference.js";
import { type BlobRelay, digestMismatch, verifyingStream } from "../mirror/relay.js";
import { imageRef, type TagResolver } from "../mirror/tags.js";
import { VerifiedBlobs } from "../mirror/verified-blobs.js";
import { authorize, type TokenFile } from "./auth.js";

export interface MirrorDeps {
  store: ContentStore;
  relay?: BlobRelay | undefined;
  /** Resolves tags (mirror.resolveTags); absent: tags are a miss. */
  tags?: TagResolver | undefined;
  /** Registries mirrored (containerd's ?ns=); empty: any. */
  registries: string[];
  /** API tokens (daemon.tokenFile): they reach the mirror too. undefined: `daemon.auth: none`. */
  tokens: TokenFile | undefined;
  /** mirror.tokenFile, when set: what containerd sends from hosts.toml, reaching the mirror only. */
  mirrorTokens?: TokenFile | undefined;
  /** peers.tokenFile, when set: known here only to answer them 403 DENIED rather than 401. */
  peerTokens?: TokenFile | undefined;
  logger: Logger;
  metrics?: Metrics | undefined;
  /** Verdicts on local blobs' bytes (src/mirror/verified-blobs.ts); default: a new one per app. */
  verified?: VerifiedBlobs | undefined;
}

/** Manifests are small; one bigger than this is not a manifest. */
const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

type Outcome = "local" | "peer" | "miss" | "corrupt" | "unsafe";

export function buildMirrorApp(deps: MirrorDeps) {
  const verified = deps.verified ?? new VerifiedBlobs();
  const app = Fastify({
    loggerInstance: deps.logger.child({ component: "mirror" }),
    forceCloseConnections: true,
    return503OnClosing: true,
    // A target the router cannot decode (`%zz`) never reaches a route or a hook: answered here, in
    // the distribution spec's shape, after the same token check.
    frameworkErrors: (_err, req, reply) => {
      const refused = refusal(deps, req.headers.authorization);
      if (refused) return refused(reply);
      const path = parsePullPath(req.raw.url ?? "");
      if (path && "invalid" in path) return invalid(reply, path);
      return notARoute(reply);
    },
  });
  app.addHook("onRequest", async (req, reply) => {
    const refused = refusal(deps, req.headers.authorization);
    if (refused) return refused(reply);
  });
  // Anything that fails before the answer starts (a blob found wrong before its first byte went
  // out, a read error) is a 404: containerd then asks the next host instead of failing the pull.
  app.setErrorHandler((err, req, reply) => {
    req.log.warn({ err: (err as Error).message }, "mirror request failed; answered as a miss");
    const path = parsePullPath(req.raw.url ?? "");
    const kind = path && !("invalid" in path) ? path.kind : "blob";
    for (const h of ["content-type", "content-length", "content-range", "accept-ranges"])
      reply.removeHeader(h);
    return notFound(reply, kind, "could not be served here");
  });
  app.get("/v2/", async (_req, reply) =>
    reply.header("docker-distribution-api-version", "registry/2.0").send({}),
  );
  app.get("/v2/*", async (req, reply) => {
    // The raw target: Fastify routes it as sent (no `..` resolved), and so must the checks.
    const path = parsePullPath(req.raw.url ?? "");
    if (!path) return notARoute(reply);
    if ("invalid" in path) return invalid(reply, path);
    const { kind, name, reference } = path;
    const ns = (req.query as Record<string, unknown>).ns;
    if (deps.registries.length > 0 && (typeof ns !== "string" || !deps.registries.includes(ns))) {
      return miss(deps, reply, kind, `registry ${String(ns)} is not mirrored here`);
    }
    if (path.isDigest) return serve(deps, verified, req, reply, kind, reference);
    // A tag: only with mirror.resolveTags, and only for manifests.
    if (!deps.tags || kind !== "manifest")
      return miss(deps, reply, kind, "tags are resolved at the registry (pull-only mirror)");
    const image = typeof ns === "string" ? imageRef(ns, name, reference) : undefined;
    if (!image) return miss(deps, reply, kind, "not a valid registry, repository and tag");
    const resolved = await deps.tags.resolve(image);
    deps.metrics?.mirrorTagResolutions.inc({
      outcome: !resolved ? "miss" : resolved.from === "local" ? "local" : "peer",
    });
    if (!resolved) return miss(deps, reply, kind, `no node's containerd knows ${image}`);
    req.log.debug({ image, digest: resolved.digest, from: resolved.from }, "tag resolved");
    return serve(deps, verified, req, reply, kind, resolved.digest);
  });
  return app;
}

async function serve(
  deps: MirrorDeps,
  verified: VerifiedBlobs,
  req: FastifyRequest,
  reply: FastifyReply,
  kind: Kind,
  digest: string,
) {
  // containerd's store keys blobs by sha256 and only sha256 is checked here: any other algorithm
  // is for the next host.
  if (!DIGEST.test(digest))
    return miss(deps, reply, kind, `only sha256 digests are served here, not ${digest}`);
  reply.header("docker-content-digest", digest);
  let local: Blob | undefined;
  try {
    local = await deps.store.open(digest);
  } catch (err) {
    // Tampered with (a symlink planted in the store) or unreadable: never read, and a 404 so
    // containerd goes to the next host; whoever runs the node needs the path.
    const unsafe = isColdstartError(err, "CS_PATH_UNSAFE");
    count(deps, kind, unsafe ? "unsafe" : "miss");
    reply.log.warn(
      {
        digest,
        path: isColdstartError(err) ? err.details.value : undefined,
        code: isColdstartError(err) ? err.code : undefined,
        err: (err as Error).message,
      },
      unsafe
        ? "refusing a blob reached through a symlink or a non-directory in containerd's content store"
        : "reading containerd's content store failed",
    );
    return notFound(reply, kind, unsafe ? "refused: the content store path is not safe" : "unreadable here");
  }
  if (local) return serveLocal(deps, verified, req, reply, kind, digest, local);
  return serveRelayed(deps, req, reply, kind, digest);
}

/**
 * A blob from this node's content store, never a complete wrong one: a manifest is checked whole
 * before it is sent; a whole blob is checked on its way out (the last chunk held back, the response
 * cut on a mismatch); a range only of a blob whose whole bytes were checked (verified-blobs.ts).
 */
async function serveLocal(
  deps: MirrorDeps,
  verified: VerifiedBlobs,
  req: FastifyRequest,
  reply: FastifyReply,
  kind: Kind,
  digest: string,
  local: Blob,
) {
  const head = req.method === "HEAD";
  const onMismatch = (why: string) => {
    verified.set(digest, local.stamp, { ok: false, why });
    count(deps, kind, "corrupt");
    deps.metrics?.mirrorDigestMismatches.inc({ source: "local" });
    deps.logger.error(
      { digest, path: local.path, why },
      "a blob in this node's containerd content store is not its digest; not served (check the disk)",
    );
  };
  // Known wrong (this very file): a miss, so containerd goes to the next host, not into the same
  // broken transfer again.
  const known = verified.get(digest, local.stamp);
  if (known && !known.ok) {
    await local.fh.close();
    count(deps, kind, "corrupt");
    return notFound(reply, kind, "this node's copy is not its digest");
  }

  if (kind === "manifest") {
    if (local.size > MAX_MANIFEST_BYTES) {
      await local.fh.close();
      return miss(deps, reply, kind, "not a manifest");
    }
    const bytes = Buffer.alloc(local.size);
    const read = await local.fh.read(bytes, 0, bytes.length, 0).finally(() => local.fh.close());
    const why = digestMismatch(
      digest,
      local.size,
      read.bytesRead,
      sha256Hex(bytes.subarray(0, read.bytesRead)),
    );
    if (why !== undefined) {
      onMismatch(why);
      return notFound(reply, kind, "this node's copy is not its digest");
    }
    verified.set(digest, local.stamp, { ok: true });
    const type = manifestMediaType(bytes);
    if (!type) return miss(deps, reply, kind, "not a manifest");
    count(deps, kind, "local");
    reply.header("content-type", type).header("content-length", bytes.length);
    return reply.send(head ? noBody() : bytes);
  }

  const range = parseRange(req.headers.range, local.size);
  if (range === "invalid") {
    await local.fh.close();
    count(deps, kind, "local");
    return reply.code(416).header("content-range", `bytes */${local.size}`).send();
  }
  // Nothing to stream for an empty file: its digest is checked here (a truncated blob is empty).
  const emptyWrong = local.size === 0 ? digestMismatch(digest, 0, 0, EMPTY_SHA256) : undefined;
  if (emptyWrong !== undefined) {
    await local.fh.close();
    onMismatch(emptyWrong);
    return notFound(reply, kind, "this node's copy is not its digest");
  }
  if (range && !head) {
    // A range cannot be checked against the digest: the whole blob is checked first (once; the
    // verdict is kept for this file).
    let verdict: Awaited<ReturnType<VerifiedBlobs["verify"]>>;
    try {
      verdict = await verified.verify(digest, local, onMismatch);
    } catch (err) {
      await local.fh.close();
      count(deps, kind, "miss");
      reply.log.warn(
        { digest, path: local.path, err: (err as Error).message },
        "reading a blob in containerd's content store failed",
      );
      return notFound(reply, kind, "unreadable here");
    }
    if (!verdict.ok) {
      await local.fh.close();
      return notFound(reply, kind, "this node's copy is not its digest");
    }
  }
  count(deps, kind, "local");
  reply.header("content-type", "application/octet-stream").header("accept-ranges", "bytes");
  const [start, end] = range ?? [0, local.size - 1];
  if (range) reply.code(206).header("content-range", `bytes ${start}-${end}/${local.size}`);
  reply.header("content-length", end - start + 1);
  if (head || local.size === 0) {
    await local.fh.close();
    return reply.send(noBody());
  }
  deps.metrics?.mirrorBytes.inc({ source: "local" }, end - start + 1);
  const bytes = local.fh.createReadStream({ start, end });
  if (range) return reply.send(bytes);
  // pipeline: a client that goes away closes the file; a mismatch cuts the response.
  return reply.send(
    pipeline(
      bytes,
      verifyingStream(digest, local.size, onMismatch, () => verified.set(digest, local.stamp, { ok: true })),
      () => {},
    ),
  );
}

/** Not here: a peer's content store, whole blobs only (a range cannot be checked against a digest). */
async function serveRelayed(
  deps: MirrorDeps,
  req: FastifyRequest,
  reply: FastifyReply,
  kind: Kind,
  digest: string,
) {
  const head = req.method === "HEAD";
  if (!deps.relay || req.headers.range) return miss(deps, reply, kind, "not in this node's content store");
  const relayed = await deps.relay.open(digest);
  if (!relayed) return miss(deps, reply, kind, "neither here nor at a peer");
  const onMismatch = (why: string) => {
    count(deps, kind, "corrupt");
    deps.metrics?.mirrorDigestMismatches.inc({ source: "peer" });
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
      return notFound(reply, kind, "a peer served a different manifest");
    }
    const bytes = Buffer.concat(chunks);
    const type = manifestMediaType(bytes);
    if (!type) return miss(deps, reply, kind, "not a manifest");
    count(deps, kind, "peer");
    reply.header("content-type", type).header("content-length", bytes.length);
    return reply.send(head ? noBody() : bytes);
  }
  count(deps, kind, "peer");
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

function count(deps: MirrorDeps, kind: Kind, outcome: Outcome) {
  deps.metrics?.mirrorRequests.inc({ kind, outcome });
}

function notARoute(reply: FastifyReply) {
  return reply.code(404).send(ociError("NAME_UNKNOWN", "not a pull route"));
}

/** How a request the token check refuses is answered; undefined: the token reaches the mirror. */
function refusal(
  deps: MirrorDeps,
  header: string | undefined,
): ((reply: FastifyReply) => unknown) | undefined {
  const verdict = authorize(deps, header, "mirror");
  if (verdict.ok) return undefined;
  return verdict.reason === "forbidden" ? denied : unauthorized;
}

function unauthorized(reply: FastifyReply) {
  return reply.code(401).send(ociError("UNAUTHORIZED", "a bearer token is required (hosts.toml header)"));
}

/** 403: a valid token of another scope (a peer's): the mirror takes the mirror's or the API's. */
function denied(reply: FastifyReply) {
  return reply
    .code(403)
    .send(ociError("DENIED", "this token does not reach the mirror (mirror.tokenFile or daemon.tokenFile)"));
}

/** 400: a name or reference outside the spec's grammar is looked up nowhere. */
function invalid(reply: FastifyReply, path: InvalidPullPath) {
  reply.log.debug({ code: path.invalid, detail: path.detail }, "mirror request refused");
  return reply.code(400).send(ociError(path.invalid, path.message, path.detail));
}

/** 404: containerd then tries the next host in hosts.toml, finally the registry itself. */
function miss(deps: MirrorDeps, reply: FastifyReply, kind: Kind, why: string) {
  count(deps, kind, "miss");
  return notFound(reply, kind, why);
}

/** The 404 itself, counted by the caller. */
function notFound(reply: FastifyReply, kind: Kind, why: string) {
  reply.log.debug({ kind, why }, "mirror miss");
  return reply.code(404).send(ociError(kind === "manifest" ? "MANIFEST_UNKNOWN" : "BLOB_UNKNOWN", why));
}

function sha256Hex(bytes: Buffer): string {
  return createHash("sha256").update(bytes).digest("hex");
}

const EMPTY_SHA256 = sha256Hex(Buffer.alloc(0));

/**
 * The body of a HEAD answer: an empty stream, because Fastify's HEAD handling would replace a
 * Content-Length we set with 0 for an empty payload, and would read a real stream to its end.
 */
function noBody(): Readable {
  return Readable.from([]);
}

/** The distribution spec's error body; `detail` names the offending value where there is one. */
function ociError(code: string, message: string, detail?: Record<string, string>) {
  return { errors: [{ code, message, ...(detail ? { detail } : {}) }] };
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
