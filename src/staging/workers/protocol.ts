/**
 * Messages between the main thread and a part worker (src/staging/workers). The main thread owns
 * every decision that needs shared state (where a GET goes and its signature, the rate cap, the
 * journal); a worker owns the bytes of the parts it is given (the socket, the digests, the writes,
 * the fdatasync) and asks the main thread once per attempt, never per chunk.
 */
import { ColdstartError, type ErrorCode, type ErrorDetails } from "../../errors.js";
import type { PieceOutcome, ResolvedGet } from "../../s3/object-source.js";
import type { RetryPolicy } from "../../s3/retry.js";
import { TransientError } from "../../s3/retry.js";
import type { JournalEntry } from "../../store/journal.js";
import type { LowSpeed, PartRequest } from "../part-download.js";

/** An error as it crosses threads: enough of its shape for retry decisions, metrics and messages. */
export interface WireError {
  name: string;
  message: string;
  /** A ColdstartError's catalog code, or a socket error's errno code. */
  code?: string;
  /** S3's error code (the XML's <Code>). */
  Code?: string;
  status?: number;
  noProgress?: boolean;
  details?: ErrorDetails;
  coldstart?: boolean;
}

/** A GET the worker sends itself: where, with which headers, and for a peer's piece what it stands for. */
export type WireResolved = Omit<ResolvedGet, "settled">;

export interface PartSettings {
  retry: RetryPolicy;
  requestTimeoutMs: number;
  lowSpeed: LowSpeed | undefined;
  /** The main thread caps throughput: bytes are asked for in grants before they are read on. */
  rateLimited: boolean;
}

export type ToWorker =
  | { t: "part"; id: number; req: PartRequest; settings: PartSettings }
  | { t: "resolved"; id: number; call: number; resolved?: WireResolved; error?: WireError }
  | { t: "granted"; id: number; call: number; error?: WireError }
  | { t: "abort"; id: number; reason: WireError };

export type FromWorker =
  | {
      t: "resolve";
      id: number;
      call: number;
      range: { start: number; end: number } | undefined;
      ifMatch: string | undefined;
      checksumMode: boolean;
      /** A peer failed this attempt's request: S3 answers it. */
      skipPeers: boolean;
    }
  | { t: "settled"; id: number; call: number; status: number | "error"; piece?: PieceOutcome }
  | { t: "take"; id: number; call: number; n: number }
  | { t: "bytes"; id: number; n: number }
  /** Bytes told that are taken back: a peer's piece that failed partway or did not verify. */
  | { t: "discard"; id: number; n: number }
  | { t: "retry"; id: number; attempt: number; error: WireError }
  | { t: "done"; id: number; entry: JournalEntry }
  | { t: "failed"; id: number; error: WireError; halted: boolean };

/** The name of the error a "resolve" is answered with once the job is stopping. */
export const HALTED = "Halted";

export function toWire(err: unknown): WireError {
  const e = (typeof err === "object" && err !== null ? err : {}) as {
    name?: unknown;
    message?: unknown;
    code?: unknown;
    Code?: unknown;
    $metadata?: { httpStatusCode?: unknown };
    noProgress?: unknown;
  };
  const wire: WireError = {
    name: typeof e.name === "string" ? e.name : "Error",
    message: typeof e.message === "string" ? e.message : String(err),
  };
  if (typeof e.code === "string") wire.code = e.code;
  if (typeof e.Code === "string") wire.Code = e.Code;
  if (typeof e.$metadata?.httpStatusCode === "number") wire.status = e.$metadata.httpStatusCode;
  if (e.noProgress === true) wire.noProgress = true;
  if (err instanceof ColdstartError) {
    wire.coldstart = true;
    wire.details = err.details;
  }
  return wire;
}

/** Rebuilds an error with the shape src/s3/retry.ts and src/metrics/retry-reason.ts classify. */
export function fromWire(w: WireError): Error {
  if (w.coldstart) return new ColdstartError(w.code as ErrorCode, w.message, { details: w.details ?? {} });
  if (w.name === "TransientError")
    return new TransientError(w.message, { noProgress: w.noProgress ?? false });
  const err = new Error(w.message) as Error & Record<string, unknown>;
  err.name = w.name;
  if (w.code !== undefined) err.code = w.code;
  if (w.Code !== undefined) err.Code = w.Code;
  if (w.status !== undefined) err.$metadata = { httpStatusCode: w.status };
  return err;
}
