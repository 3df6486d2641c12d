import { randomUUID } from "node:crypto";
import { chmod, mkdir, rename, rm, rmdir } from "node:fs/promises";
import { join } from "node:path";
import { toS3Error } from "../s3/retry.js";
import type { CacheContext } from "./context.js";
import { listCacheDir, remoteInvalid, unpackVerified } from "./pack.js";
import { type CacheRecord, observeListing } from "./records.js";
import type { RestoreOutcome, RestoreResult } from "./types.js";

/**
 * Restores one key: a keyed directory that already has files is used as it is ("local"); else the
 * remote's manifest and pack, unpacked into a temp directory, verified file by file and as a whole,
 * installed by one rename ("hit"). A miss, a timeout or a bad pack is an outcome: the pod compiles.
 */
export async function restoreOnce(
  ctx: CacheContext,
  r: CacheRecord,
  remoteUri: string | null,
  signal: AbortSignal,
): Promise<RestoreResult> {
  const started = ctx.now();
  const path = ctx.pathOf(r.key);
  const done = async (
    outcome: RestoreOutcome,
    extra: Partial<RestoreResult> = {},
  ): Promise<RestoreResult> => {
    await ctx.ensureKeyDir(r.key);
    await ctx.records.put(r);
    const seconds = (ctx.now() - started) / 1000;
    ctx.metrics?.compileCacheRestores.inc({ outcome });
    ctx.metrics?.compileCacheRestoreDuration.observe({ outcome }, seconds);
    ctx.logger.info({ key: r.key, outcome, seconds, ...extra.error }, "compile cache restore");
    return {
      key: r.key,
      path,
      outcome,
      bytes: r.bytes,
      files: r.files,
      seconds,
      remote: remoteUri,
      ...extra,
    };
  };
  // Made (0777) before anything is fetched: a pod whose wait gives up early can still write here.
  await ctx.ensureKeyDir(r.key);
  const local = await listCacheDir(path);
  if (local.files.length > 0) {
    observeListing(r, ctx.iso(), local);
    return done("local");
  }
  if (!remoteUri) return done("miss");
  const store = ctx.remoteFor(remoteUri);
  const tmp = join(ctx.tmpDir, randomUUID());
  const discardTmp = () =>
    rm(tmp, { recursive: true, force: true }).catch((e) =>
      ctx.logger.warn({ key: r.key, path: tmp, err: String(e) }, "removing a restore's temp directory"),
    );
  let unpacking: Promise<{ bytes: number; sha256: string }> | undefined;
  try {
    const m = await bounded(store.manifest(r.key, signal), signal);
    r.remoteCheckedAt = ctx.iso();
    if (!m) {
      r.remoteState = "absent";
      return done("miss");
    }
    r.remoteState = "present";
    if (m.bytes > ctx.maxBytes) {
      throw remoteInvalid(
        `${r.key} unpacks to ${m.bytes} bytes, more than compileCache.maxBytes (${ctx.maxBytes})`,
      );
    }
    await mkdir(tmp, { recursive: true });
    unpacking = (async () => unpackVerified(await store.pack(r.key, m, signal), tmp, m.files, signal))();
    const packed = await bounded(unpacking, signal);
    if (packed.bytes !== m.pack.bytes || packed.sha256 !== m.pack.sha256) {
      throw remoteInvalid(
        `${r.key}: the pack has ${packed.bytes} bytes with SHA-256 ${packed.sha256}, the manifest says ${m.pack.bytes} and ${m.pack.sha256}`,
      );
    }
    await chmod(tmp, 0o777);
    // Installed by one rename; the keyed directory may exist only empty (an earlier miss).
    await rmdir(path).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== "ENOENT") throw e;
    });
    // Past the deadline the pod has started with an empty cache: nothing lands under its feet.
    signal.throwIfAborted();
    await rename(tmp, path);
    r.restored = { at: ctx.iso(), manifestCreatedAt: m.createdAt, files: m.files };
    delete r.silentMissAt;
    observeListing(r, ctx.iso(), await listCacheDir(path));
    ctx.metrics?.compileCacheRestoreBytes.inc(m.bytes);
    store.recordHit(r.key).catch((e) => ctx.logger.warn({ key: r.key, err: String(e) }, "recording a hit"));
    return done("hit");
  } catch (err) {
    // An unpack abandoned at the deadline may still be closing its files: its directory goes
    // once it has (unpackVerified never makes the directory again once it is gone).
    if (unpacking && signal.aborted) void unpacking.then(discardTmp, discardTmp);
    await discardTmp();
    // ENOTEMPTY: something wrote into the keyed directory meanwhile; that copy stays.
    if (
      (err as NodeJS.ErrnoException).code === "ENOTEMPTY" ||
      (err as NodeJS.ErrnoException).code === "EEXIST"
    )
      return done("local");
    if (signal.aborted) return done("timeout");
    const e = toS3Error(err, r.key, "compile cache");
    ctx.logger.warn(
      { key: r.key, code: e.code, err: e.message },
      "compile cache restore failed; the pod compiles",
    );
    return done("error", { error: { code: e.code, message: e.message } });
  }
}

/**
 * `work`, or a rejection with the signal's reason the moment it fires, whichever comes first. A
 * restore's deadline is a promise to the pod (its `wait` gives up soon after), so it must not hang
 * on a step that fails to honour the signal; the abandoned step keeps the signal and winds down by
 * itself.
 */
function bounded<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  // Abandoned, its failure is no one's to handle.
  work.catch(() => {});
  if (signal.aborted) return Promise.reject(signal.reason);
  let onAbort = () => {};
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
  });
  return Promise.race([work, aborted]).finally(() => signal.removeEventListener("abort", onAbort));
}
