import { createHash, randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { GetOptions, ObjectSource } from "../../src/s3/object-source.js";
import { downloadPart, type PartRequest } from "../../src/staging/part-download.js";
import { gate, waitFor } from "../support/wait.js";

// Unit tier: the engine's part loop against an in-memory ObjectSource (the seam's own contract), for
// orderings a real server cannot be made to produce on demand.

const KiB = 1024;
let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "cs-part-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/**
 * A body like the part workers' socket reader (src/staging/workers/http1.ts): every chunk is a view
 * of one buffer, which the next read overwrites once the 'data' event has returned.
 */
class ReusingBody extends EventEmitter {
  readonly reusesChunks = true;
  destroyed = false;
  readonly #buffer = Buffer.alloc(64 * KiB);
  #paused = false;
  #next: (() => void) | undefined;

  constructor(readonly bytes: Buffer) {
    super();
    setImmediate(() => this.#pump(0));
  }

  #pump(at: number): void {
    if (this.destroyed) return;
    if (this.#paused) {
      this.#next = () => this.#pump(at);
      return;
    }
    if (at >= this.bytes.length) {
      this.destroyed = true;
      this.emit("end");
      this.emit("close");
      return;
    }
    const n = this.bytes.copy(this.#buffer, 0, at, at + this.#buffer.length);
    this.emit("data", this.#buffer.subarray(0, n));
    this.#buffer.fill(0xee); // the next read lands here, paused or not
    setImmediate(() => this.#pump(at + n));
  }

  pause(): this {
    this.#paused = true;
    return this;
  }

  resume(): this {
    this.#paused = false;
    const next = this.#next;
    this.#next = undefined;
    next?.();
    return this;
  }

  destroy(): this {
    if (!this.destroyed) {
      this.destroyed = true;
      this.emit("close");
    }
    return this;
  }
}

/** Serves `bytes` as one object, each body in two chunks; `bodies` holds every body handed out. */
function memorySource(bytes: Buffer, bodies: Readable[], reusing?: ReusingBody[]): ObjectSource {
  const refuse = () => {
    throw new Error("not used");
  };
  return {
    list: refuse,
    head: refuse,
    partSizes: refuse,
    close: () => {},
    async get(_b: string, _k: string, o: GetOptions) {
      const start = o.range?.start ?? 0;
      const end = o.range?.end ?? bytes.length - 1;
      const slice = bytes.subarray(start, end + 1);
      const half = Math.floor(slice.length / 2);
      let body: Readable | ReusingBody;
      if (reusing) {
        body = new ReusingBody(slice);
        reusing.push(body);
      } else {
        body = Readable.from([slice.subarray(0, half), slice.subarray(half)], { objectMode: false });
        bodies.push(body);
      }
      return {
        statusCode: 206,
        contentLength: slice.length,
        contentRange: `bytes ${start}-${end}/${bytes.length}`,
        etag: '"e"',
        checksum: undefined,
        body,
      };
    },
  };
}

/** One part spanning the whole `size`-byte object "k", fetched as a range into a new temp file. */
function wholePart(tmpPath: string, size: number): PartRequest {
  return {
    bucket: "b",
    key: "k",
    etag: '"e"',
    size,
    tmpPath,
    create: true,
    index: 0,
    start: 0,
    end: size,
    whole: false,
    durable: false,
  };
}

describe("downloadPart", () => {
  it.each([
    ["asynchronous writes (the main thread)", false],
    ["blocking writes (a worker thread)", true],
  ])(
    "takes the last chunk that waits on the rate cap after the body has ended, with %s",
    async (_, blocking) => {
      const bytes = randomBytes(300 * KiB);
      const bodies: Readable[] = [];
      const release = gate();
      const tmpPath = join(dir, "part");
      const retries: unknown[] = [];
      let takes = 0;
      const entry = downloadPart(wholePart(tmpPath, bytes.length), {
        source: memorySource(bytes, bodies),
        retry: { maxAttempts: 3, baseDelayMs: 1, maxDelayMs: 1 },
        requestTimeoutMs: 60_000,
        signal: new AbortController().signal,
        onBytes: () => {},
        onRetry: (err) => retries.push(err),
        blockingWrites: blocking,
        // The second chunk is held at the cap until its body has ended: a paused stream still ends.
        rateLimiter: { take: async () => (++takes === 2 ? release.opened : undefined) },
      });
      await waitFor(() => bodies[0]?.readableEnded === true, {
        what: "the body ended while its last chunk waits",
      });
      release.open();
      const done = await entry;

      expect(retries).toEqual([]);
      expect(done.sha256).toBe(createHash("sha256").update(bytes).digest("hex"));
      expect((await readFile(tmpPath)).equals(bytes)).toBe(true);
    },
  );

  it("copies a chunk it holds past its 'data' event when the body reuses its buffer (part workers)", async () => {
    const bytes = randomBytes(512 * KiB);
    const reusing: ReusingBody[] = [];
    const release = gate();
    const tmpPath = join(dir, "part");
    let takes = 0;
    const entry = downloadPart(wholePart(tmpPath, bytes.length), {
      source: memorySource(bytes, [], reusing),
      retry: { maxAttempts: 1, baseDelayMs: 1, maxDelayMs: 1 },
      requestTimeoutMs: 60_000,
      signal: new AbortController().signal,
      onBytes: () => {},
      onRetry: () => {},
      blockingWrites: true,
      // The third chunk waits at the cap while the body's buffer is overwritten by the next read.
      rateLimiter: { take: async () => (++takes === 3 ? release.opened : undefined) },
    });
    await waitFor(() => takes >= 3);
    release.open();
    const done = await entry;
    expect(done.sha256).toBe(createHash("sha256").update(bytes).digest("hex"));
    expect((await readFile(tmpPath)).equals(bytes)).toBe(true);
  });
});
