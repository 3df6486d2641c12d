import { createHash } from "node:crypto";
import { writeSync } from "node:fs";
import { open } from "node:fs/promises";
import { createChecksum } from "../checksums/streaming.js";
import type { ObjectChecksum, StreamingChecksum } from "../checksums/types.js";
import { ColdstartError } from "../errors.js";
import type { GetResponse, ObjectSource } from "../s3/object-source.js";
import { isRetryable, type RetryPolicy, TransientError, withRetry } from "../s3/retry.js";
import type { JournalEntry } from "../store/journal.js";
import { ioError } from "../store/paths.js";
import type { RateLimiter } from "./rate-limiter.js";

/** Bytes gathered from the socket before one positional write: fewer syscalls, bounded memory. */
const WRITE_CHUNK = 256 * 1024;

/**
 * Write buffers, reused part after part. Socket chunks are copied in and dropped at once: holding
 * them until a write (as a writev of the chunks did) kept them alive across young-generation
 * collections, so V8 promoted them and ran a full collection every few dozen MB (40 per GiB; the
 * copy costs about 0.1 CPU-s per GiB, the collections cost 0.5 on the main thread and more on V8's
 * own threads).
 */
const writeBuffers: Buffer[] = [];
const MAX_SPARE_BUFFERS = 256;

export interface PartRequest {
  bucket: string;
  key: string;
  etag: string;
  size: number;
  /** Absolute path of the temp file: already created at full size, unless `create`. */
  tmpPath: string;
  /** Create the temp file (truncating any leftover): the part is the whole file. */
  create?: boolean;
  index: number;
  start: number;
  /** Exclusive. */
  end: number;
  /** The part is the whole object: GET without Range (S3 then returns the whole-object checksum). */
  whole: boolean;
  /** fdatasync before returning, so the caller may journal (or, for a whole file, commit) the part. */
  durable: boolean;
  /** Algorithm whose value over this range the caller needs to rebuild the object's checksum. */
  sumAlgorithm?: ObjectChecksum["algorithm"] | undefined;
}

/** The minimum-throughput rule per request (download.lowSpeed*): off when `bytesPerSecond` is 0. */
export interface LowSpeed {
  bytesPerSecond: number;
  /** Reading time the rate is averaged over. */
  windowMs: number;
}

export interface PartContext {
  source: ObjectSource;
  retry: RetryPolicy;
  requestTimeoutMs: number;
  /** A body slower than this is abandoned and resumed on a new connection (absent: off). */
  lowSpeed?: LowSpeed | undefined;
  /** Milliseconds now (tests inject a clock; the rule measures reading time, not wall time). */
  now?: (() => number) | undefined;
  signal: AbortSignal;
  /**
   * Write on this thread, not libuv's pool: for a worker thread that owns only byte work, a write
   * into the page cache costs less than its hand-off to the pool and back.
   */
  blockingWrites?: boolean | undefined;
  /** Called with every body byte count written to disk (progress). */
  onBytes: (n: number) => void;
  /** Bytes told to onBytes that will be written again (the part starts over on another thread). */
  onDiscard?: ((n: number) => void) | undefined;
  /** Each attempt, before its request goes out: whether a peer or S3 answers it. */
  onSource?: ((fromPeer: boolean) => void) | undefined;
  onRetry: (err: unknown, attempt: number) => void;
  /** Shared throughput cap, awaited per received chunk (the socket is not read meanwhile). */
  rateLimiter?: Pick<RateLimiter, "take"> | undefined;
  /** The job is stopping (SIGTERM): a failed attempt is not retried; this error is thrown instead. */
  halted?: (() => Error | undefined) | undefined;
}

/**
 * Downloads one part into its place in the temp file, retrying with backoff. A retry after a broken
 * body resumes at the first byte not yet written (Range from there, If-Match the pinned ETag), and
 * the running digests continue over the resumed bytes, so each byte is hashed exactly once.
 * With `durable`, returns once the bytes are fdatasync'd: the caller may then journal the part.
 */
