import { writeFile } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";

/** The bearer token the double accepts. */
export const TOKEN = "test-token-0123";
export const MERGE_PATCH = "application/merge-patch+json";

export interface RecordedRequest {
  method: string;
  path: string;
  contentType: string | undefined;
  authorization: string | undefined;
  body: unknown;
  at: number;
}

export interface NodeObject {
  apiVersion: "v1";
  kind: "Node";
  metadata: { name: string; labels?: Record<string, string>; annotations?: Record<string, string> };
}

/** What the double does with the next matching request instead of serving it. */
export type Fault = { status: number; message?: string } | { hang: true };

/**
 * Test double of the Kubernetes API server, at the wire level: a loopback node:http server that
 * serves GET and JSON-merge-PATCH of /api/v1/nodes/{name} from an in-memory Node, answers errors as
 * Kubernetes Status objects, records every request, and can be told to fail or hang the next ones.
 */
export class KubeApiServerDouble {
  readonly requests: RecordedRequest[] = [];
  readonly nodes = new Map<string, NodeObject>();
  /** Faults for the next requests, in order; each applies to one request. */
  readonly faults: Fault[] = [];
  /** Runs when a request arrives, before it is answered (e.g. to call set() mid-flight). */
  onRequest: ((req: RecordedRequest) => void) | undefined;
  /** Delay before answering each request. */
  responseDelayMs = 0;
  readonly #server = http.createServer((req, res) => void this.#handle(req, res));
  readonly #hung = new Set<http.ServerResponse>();
  closedHung = 0;

  async start(): Promise<string> {
    await new Promise<void>((resolve) => this.#server.listen(0, "127.0.0.1", resolve));
    return `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    for (const res of this.#hung) res.destroy();
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  addNode(name: string, labels: Record<string, string> = {}, annotations: Record<string, string> = {}) {
    this.nodes.set(name, { apiVersion: "v1", kind: "Node", metadata: { name, labels, annotations } });
  }

  labelsOf(name: string): Record<string, string> {
    return this.nodes.get(name)?.metadata.labels ?? {};
  }

  annotationsOf(name: string): Record<string, string> {
    return this.nodes.get(name)?.metadata.annotations ?? {};
  }

  patches(): RecordedRequest[] {
    return this.requests.filter((r) => r.method === "PATCH");
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const text = Buffer.concat(chunks).toString("utf8");
    const recorded: RecordedRequest = {
      method: req.method ?? "",
      path: req.url ?? "",
      contentType: req.headers["content-type"],
      authorization: req.headers.authorization,
      body: text === "" ? undefined : JSON.parse(text),
      at: performance.now(),
    };
    this.requests.push(recorded);
    this.onRequest?.(recorded);
    if (this.responseDelayMs > 0) await new Promise((r) => setTimeout(r, this.responseDelayMs));

    const fault = this.faults.shift();
    if (fault && "hang" in fault) {
      this.#hung.add(res);
      res.on("close", () => {
        this.#hung.delete(res);
        this.closedHung++;
      });
      return;
    }
    if (fault) return this.#status(res, fault.status, fault.message ?? `injected ${fault.status}`);
    if (recorded.authorization !== `Bearer ${TOKEN}`) return this.#status(res, 401, "Unauthorized");

    const match = /^\/api\/v1\/nodes\/([^/?]+)$/.exec(recorded.path);
    const node = match ? this.nodes.get(decodeURIComponent(match[1] ?? "")) : undefined;
    if (!node) return this.#status(res, 404, `nodes "${match?.[1]}" not found`);
    if (recorded.method === "GET") return this.#json(res, 200, node);
    if (recorded.method === "PATCH") {
      if (recorded.contentType !== MERGE_PATCH) return this.#status(res, 415, "unsupported patch type");
      const patched = mergePatch(node, recorded.body) as NodeObject;
      this.nodes.set(node.metadata.name, patched);
      return this.#json(res, 200, patched);
    }
    return this.#status(res, 405, "method not allowed");
  }

  #json(res: http.ServerResponse, status: number, body: unknown): void {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(body));
  }

  #status(res: http.ServerResponse, code: number, message: string): void {
    this.#json(res, code, { kind: "Status", apiVersion: "v1", status: "Failure", message, code });
  }
}

/** RFC 7386 JSON merge patch, as the API server applies `application/merge-patch+json`. */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (patch === null || typeof patch !== "object" || Array.isArray(patch)) return patch;
  const out: Record<string, unknown> =
    target !== null && typeof target === "object" && !Array.isArray(target)
      ? { ...(target as Record<string, unknown>) }
      : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete out[key];
    else out[key] = mergePatch(out[key], value);
  }
  return out;
}

/** A kubeconfig for the double: its plain-HTTP URL, which the client accepts only with insecure-skip-tls-verify. */
export async function writeKubeconfig(file: string, server: string): Promise<string> {
  await writeFile(
    file,
    JSON.stringify({
      apiVersion: "v1",
      kind: "Config",
      clusters: [{ name: "double", cluster: { server, "insecure-skip-tls-verify": true } }],
      users: [{ name: "daemon", user: { token: TOKEN } }],
      contexts: [{ name: "double", context: { cluster: "double", user: "daemon" } }],
      "current-context": "double",
    }),
  );
  return file;
}
