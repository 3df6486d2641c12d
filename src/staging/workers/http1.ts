/**
 * The part workers' HTTP/1.1 client, for GETs. Each connection reads into one buffer of its own
 * (net.Socket's `onread`) instead of node:http's fresh 64 KiB buffer per read, which the garbage
 * collector then has to find: with node:http, `coldstart pull` of bench:ceiling's 2 GiB model took
 * 0.7 CPU-s per GiB more and peaked at 405 MB RSS on Node 24 instead of 180 MB. Body chunks are
 * therefore views of the connection's buffer, valid only during their 'data' event
 * (`reusesChunks`); a chunk that arrives while the body is paused is copied.
 *
 * Framing is RFC 9112's for responses: Content-Length, chunked, or until close; 1xx skipped; a
 * connection is reused only after a complete response that did not ask to close it.
 */
import { EventEmitter } from "node:events";
import { isIP, connect as netConnect, type Socket } from "node:net";
import { type ConnectionOptions, connect as tlsConnect } from "node:tls";
import { TransientError } from "../../s3/retry.js";

/** Bytes one read may bring: the socket's buffer, reused for every read on that connection. */
const READ_BUFFER = 64 * 1024;
/** A status line and headers longer than this are refused (S3 sends under 2 KiB). */
const MAX_HEAD = 64 * 1024;
/** An idle connection is closed after this long (S3 closes its side after about 20 s). */
const IDLE_MS = 15_000;

export interface Http1Response {
  status: number;
  /** Lower-cased names; a repeated header's values joined with ", ". */
  headers: Record<string, string>;
  body: SocketBody;
  /** Whether the server closed its side (FIN) before the body ended: a truncation, not a reset. */
  closedByServer: () => boolean;
}

export class Http1Client {
  readonly #idle = new Map<string, Connection[]>();
  readonly #tls: ConnectionOptions;
  #closed = false;

  /** `tls`: options for https connections beyond the defaults (a test's own CA). */
  constructor(tls: Pick<ConnectionOptions, "ca"> = {}) {
    this.#tls = tls;
  }

  /**
   * Sends one GET. `timeoutMs` bounds connecting, sending and the wait for the response head; the
   * body's pace is its reader's business. A reused connection that fails before any byte of the
   * answer (the server closed it meanwhile) is retried once on a fresh one: GET is idempotent.
   */
  async get(
    url: URL,
    headers: Record<string, string>,
    timeoutMs: number,
    signal: AbortSignal,
  ): Promise<Http1Response> {
    const head = requestHead(url, headers);
    const origin = `${url.protocol}//${url.host}`;
    for (;;) {
      signal.throwIfAborted();
      const idle = this.#take(origin);
      const conn = idle ?? new Connection(url, this.#tls, (c) => this.#release(origin, c));
      try {
        return await conn.send(head, timeoutMs, signal);
      } catch (err) {
        if (idle && conn.answered === 0 && !signal.aborted && !(err instanceof HeadTimeout)) continue;
        throw err;
      }
    }
  }

  close(): void {
    this.#closed = true;
    for (const list of this.#idle.values()) for (const c of list) c.destroy();
    this.#idle.clear();
  }

  /** The connection to `origin` released last (LIFO), if one is idle. */
  #take(origin: string): Connection | undefined {
    const list = this.#idle.get(origin);
    const conn = list?.pop();
    // Peers' addresses come and go: an origin with no idle connection is forgotten.
    if (list?.length === 0) this.#idle.delete(origin);
    return conn;
  }

  #release(origin: string, conn: Connection): void {
    if (this.#closed) {
      conn.destroy();
      return;
    }
    const list = this.#idle.get(origin) ?? [];
    this.#idle.set(origin, list);
    list.push(conn);
    conn.onDead = () => {
      const at = list.indexOf(conn);
      if (at >= 0) list.splice(at, 1);
      if (list.length === 0 && this.#idle.get(origin) === list) this.#idle.delete(origin);
    };
  }
}

class HeadTimeout extends Error {
  override readonly name = "TimeoutError";
}

/** The request's bytes: the URL's path and query as given (a presigned URL is signed over them). */
function requestHead(url: URL, headers: Record<string, string>): string {
  let head = `GET ${url.pathname}${url.search} HTTP/1.1\r\n`;
  let host = false;
  for (const [name, value] of Object.entries(headers)) {
    if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name) || /[\r\n\0]/.test(value)) {
      throw new Error(`invalid request header ${JSON.stringify(name)}: ${JSON.stringify(value)}`);
    }
    if (name.toLowerCase() === "host") host = true;
    head += `${name}: ${value}\r\n`;
  }
  if (!host) head = head.replace("\r\n", `\r\nHost: ${url.host}\r\n`);
  return `${head}\r\n`;
}

