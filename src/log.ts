/**
 * Logging that never carries a credential. Every listener's request log goes through `redactUrl`
 * (the one place that decides which query values may be printed), and the pino logger every
 * component is a child of redacts credential headers wherever an object carrying them is logged.
 */
import pino, { type Logger } from "pino";

const REDACTED = "[redacted]";

/**
 * Query parameters whose values are printed: the ones coldstart's listeners define, none of which
 * is a secret. Any other parameter (`token`, `X-Amz-Signature`, `access_token`, a typo…) keeps its
 * name and loses its value: a credential put in a URL by mistake must not reach the logs, and an
 * allowlist cannot miss a name nobody thought of.
 */
const SHOWN_PARAMS = new Set([
  "timeoutSeconds",
  "last",
  "waiter",
  "bucket",
  "key",
  "etag",
  "piece",
  "wait",
  "start",
  "ref",
  "ns",
  "digest",
]);

/** `url` with the value of every query parameter not in the allowlist replaced by `[redacted]`. */
export function redactUrl(url: string): string {
  const q = url.indexOf("?");
  if (q < 0) return url;
  const query = url
    .slice(q + 1)
    .split("&")
    .map((pair) => {
      const eq = pair.indexOf("=");
      const name = eq < 0 ? pair : pair.slice(0, eq);
      let decoded = name;
      try {
        decoded = decodeURIComponent(name.replace(/\+/g, " "));
      } catch {
        // not valid percent-encoding: not one of ours, so redacted below
      }
      if (SHOWN_PARAMS.has(decoded)) return pair;
      // A bare `?SECRET` is all value.
      return eq < 0 ? REDACTED : `${name}=${REDACTED}`;
    })
    .join("&");
  return `${url.slice(0, q)}?${query}`;
}

/** What a request log line says of a request (fastify's `req` serializer, with the URL redacted). */
function requestSerializer(req: {
  method?: string;
  url?: string;
  host?: string;
  ip?: string;
  socket?: { remotePort?: number };
}) {
  return {
    method: req.method,
    url: req.url === undefined ? undefined : redactUrl(req.url),
    host: req.host,
    remoteAddress: req.ip,
    remotePort: req.socket?.remotePort,
  };
}

/** Header values never logged, wherever an object carrying them is (requests, errors, responses). */
const REDACT_PATHS = [
  "authorization",
  "cookie",
  "headers.authorization",
  "headers.cookie",
  "headers['set-cookie']",
  "headers['x-amz-security-token']",
  "*.authorization",
  "*.cookie",
  "*.headers.authorization",
  "*.headers.cookie",
  "*.headers['set-cookie']",
  "*.headers['x-amz-security-token']",
  "token",
  "*.token",
];

/**
 * The root logger of a coldstart process (components take children of it, and fastify's apps use it
 * with their own `req` serializer replaced by this one): request URLs and credential headers
 * redacted. On stdout unless `fd` says otherwise (the CLI logs to stderr: stdout is its output).
 */
export function createLogger(level: string, fd?: number): Logger {
  const options: pino.LoggerOptions = {
    level,
    serializers: { req: requestSerializer },
    redact: { paths: REDACT_PATHS, censor: REDACTED },
  };
  return fd === undefined ? pino(options) : pino(options, pino.destination(fd));
}
