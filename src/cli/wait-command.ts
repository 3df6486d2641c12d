import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { Command } from "commander";
import { callDaemon, type DaemonEndpoint, type JsonResponse } from "../api/client.js";
import type { RestoreResult } from "../compile-cache/types.js";
import { loadConfigFromProcess } from "../config/load.js";
import type { Config } from "../config/schema.js";
import { ColdstartError, type ErrorCode, toColdstartError } from "../errors.js";
import { validateModelId } from "../models/model-id.js";
import type { ModelStatus } from "../models/status.js";
import { writeFileAtomic } from "../store/atomic-file.js";
import { daemonEndpoint } from "./endpoint.js";
import { addIdentityOptions, type IdentityFlags, identityOf } from "./identity-options.js";
import { addSchemaOptions, flagsOf } from "./options.js";
import { reportError } from "./report.js";

/** `coldstart wait` exit codes (docs/cli.md): automation depends on them. */
export const WAIT_EXIT = { ready: 0, failed: 1, usage: 2, timeout: 3, unreachable: 4 } as const;

const GROUPS = new Set(["wait", "output", "log"]);

/**
 * The init-container handshake: ask the node's daemon for a model (staging it on demand with
 * --source), long-poll until it is staged and verified on this node, print progress, write the env
 * file, exit 0. Retries while the daemon starts or restarts, within --timeout.
 */
export function waitCommand(setExit: (code: number) => void): Command {
  const cmd = new Command("wait")
    .description("Block until a model is staged and verified on this node (init-container handshake).")
    .argument("<id>", "model id, e.g. meta-llama/Llama-3.1-8B");
  const byAttr = addSchemaOptions(cmd, GROUPS);
  // The framework identity of the compile-cache key (with --compile-cache), as `cache key` takes it.
  addIdentityOptions(cmd);
  cmd.action(async (id: string) => {
    let json = false;
    try {
      const config = loadConfigFromProcess(flagsOf(cmd, byAttr));
      json = config.output.json;
      const identity = config.wait.compileCache ? identityOf(cmd.opts<IdentityFlags>()) : undefined;
      setExit(await wait(validateModelId(id), config, identity));
    } catch (err) {
      const e = toColdstartError(err);
      reportError(e, json);
      setExit(exitFor(e.code));
    }
  });
  return cmd;
}

function exitFor(code: ErrorCode): number {
  switch (code) {
    case "CS_NOT_READY":
      return WAIT_EXIT.timeout;
    case "CS_DAEMON_UNREACHABLE":
      return WAIT_EXIT.unreachable;
    case "CS_CONFIG_INVALID":
    case "CS_MODEL_ID_INVALID":
    case "CS_SOURCE_URI_INVALID":
    case "CS_SOURCE_NOT_ALLOWED":
    case "CS_MODEL_SOURCE_CONFLICT":
    case "CS_MODEL_NOT_FOUND":
    case "CS_REQUEST_INVALID":
    case "CS_UNAUTHORIZED":
    case "CS_CACHE_KEY_INVALID":
      return WAIT_EXIT.usage;
    default:
      return WAIT_EXIT.failed;
  }
}

