/**
 * A loopback HTTP fault-injection proxy for tests: it sits between an S3 client and a real
 * S3-compatible server and, per rule, answers directly (503 SlowDown …), resets or truncates a
 * response mid-body, stalls it, delays it, rewrites its headers, or runs a hook before forwarding.
 *
 * Requests are forwarded byte for byte: method, raw path and query, and every request header in its
 * original case and order, the Host header included. SigV4 signs Host, so point the client's endpoint
 * at `proxy.url`; the signature then covers the proxy's host:port, which is exactly what the upstream
 * receives. Bodies stream both ways with backpressure. Only node:http / node:net.
 */
import http from "node:http";
import type { Socket } from "node:net";

/** What to do with a matching request. */
export type FaultAction =
  /**
   * Answer directly without forwarding. The default body is an S3-style XML error whose `<Code>` is
   * `code` (default derived from `status`, e.g. 503 → SlowDown); `headers` are added last and win.
   */
  | { kind: "status"; status: number; code?: string; body?: string; headers?: Record<string, string> }
  /**
   * Forward, send the response headers and `afterBytes` body bytes, then reset the client connection
   * (TCP RST). Nothing happens if the body is not longer than `afterBytes`.
   */
  | { kind: "reset"; afterBytes: number }
  /**
   * Forward, send the headers (with the real Content-Length) and `afterBytes` body bytes, then close the
   * client connection cleanly (FIN): a short body. Nothing happens if the body is not longer.
   */
  | { kind: "truncate"; afterBytes: number }
  /** Forward, send `afterBytes` body bytes, send nothing for `ms`, then continue normally. */
  | { kind: "stall"; afterBytes: number; ms: number }
  /**
   * Forward, but send the body `bytes` at a time, one slice every `everyMs` (a slow drip that never
   * goes silent long enough to trip an inactivity timer).
   */
  | { kind: "drip"; bytes: number; everyMs: number }
  /** Wait `ms` before forwarding (the request body is not read meanwhile). */
  | { kind: "delay"; ms: number }
  /**
   * Forward, but rewrite the response headers: drop every header named in `remove`, then set each of
   * `set` (replacing any header of that name). Names are case-insensitive.
   */
  | { kind: "headers"; set?: Record<string, string>; remove?: string[] }
  /**
   * Await `fn` (e.g. overwrite the object in S3 between parts), then forward normally. If it throws,
   * the client gets a 500 whose message carries the error's, and nothing is forwarded.
   */
  | { kind: "hook"; fn: (req: RecordedRequest) => Promise<void> | void };

/** A fault and the requests it applies to. */
export interface FaultRule {
  /** Which requests; every given criterion must hold. Omitted: every request. */
  match?: {
    /** HTTP method, case-insensitive. */
    method?: string;
    /** A substring of, or a RegExp tested against, the decoded path (no query). */
    path?: string | RegExp;
    /** true: only requests with a Range header; false: only requests without one. */
    hasRange?: boolean;
    /** Any other test. */
    predicate?: (req: RecordedRequest) => boolean;
  };
  /** What to do. */
  action: FaultAction;
  /** Apply to at most this many requests (default: unlimited). */
  times?: number;
  /**
   * Let the first `skip` matching requests through untouched by this rule (default 0). Every rule
   * counts every request its `match` selects, even one that an earlier rule took, so
   * `{ skip: 2, times: 1 }` means "the third matching request" whatever the other rules do.
   */
  skip?: number;
}

/** One request as the proxy received it. */
export interface RecordedRequest {
  /** The HTTP method as sent. */
  method: string;
  /** The path, percent-decoded, without the query. */
  path: string;
  /** The raw query string without the leading `?` ("" when none). */
  query: string;
  /** The request headers, names lower-cased (node's `IncomingMessage.headers`). */
  headers: Record<string, string | string[] | undefined>;
  /** 0-based arrival number since the proxy started; not reset by `resetStats()`. */
  seq: number;
}

