import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { type AddressInfo, createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer as createTlsServer } from "node:tls";
import { afterEach, describe, expect, it } from "vitest";
import { TransientError } from "../../src/s3/retry.js";
import { WorkerHttp } from "../../src/staging/workers/http-get.js";
import { Http1Client, type Http1Response } from "../../src/staging/workers/http1.js";
import { waitFor } from "../support/wait.js";

// The part workers' HTTP/1.1 client against a raw TCP server that writes exactly the bytes each test
// gives it, so framing the SDK's servers never produce on demand (a head split byte by byte, chunked
// bodies, a FIN or a reset mid-body, a connection closed while idle) is tested on real sockets.

interface Seen {
  connections: Socket[];
  requests: string[];
}
type Answer = (socket: Socket, request: string, index: number) => void;

const servers: Server[] = [];
const clients: Http1Client[] = [];
afterEach(() => {
  for (const c of clients.splice(0)) c.close();
  for (const s of servers.splice(0)) s.close();
});

/** A server that hands each complete request head to `answer`; what it saw is in the result. */
async function rawServer(answer: Answer): Promise<{ url: string; seen: Seen }> {
  const seen: Seen = { connections: [], requests: [] };
  const server = createServer((socket) => {
    seen.connections.push(socket);
    let pending = "";
    socket.on("data", (d) => {
      pending += d.toString("latin1");
      for (let end = pending.indexOf("\r\n\r\n"); end >= 0; end = pending.indexOf("\r\n\r\n")) {
        const request = pending.slice(0, end + 4);
        pending = pending.slice(end + 4);
        seen.requests.push(request);
        answer(socket, request, seen.requests.length - 1);
      }
    });
    socket.on("error", () => {});
  });
  servers.push(server);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

function client(): Http1Client {
  const c = new Http1Client();
  clients.push(c);
  return c;
}

const get = (c: Http1Client, url: string, headers: Record<string, string> = {}) =>
  c.get(new URL(url), headers, 30_000, new AbortController().signal);

/** Reads a body to its end, pausing on every chunk when asked (the rate cap's path). */
function read(res: Http1Response, pauseEach = false): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const got: Buffer[] = [];
    res.body.on("data", (chunk: Buffer) => {
      // A view of the connection's buffer: kept only as a copy.
      got.push(Buffer.from(chunk));
      if (pauseEach) {
        res.body.pause();
        setImmediate(() => res.body.resume());
      }
    });
    res.body.once("end", () => resolve(Buffer.concat(got)));
    res.body.once("error", reject);
  });
}

/** Writes `bytes` in pieces of `size` bytes, each after the previous one was flushed. */
async function dribble(socket: Socket, bytes: Buffer, size: number): Promise<void> {
  for (let at = 0; at < bytes.length; at += size) {
    if (!socket.write(bytes.subarray(at, at + size))) await once(socket, "drain");
    await new Promise((r) => setImmediate(r));
  }
}

const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