async function wait(id: string, config: Config, identity?: ReturnType<typeof identityOf>): Promise<number> {
  const w = config.wait;
  if (!w.source && (w.include.length > 0 || w.exclude.length > 0)) {
    const field = w.include.length > 0 ? "wait.include" : "wait.exclude";
    throw new ColdstartError(
      "CS_CONFIG_INVALID",
      "--include and --exclude need --source: without it the daemon is only asked for a model it holds",
      { details: { field, value: (w.include.length > 0 ? w.include : w.exclude).join(",") } },
    );
  }
  const ep = await daemonEndpoint(w);
  const where = w.url ?? ep.socketPath;
  const started = Date.now();
  const deadline = started + w.timeoutMs;
  const path = `/v1/models/${encodeURIComponent(id)}`;
  const pollSeconds = Math.max(1, Math.round(config.output.progressIntervalMs / 1000));
  let reached = false;
  let lastError = "";
  let told = "";
  // Names this handshake to the daemon across its polls: the gate wait it counts is this pod's own.
  const waiter = randomUUID();
  let backoff = 100;

  /** One call, retried while the daemon is unreachable or draining, until the deadline. */
  const call = async (
    method: string,
    p: string,
    body?: unknown,
    timeoutMs?: number,
  ): Promise<JsonResponse> => {
    for (;;) {
      try {
        const res = await callDaemon(ep, method, p, body, { timeoutMs: (timeoutMs ?? 10_000) + 5_000 });
        reached = true;
        if (res.status !== 503 || isStatus(res.body)) return res;
        // Said once per reason (a draining daemon, a refused node): the pod's log shows why it waits.
        if (describeBody(res.body) !== told) {
          told = describeBody(res.body);
          waiting(res.body, config.output.json);
        }
        lastError = `daemon answered 503: ${told}`;
      } catch (err) {
        lastError = `${(err as NodeJS.ErrnoException).code ?? ""} ${(err as Error).message}`.trim();
      }
      if (Date.now() + backoff > deadline) {
        throw reached
          ? new ColdstartError(
              "CS_NOT_READY",
              `model ${id} not ready after ${secs(started)}s (last: ${lastError})`,
            )
          : new ColdstartError(
              "CS_DAEMON_UNREACHABLE",
              `cannot reach the daemon at ${where} for ${secs(started)}s: ${lastError}`,
            );
      }
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 2_000);
    }
  };

  // The filters are part of the model's identity on the node: another set for the same id is a 409.
  const stageBody = {
    source: w.source,
    ...(w.include.length > 0 ? { include: w.include } : {}),
    ...(w.exclude.length > 0 ? { exclude: w.exclude } : {}),
  };
  /** Asks for the model (staging it with --source). An eviction in progress is waited out. */
  const request = async (): Promise<void> => {
    for (;;) {
      const res = w.source ? await call("PUT", path, stageBody) : await call("GET", path);
      if (res.status < 400) return progress(res.body as ModelStatus, config.output.json, started);
      const e = fromResponse(res, id);
      if (e.code !== "CS_MODEL_IN_USE" || Date.now() + 1000 > deadline) throw e;
      await sleep(1000);
    }
  };
  // The compile cache is restored while the model stages; a miss, an error or its timeout never
  // fails the pod, but a malformed identity (the pod's own mistake) does, at once.
  const restore = identity ? restoreCompileCache(ep, identity, config) : undefined;
  await request();

  for (;;) {
    if (restore?.usageError()) throw restore.usageError();
    const left = Math.floor((deadline - Date.now()) / 1000);
    if (left <= 0) throw new ColdstartError("CS_NOT_READY", `model ${id} not ready after ${secs(started)}s`);
    const t = Math.min(left, pollSeconds);
    // The last poll says so: if it ends not ready, the daemon counts this handshake as timed out.
    const last = t === left ? "&last=1" : "";
    const res = await call(
      "GET",
      `${path}/ready?timeoutSeconds=${t}${last}&waiter=${waiter}`,
      undefined,
      t * 1000,
    );
    if (res.status === 200) {
      const status = res.body as ModelStatus;
      const cache = restore ? await restore.result() : undefined;
      if (restore?.usageError()) throw restore.usageError();
      if (w.envFile) await writeEnvFile(w.envFile, status, await nodeHints(call), cache);
      finished(status, config.output.json, started, cache);
      return WAIT_EXIT.ready;
    }
    if (res.status === 503) {
      backoff = 100;
      progress(res.body as ModelStatus, config.output.json, started);
      continue;
    }
    // Evicted or deleted after we asked: with a source, ask again rather than fail the pod.
    if (res.status === 404 && w.source) {
      await request();
      continue;
    }
    throw fromResponse(res, id);
  }
}

interface NodeHints {
  loadFormat: string;
  gds: string;
  gpuProduct: string;
}

/**
 * What the pod needs from the node's facts: the vLLM load format, the GDS verdict and the GPU
 * product. If the daemon cannot say, the default loader is the one that always works.
 */