type Framing = { kind: "length"; left: number } | { kind: "chunked" } | { kind: "close" };
type ChunkState = "size" | "data" | "data-end" | "trailer";

interface Exchange {
  resolve(res: Http1Response): void;
  reject(err: unknown): void;
  body?: SocketBody;
  framing?: Framing;
  keepAlive?: boolean;
}

/** One socket and the response being read from it. */
class Connection {
  readonly #socket: Socket;
  readonly #release: (c: Connection) => void;
  #ex: Exchange | undefined;
  #head: Buffer | undefined;
  #chunk: { state: ChunkState; left: number; line: string } = { state: "size", left: 0, line: "" };
  #fin = false;
  #dead = false;
  /** Response bytes received for the current exchange (0: the server has not answered yet). */
  answered = 0;
  onDead: (() => void) | undefined;

  constructor(url: URL, tls: ConnectionOptions, release: (c: Connection) => void) {
    this.#release = release;
    const port = Number(url.port) || (url.protocol === "https:" ? 443 : 80);
    const host = url.hostname.replace(/^\[|\]$/g, "");
    const onread = {
      buffer: Buffer.allocUnsafeSlow(READ_BUFFER),
      callback: (n: number, buf: Buffer) => {
        this.#onData(buf.subarray(0, n));
        return true;
      },
    };
    this.#socket =
      url.protocol === "https:"
        ? // tls.connect takes net's `onread` (documented; @types/node omits it).
          tlsConnect({
            ...tls,
            host,
            port,
            onread,
            ...(isIP(host) ? {} : { servername: host }),
          } as ConnectionOptions)
        : netConnect({ host, port, onread });
    this.#socket.setNoDelay(true);
    this.#socket.on("end", () => {
      this.#fin = true;
      this.#onClosed(undefined);
    });
    this.#socket.on("error", (err) => this.#onClosed(err));
    this.#socket.on("close", () => this.#onClosed(undefined));
    this.#socket.on("timeout", () => {
      if (!this.#ex) this.destroy();
    });
  }

  send(head: string, timeoutMs: number, signal: AbortSignal): Promise<Http1Response> {
    if (this.#dead) return Promise.reject(socketError("the connection is closed", "ECONNRESET"));
    this.answered = 0;
    this.#fin = false;
    this.#socket.setTimeout(0);
    this.#socket.ref();
    return new Promise<Http1Response>((resolve, reject) => {
      const settle = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", onAbort);
      };
      const onAbort = () => this.#fail(signal.reason);
      const timer = setTimeout(
        () => this.#fail(new HeadTimeout(`no response within ${timeoutMs} ms`)),
        timeoutMs,
      );
      signal.addEventListener("abort", onAbort, { once: true });
      this.#ex = {
        resolve: (res) => {
          settle();
          resolve(res);
        },
        reject: (err) => {
          settle();
          reject(err);
        },
      };
      this.#socket.write(head, "latin1");
    });
  }

  destroy(): void {
    if (this.#dead) return;
    this.#dead = true;
    this.#socket.destroy();
    this.onDead?.();
  }

  /** Fails the exchange in progress (before or during its body) and drops the socket. */
  #fail(err: unknown): void {
    const ex = this.#ex;
    this.#ex = undefined;
    this.destroy();
    if (!ex) return;
    if (ex.body) ex.body.fail(err as Error);
    else ex.reject(err);
  }

  #onClosed(err: Error | undefined): void {
    const ex = this.#ex;
    if (ex?.body && ex.framing?.kind === "close" && !err) {
      // A body framed by the connection's end ends with it.
      this.#ex = undefined;
      this.destroy();
      ex.body.end();
      return;
    }
    if (!ex) {
      this.destroy();
      return;
    }
    const why = this.#fin
      ? "the server closed the connection before the response ended"
      : "the connection closed before the response ended";
    this.#fail(err ?? socketError(ex.body ? `aborted: ${why}` : `socket hang up: ${why}`, "ECONNRESET"));
  }

  #onData(data: Buffer): void {
    const ex = this.#ex;
    if (!ex) {
      // Bytes nobody asked for: the connection can no longer be trusted to frame the next answer.
      this.destroy();
      return;
    }
    this.answered += data.length;
    try {
      let at = 0;
      while (at < data.length && this.#ex === ex) {
        at = ex.body ? this.#readBody(ex, data, at) : this.#readHead(ex, data, at);
      }
      if (at < data.length && this.#ex === undefined && !this.#dead) this.destroy();
    } catch (err) {
      this.#fail(err);
    }
  }

  #readHead(ex: Exchange, data: Buffer, at: number): number {
    const before = this.#head?.length ?? 0;
    const head = before ? Buffer.concat([this.#head as Buffer, data.subarray(at)]) : data.subarray(at);
    const end = head.indexOf("\r\n\r\n", Math.max(0, before - 3), "latin1");
    if (end < 0) {
      if (head.length > MAX_HEAD) throw malformed(`a response head longer than ${MAX_HEAD} bytes`);
      // Copied: `data` is the connection's read buffer, overwritten by the next read.
      this.#head = Buffer.from(head);
      return data.length;
    }
    this.#head = undefined;
    const consumed = at + end + 4 - before;
    const parsed = parseHead(head.toString("latin1", 0, end));
    if (parsed.status < 200) return consumed; // 1xx: the real answer follows
    ex.framing = framingOf(parsed);
    ex.keepAlive = parsed.keepAlive && ex.framing.kind !== "close";
    this.#chunk = { state: "size", left: 0, line: "" };
    const body = new SocketBody(this.#socket, () => {
      if (this.#ex !== ex) return;
      this.#ex = undefined;
      this.destroy();
    });
    ex.body = body;
    ex.resolve({ status: parsed.status, headers: parsed.headers, body, closedByServer: () => this.#fin });
    if (ex.framing.kind === "length" && ex.framing.left === 0) this.#complete(ex);
    return consumed;
  }

  #readBody(ex: Exchange, data: Buffer, at: number): number {
    const framing = ex.framing as Framing;
    const body = ex.body as SocketBody;
    if (framing.kind === "close") {
      body.push(data.subarray(at));
      return data.length;
    }
    if (framing.kind === "length") {
      const n = Math.min(framing.left, data.length - at);
      framing.left -= n;
      body.push(data.subarray(at, at + n));
      if (framing.left === 0 && this.#ex === ex) this.#complete(ex);
      return at + n;
    }
    return this.#readChunked(ex, body, data, at);
  }

  /** RFC 9112 §7.1: size line (extensions ignored), data, CRLF; trailers after the last chunk. */
  #readChunked(ex: Exchange, body: SocketBody, data: Buffer, at: number): number {
    const c = this.#chunk;
    if (c.state === "data") {
      const n = Math.min(c.left, data.length - at);
      c.left -= n;
      if (c.left === 0) c.state = "data-end";
      body.push(data.subarray(at, at + n));
      return at + n;
    }
    const eol = data.indexOf(10, at);
    const upto = eol < 0 ? data.length : eol + 1;
    c.line += data.toString("latin1", at, upto);
    if (c.line.length > 4096) throw malformed("a chunk-size or trailer line longer than 4096 bytes");
    if (eol < 0) return upto;
    const line = c.line.replace(/\r?\n$/, "");
    c.line = "";
    if (c.state === "data-end") {
      if (line !== "") throw malformed("chunk data longer than its size");
      c.state = "size";
    } else if (c.state === "size") {
      const size = /^([0-9a-fA-F]{1,12})[ \t]*(;.*)?$/.exec(line)?.[1];
      if (size === undefined) throw malformed(`chunk size ${JSON.stringify(line.slice(0, 40))}`);
      c.left = Number.parseInt(size, 16);
      c.state = c.left === 0 ? "trailer" : "data";
    } else if (line === "") {
      this.#complete(ex);
    }
    return upto;
  }

  #complete(ex: Exchange): void {
    this.#ex = undefined;
    const body = ex.body as SocketBody;
    if (ex.keepAlive && !this.#fin) {
      this.#socket.setTimeout(IDLE_MS);
      this.#socket.unref();
      this.#socket.resume();
      this.#release(this);
    } else this.destroy();
    body.end();
  }
}