describe("the part workers' HTTP/1.1 client", () => {
  it("sends the path, query and headers as given, with Host, and reads a Content-Length body", async () => {
    const body = randomBytes(300 * 1024);
    const { url, seen } = await rawServer((s) => {
      s.write(`HTTP/1.1 206 Partial Content\r\nContent-Length: ${body.length}\r\nETag: "x"\r\n\r\n`);
      s.write(body);
    });
    const res = await get(client(), `${url}/b/k%20ey?X-Amz-Signature=ab%2Fc&x=1`, { Range: "bytes=0-9" });
    expect([res.status, res.headers.etag, res.headers["content-length"]]).toEqual([
      206,
      '"x"',
      String(body.length),
    ]);
    expect(sha(await read(res))).toBe(sha(body));
    expect(seen.requests[0]).toBe(
      `GET /b/k%20ey?X-Amz-Signature=ab%2Fc&x=1 HTTP/1.1\r\nHost: ${new URL(url).host}\r\nRange: bytes=0-9\r\n\r\n`,
    );
  });

  it("parses a head and body that arrive a few bytes at a time", async () => {
    const body = randomBytes(5000);
    const { url } = await rawServer((s) => {
      const whole = Buffer.concat([
        Buffer.from(
          `HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\nX-A: 1\r\nx-a: 2\r\n\r\n`,
        ),
        body,
      ]);
      void dribble(s, whole, 7);
    });
    const res = await get(client(), `${url}/k`);
    expect([res.status, res.headers["x-a"]]).toEqual([200, "1, 2"]);
    expect((await read(res)).equals(body)).toBe(true);
  });

  it("decodes a chunked body with extensions and trailers, split across reads", async () => {
    const parts = [randomBytes(1), randomBytes(70_000), randomBytes(17)];
    const { url } = await rawServer((s) => {
      const wire = Buffer.concat([
        Buffer.from("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
        ...parts.flatMap((p, i) => [
          Buffer.from(`${p.length.toString(16)}${i === 1 ? ";ext=1" : ""}\r\n`),
          p,
          Buffer.from("\r\n"),
        ]),
        Buffer.from("0\r\nX-Trailer: t\r\n\r\n"),
      ]);
      void dribble(s, wire, 1000);
    });
    const c = client();
    const res = await get(c, `${url}/k`);
    expect((await read(res)).equals(Buffer.concat(parts))).toBe(true);
  });

  it("reuses a kept-alive connection, and opens a new one after Connection: close", async () => {
    const { url, seen } = await rawServer((s, _req, i) => {
      s.write(
        `HTTP/1.1 200 OK\r\nContent-Length: 2\r\n${i === 1 ? "Connection: close\r\n" : ""}\r\n${i}${i}`,
      );
      if (i === 1) s.end();
    });
    const c = client();
    for (let i = 0; i < 3; i++) {
      const res = await get(c, `${url}/k`);
      expect((await read(res)).toString()).toBe(`${i}${i}`);
    }
    expect(seen.connections).toHaveLength(2);
  });

  it("a kept-alive connection the server dropped while idle is replaced, not failed", async () => {
    const { url, seen } = await rawServer((s, _r, i) => {
      // The second request meets a socket the server has given up on: it closes without an answer,
      // which the client learns only once it has reused the connection.
      if (i === 1) s.destroy();
      else s.write("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz");
    });
    const c = client();
    expect((await read(await get(c, `${url}/a`))).toString()).toBe("z");
    expect((await read(await get(c, `${url}/b`))).toString()).toBe("z");
    expect(seen.connections).toHaveLength(2);
    // Sent on the reused connection, then again on a fresh one.
    expect(seen.requests.map((r) => r.split(" ")[1])).toEqual(["/a", "/b", "/b"]);
  });

  it("a body cut by the server's FIN fails as closed by the server; a reset does not", async () => {
    const { url, seen } = await rawServer((s) => {
      s.write("HTTP/1.1 206 Partial Content\r\nContent-Length: 100\r\n\r\n");
      s.write(Buffer.alloc(40, 1));
    });
    for (const [i, byServer] of [true, false].entries()) {
      const res = await get(client(), `${url}/k`);
      let got = 0;
      const failed = new Promise<Error & { code?: string }>((resolve) => {
        res.body.on("data", (chunk: Buffer) => {
          got += chunk.length;
        });
        res.body.once("error", resolve);
      });
      // Cut only once the 40 bytes are in: a reset would otherwise discard them unread.
      await waitFor(() => got === 40);
      const socket = seen.connections[i] as Socket;
      if (byServer) socket.end();
      else socket.resetAndDestroy();
      const err = await failed;
      expect([err.code, res.closedByServer()]).toEqual(["ECONNRESET", byServer]);
    }
  });

  it("a paused body keeps every byte (copied while paused) and the connection is reused after", async () => {
    const body = randomBytes(1024 * 1024);
    const { url, seen } = await rawServer((s) => {
      s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n`);
      s.write(body);
    });
    const c = client();
    for (let i = 0; i < 2; i++) expect(sha(await read(await get(c, `${url}/k`), true))).toBe(sha(body));
    expect(seen.connections).toHaveLength(1);
  });

  it("a malformed answer is a retryable error naming what was wrong, and the socket is dropped", async () => {
    const cases: [string, RegExp][] = [
      ["HTTP/2 200 OK\r\n\r\n", /status line "HTTP\/2 200 OK"/],
      ["HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n", /Content-Length "5, 6"/],
      ["HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", /Transfer-Encoding "gzip"/],
      ["HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", /header line " folded: x"/],
    ];
    const { url, seen } = await rawServer((s, _r, i) => s.write(cases[i]?.[0] ?? ""));
    const c = client();
    for (const [, says] of cases) {
      const err = await get(c, `${url}/k`).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TransientError);
      expect((err as Error).message).toMatch(/^malformed HTTP response: /);
      expect((err as Error).message).toMatch(says);
    }
    // Each socket was dropped: every request came on a connection of its own.
    expect(seen.connections).toHaveLength(cases.length);
    const bad = await rawServer((s) =>
      s.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
    );
    const res = await get(c, `${bad.url}/k`);
    await expect(read(res)).rejects.toThrow(/malformed HTTP response: chunk size "zz"/);
  });

  it("no answer within the timeout is a TimeoutError; an abort rejects with its reason", async () => {
    const { url } = await rawServer(() => {});
    const c = client();
    await expect(c.get(new URL(`${url}/k`), {}, 50, new AbortController().signal)).rejects.toMatchObject({
      name: "TimeoutError",
    });
    const abort = new AbortController();
    const pending = c.get(new URL(`${url}/k`), {}, 30_000, abort.signal);
    abort.abort(new Error("stop"));
    await expect(pending).rejects.toThrow("stop");
  });

  it("destroying a body before its end closes that connection; the next GET opens another", async () => {
    const { url, seen } = await rawServer((s, _r, i) => {
      s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${i === 0 ? 1_000_000 : 1}\r\n\r\n`);
      s.write(i === 0 ? Buffer.alloc(10) : Buffer.from("y"));
    });
    const c = client();
    const first = await get(c, `${url}/a`);
    first.body.destroy();
    await waitFor(() => seen.connections[0]?.destroyed || seen.connections[0]?.readableEnded);
    expect((await read(await get(c, `${url}/b`))).toString()).toBe("y");
    expect(seen.connections).toHaveLength(2);
  });

  it("over TLS, a body paused on every chunk keeps every byte (a decrypted read comes in several pieces)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "cs-http1-"));
    try {
      execFileSync(
        "openssl",
        [
          "req",
          "-x509",
          "-newkey",
          "ec",
          "-pkeyopt",
          "ec_paramgen_curve:prime256v1",
          "-nodes",
          "-keyout",
          "k.pem",
        ].concat([
          "-out",
          "c.pem",
          "-days",
          "1",
          "-subj",
          "/CN=127.0.0.1",
          "-addext",
          "subjectAltName=IP:127.0.0.1",
        ]),
        { cwd: dir, stdio: "pipe" },
      );
      const cert = readFileSync(join(dir, "c.pem"), "utf8");
      const body = randomBytes(4 * 1024 * 1024);
      const server = createTlsServer({ key: readFileSync(join(dir, "k.pem")), cert }, (s) => {
        s.once("data", () =>
          s.write(
            Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n`), body]),
          ),
        );
        s.on("error", () => {});
      });
      servers.push(server as unknown as Server);
      server.listen(0, "127.0.0.1");
      await once(server, "listening");
      const c = new Http1Client({ ca: cert });
      clients.push(c);
      const url = `https://127.0.0.1:${(server.address() as AddressInfo).port}/k`;
      expect(sha(await read(await get(c, url), true))).toBe(sha(body));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("regression: an error answer whose document stalls fails with its status, not never", async () => {
    const { url } = await rawServer((s) => {
      // The head and part of the document, then nothing: the old reader waited for its end for ever.
      s.write("HTTP/1.1 503 Slow Down\r\nContent-Length: 300\r\n\r\n<Error><Code>SlowDown</Code>");
    });
    const http = new WorkerHttp();
    try {
      const err = await http
        .get({ url: `${url}/k`, headers: {} }, 200, new AbortController().signal)
        .catch((e) => e);
      expect(err).toMatchObject({ name: "SlowDown", $metadata: { httpStatusCode: 503 } });
    } finally {
      http.close();
    }
  });

  it("refuses a header value that would split the request", async () => {
    await expect(get(client(), "http://127.0.0.1:9/k", { Range: "bytes=0-1\r\nX: y" })).rejects.toThrow(
      /invalid request header "Range"/,
    );
  });
});
