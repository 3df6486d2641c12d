import type { FastifyPluginAsync } from "fastify";
import type { Identity } from "../../compile-cache/types.js";
import { ColdstartError } from "../../errors.js";
import type { AppDeps } from "../deps.js";

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

interface RestoreBody extends Identity {
  remote?: string;
  timeoutSeconds?: number;
}

/** `/v1/compile-caches`: restore, list, read, publish and remove the node's keyed caches. */
export const compileCacheRoutes: FastifyPluginAsync<{ deps: AppDeps }> = async (app, { deps }) => {
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
};