/** A running proxy. */
export interface FaultProxy {
  /** Where to point the client: `http://127.0.0.1:PORT`. */
  url: string;
  /** Append a rule; rules are tried in insertion order and the first applicable one wins. */
  addRule(rule: FaultRule): void;
  /** Remove every rule (requests in flight keep the fault they were given). */
  clearRules(): void;
  /** Every request seen since start or the last `resetStats()`, in arrival order (a live array). */
  requests: RecordedRequest[];
  /**
   * Body bytes of 2xx responses to GET requests relayed from upstream and actually written to client
   * sockets (handed to the kernel), in total and per decoded path. Injected `status` answers and
   * non-2xx bodies (error XML) are not counted: this measures object data delivered.
   */
  bytesServed(): { total: number; byPath: Map<string, number> };
  /**
   * Response faults that actually happened, by kind: a reset, truncate or stall whose response was
   * longer than its `afterBytes` (a rule applied to a shorter body is a no-op and is not counted).
   */
  faultsFired(): Record<"reset" | "truncate" | "stall", number>;
  /** Forget the recorded requests and zero the byte and fault counters. */
  resetStats(): void;
  /** Stop listening, destroy every client and upstream connection, cancel pending stalls and delays. */
  close(): Promise<void>;
}

/** The response-side faults, applied while relaying an upstream response. */
type ResponseFault = Extract<FaultAction, { kind: "reset" | "truncate" | "stall" | "headers" | "drip" }>;

interface RuleState {
  rule: FaultRule;
  /** Requests the rule's `match` selected so far. */
  matched: number;
  /** Requests the rule was applied to so far. */
  applied: number;
}

/** Hop-by-hop response headers: node's server writes its own framing and connection headers. */
const HOP_BY_HOP = new Set(["connection", "keep-alive", "transfer-encoding"]);

/** How long a "reset" waits between the last byte and the RST (see relay()). */
const RESET_GRACE_MS = 50;

const DEFAULT_CODES: Record<number, string> = {
  400: "InvalidRequest",
  403: "AccessDenied",
  404: "NoSuchKey",
  409: "OperationAborted",
  412: "PreconditionFailed",
  416: "InvalidRange",
  500: "InternalError",
  501: "NotImplemented",
  502: "BadGateway",
  503: "SlowDown",
  504: "GatewayTimeout",
};

