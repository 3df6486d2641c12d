import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from "fastify";
import { ColdstartError } from "../../errors.js";
import type { ModelManager, ModelRequest } from "../../models/model-manager.js";
import type { AppDeps, Surface } from "../deps.js";

/** The longest a `GET /v1/models/{id}/ready` long-poll may be asked to wait. */
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
    // The nodes asked to stage the model at the same moment (peer base URLs, this node's among them).
    cohort: {
      type: "array",
      minItems: 2,
      maxItems: 1000,
      uniqueItems: true,
      items: { type: "string", minLength: 1, maxLength: 256 },
    },
  },
} as const;

const patchBody = {
  type: "object",
  additionalProperties: false,
  required: ["pin"],
  properties: { pin: { type: "boolean" } },
} as const;

/**
 * `/v1/models`: ask for a model, pin it, delete it, read it, and the ready long-poll the handshake
 * waits on. Model ids may contain "/": in a path they are sent percent-encoded
 * (`meta-llama%2FLlama-3.1-8B`) or raw; a trailing raw `/ready` is the long-poll, so a model whose
 * last segment is "ready" must be addressed encoded.
 */
export const modelRoutes: FastifyPluginAsync<{ deps: AppDeps; surface: Surface }> = async (
  app,
  { deps, surface },
) => {
  app.get("/v1/models", async () => ({ models: deps.manager.list() }));
  app.put<{ Body: ModelRequest }>("/v1/models/*", { schema: { body: modelBody } }, async (req, reply) => {
    const { id } = parseModelPath(req);
    if (req.body.pin !== undefined && !req.authenticated) {
      // The tokenless handshake may ask for a model, not change what protects other models.
      throw new ColdstartError("CS_UNAUTHORIZED", "pin needs a bearer token; the handshake cannot set it");
    }
    if (req.body.cohort !== undefined && !req.authenticated) {
      throw new ColdstartError("CS_UNAUTHORIZED", "cohort needs a bearer token; the handshake cannot set it");
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
};

async function longPoll(deps: AppDeps, req: FastifyRequest, reply: FastifyReply, id: string) {
  const query = req.query as Record<string, unknown>;
  const raw = query.timeoutSeconds ?? "30";
  const timeoutSeconds = Number(raw);
  // last=1: the client's final poll (it gives up when this one ends not ready), so that a handshake
  // that runs out can be counted as such; a poll without it may be followed by another.
  const last = query.last ?? "0";
  if (last !== "0" && last !== "1") {
    throw new ColdstartError("CS_REQUEST_INVALID", `last must be 0 or 1, got ${JSON.stringify(last)}`, {
      details: { field: "last", value: last },
    });
  }
  // waiter: the handshake's own id (coldstart wait sends one), so each pod's gate wait is its own.
  const waiter = query.waiter;
  if (waiter !== undefined && (typeof waiter !== "string" || !/^[A-Za-z0-9-]{1,64}$/.test(waiter))) {
    throw new ColdstartError(
      "CS_REQUEST_INVALID",
      `waiter must be 1 to 64 letters, digits or dashes, got ${JSON.stringify(waiter)}`,
      { details: { field: "waiter", value: String(waiter).slice(0, 80) } },
    );
  }
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
    result = await deps.manager.waitReady(id, timeoutSeconds * 1000, gone.signal, waiter);
  } finally {
    reply.raw.off("close", onClose);
  }
  const { outcome, status } = result;
  // Metrics count handshakes, not polls: only a terminal answer ends one.
  if (outcome === "ready") {
    const handed = await deps.manager.markInUse(id, waiter);
    if (handed) {
      // Held in use now, so eviction cannot take it while its pages are read in.
      await deps.pageCache?.warm(id, handed.status.path);
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
  if (last === "1" && !gone.signal.aborted) {
    deps.metrics?.handshakeWaits.inc({ outcome: "timeout" });
    if (waiter !== undefined) deps.manager.forgetWaiter(id, waiter);
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
