import type { FastifyPluginAsync } from "fastify";
import type { AppDeps } from "../deps.js";

/** The probes, the metrics, and `GET /v1/node` (the node's facts, disk and mirror check). */
export const nodeRoutes: FastifyPluginAsync<{ deps: AppDeps }> = async (app, { deps }) => {
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

  app.get("/v1/node", async () => {
    const mirror = deps.mirrorCheck?.();
    return { disk: await deps.manager.disk(), ...deps.nodeFacts?.(), ...(mirror ? { mirror } : {}) };
  });
};
