/**
 * The API port and the handshake socket of a daemon that refuses its node (daemon/refusal.ts): every
 * request, whatever its route, token or body, gets 503 and why. Changes nothing, so asks no token.
 */
import Fastify, { type FastifyReply, type FastifyRequest, LogController } from "fastify";
import type { Logger } from "pino";
import type { ColdstartError } from "../errors.js";
import { errorBody } from "./http-errors.js";

/** Every request, whatever its route, token or body: 503 with the first reason, retry in a minute. */
export function buildRefusalApp(
  logger: Logger,
  surface: "tcp" | "socket",
  refused: () => readonly ColdstartError[],
) {
  const app = Fastify({
    loggerInstance: logger.child({ component: "api", surface }),
    // Waiters poll every few seconds; the refusal is logged once, not once per poll.
    logController: new LogController({ disableRequestLogging: true }),
    forceCloseConnections: true,
  });
  const answer = (_req: FastifyRequest, reply: FastifyReply) => {
    const [first] = refused();
    reply.code(503).header("retry-after", "60");
    return first ? reply.send(errorBody(first)) : reply.send({ ready: false });
  };
  app.setNotFoundHandler(answer);
  // A body the default parsers refuse (a wrong content type, bad JSON) gets the same answer.
  app.setErrorHandler((_err, req, reply) => answer(req, reply));
  return app;
}