async function nodeHints(call: (method: string, p: string) => Promise<JsonResponse>): Promise<NodeHints> {
  const fallback = { loadFormat: "safetensors", gds: "unavailable", gpuProduct: "" };
  try {
    const res = await call("GET", "/v1/node");
    const body = res.body as {
      gds?: { verdict?: unknown; loadFormat?: unknown };
      gpus?: { product?: unknown };
    };
    const loadFormat = body?.gds?.loadFormat;
    const verdict = body?.gds?.verdict;
    if (res.status !== 200 || typeof loadFormat !== "string" || typeof verdict !== "string") {
      throw new Error(`GET /v1/node answered ${res.status} without node facts`);
    }
    const product = body.gpus?.product;
    return { loadFormat, gds: verdict, gpuProduct: typeof product === "string" ? product : "" };
  } catch (err) {
    process.stderr.write(
      `coldstart: warning: no node facts (${(err as Error).message}); COLDSTART_LOAD_FORMAT=safetensors\n`,
    );
    return fallback;
  }
}

/**
 * Starts the compile-cache restore, on its own clock: it retries a daemon that is starting or
 * draining only until the restore's deadline (--compile-cache-timeout from now, plus the answer's
 * slack), never the model's. `result()` resolves by then at the latest (undefined when the daemon
 * gave no answer); `usageError()` is set when the daemon refused the request itself (a malformed
 * identity, a remote not allowed).
 */
function restoreCompileCache(ep: DaemonEndpoint, identity: ReturnType<typeof identityOf>, config: Config) {
  const w = config.wait;
  const until = Date.now() + w.compileCacheTimeoutMs + 2_000;
  let refused: ColdstartError | undefined;
  const body = {
    ...identity,
    ...(w.compileCacheRemote ? { remote: w.compileCacheRemote } : {}),
    timeoutSeconds: Math.ceil(w.compileCacheTimeoutMs / 1000),
  };
  const warn = (why: string) => {
    process.stderr.write(`coldstart: warning: no compile cache restored (${why}); the engine compiles\n`);
    return undefined;
  };
  const ask = async (): Promise<RestoreResult | undefined> => {
    let backoff = 100;
    let last = "";
    while (Date.now() < until) {
      try {
        const res = await callDaemon(ep, "POST", "/v1/compile-caches", body, {
          timeoutMs: Math.max(until - Date.now(), 1),
        });
        if (res.status === 200) {
          const result = res.body as RestoreResult;
          // No key on this node (no GPU yet, two kinds): the pod starts without a shared cache.
          if (!result.path) return warn(`${result.error?.code}: ${result.error?.message}`);
          return result;
        }
        const e = fromResponse(res, "compile cache");
        if (res.status !== 503) {
          if (res.status === 400 || res.status === 403) refused = e;
          return warn(`${e.code}: ${e.message}`);
        }
        last = `${e.code}: ${e.message}`;
      } catch (err) {
        last = (err as Error).message;
      }
      await sleep(Math.min(backoff, Math.max(until - Date.now(), 0)));
      backoff = Math.min(backoff * 2, 2_000);
    }
    return warn(`no answer within --compile-cache-timeout${last ? ` (last: ${last})` : ""}`);
  };
  const answer = ask();
  return { usageError: () => refused, result: () => answer };
}

