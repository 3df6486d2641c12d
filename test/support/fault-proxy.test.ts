import { createHash, randomBytes } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { type FaultProxy, startFaultProxy } from "./fault-proxy.js";
import { settles, waitFor } from "./wait.js";

const MiB = 1024 * 1024;
const DATA = randomBytes(MiB);
const BIG_BYTES = 32 * MiB;

/** What the in-test upstream saw, in arrival order. */
interface UpstreamHit {
  method: string;
  url: string;
  rawHeaders: string[];
}

/**
 * A tiny S3-like upstream: GET/HEAD any path serves `object` (with single-range support), PUT
 * answers the body's length and SHA-256, and GET /big streams 32 MiB honouring backpressure.
 */
class Upstream {
  readonly hits: UpstreamHit[] = [];
  object = { data: DATA, etag: '"v1"' };
  bigBytesWritten = 0;
  private readonly server = http.createServer((req, res) => this.handle(req, res));
  url = "";

  async start(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    this.hits.push({ method: req.method ?? "", url: req.url ?? "", rawHeaders: [...req.rawHeaders] });
    if (req.method === "PUT") {
      const hash = createHash("sha256");
      let bytes = 0;
      req.on("data", (chunk: Buffer) => {
        bytes += chunk.length;
        hash.update(chunk);
      });
      req.on("end", () => res.end(JSON.stringify({ bytes, sha256: hash.digest("hex") })));
      return;
    }
    if (req.url === "/big") {
      this.streamBig(res);
      return;
    }
    const { data, etag } = this.object;
    const range = /^bytes=(\d*)-(\d*)$/.exec(req.headers.range ?? "");
    let start = 0;
    let end = data.length - 1;
    if (range) {
      if (range[1] === "") start = data.length - Number(range[2]);
      else {
        start = Number(range[1]);
        if (range[2] !== "") end = Math.min(end, Number(range[2]));
      }
    }
    res.writeHead(range ? 206 : 200, {
      "Content-Type": "application/octet-stream",
      "Content-Length": String(end - start + 1),
      ETag: etag,
      "Accept-Ranges": "bytes",
      ...(range ? { "Content-Range": `bytes ${start}-${end}/${data.length}` } : {}),
    });
    res.end(req.method === "HEAD" ? undefined : data.subarray(start, end + 1));
  }

  private streamBig(res: http.ServerResponse): void {
    this.bigBytesWritten = 0;
    res.writeHead(200, { "Content-Length": String(BIG_BYTES) });
    const pump = (): void => {
      while (this.bigBytesWritten < BIG_BYTES) {
        const chunk = DATA.subarray(0, Math.min(64 * 1024, BIG_BYTES - this.bigBytesWritten));
        this.bigBytesWritten += chunk.length;
        if (!res.write(chunk)) {
          res.once("drain", pump);
          return;
        }
      }
      res.end();
    };
    pump();
  }
}

interface Got {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  /** Set when the response did not complete: the error the response or request reported. */
  error?: NodeJS.ErrnoException;
  /** The client socket's own error code, e.g. ECONNRESET after an RST. */
  socketError?: string;
  /** The server closed its side cleanly (FIN) before the client was done. */
  fin: boolean;
  timedOut: boolean;
}

interface RequestOptions {
  method?: string;
  headers?: http.OutgoingHttpHeaders;
  body?: Buffer;
  agent?: http.Agent | false;
  /** Client inactivity timeout: destroy the request after this long without socket activity. */
  timeoutMs?: number;
  /** Called with the response before its body is read, e.g. to pause it. */
  onResponse?: (res: http.IncomingMessage) => void;
}

