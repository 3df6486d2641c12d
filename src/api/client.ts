import { request } from "node:http";
import { request as httpsRequest } from "node:https";

export interface DaemonEndpoint {
  /** Unix socket path, or… */
  socketPath?: string | undefined;
  /** …a base URL of the TCP API. */
  url?: string | undefined;
  token?: string | undefined;
}

export interface JsonResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: unknown;
}

/**
 * One JSON request to the daemon over its unix socket or TCP. Resolves with any HTTP status;
 * rejects only when the daemon cannot be reached or the exchange breaks (the caller retries those).
 */
export function callDaemon(
  ep: DaemonEndpoint,
  method: string,
  path: string,
  body?: unknown,
  options: { timeoutMs?: number } = {},
): Promise<JsonResponse> {
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  const headers: Record<string, string | number> = { accept: "application/json" };
  if (payload) {
    headers["content-type"] = "application/json";
    headers["content-length"] = payload.length;
  }
  if (ep.token) headers.authorization = `Bearer ${ep.token}`;
  return new Promise((resolve, reject) => {
    const base = ep.url ? new URL(path, ep.url) : undefined;
    const target = base
      ? {
          protocol: base.protocol,
          hostname: base.hostname,
          port: base.port,
          path: base.pathname + base.search,
        }
      : { socketPath: ep.socketPath, path };
    const send = base?.protocol === "https:" ? httpsRequest : request;
    const req = send({ ...target, method, headers, timeout: options.timeoutMs ?? 30_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("error", reject);
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        let parsed: unknown = text;
        try {
          parsed = text ? JSON.parse(text) : undefined;
        } catch {
          // not JSON: keep the text for the error message
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: parsed });
      });
    });
    req.on("timeout", () =>
      req.destroy(Object.assign(new Error("request timed out"), { code: "ETIMEDOUT" })),
    );
    req.on("error", reject);
    req.end(payload);
  });
}