function xmlEscape(s: string): string {
  return s.replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function s3ErrorXml(code: string, message: string, resource: string, requestId: string): string {
  return (
    '<?xml version="1.0" encoding="UTF-8"?>\n' +
    `<Error><Code>${xmlEscape(code)}</Code><Message>${xmlEscape(message)}</Message>` +
    `<Resource>${xmlEscape(resource)}</Resource><RequestId>${xmlEscape(requestId)}</RequestId></Error>`
  );
}

function decodePath(raw: string): string {
  try {
    return decodeURIComponent(raw);
  } catch {
    return raw;
  }
}

function ruleMatches(match: FaultRule["match"], rec: RecordedRequest): boolean {
  if (!match) return true;
  if (match.method !== undefined && match.method.toUpperCase() !== rec.method.toUpperCase()) return false;
  if (typeof match.path === "string" && !rec.path.includes(match.path)) return false;
  if (match.path instanceof RegExp) {
    // A /g or /y RegExp keeps state between test() calls.
    match.path.lastIndex = 0;
    if (!match.path.test(rec.path)) return false;
  }
  if (match.hasRange !== undefined && (rec.headers.range !== undefined) !== match.hasRange) return false;
  if (match.predicate && !match.predicate(rec)) return false;
  return true;
}

/** Rewrite a raw (flat name, value, …) header list for a `headers` fault. */
function rewriteHeaders(raw: string[], fault: ResponseFault | undefined): Array<[string, string]> {
  const pairs: Array<[string, string]> = [];
  for (let i = 0; i + 1 < raw.length; i += 2) pairs.push([raw[i] as string, raw[i + 1] as string]);
  if (fault?.kind !== "headers") return pairs;
  const set = Object.entries(fault.set ?? {});
  const drop = new Set([...(fault.remove ?? []), ...set.map(([name]) => name)].map((n) => n.toLowerCase()));
  return [...pairs.filter(([name]) => !drop.has(name.toLowerCase())), ...set];
}

class FaultProxyServer implements FaultProxy {
  url = "";
  readonly requests: RecordedRequest[] = [];
  private readonly server: http.Server;
  private readonly agent = new http.Agent({ keepAlive: true });
  private readonly rules: RuleState[] = [];
  private readonly sockets = new Set<Socket>();
  private readonly upstreamRequests = new Set<http.ClientRequest>();
  /** Cancels for pending delays and stalls, so close() does not wait for them. */
  private readonly sleepers = new Set<() => void>();
  private served = { total: 0, byPath: new Map<string, number>() };
  private fired = { reset: 0, truncate: 0, stall: 0 };
  private seq = 0;
  private closed = false;
  private closing: Promise<void> | undefined;

  constructor(private readonly upstream: URL) {
    this.server = http.createServer((req, res) => void this.handle(req, res));
    // Expect: 100-continue is relayed: the upstream's 100 (or its final answer) goes back to the client.
    this.server.on("checkContinue", (req, res) => void this.handle(req, res));
    // Like RGW's beast frontend (65 s idle), so a test's keep-alive client does not race a 5 s default.
    this.server.keepAliveTimeout = 65_000;
    this.server.on("connection", (socket: Socket) => {
      this.sockets.add(socket);
      socket.once("close", () => this.sockets.delete(socket));
    });
  }

  async listen(host: string, port: number): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(port, host, () => {
        this.server.off("error", reject);
        resolve();
      });
    });
    const address = this.server.address();
    if (address === null || typeof address === "string") throw new Error("fault proxy: no TCP address");
    this.url = `http://${host}:${address.port}`;
  }

  addRule(rule: FaultRule): void {
    this.rules.push({ rule, matched: 0, applied: 0 });
  }

  clearRules(): void {
    this.rules.length = 0;
  }

  bytesServed(): { total: number; byPath: Map<string, number> } {
    return { total: this.served.total, byPath: new Map(this.served.byPath) };
  }

  faultsFired(): Record<"reset" | "truncate" | "stall", number> {
    return { ...this.fired };
  }

  resetStats(): void {
    this.requests.length = 0;
    this.served = { total: 0, byPath: new Map() };
    this.fired = { reset: 0, truncate: 0, stall: 0 };
  }

  close(): Promise<void> {
    this.closing ??= new Promise<void>((resolve) => {
      this.closed = true;
      for (const cancel of [...this.sleepers]) cancel();
      for (const req of this.upstreamRequests) req.destroy();
      this.agent.destroy();
      // close() stops accepting; its callback runs once every connection is gone, which the
      // destroys below (keep-alive idle, mid-body and stalled alike) make immediate.
      this.server.close(() => resolve());
      this.server.closeAllConnections();
      for (const socket of this.sockets) socket.destroy();
    });
    return this.closing;
  }

  /** Pick the action for a request, advancing every matching rule's counters. */
  private pick(rec: RecordedRequest): FaultAction | undefined {
    let chosen: FaultAction | undefined;
    for (const state of [...this.rules]) {
      if (!ruleMatches(state.rule.match, rec)) continue;
      const index = state.matched++;
      if (chosen !== undefined) continue;
      if (index < (state.rule.skip ?? 0)) continue;
      if (state.applied >= (state.rule.times ?? Number.POSITIVE_INFINITY)) continue;
      state.applied++;
      chosen = state.rule.action;
    }
    return chosen;
  }

  private countServed(path: string, bytes: number): void {
    this.served.total += bytes;
    this.served.byPath.set(path, (this.served.byPath.get(path) ?? 0) + bytes);
  }

  /** Resolve true after `ms`, or false as soon as `res` closes or the proxy is closed. */
  private sleep(ms: number, res: http.ServerResponse): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      const done = (alive: boolean) => {
        clearTimeout(timer);
        res.off("close", onClose);
        this.sleepers.delete(onClose);
        resolve(alive && !this.closed && !res.destroyed);
      };
      const onClose = () => done(false);
      const timer = setTimeout(() => done(true), ms);
      res.once("close", onClose);
      this.sleepers.add(onClose);
    });
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const rawUrl = req.url ?? "/";
    const q = rawUrl.indexOf("?");
    const rec: RecordedRequest = {
      method: req.method ?? "GET",
      path: decodePath(q === -1 ? rawUrl : rawUrl.slice(0, q)),
      query: q === -1 ? "" : rawUrl.slice(q + 1),
      headers: { ...req.headers },
      seq: this.seq++,
    };
    this.requests.push(rec);
    const action = this.pick(rec);

    switch (action?.kind) {
      case "status":
        this.answer(req, res, rec, action.status, action);
        return;
      case "delay":
        if (!(await this.sleep(action.ms, res))) return;
        this.forward(req, res, rec, undefined);
        return;
      case "hook":
        try {
          await action.fn(rec);
        } catch (err) {
          const message = `fault proxy hook failed: ${err instanceof Error ? err.message : String(err)}`;
          this.answer(req, res, rec, 500, { code: "FaultProxyHookFailed", message });
          return;
        }
        if (this.closed || res.destroyed) return;
        this.forward(req, res, rec, undefined);
        return;
      default:
        this.forward(req, res, rec, action);
    }
  }

  /** Answer without forwarding; the request body, if any, is read and dropped. */
  private answer(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    rec: RecordedRequest,
    status: number,
    opts: { code?: string; body?: string; message?: string; headers?: Record<string, string> },
  ): void {
    const requestId = `fault-proxy-${rec.seq}`;
    const body =
      opts.body ??
      s3ErrorXml(
        opts.code ?? DEFAULT_CODES[status] ?? "InjectedFault",
        opts.message ?? `Injected by the fault proxy (HTTP ${status})`,
        rec.path,
        requestId,
      );
    req.resume();
    res.writeHead(status, {
      ...(opts.body === undefined ? { "Content-Type": "application/xml" } : {}),
      "Content-Length": String(Buffer.byteLength(body)),
      "x-amz-request-id": requestId,
      ...opts.headers,
    });
    res.end(rec.method === "HEAD" ? undefined : body);
  }

  private forward(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    rec: RecordedRequest,
    fault: ResponseFault | undefined,
  ): void {
    const upReq = http.request({
      agent: this.agent,
      host: this.upstream.hostname,
      port: this.upstream.port,
      method: req.method,
      path: req.url,
      // The raw list keeps every header's case, order and duplicates, and node adds no Host of its own.
      headers: req.rawHeaders,
    });
    this.upstreamRequests.add(upReq);
    upReq.once("close", () => this.upstreamRequests.delete(upReq));
    upReq.on("continue", () => res.writeContinue());
    upReq.on("error", (err) => {
      if (res.headersSent || res.destroyed) res.destroy();
      else
        this.answer(req, res, rec, 502, {
          code: "BadGateway",
          message: `fault proxy upstream: ${err.message}`,
        });
    });
    upReq.on("response", (upRes) => void this.relay(res, rec, upRes, fault));
    req.on("error", () => upReq.destroy());
    // A client that goes away mid-request or mid-response takes the upstream exchange with it (the
    // upstream socket is destroyed, never returned half-read to the keep-alive pool).
    res.once("close", () => {
      if (!res.writableFinished) upReq.destroy();
    });
    req.pipe(upReq);
  }

  /**
   * Relay an upstream response to the client, applying a response fault. The upstream body is pulled
   * only as fast as the client takes it (async iteration + waiting for 'drain'), so backpressure holds
   * end to end, and a stall simply stops pulling.
   */
  private async relay(
    res: http.ServerResponse,
    rec: RecordedRequest,
    upRes: http.IncomingMessage,
    fault: ResponseFault | undefined,
  ): Promise<void> {
    const status = upRes.statusCode ?? 502;
    const counted = rec.method === "GET" && status >= 200 && status < 300;
    try {
      for (const [name, value] of rewriteHeaders(upRes.rawHeaders, fault)) {
        if (!HOP_BY_HOP.has(name.toLowerCase())) res.appendHeader(name, value);
      }
      res.writeHead(status, upRes.statusMessage);
    } catch {
      // Only a `headers` fault with an invalid name or value gets here; fail loudly, not silently.
      upRes.destroy();
      res.destroy();
      return;
    }

    const socket = res.socket;
    let limit =
      fault !== undefined && "afterBytes" in fault ? Math.max(0, fault.afterBytes) : Number.POSITIVE_INFINITY;
    let passed = 0;
    /** Write a chunk; resolve true when more may be written, false once the client is gone. */
    const write = (chunk: Buffer): Promise<boolean> => {
      passed += chunk.length;
      const more = res.write(chunk, (err) => {
        // Counted only once flushed to the socket: a write cut short by a reset never counts.
        if (!err && counted) this.countServed(rec.path, chunk.length);
      });
      if (more) return Promise.resolve(!res.destroyed);
      return new Promise<boolean>((resolve) => {
        const settle = (alive: boolean) => {
          res.off("drain", onDrain);
          res.off("close", onClose);
          resolve(alive);
        };
        const onDrain = () => settle(true);
        const onClose = () => settle(false);
        res.once("drain", onDrain);
        res.once("close", onClose);
      });
    };
    /** Resolve once everything written so far has left node for the kernel, or the client is gone. */
    const flushed = (): Promise<boolean> =>
      new Promise<boolean>((resolve) => {
        if (!socket || socket.destroyed) return resolve(false);
        res.flushHeaders();
        socket.write(Buffer.alloc(0), (err) => resolve(!err));
      });

    try {
      for await (const data of upRes as AsyncIterable<Buffer>) {
        let chunk = data;
        if (res.destroyed || this.closed) return;
        if (fault?.kind === "drip") {
          for (let at = 0; at < chunk.length; at += fault.bytes) {
            if (!(await write(chunk.subarray(at, at + fault.bytes)))) return;
            if (!(await this.sleep(fault.everyMs, res))) return;
          }
          continue;
        }
        if (passed + chunk.length > limit && fault !== undefined && fault.kind !== "headers") {
          this.fired[fault.kind]++;
          const head = chunk.subarray(0, limit - passed);
          chunk = chunk.subarray(head.length);
          if (head.length > 0 && !(await write(head))) return;
          if (fault.kind === "stall") {
            if (!(await this.sleep(fault.ms, res))) return;
            limit = Number.POSITIVE_INFINITY;
          } else {
            // Wait until the bytes are in the kernel: an RST discards data node still holds, and on
            // loopback the kernel hands what it holds to the peer before the RST or FIN that follows.
            if (!(await flushed()) || !socket) return;
            if (fault.kind === "truncate") socket.end();
            // An RST that lands while the peer still has unread data is reported by libuv as a plain
            // EOF (it turns POLLHUP after a partial read into EOF without reading the error), so give
            // the client a moment to drain first; then it sees ECONNRESET, as it would from S3.
            else if (await this.sleep(RESET_GRACE_MS, res)) socket.resetAndDestroy();
            return; // leaving the loop destroys upRes, and with it the upstream connection
          }
        }
        if (chunk.length > 0 && !(await write(chunk))) return;
      }
    } catch {
      // The upstream response broke mid-body: break the client's response too, never end it cleanly.
      res.destroy();
      return;
    }
    if (!res.destroyed) res.end();
  }
}

/**
 * Start a proxy in front of `upstream` (`http://127.0.0.1:PORT`), by default on a free loopback port.
 * The benchmark lab binds its server namespace's address instead.
 */
export async function startFaultProxy(
  upstream: string,
  at: { host?: string; port?: number } = {},
): Promise<FaultProxy> {
  const target = new URL(upstream);
  if (target.protocol !== "http:") {
    throw new Error(`fault proxy upstream must be an http:// URL, got ${upstream}`);
  }
  const proxy = new FaultProxyServer(target);
  await proxy.listen(at.host ?? "127.0.0.1", at.port ?? 0);
  return proxy;
}