function request(url: string, opts: RequestOptions = {}): Promise<Got> {
  return new Promise<Got>((resolve, reject) => {
    const chunks: Buffer[] = [];
    const got: Got = { status: 0, headers: {}, body: Buffer.alloc(0), fin: false, timedOut: false };
    let settled = false;
    const settle = (error?: NodeJS.ErrnoException) => {
      if (settled) return;
      settled = true;
      got.body = Buffer.concat(chunks);
      if (error) got.error = error;
      resolve(got);
    };
    const req = http.request(url, { method: opts.method ?? "GET", headers: opts.headers, agent: opts.agent });
    req.on("socket", (socket) => {
      socket.on("error", (err: NodeJS.ErrnoException) => {
        got.socketError = err.code;
      });
      socket.on("end", () => {
        got.fin = true;
      });
    });
    if (opts.timeoutMs !== undefined) {
      req.setTimeout(opts.timeoutMs, () => {
        got.timedOut = true;
        req.destroy(new Error("client inactivity timeout"));
      });
    }
    req.on("error", (err) => (got.status === 0 && !got.timedOut ? reject(err) : settle(err)));
    req.on("response", (res) => {
      got.status = res.statusCode ?? 0;
      got.headers = res.headers;
      opts.onResponse?.(res);
      res.on("data", (chunk: Buffer) => chunks.push(chunk));
      res.on("end", () => settle());
      res.on("error", (err) => settle(err));
      res.on("close", () => settle(new Error("response closed before its end")));
    });
    req.end(opts.body);
  });
}

const counted = (types: string[]) => ({
  tcp: types.filter((t) => t === "TCPSocketWrap" || t === "TCPServerWrap").length,
  timers: types.filter((t) => t === "Timeout").length,
});

/** Socket and timer handle counts, once they have stopped changing (earlier tests' sockets close late). */
async function settledResources(): Promise<{ tcp: number; timers: number }> {
  let last = counted(process.getActiveResourcesInfo());
  for (let i = 0; i < 50; i++) {
    await new Promise((r) => setTimeout(r, 20));
    const now = counted(process.getActiveResourcesInfo());
    if (now.tcp === last.tcp && now.timers === last.timers) return now;
    last = now;
  }
  return last;
}