export async function downloadPart(req: PartRequest, ctx: PartContext): Promise<JournalEntry> {
  const length = req.end - req.start;
  let sha = createHash("sha256");
  let sum: StreamingChecksum | undefined = req.sumAlgorithm ? createChecksum(req.sumAlgorithm) : undefined;
  let written = 0;
  let checksum: ObjectChecksum | undefined;
  /** Takes back every byte of the part: a peer's piece that failed partway or did not verify. */
  const discard = () => {
    ctx.onDiscard?.(written);
    written = 0;
    sha = createHash("sha256");
    sum = req.sumAlgorithm ? createChecksum(req.sumAlgorithm) : undefined;
    checksum = undefined;
  };

  const fh = await open(req.tmpPath, req.create ? "w" : "r+").catch((e) => {
    throw ioError(e, `opening ${req.tmpPath}`, req.key);
  });
  try {
    await withRetry(
      ctx.retry,
      { key: req.key, action: "GET" },
      async () => {
        // Every byte arrived but the attempt still failed (e.g. the body errored after its end):
        // nothing to fetch, and asking for bytes=end-(end-1) would be an inverted range.
        if (length > 0 && written === length) return;
        const from = req.start + written;
        const ranged = !(req.whole && written === 0);
        const res = await ctx.source.get(req.bucket, req.key, {
          ...(ranged ? { range: { start: from, end: req.end - 1 } } : {}),
          ifMatch: req.etag,
          checksumMode: !ranged,
          // A resumed range is not a whole piece: S3 answers it.
          skipPeers: written !== 0,
          signal: ctx.signal,
          onSource: ctx.onSource,
        });
        const whole = res.wholeSha256;
        // skipPeers above keeps a resumed range from peers: a piece must start the part.
        if (whole !== undefined && written !== 0) {
          throw new ColdstartError(
            "CS_INTERNAL",
            `GET ${req.key}: a peer's piece offered for a resumed range`,
          );
        }
        try {
          checkResponse(req, res, from, ranged);
          if (!ranged && res.checksum?.type === "FULL_OBJECT") {
            checksum = res.checksum;
            sum ??= createChecksum(checksum.algorithm);
          }
          await streamToFile(req, res, fh, from, req.end - from, ctx, {
            digest: (chunk) => {
              sha.update(chunk);
              sum?.update(chunk);
            },
            wrote: (n) => {
              written += n;
              ctx.onBytes(n);
            },
          });
          if (written !== length) throw new TransientError(`body ended after ${written} of ${length} bytes`);
          if (whole !== undefined) {
            const got = sha.copy().digest("hex");
            if (got !== whole)
              throw new PieceMismatch(`GET ${req.key}: piece has SHA-256 ${got}, expected ${whole}`);
          }
          res.settle?.(undefined);
        } catch (err) {
          res.settle?.(err);
          if (whole === undefined) throw err;
          // Whatever went wrong with a peer's piece, S3 still has it: the next attempt asks there.
          // This node's own failures (a full disk, an I/O error) stay what they are.
          discard();
          if (isRetryable(err) || ctx.signal.aborted || isLocalFailure(err)) throw err;
          throw new TransientError(`piece from a peer: ${(err as Error).message}`, { cause: err });
        } finally {
          if (!res.body.destroyed) res.body.destroy();
        }
      },
      // A retry that resumed forward is not a failure to give up on: only attempts that brought
      // no new byte count against maxAttempts.
      { signal: ctx.signal, onRetry: ctx.onRetry, progress: () => written, halted: ctx.halted },
    );
    if (req.durable) {
      await fh.datasync().catch((e) => {
        throw ioError(e, `syncing ${req.tmpPath}`, req.key);
      });
    }
  } finally {
    await fh.close().catch(() => {});
  }
  return {
    p: req.index,
    sha256: sha.digest("hex"),
    ...(sum ? { sum: sum.digest().toString("base64") } : {}),
    ...(checksum ? { checksum } : {}),
  };
}

/** A peer's piece whose bytes do not hash to its digest: they are taken back and fetched again. */
export class PieceMismatch extends TransientError {}

/** A failure of this node (its disk), not of whoever sent the bytes. */
export function isLocalFailure(err: unknown): boolean {
  return err instanceof ColdstartError && (err.code === "CS_IO_ERROR" || err.code === "CS_DISK_FULL");
}

function checkResponse(req: PartRequest, res: GetResponse, from: number, ranged: boolean): void {
  const invalid = (why: string) =>
    new ColdstartError("CS_S3_RESPONSE_INVALID", `GET ${req.key}: ${why}`, { details: { key: req.key } });
  if (res.etag !== undefined && res.etag !== "" && res.etag !== req.etag) {
    throw new ColdstartError(
      "CS_OBJECT_CHANGED",
      `GET ${req.key}: ETag changed from ${req.etag} to ${res.etag} during download`,
      { details: { key: req.key } },
    );
  }
  if (!ranged) {
    if (res.statusCode !== 200) throw invalid(`expected 200 for a whole-object GET, got ${res.statusCode}`);
    if (res.contentLength !== req.size) {
      throw new ColdstartError(
        "CS_OBJECT_CHANGED",
        `GET ${req.key}: Content-Length ${res.contentLength} differs from the listed size ${req.size}`,
        { details: { key: req.key } },
      );
    }
    return;
  }
  // A 200 to a ranged request means the server ignored Range: its body starts at byte 0, not `from`.
  if (res.statusCode !== 206)
    throw invalid(`expected 206 for Range bytes=${from}-${req.end - 1}, got ${res.statusCode}`);
  const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(res.contentRange ?? "");
  if (!m) throw invalid(`missing or malformed Content-Range ${JSON.stringify(res.contentRange)}`);
  if (m[3] !== "*" && Number(m[3]) !== req.size) {
    throw new ColdstartError(
      "CS_OBJECT_CHANGED",
      `GET ${req.key}: object size is now ${m[3]}, was ${req.size} when listed`,
      { details: { key: req.key } },
    );
  }
  if (Number(m[1]) !== from || Number(m[2]) !== req.end - 1) {
    throw invalid(`asked bytes=${from}-${req.end - 1}, got Content-Range ${res.contentRange}`);
  }
  if (res.contentLength !== undefined && res.contentLength !== req.end - from) {
    throw invalid(`Content-Length ${res.contentLength} does not match Content-Range ${res.contentRange}`);
  }
}

