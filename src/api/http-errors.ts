import type { FastifyReply, FastifyRequest } from "fastify";
import { ColdstartError, type ErrorCode, isColdstartError, toColdstartError } from "../errors.js";

/** The one place that knows HTTP status codes for catalog errors. */
export const httpStatusOf: Partial<Record<ErrorCode, number>> = {
  CS_MODEL_ID_INVALID: 400,
  CS_REQUEST_INVALID: 400,
  CS_SOURCE_URI_INVALID: 400,
  CS_UNAUTHORIZED: 401,
  CS_FORBIDDEN: 403,
  CS_SOURCE_NOT_ALLOWED: 403,
  CS_MODEL_NOT_FOUND: 404,
  CS_MODEL_SOURCE_CONFLICT: 409,
  CS_MODEL_ID_CONFLICT: 409,
  CS_MODEL_FAILED: 409,
  CS_MODEL_PINNED: 409,
  CS_MODEL_IN_USE: 409,
  CS_REQUEST_TOO_LARGE: 413,
  CS_UNSUPPORTED_MEDIA_TYPE: 415,
  CS_CACHE_KEY_INVALID: 400,
  CS_CACHE_NOT_FOUND: 404,
  CS_PEER_NOT_HELD: 404,
  CS_PATH_UNSAFE: 403,
  CS_CACHE_BUSY: 409,
  CS_CACHE_NO_REMOTE: 409,
  CS_CACHE_REMOTE_INVALID: 502,
  CS_SHUTTING_DOWN: 503,
  CS_CONTAINERD_UNAVAILABLE: 503,
  // A daemon that refuses the node (daemon.onRefusal serve) answers every call with why.
  CS_PLACEMENT_REFUSED: 503,
  CS_GDS_UNAVAILABLE: 503,
  CS_INSUFFICIENT_SPACE: 507,
};

/** Fastify's own request errors, mapped into the catalog. */
export const fastifyCodes: Record<string, ErrorCode> = {
  FST_ERR_CTP_INVALID_MEDIA_TYPE: "CS_UNSUPPORTED_MEDIA_TYPE",
  FST_ERR_CTP_BODY_TOO_LARGE: "CS_REQUEST_TOO_LARGE",
  FST_ERR_CTP_INVALID_JSON_BODY: "CS_REQUEST_INVALID",
  FST_ERR_CTP_EMPTY_JSON_BODY: "CS_REQUEST_INVALID",
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: "CS_REQUEST_INVALID",
  FST_ERR_VALIDATION: "CS_REQUEST_INVALID",
};

/** A thrown value as a catalog error: fastify's own request errors mapped, anything else wrapped. */
function asCatalogError(err: unknown): ColdstartError {
  if (isColdstartError(err)) return err;
  const validation = (err as { validation?: ValidationIssue[]; validationContext?: string }).validation;
  if (Array.isArray(validation) && validation[0]) {
    return validationError(validation[0], (err as { validationContext?: string }).validationContext, err);
  }
  const code = (err as { code?: string }).code;
  const mapped = code ? fastifyCodes[code] : undefined;
  if (mapped) return new ColdstartError(mapped, (err as Error).message, { cause: err });
  return toColdstartError(err);
}

/** The control API's error body: `{"error":{"code","message","details"?}}` (docs/api.md). */
export function errorBody(e: ColdstartError): { error: Record<string, unknown> } {
  // details (which key, field, value) when there are any: automation acts on them.
  const details = Object.keys(e.details).length > 0 ? { details: e.details } : {};
  return { error: { code: e.code, message: e.message, ...details } };
}

/** Every control listener's error handler (API, socket, metrics): the catalog's status and body. */
export function answerCatalogError(err: unknown, req: FastifyRequest, reply: FastifyReply): void {
  const e = asCatalogError(err);
  const status = httpStatusOf[e.code] ?? 500;
  if (status >= 500) req.log.error({ code: e.code, err: e.message }, "request failed");
  // Someone planted a link under the root: the operator must hear of it, whichever route met it.
  else if (e.code === "CS_PATH_UNSAFE") req.log.warn({ code: e.code, path: e.details.value }, e.message);
  reply.code(status).send(errorBody(e));
}

/** The 404 of a path no route serves, on every control listener: the catalog's shape. */
export function answerNoRoute(req: FastifyRequest, reply: FastifyReply): void {
  const e = new ColdstartError("CS_REQUEST_INVALID", `no route ${req.method} ${req.url.split("?")[0]}`);
  reply.code(404).send(errorBody(e));
}

/** One of ajv's errors as fastify hands them over (err.validation). */
interface ValidationIssue {
  keyword: string;
  instancePath: string;
  params: Record<string, unknown>;
  message?: string;
}

/**
 * A schema violation as CS_REQUEST_INVALID naming the field (`details.field`, dotted from the body
 * or query root) and, where there is one, the value: an unknown field is named, not just "additional
 * properties".
 */
function validationError(v: ValidationIssue, context: string | undefined, cause: unknown): ColdstartError {
  const where = context ?? "body";
  const path = v.instancePath
    .split("/")
    .slice(1)
    .map((s) => s.replace(/~1/g, "/").replace(/~0/g, "~"));
  if (v.keyword === "additionalProperties" && typeof v.params.additionalProperty === "string") {
    path.push(v.params.additionalProperty);
    const field = path.join(".");
    return new ColdstartError("CS_REQUEST_INVALID", `${where}.${field} is not a known field`, {
      cause,
      details: { field },
    });
  }
  if (v.keyword === "required" && typeof v.params.missingProperty === "string") {
    path.push(v.params.missingProperty);
    const field = path.join(".");
    return new ColdstartError("CS_REQUEST_INVALID", `${where}.${field} is required`, {
      cause,
      details: { field },
    });
  }
  const field = path.join(".");
  const name = field === "" ? where : `${where}.${field}`;
  return new ColdstartError("CS_REQUEST_INVALID", `${name} ${v.message ?? "is invalid"}`, {
    cause,
    ...(field === "" ? {} : { details: { field } }),
  });
}
