/**
 * The metrics listener: /metrics, /livez and /readyz for Prometheus and the kubelet's probes. Nothing
 * here reads or changes models, so nothing here asks for a token.
 */
import Fastify, { LogController } from "fastify";
import type { Logger } from "pino";
import type { ColdstartError } from "../errors.js";
import type { Metrics } from "../metrics/metrics.js";
import type { MirrorCheck } from "../mirror/containerd-check.js";
import { answerCatalogError, answerNoRoute, errorBody } from "./http-errors.js";

export interface MetricsAppDeps {
  metrics: Metrics;
  logger: Logger;
  isReady: () => boolean;
  mirrorCheck: () => MirrorCheck | undefined;
  /** Why the daemon refuses this node (daemon.onRefusal serve); empty or absent when it does not. */
  refusals?: () => readonly ColdstartError[];
}

export function buildMetricsApp(deps: MetricsAppDeps) {
  const app = Fastify({
    loggerInstance: deps.logger.child({ component: "metrics" }),
    // A scrape every 15 s is not news; failures are still logged.
    logController: new LogController({ disableRequestLogging: true }),
    forceCloseConnections: true,
  });
  app.setErrorHandler(answerCatalogError);
  app.setNotFoundHandler(answerNoRoute);
  app.get("/livez", async () => ({ status: "ok" }));
  // The mirror's state is detail, not a condition: a node whose containerd bypasses the mirror still
  // stages models and serves its peers.
  app.get("/readyz", async (_req, reply) => {
    const mirror = deps.mirrorCheck();
    const refused = deps.refusals?.() ?? [];
    return reply.code(deps.isReady() ? 200 : 503).send({
      ready: deps.isReady(),
      ...(refused.length > 0 ? { refused: refused.map((e) => errorBody(e).error) } : {}),
      ...(mirror ? { mirror: { status: mirror.status, problems: mirror.problems.map((p) => p.code) } } : {}),
    });
  });
  app.get("/metrics", async (_req, reply) => {
    reply.header("content-type", deps.metrics.registry.contentType);
    return deps.metrics.registry.metrics();
  });
  return app;
}
