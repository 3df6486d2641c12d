/**
 * API clients for the daemon's few Kubernetes calls, over a transport with a deadline per request and
 * an abort on close. @kubernetes/client-node 1.x's default transport (node-fetch) takes no signal, so
 * a request to an API server that never answers would stall a sync loop for good, and an abandoned
 * PATCH could still land after a newer one. (Watches keep client-node's own Watch: they are meant to
 * stay open, and the informer restarts them.)
 */
import http from "node:http";
import https from "node:https";
import {
  ApiException,
  type Configuration,
  createConfiguration,
  type KubeConfig,
  type PromiseHttpLibrary,
  type RequestContext,
  ResponseContext,
  SelfDecodingBody,
  ServerConfiguration,
  wrapHttpLibrary,
} from "@kubernetes/client-node";
import { ColdstartError } from "../errors.js";

/** A generated API class of client-node (CoreV1Api, CustomObjectsApi, ...). */
export type ApiClass<T> = new (configuration: Configuration) => T;

/** `kubeConfig.makeApiClient(Api)`, with a deadline per request and an abort when `closed` aborts. */
export function apiClient<T>(
  Api: ApiClass<T>,
  kubeConfig: KubeConfig,
  requestTimeoutMs: number,
  closed: AbortSignal,
  userAgent = "coldstart",
): T {
  const cluster = kubeConfig.getCurrentCluster();
  if (!cluster) {
    throw new ColdstartError("CS_CONFIG_INVALID", "the kubeconfig names no current cluster", {
      details: { field: "kubeConfig" },
    });
  }
  return new Api(
    createConfiguration({
      baseServer: new ServerConfiguration(cluster.server, {}),
      authMethods: { default: kubeConfig },
      httpApi: wrapHttpLibrary(deadlineHttpLibrary(requestTimeoutMs, closed, userAgent)),
    }),
  );
}

function deadlineHttpLibrary(timeoutMs: number, closed: AbortSignal, userAgent: string): PromiseHttpLibrary {
  return {
    send: (request: RequestContext) =>
      new Promise<ResponseContext>((resolve, reject) => {
        const url = new URL(request.getUrl());
        const signal = AbortSignal.any([closed, AbortSignal.timeout(timeoutMs)]);
        const body = request.getBody();
        if (body !== undefined && typeof body !== "string" && !Buffer.isBuffer(body)) {
          reject(new Error("the Kubernetes transport sends only string or Buffer bodies"));
          return;
        }
        const send = url.protocol === "https:" ? https.request : http.request;
        const req = send(
          url,
          {
            method: request.getHttpMethod(),
            headers: { "User-Agent": userAgent, ...request.getHeaders() },
            agent: request.getAgent(),
            signal,
          },
          (res) => {
            const chunks: Buffer[] = [];
            res.on("data", (chunk: Buffer) => chunks.push(chunk));
            res.on("error", reject);
            res.on("end", () => {
              const headers: Record<string, string> = {};
              for (const [name, value] of Object.entries(res.headers)) {
                if (value !== undefined) headers[name] = Array.isArray(value) ? value.join(", ") : value;
              }
              const bytes = Promise.resolve(Buffer.concat(chunks));
              resolve(new ResponseContext(res.statusCode ?? 0, headers, new SelfDecodingBody(bytes)));
            });
          },
        );
        req.on("error", (err) => {
          reject(
            signal.aborted && !closed.aborted
              ? new Error(`${request.getHttpMethod()} ${url.pathname} timed out after ${timeoutMs} ms`, {
                  cause: err,
                })
              : err,
          );
        });
        req.end(body);
      }),
  };
}

/** The HTTP status of a failed API call, if it got an answer. */
export function statusOf(err: unknown): number | undefined {
  if (err instanceof ApiException) return err.code;
  const code = (err as { statusCode?: unknown; code?: unknown } | null)?.statusCode;
  return typeof code === "number" ? code : undefined;
}

/** Why an API call failed, in words: the Status object's message where the server sent one. */
export function reasonOf(err: unknown): string {
  if (err instanceof ApiException) {
    const body: unknown = err.body;
    if (typeof body === "string") {
      try {
        const message = (JSON.parse(body) as { message?: unknown }).message;
        if (typeof message === "string") return message;
      } catch {
        // Not a Kubernetes Status object: fall through to the raw text.
      }
      return body.slice(0, 200) || "empty response body";
    }
    return String((body as { message?: unknown } | undefined)?.message ?? "no response body");
  }
  return err instanceof Error ? err.message : String(err);
}