/** The env file the main container sources: `set -a; . /coldstart/env; set +a`. Written atomically. */
async function writeEnvFile(
  path: string,
  status: ModelStatus,
  hints: NodeHints,
  cache: RestoreResult | undefined,
): Promise<void> {
  const quote = (v: string) => `'${v.replaceAll("'", `'\\''`)}'`;
  const lines = [
    `COLDSTART_MODEL_ID=${quote(status.id)}`,
    `COLDSTART_MODEL_PATH=${quote(status.path)}`,
    `COLDSTART_LOAD_FORMAT=${quote(hints.loadFormat)}`,
    `COLDSTART_GDS=${quote(hints.gds)}`,
    `COLDSTART_GPU_PRODUCT=${quote(hints.gpuProduct)}`,
  ];
  if (cache) {
    // vLLM keeps its compile artifacts (and points Inductor and Triton) under VLLM_CACHE_ROOT; the
    // other two serve plain PyTorch users. All on the keyed directory of the mounted staging root.
    lines.push(
      `COLDSTART_COMPILE_CACHE_KEY=${quote(cache.key)}`,
      `COLDSTART_COMPILE_CACHE=${quote(cache.outcome)}`,
      `VLLM_CACHE_ROOT=${quote(cache.path)}`,
      `TORCHINDUCTOR_CACHE_DIR=${quote(`${cache.path}/torchinductor`)}`,
      `TRITON_CACHE_DIR=${quote(`${cache.path}/triton`)}`,
    );
  }
  await writeFileAtomic(path, `${lines.join("\n")}\n`);
}

function fromResponse(res: JsonResponse, id: string): ColdstartError {
  const e = (res.body as { error?: { code?: string; message?: string } } | undefined)?.error;
  const code = (e?.code ?? "CS_INTERNAL") as ErrorCode;
  return new ColdstartError(code, e?.message ?? `daemon answered ${res.status} for ${id}`);
}

function progress(s: ModelStatus, json: boolean, started: number): void {
  if (json) {
    process.stdout.write(
      `${JSON.stringify({ event: "progress", ...pick(s), waitedSeconds: secs(started) })}\n`,
    );
    return;
  }
  const pct = s.bytesTotal > 0 ? ((100 * s.bytesDone) / s.bytesTotal).toFixed(1) : "0.0";
  const eta = s.etaSeconds === null ? "?" : `${s.etaSeconds}s`;
  const waiting = s.waiting ? `, waiting for space: ${s.waiting.message}` : "";
  process.stderr.write(
    `coldstart: ${s.id} ${s.state} ${pct}% ${mib(s.bytesDone)}/${mib(s.bytesTotal)} MiB, ${mib(s.bytesPerSecond)} MiB/s, ETA ${eta}, files ${s.filesDone}/${s.filesTotal}${waiting}\n`,
  );
}

function finished(s: ModelStatus, json: boolean, started: number, cache: RestoreResult | undefined): void {
  const cc = cache
    ? { key: cache.key, outcome: cache.outcome, path: cache.path, files: cache.files, bytes: cache.bytes }
    : undefined;
  if (json) {
    process.stdout.write(
      `${JSON.stringify({ event: "ready", ...pick(s), waitedSeconds: secs(started), ...(cc ? { compileCache: cc } : {}) })}\n`,
    );
    return;
  }
  if (cc)
    process.stderr.write(
      `coldstart: compile cache ${cc.key}: ${cc.outcome}, ${cc.files} files, ${mib(cc.bytes)} MiB\n`,
    );
  process.stdout.write(`ready: ${s.id} at ${s.path} (${mib(s.bytesTotal)} MiB, waited ${secs(started)}s)\n`);
}

function pick(s: ModelStatus) {
  const { id, state, path, bytesDone, bytesTotal, filesDone, filesTotal, bytesPerSecond, etaSeconds } = s;
  return {
    id,
    state,
    path,
    bytesDone,
    bytesTotal,
    filesDone,
    filesTotal,
    bytesPerSecond,
    etaSeconds,
    ...(s.waiting ? { waiting: s.waiting } : {}),
  };
}

function isStatus(body: unknown): body is ModelStatus {
  return typeof body === "object" && body !== null && "state" in body && "id" in body;
}

/** A 503 that is not a model's status: the daemon is draining or refuses the node, and is asked again. */
function waiting(body: unknown, json: boolean): void {
  const error = (body as { error?: unknown } | undefined)?.error;
  if (json) process.stdout.write(`${JSON.stringify({ event: "waiting", error: error ?? body })}\n`);
  else process.stderr.write(`coldstart: waiting: the daemon answered 503: ${describeBody(body)}\n`);
}

function describeBody(body: unknown): string {
  const e = (body as { error?: { code?: string; message?: string } } | undefined)?.error;
  return e ? `${e.code}: ${e.message}` : JSON.stringify(body);
}

const secs = (since: number) => Math.round((Date.now() - since) / 100) / 10;
const mib = (n: number) => (n / 1048576).toFixed(1);
