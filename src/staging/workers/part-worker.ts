/**
 * A part worker's thread: receives parts from src/staging/workers/pool.ts and runs each through the
 * same downloadPart the in-process path runs (retries, resume within the part, Content-Range and
 * length checks, digests, positional writes, fdatasync), with a source that asks the main thread
 * where each attempt's GET goes and then sends it on this thread's own connections.
 */
import { parentPort } from "node:worker_threads";
import { ColdstartError } from "../../errors.js";
import type { GetOptions, GetResponse, ObjectSource, PieceOutcome } from "../../s3/object-source.js";
import { TransientError } from "../../s3/retry.js";
import { downloadPart, isLocalFailure, type PartRequest, PieceMismatch } from "../part-download.js";
import { WorkerHttp } from "./http-get.js";
import {
  type FromWorker,
  fromWire,
  HALTED,
  type PartSettings,
  type ToWorker,
  toWire,
  type WireResolved,
} from "./protocol.js";

/** Progress is told in batches of this many bytes (and at the end of each attempt), not per write. */
const BYTES_BATCH = 4 * 1024 * 1024;
/** Rate-capped parts ask for bytes in grants of this size: one message per grant, not per chunk. */
const GRANT = 1024 * 1024;

const port = parentPort;
if (!port) throw new Error("part-worker.ts runs as a worker thread");
const http = new WorkerHttp();

interface Running {
  abort: AbortController;
  halted: boolean;
  calls: Map<number, { resolve: (v: unknown) => void; reject: (e: unknown) => void }>;
}
const running = new Map<number, Running>();
let nextCall = 0;
const post = (m: FromWorker) => port.postMessage(m);

/** Posts a call to the main thread and waits for its answer (resolved, granted). */
function ask<T>(part: Running, message: (call: number) => FromWorker): Promise<T> {
  const call = nextCall++;
  return new Promise<T>((resolve, reject) => {
    part.calls.set(call, { resolve: resolve as (v: unknown) => void, reject });
    post(message(call));
  });
}

/** Thrown by `halted` once the main thread stops the job: recognised there by `halted: true`. */
class Halted extends Error {}

port.on("message", (m: ToWorker) => {
  if (m.t === "part") {
    void runPart(m.id, m.req, m.settings);
    return;
  }
  const part = running.get(m.id);
  if (!part) return;
  if (m.t === "abort") part.abort.abort(fromWire(m.reason));
  else {
    const call = part.calls.get(m.call);
    if (!call) return;
    part.calls.delete(m.call);
    if (m.error?.name === HALTED) {
      // Stopping: this attempt fails as retryable, and the retry loop then sees `halted`.
      part.halted = true;
      call.reject(new TransientError("the job is stopping"));
    } else if (m.error) call.reject(fromWire(m.error));
    else call.resolve(m.t === "resolved" ? m.resolved : undefined);
  }
});

async function runPart(id: number, req: PartRequest, s: PartSettings) {
  const part: Running = { abort: new AbortController(), halted: false, calls: new Map() };
  running.set(id, part);
  const signal = part.abort.signal;
  let unreported = 0;
  const flushBytes = () => {
    if (unreported === 0) return;
    post({ t: "bytes", id, n: unreported });
    unreported = 0;
  };
  let granted = 0;
  const source = remoteSource(id, part, s.requestTimeoutMs, flushBytes);
  try {
    const entry = await downloadPart(req, {
      source,
      retry: s.retry,
      requestTimeoutMs: s.requestTimeoutMs,
      lowSpeed: s.lowSpeed,
      blockingWrites: true,
      signal,
      onDiscard: (n) => {
        flushBytes();
        post({ t: "discard", id, n });
      },
      onBytes: (n) => {
        unreported += n;
        if (unreported >= BYTES_BATCH) flushBytes();
      },
      onRetry: (err, attempt) => {
        flushBytes();
        post({ t: "retry", id, attempt, error: toWire(err) });
      },
      rateLimiter: s.rateLimited
        ? {
            take: async (n: number) => {
              if (granted < n) {
                const want = Math.max(GRANT, n - granted);
                await ask(part, (call) => ({ t: "take", id, call, n: want }));
                granted += want;
              }
              granted -= n;
            },
          }
        : undefined,
      halted: () => (part.halted ? new Halted("stopping") : undefined),
    });
    flushBytes();
    post({ t: "done", id, entry });
  } catch (err) {
    flushBytes();
    post({ t: "failed", id, error: toWire(err), halted: err instanceof Halted });
  } finally {
    running.delete(id);
  }
}

/**
 * How a peer's piece went, for the main thread to judge the peer by (src/peers/peer-source.ts). Only
 * what the peer caused counts against it: this node's own failures (its disk, the job stopping) are
 * "abandoned".
 */
function pieceOutcome(err: unknown, status?: number): PieceOutcome {
  if (err === undefined) return "ok";
  if (status === 404) return "not_held";
  if (err instanceof PieceMismatch) return "corrupt";
  if (isLocalFailure(err)) return "abandoned";
  return err instanceof ColdstartError ? "corrupt" : "unreachable";
}

/** The main thread says where each attempt goes; this thread sends it and reads the body. */
function remoteSource(id: number, part: Running, timeoutMs: number, beforeAsk: () => void): ObjectSource {
  const refuse = () => {
    throw new Error("a part worker only sends GETs");
  };
  return {
    list: refuse,
    head: refuse,
    partSizes: refuse,
    close: () => {},
    async get(_bucket: string, _key: string, options: GetOptions): Promise<GetResponse> {
      beforeAsk();
      // A peer that fails before its piece's first byte costs no attempt: S3 is asked at once.
      for (let skipPeers = options.skipPeers ?? false; ; skipPeers = true) {
        let call = -1;
        const resolved = await ask<WireResolved>(part, (c) => {
          call = c;
          return {
            t: "resolve",
            id,
            call: c,
            range: options.range,
            ifMatch: options.ifMatch,
            checksumMode: options.checksumMode ?? false,
            skipPeers,
          };
        });
        const signal = options.signal ?? part.abort.signal;
        try {
          const res = await http.get(resolved, timeoutMs, signal);
          if (!resolved.piece) {
            post({ t: "settled", id, call, status: res.statusCode });
            return res;
          }
          // A peer's piece is judged once its bytes are in: only bytes that hash to its digest count.
          return {
            ...res,
            settle: (err) => post({ t: "settled", id, call, status: 200, piece: pieceOutcome(err) }),
          };
        } catch (err) {
          const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
          const piece = resolved.piece ? pieceOutcome(err, status) : undefined;
          post({ t: "settled", id, call, status: status ?? "error", ...(piece ? { piece } : {}) });
          if (!piece || signal.aborted) throw err;
        }
      }
    },
  };
}
