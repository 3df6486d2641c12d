import Fastify from "fastify";
import { ColdstartError } from "../errors.js";
import { peerRoutes } from "../peers/serve.js";
import { authorize, type Scope } from "./auth.js";
import type { AppDeps, Surface } from "./deps.js";
import { answerCatalogError, answerNoRoute } from "./http-errors.js";
import { compileCacheRoutes } from "./routes/compile-caches.js";
import { modelRoutes } from "./routes/models.js";
import { nodeRoutes } from "./routes/node.js";

/**
 * The HTTP API v1 (docs/api.md), not listening: main.ts listens. This file holds what every route
 * shares (strict bodies, the error catalog's answers, request metrics, authorization); the routes
 * are plugins: api/routes/ and the peer protocol's serving half, peers/serve.ts.
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
  // absolute-form target such as `PUT http://x/v1/models/m` routes like `/v1/models/m`). The peer
  // routes take a peer token (peers.tokenFile) too; everything else only an API token
  // (daemon.tokenFile): a peer's or the mirror's token there is a 403, not a way in.
  app.decorateRequest("authenticated", false);
  app.addHook("onRequest", async (req) => {
    if (!req.url.startsWith("/")) {
      throw new ColdstartError("CS_REQUEST_INVALID", "the request target must be a path (origin-form)");
    }
    const route = req.routeOptions.url;
    const scope = route?.startsWith("/v1/peer/") ? "peer" : "api";
    const verdict = authorize(deps, req.headers.authorization, scope);
    req.authenticated = verdict.ok;
    if (verdict.ok || (route !== undefined && PUBLIC_ROUTES.has(route))) return;
    if (surface === "socket" && route === "/v1/models/*" && (req.method === "PUT" || req.method === "GET"))
      return;
    // The handshake reads the loader choice and GPU product for the pod's env file.
    if (surface === "socket" && route === "/v1/node" && req.method === "GET") return;
    // And restores its compile cache, or publishes it (which the quiet period would do anyway).
    if (surface === "socket" && route !== undefined && SOCKET_CACHE_ROUTES.has(`${req.method} ${route}`))
      return;
    if (verdict.reason === "forbidden") {
      throw new ColdstartError(
        "CS_FORBIDDEN",
        `a ${verdict.scopes.join(" and ")} token reaches ${verdict.scopes.map(REACHES).join(" and ")} only; ${req.method} ${route ?? "this path"} needs ${scope === "peer" ? "a peer token (peers.tokenFile) or " : ""}an API token (daemon.tokenFile)`,
      );
    }
    throw new ColdstartError(
      "CS_UNAUTHORIZED",
      "missing or invalid bearer token (Authorization: Bearer <token>)",
    );
  });

  app.register(nodeRoutes, { deps });
  app.register(modelRoutes, { deps, surface });
  app.register(peerRoutes, {
    deps: {
      holder: deps.manager.pieces,
      metrics: deps.metrics,
      contentStore: deps.contentStore,
      images: deps.images,
      peerUploadLimiter: deps.peerUploadLimiter,
    },
  });
  app.register(compileCacheRoutes, { deps });
  return app;
}

/** Compile-cache calls the tokenless handshake socket may make: restore, publish, list. */
const SOCKET_CACHE_ROUTES = new Set([
  "POST /v1/compile-caches",
  "POST /v1/compile-caches/:key/publish",
  "GET /v1/compile-caches",
]);

/** What a scoped token reaches, for the 403's message. */
const REACHES = (scope: Scope) =>
  scope === "peer" ? "/v1/peer/*" : scope === "mirror" ? "the mirror" : "/v1";

/** Routes anyone may call: probes and metrics, nothing that reads or changes models. */
const PUBLIC_ROUTES = new Set(["/livez", "/readyz", "/metrics"]);

declare module "fastify" {
  interface FastifyRequest {
    /**
     * The request carried a bearer token that reaches its route: an API token, or a peer token on a
     * peer route (always true with `daemon.auth: none`).
     */
    authenticated: boolean;
  }
}