/**
 * Streams the body to `position…` of the file, at most `expected` bytes, reporting each write. Bytes received before a
 * failure are still written (they are good bytes at known offsets), then the failure is rethrown as
 * retryable so the next attempt resumes after them. A body silent for requestTimeoutMs is a stall.
 *
 * Chunks are taken as 'data' events, not through the async iterator: its promise and microtask per
 * chunk cost about 0.3 CPU-s per GiB (bench:ceiling). The body is paused while a chunk waits on
 * the rate cap or an asynchronous write, so nothing is buffered beyond the socket's own window.
 */
async function streamToFile(
  req: PartRequest,
  res: GetResponse,
  fh: import("node:fs/promises").FileHandle,
  position: number,
  expected: number,
  ctx: PartContext,
  sink: { digest: (chunk: Buffer) => void; wrote: (n: number) => void },
): Promise<void> {
  const body = res.body;
  let total = 0;
  const buffer = writeBuffers.pop() ?? Buffer.allocUnsafeSlow(WRITE_CHUNK);
  let pendingBytes = 0;

  // One positional write per WRITE_CHUNK of socket chunks copied into a reused buffer.
  const flushed = (bytes: number) => {
    pendingBytes = 0;
    total += bytes;
    sink.wrote(bytes);
  };
  /** Writes what is gathered: at once on a worker (blockingWrites), else through libuv's pool. */
  const flush = (): Promise<void> | undefined => {
    const bytes = pendingBytes;
    if (bytes === 0) return undefined;
    if (ctx.blockingWrites) {
      try {
        for (let done = 0; done < bytes; )
          done += writeSync(fh.fd, buffer, done, bytes - done, position + total + done);
      } catch (e) {
        throw ioError(e as NodeJS.ErrnoException, `writing ${req.tmpPath}`, req.key);
      }
      flushed(bytes);
      return undefined;
    }
    return (async () => {
      for (let done = 0; done < bytes; ) {
        const at = position + total + done;
        const { bytesWritten } = await fh.write(buffer, done, bytes - done, at).catch((e) => {
          throw ioError(e, `writing ${req.tmpPath}`, req.key);
        });
        done += bytesWritten;
      }
      flushed(bytes);
    })();
  };

  // The stall watch: one timer per request that looks at when the last byte came, not a timer
  // re-armed per chunk. Time spent waiting on the rate cap or the disk is not the socket's.
  const clock = () => performance.now();
  let lastByteAt = clock();
  let waiting = false;
  let watch: NodeJS.Timeout | undefined;
  const watchdog = () => {
    const idle = clock() - lastByteAt;
    if (!waiting && idle >= ctx.requestTimeoutMs) {
      body.destroy(new TransientError(`no bytes for ${ctx.requestTimeoutMs} ms (stall)`));
      return;
    }
    watch = setTimeout(watchdog, Math.max(1, ctx.requestTimeoutMs - (waiting ? 0 : idle)));
  };
  watch = setTimeout(watchdog, ctx.requestTimeoutMs);

  // The low-speed rule (curl's speed-limit): bytes received per ms spent waiting on the socket, over
  // windows of `windowMs` of such waiting. Time spent on the rate cap or the disk is not the
  // network's, so it is not counted; a drip of a byte a second that never trips the inactivity
  // timer is caught here. Checked as chunks arrive: no timer per chunk.
  const now = ctx.now ?? Date.now;
  const low = ctx.lowSpeed && ctx.lowSpeed.bytesPerSecond > 0 ? ctx.lowSpeed : undefined;
  let waitingSince = low ? now() : 0;
  let windowWaitMs = 0;
  let windowBytes = 0;
  const checkSpeed = (n: number) => {
    if (!low) return;
    windowWaitMs += now() - waitingSince;
    windowBytes += n;
    if (windowWaitMs < low.windowMs) return;
    const rate = (windowBytes * 1000) / windowWaitMs;
    if (rate < low.bytesPerSecond) {
      throw new TransientError(
        `${Math.round(rate)} bytes/s over ${Math.round(windowWaitMs)} ms, below the ${low.bytesPerSecond} bytes/s minimum (low speed)`,
        { noProgress: true },
      );
    }
    windowWaitMs = 0;
    windowBytes = 0;
  };

  /** A chunk kept past its 'data' event: copied when the body reuses its buffer (part workers). */
  const hold = (chunk: Buffer): Buffer => (body.reusesChunks ? Buffer.from(chunk) : chunk);
  /** Takes one chunk; a promise when the chunk must wait (rate cap, asynchronous write). */
  const take = (chunk: Buffer): Promise<void> | undefined => {
    checkSpeed(chunk.length);
    lastByteAt = clock();
    if (total + pendingBytes + chunk.length > expected) {
      throw new ColdstartError(
        "CS_S3_RESPONSE_INVALID",
        `GET ${req.key}: body is longer than the ${expected} bytes asked for`,
        { details: { key: req.key } },
      );
    }
    if (ctx.rateLimiter) {
      const limiter = ctx.rateLimiter;
      const kept = hold(chunk);
      return (async () => {
        waiting = true;
        await limiter.take(kept.length, ctx.signal);
        await store(kept);
      })();
    }
    return store(chunk);
  };
  /** Hashes the chunk and copies it from `from` on into the write buffer, writing it when full. */
  const store = (chunk: Buffer, from = 0, digest = true): Promise<void> | undefined => {
    if (digest) sink.digest(chunk);
    for (let at = from; at < chunk.length; ) {
      const n = chunk.copy(buffer, pendingBytes, at);
      pendingBytes += n;
      at += n;
      if (pendingBytes === WRITE_CHUNK) {
        // A slow disk is not a stalled socket: the stall watch does not count writes.
        const pending = flush();
        if (pending) {
          waiting = true;
          const rest = hold(chunk.subarray(at));
          return pending.then(() => store(rest, 0, false));
        }
      }
    }
    return undefined;
  };

  const onAbort = () => body.destroy(ctx.signal.reason);
  ctx.signal.addEventListener("abort", onAbort, { once: true });
  // The chunk still being taken when the body fails: settled before the last flush, so every byte
  // hashed is a byte written and the next attempt resumes after exactly those.
  let current: Promise<void> | undefined;
  try {
    await new Promise<void>((resolve, reject) => {
      let settled = false;
      const fail = (err: unknown) => {
        if (settled) return;
        settled = true;
        reject(err);
      };
      body.on("data", (chunk: Buffer) => {
        if (settled) return;
        let pending: Promise<void> | undefined;
        try {
          pending = take(chunk);
        } catch (err) {
          fail(err);
          return;
        }
        if (!pending) {
          if (low) waitingSince = now();
          return;
        }
        body.pause();
        current = pending;
        pending.then(() => {
          current = undefined;
          waiting = false;
          lastByteAt = clock();
          if (low) waitingSince = now();
          body.resume();
        }, fail);
      });
      // A paused stream still ends once its buffer is empty: the last chunk may still be waiting on
      // the rate cap or a write, and is taken before the body counts as read.
      let ended = false;
      body.once("end", () => {
        ended = true;
        const done = () => {
          if (settled) return;
          settled = true;
          resolve();
        };
        if (current) current.then(done, fail);
        else done();
      });
      body.once("error", fail);
      // Closed without 'end' or 'error' (destroyed): the async iterator's "premature close".
      body.once("close", () => {
        if (!ended) fail(Object.assign(new Error("premature close"), { code: "ERR_STREAM_PREMATURE_CLOSE" }));
      });
    });
    clearTimeout(watch);
    await flush();
  } catch (err) {
    clearTimeout(watch);
    const taking = current;
    if (taking) await taking.catch(() => {});
    if (err instanceof ColdstartError) throw err;
    await flush();
    // Node reports a body cut by a clean close and one cut by a reset alike ("aborted"): the
    // source can tell which (a server closing early is a truncation, counted as such).
    if (!(err instanceof TransientError) && res.closedByServer?.()) {
      throw new TransientError(
        `body ended after ${total} of ${expected} bytes: the server closed the connection (truncated)`,
        { cause: err },
      );
    }
    throw err;
  } finally {
    clearTimeout(watch);
    ctx.signal.removeEventListener("abort", onAbort);
    // Back to the free list only once no write of it can be in flight (flush is always awaited).
    if (writeBuffers.length < MAX_SPARE_BUFFERS) writeBuffers.push(buffer);
  }
}