/**
 * A response body: 'data', 'end', 'error' and 'close' events, pause and resume, destroy, as the part
 * download reads a Readable. It starts paused and flows once a 'data' listener is added (on the next
 * microtask, once its reader has added the other listeners too).
 */
export class SocketBody extends EventEmitter {
  /** Chunks are views of a buffer reused once their 'data' event returns: copy any chunk kept. */
  readonly reusesChunks = true;
  destroyed = false;
  #flowing = false;
  /** pause() was called: adding a 'data' listener does not start the flow (as for a Readable). */
  #paused = false;
  #queue: (Buffer | null | Error)[] = [];
  readonly #socket: Socket;
  readonly #abandon: () => void;
  #done = false;

  constructor(socket: Socket, abandon: () => void) {
    super();
    this.#socket = socket;
    this.#abandon = abandon;
  }

  override on(event: string | symbol, listener: (...args: never[]) => void): this {
    super.on(event, listener as (...args: unknown[]) => void);
    if (event === "data" && !this.#flowing && !this.#paused)
      queueMicrotask(() => {
        if (!this.#paused) this.resume();
      });
    return this;
  }

  override addListener(event: string | symbol, listener: (...args: never[]) => void): this {
    return this.on(event, listener);
  }

  pause(): this {
    this.#flowing = false;
    this.#paused = true;
    return this;
  }

  resume(): this {
    this.#paused = false;
    if (this.destroyed || this.#flowing) return this;
    this.#flowing = true;
    while (this.#flowing && this.#queue.length > 0 && !this.destroyed)
      this.#emit(this.#queue.shift() ?? null);
    if (this.#flowing && !this.#done) this.#socket.resume();
    return this;
  }

  /** Stops reading: the connection is closed unless the body was read to its end. */
  destroy(err?: Error): this {
    if (this.destroyed) return this;
    this.destroyed = true;
    this.#queue = [];
    if (!this.#done) this.#abandon();
    if (err && this.listenerCount("error") > 0) this.emit("error", err);
    this.emit("close");
    return this;
  }

  /**
   * From the connection: body bytes, valid until this call returns. While the body is paused (its
   * reader not there yet, or waiting on the rate cap) they are copied and the socket stops reading,
   * so what waits is at most one read (TLS may still hand over the rest of a decrypted read).
   */
  push(chunk: Buffer): void {
    if (this.destroyed || chunk.length === 0) return;
    if (this.#flowing) this.emit("data", chunk);
    else {
      this.#queue.push(Buffer.from(chunk));
      this.#socket.pause();
    }
  }

  end(): void {
    this.#done = true;
    if (this.destroyed) return;
    if (this.#flowing) this.#emit(null);
    else this.#queue.push(null);
  }

  fail(err: Error): void {
    this.#done = true;
    if (this.destroyed) return;
    if (this.#flowing) this.#emit(err);
    else this.#queue.push(err);
  }

  #emit(item: Buffer | null | Error): void {
    if (item instanceof Error) {
      this.destroy(item);
    } else if (item === null) {
      this.destroyed = true;
      this.emit("end");
      this.emit("close");
    } else this.emit("data", item);
  }
}

interface Head {
  status: number;
  headers: Record<string, string>;
  keepAlive: boolean;
}

function parseHead(text: string): Head {
  const lines = text.split("\r\n");
  const m = /^HTTP\/1\.([01]) (\d{3})(?: .*)?$/.exec(lines[0] ?? "");
  if (!m) throw malformed(`status line ${JSON.stringify((lines[0] ?? "").slice(0, 60))}`);
  const headers: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(":");
    if (colon <= 0 || /[\s]/.test(line[0] ?? ""))
      throw malformed(`header line ${JSON.stringify(line.slice(0, 60))}`);
    const name = line.slice(0, colon).toLowerCase();
    const value = line.slice(colon + 1).trim();
    headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
  }
  const connection = (headers.connection ?? "").toLowerCase();
  const keepAlive = m[1] === "1" ? !/\bclose\b/.test(connection) : /\bkeep-alive\b/.test(connection);
  return { status: Number(m[2]), headers, keepAlive };
}

function framingOf(head: Head): Framing {
  if (head.status === 204 || head.status === 304) return { kind: "length", left: 0 };
  const te = head.headers["transfer-encoding"];
  if (te !== undefined) {
    if (!/(^|,)\s*chunked\s*$/i.test(te)) throw malformed(`Transfer-Encoding ${JSON.stringify(te)}`);
    return { kind: "chunked" };
  }
  const cl = head.headers["content-length"];
  if (cl === undefined) return { kind: "close" };
  // Repeated Content-Length headers must agree (RFC 9110 §8.6).
  const values = new Set(cl.split(",").map((v) => v.trim()));
  const only = [...values][0] ?? "";
  if (values.size !== 1 || !/^\d{1,15}$/.test(only)) throw malformed(`Content-Length ${JSON.stringify(cl)}`);
  return { kind: "length", left: Number(only) };
}

function malformed(what: string): TransientError {
  return new TransientError(`malformed HTTP response: ${what}`);
}

function socketError(message: string, code: string): Error {
  return Object.assign(new Error(message), { code });
}