describe("fault proxy", () => {
  const upstream = new Upstream();
  let proxy: FaultProxy;
  const obj = "/bucket/dir/a b+c.bin";
  const objUrl = () => `${proxy.url}/bucket/dir/a%20b%2Bc.bin?x-id=GetObject`;

  beforeAll(() => upstream.start());
  afterAll(() => upstream.stop());
  beforeEach(async () => {
    upstream.hits.length = 0;
    upstream.object = { data: DATA, etag: '"v1"' };
    proxy = await startFaultProxy(upstream.url);
  });
  afterEach(() => proxy.close());

  it("passes requests through unchanged: request line, every header (Host too), bytes both ways", async () => {
    const full = await request(objUrl(), {
      headers: { "X-Amz-Date": "20250101T000000Z", Authorization: "sig" },
    });
    expect(full.status).toBe(200);
    expect(full.body.equals(DATA)).toBe(true);

    const hit = upstream.hits[0];
    expect(hit?.url).toBe("/bucket/dir/a%20b%2Bc.bin?x-id=GetObject");
    // The signed Host is the proxy's; it must arrive as sent, with case and order kept.
    const host = new URL(proxy.url).host;
    expect(hit?.rawHeaders.slice(0, 6)).toEqual([
      "X-Amz-Date",
      "20250101T000000Z",
      "Authorization",
      "sig",
      "Host",
      host,
    ]);

    for (const [range, start, end] of [
      ["bytes=0-0", 0, 0],
      ["bytes=12345-543210", 12345, 543210],
      ["bytes=1000000-", 1000000, MiB - 1],
      ["bytes=-100", MiB - 100, MiB - 1],
    ] as const) {
      const part = await request(objUrl(), { headers: { Range: range } });
      expect(part.status).toBe(206);
      expect(part.headers["content-range"]).toBe(`bytes ${start}-${end}/${MiB}`);
      expect(part.body.equals(DATA.subarray(start, end + 1))).toBe(true);
    }

    const put = await request(`${proxy.url}/bucket/up`, { method: "PUT", body: DATA });
    expect(JSON.parse(put.body.toString())).toEqual({
      bytes: MiB,
      sha256: createHash("sha256").update(DATA).digest("hex"),
    });

    expect(proxy.requests.map((r) => [r.seq, r.method, r.path, r.query, r.headers.range])).toEqual([
      [0, "GET", obj, "x-id=GetObject", undefined],
      [1, "GET", obj, "x-id=GetObject", "bytes=0-0"],
      [2, "GET", obj, "x-id=GetObject", "bytes=12345-543210"],
      [3, "GET", obj, "x-id=GetObject", "bytes=1000000-"],
      [4, "GET", obj, "x-id=GetObject", "bytes=-100"],
      [5, "PUT", "/bucket/up", "", undefined],
    ]);
  });

  it("streams with backpressure: a client that stops reading stops the upstream", async () => {
    let paused: http.IncomingMessage | undefined;
    const done = request(`${proxy.url}/big`, {
      onResponse: (res) => {
        paused = res;
        res.pause();
      },
    });
    await waitFor(() => paused !== undefined, { what: "the response" });
    // Let every buffer on the way fill up (kernel socket buffers hold a few MiB on loopback).
    await new Promise((r) => setTimeout(r, 200));
    expect(upstream.bigBytesWritten).toBeLessThan(BIG_BYTES / 2);
    paused?.resume();
    const got = await done;
    expect(got.body.length).toBe(BIG_BYTES);
    expect(proxy.bytesServed().total).toBe(BIG_BYTES);
  });

  it("answers 503 SlowDown with an S3 XML error without forwarding, then forwards again", async () => {
    proxy.addRule({ match: { method: "GET" }, action: { kind: "status", status: 503 }, times: 1 });
    const slow = await request(objUrl());
    expect(slow.status).toBe(503);
    expect(slow.headers["content-type"]).toBe("application/xml");
    expect(slow.body.toString()).toContain("<Error><Code>SlowDown</Code>");
    expect(slow.body.toString()).toContain(`<Resource>${obj}</Resource>`);
    expect(upstream.hits).toHaveLength(0);

    const ok = await request(objUrl());
    expect(ok.status).toBe(200);
    expect(ok.body.equals(DATA)).toBe(true);

    proxy.addRule({
      action: { kind: "status", status: 500, body: "nope", headers: { "Content-Type": "text/plain" } },
    });
    const custom = await request(objUrl());
    expect([custom.status, custom.headers["content-type"], custom.body.toString()]).toEqual([
      500,
      "text/plain",
      "nope",
    ]);
  });

  it("resets the connection after exactly N body bytes", async () => {
    proxy.addRule({ action: { kind: "reset", afterBytes: 100_000 }, times: 1 });
    const got = await request(objUrl(), { agent: false });
    expect(got.status).toBe(200);
    expect(got.headers["content-length"]).toBe(String(MiB));
    expect(got.error?.code).toBe("ECONNRESET");
    expect(got.socketError).toBe("ECONNRESET");
    expect(got.fin).toBe(false);
    expect(got.body.equals(DATA.subarray(0, 100_000))).toBe(true);
    expect(proxy.bytesServed().total).toBe(100_000);

    proxy.addRule({ action: { kind: "reset", afterBytes: 0 }, times: 1 });
    const none = await request(objUrl(), { agent: false });
    expect([none.status, none.body.length, none.socketError]).toEqual([200, 0, "ECONNRESET"]);
  });

  it("truncates: full Content-Length, N bytes, then a clean FIN", async () => {
    proxy.addRule({ action: { kind: "truncate", afterBytes: 65_537 }, times: 1 });
    const got = await request(objUrl(), { agent: false, headers: { Range: "bytes=1000-" } });
    expect(got.status).toBe(206);
    expect(got.headers["content-length"]).toBe(String(MiB - 1000));
    expect(got.error).toBeDefined(); // node: "aborted" (premature close)
    expect(got.fin).toBe(true);
    expect(got.socketError).toBeUndefined();
    expect(got.body.equals(DATA.subarray(1000, 1000 + 65_537))).toBe(true);
    expect(proxy.bytesServed().total).toBe(65_537);
  });

  it("stalls after N bytes: a client inactivity timeout fires; a patient client gets everything", async () => {
    // Stalled for longer than the test runs: only the client's own timeout can end this one.
    proxy.addRule({ action: { kind: "stall", afterBytes: 4096, ms: 600_000 }, times: 1 });
    const impatient = await request(objUrl(), { agent: false, timeoutMs: 300 });
    expect(impatient.timedOut).toBe(true);
    expect(impatient.body.length).toBe(4096);
    expect(impatient.body.equals(DATA.subarray(0, 4096))).toBe(true);

    proxy.addRule({ action: { kind: "stall", afterBytes: 4096, ms: 150 }, times: 1 });
    const started = Date.now();
    // (Its inactivity timeout far beyond the stall, however late the machine wakes up from it.)
    const patient = await request(objUrl(), { agent: false, timeoutMs: 30_000 });
    // A lower bound only: a slow machine stalls longer, never shorter.
    expect(Date.now() - started).toBeGreaterThanOrEqual(140);
    expect(patient.error).toBeUndefined();
    expect(patient.body.length).toBe(MiB);
    expect(patient.body.equals(DATA)).toBe(true);
  });

  it("delays before forwarding", async () => {
    proxy.addRule({ action: { kind: "delay", ms: 120 }, times: 1 });
    const started = Date.now();
    const got = await request(objUrl());
    expect(Date.now() - started).toBeGreaterThanOrEqual(110);
    expect(got.body.equals(DATA)).toBe(true);
  });

  it("rewrites response headers", async () => {
    proxy.addRule({
      match: { hasRange: true },
      action: {
        kind: "headers",
        set: { "x-amz-checksum-crc32": "AAAAAA==", etag: '"changed"' },
        remove: ["Content-Range"],
      },
    });
    const got = await request(objUrl(), { headers: { Range: "bytes=0-99" } });
    expect(got.status).toBe(206);
    expect(got.headers["x-amz-checksum-crc32"]).toBe("AAAAAA==");
    expect(got.headers.etag).toBe('"changed"');
    expect(got.headers["content-range"]).toBeUndefined();
    expect(got.body.equals(DATA.subarray(0, 100))).toBe(true);
  });

  it("runs a hook to completion before forwarding", async () => {
    const changed = Buffer.from(DATA).reverse();
    proxy.addRule({
      match: { hasRange: true },
      skip: 1,
      times: 1,
      action: {
        kind: "hook",
        fn: async (req) => {
          await new Promise((r) => setTimeout(r, 20));
          expect(upstream.hits).toHaveLength(1); // not forwarded yet
          expect(req.headers.range).toBe("bytes=100-199");
          upstream.object = { data: changed, etag: '"v2"' };
        },
      },
    });
    const first = await request(objUrl(), { headers: { Range: "bytes=0-99" } });
    const second = await request(objUrl(), { headers: { Range: "bytes=100-199" } });
    expect(first.headers.etag).toBe('"v1"');
    expect(second.headers.etag).toBe('"v2"');
    expect(second.body.equals(changed.subarray(100, 200))).toBe(true);

    proxy.addRule({
      action: {
        kind: "hook",
        fn: () => {
          throw new Error("boom");
        },
      },
    });
    const failed = await request(objUrl());
    expect(failed.status).toBe(500);
    expect(failed.body.toString()).toContain("boom");
  });

  it("applies times and skip per rule; every rule counts every request it matches", async () => {
    proxy.addRule({ match: { hasRange: true }, skip: 1, times: 2, action: { kind: "status", status: 503 } });
    proxy.addRule({ match: { path: /\/other$/ }, times: 1, action: { kind: "status", status: 404 } });
    // Sees the 503'd ranged GETs too: skip 3 lands on the fourth ranged GET, which rule 1 lets through.
    proxy.addRule({
      match: { method: "get", hasRange: true },
      skip: 3,
      action: { kind: "status", status: 500 },
    });
    const statuses: number[] = [];
    for (const path of [
      "/bucket/k",
      "/bucket/k",
      "/bucket/other",
      "/bucket/k",
      "/bucket/other",
      "/bucket/k",
    ]) {
      statuses.push((await request(`${proxy.url}${path}`, { headers: { Range: "bytes=0-9" } })).status);
    }
    statuses.push((await request(`${proxy.url}/bucket/k`)).status);
    expect(statuses).toEqual([206, 503, 503, 500, 404, 500, 200]);

    proxy.clearRules();
    expect((await request(`${proxy.url}/bucket/other`, { headers: { Range: "bytes=0-9" } })).status).toBe(
      206,
    );
  });

  it("counts bytes served per path for 2xx GETs only, and resets the stats", async () => {
    proxy.addRule({ match: { path: "/503" }, action: { kind: "status", status: 503 } });
    await request(`${proxy.url}/bucket/a`, { headers: { Range: "bytes=0-999" } });
    await request(`${proxy.url}/bucket/a`, { headers: { Range: "bytes=1000-1499" } });
    await request(`${proxy.url}/bucket/b`);
    await request(`${proxy.url}/bucket/b`, { method: "HEAD" });
    await request(`${proxy.url}/bucket/503`);
    const { total, byPath } = proxy.bytesServed();
    expect(total).toBe(1500 + MiB);
    expect([...byPath]).toEqual([
      ["/bucket/a", 1500],
      ["/bucket/b", MiB],
    ]);
    expect(proxy.requests).toHaveLength(5);

    proxy.resetStats();
    expect(proxy.bytesServed()).toEqual({ total: 0, byPath: new Map() });
    expect(proxy.requests).toHaveLength(0);
    await request(`${proxy.url}/bucket/a`, { headers: { Range: "bytes=0-9" } });
    expect(proxy.requests.map((r) => r.seq)).toEqual([5]);
  });

  it("close() is prompt with keep-alive and stalled clients, and leaves no handles behind", async () => {
    await proxy.close(); // the shared one, so that only this test's handles come and go
    const before = await settledResources();
    const local = await startFaultProxy(upstream.url);
    const agent = new http.Agent({ keepAlive: true });
    try {
      await request(`${local.url}/bucket/a`, { agent }); // leaves an idle keep-alive connection
      expect(agent.freeSockets).not.toEqual({});
      // Stalled and delayed for longer than any test runs: a close() that waited for them fails
      // settles() below (prompt means: without waiting for them, not within some milliseconds).
      local.addRule({ action: { kind: "stall", afterBytes: 10, ms: 600_000 }, times: 1 });
      local.addRule({ action: { kind: "delay", ms: 600_000 } });
      const stalled = request(`${local.url}/bucket/a`, { agent });
      await waitFor(() => local.bytesServed().total === MiB + 10, { what: "the stall's first 10 bytes" });
      const delayed = request(`${local.url}/bucket/a`, { agent }).then(
        () => undefined,
        (err: NodeJS.ErrnoException) => err,
      );
      await waitFor(() => local.requests.length === 3, { what: "the delayed request at the proxy" });

      await settles(local.close(), { what: "close() with a stalled and a delayed request" });
      expect((await stalled).error).toBeDefined();
      expect((await delayed)?.code).toBe("ECONNRESET"); // closed before any response: "socket hang up"
      await waitFor(
        () => {
          const now = counted(process.getActiveResourcesInfo());
          return now.tcp <= before.tcp && now.timers <= before.timers;
        },
        { what: "the proxy's sockets and timers gone" },
      ).catch(() => {}); // the expectations below say which
      // At most: an unrelated timer from an earlier test may have expired meanwhile.
      const after = counted(process.getActiveResourcesInfo());
      expect(after.tcp).toBeLessThanOrEqual(before.tcp);
      expect(after.timers).toBeLessThanOrEqual(before.timers);
      await local.close(); // idempotent
    } finally {
      agent.destroy();
      await local.close();
    }
  });
});
