import { randomUUID } from "node:crypto";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import type { ColdstartError } from "../errors.js";
import { toS3Error } from "../s3/retry.js";
import type { CacheContext } from "./context.js";
import { type DirListing, digestFiles, listCacheDir, packStream, snapshotFiles } from "./pack.js";
import { type CacheRecord, observeListing } from "./records.js";
import { MANIFEST_FORMAT, type Manifest } from "./remote.js";
import type { PublishOutcome, PublishResult } from "./types.js";

/** A publish still running after this is aborted; the next quiet period tries again. */
const PUBLISH_DEADLINE_MS = 60 * 60_000;

/**
 * Packs and uploads one keyed directory from a snapshot of hard links, then writes its manifest,
 * unless the remote already holds the key (the first complete manifest wins). Never leaves a
 * manifest without its pack; a pack no manifest names is deleted when it can be.
 */
export async function publishOnce(
  ctx: CacheContext,
  r: CacheRecord,
  remoteUri: string,
  reason: string,
): Promise<PublishResult> {
  const started = ctx.now();
  const path = ctx.pathOf(r.key);
  const store = ctx.remoteFor(remoteUri);
  // A stalled upload must not hold the key (no eviction, no other publish) for ever.
  const signal = AbortSignal.any([ctx.stopSignal, AbortSignal.timeout(PUBLISH_DEADLINE_MS)]);
  const snap = join(ctx.tmpDir, `publish-${randomUUID()}`);
  let listing: DirListing = { files: [], bytes: 0, fingerprint: "" };
  let packBytes = 0;
  const finish = (outcome: PublishOutcome, error?: ColdstartError): PublishResult => {
    const seconds = (ctx.now() - started) / 1000;
    ctx.metrics?.compileCachePublishes.inc({ outcome });
    ctx.metrics?.compileCachePublishDuration.observe({ outcome }, seconds);
    if (outcome === "published") ctx.metrics?.compileCachePublishBytes.inc(packBytes);
    const level = outcome === "failed" || outcome === "too_large" ? "warn" : "info";
    ctx.logger[level](
      {
        key: r.key,
        outcome,
        reason,
        files: listing.files.length,
        bytes: listing.bytes,
        packBytes,
        seconds,
        ...(error ? { code: error.code, err: error.message } : {}),
      },
      "compile cache publish",
    );
    return {
      key: r.key,
      outcome,
      bytes: listing.bytes,
      files: listing.files.length,
      packBytes,
      seconds,
      ...(error ? { error: { code: error.code, message: error.message } } : {}),
    };
  };
  let packName: string | undefined;
  // A pack no manifest names is invisible to readers. Deleting it is a courtesy: daemons need no
  // delete right (deploy/iam/policy.json), and `cache prune` removes what is left.
  const discard = async (name: string) => {
    await store
      .delete([store.objectKey(r.key, name)])
      .catch((e) =>
        ctx.logger.info({ key: r.key, pack: name, err: String(e) }, "unused pack left for cache prune"),
      );
  };
  try {
    listing = await listCacheDir(path);
    observeListing(r, ctx.iso(), listing);
    if (listing.files.length === 0) return finish("empty");
    if (listing.bytes > ctx.maxBytes) return finish("too_large");
    if (await store.hasManifest(r.key)) return remoteHas(ctx, r, finish);
    // Packed from checked hard links, never through the pod's directory tree itself.
    if (!(await snapshotFiles(path, listing.files, snap))) {
      observeListing(r, ctx.iso(), await listCacheDir(path));
      return finish("changed");
    }
    const files = await digestFiles(snap, listing.files);
    const body = packStream(
      snap,
      files.map((f) => f.path),
    );
    const pack = await store.uploadPack(r.key, body, signal).finally(() => body.destroy());
    packName = pack.name;
    packBytes = pack.bytes;
    // The engine wrote on while we packed: what we uploaded may not be what we digested.
    const after = await listCacheDir(path);
    if (after.fingerprint !== listing.fingerprint) {
      await discard(pack.name);
      observeListing(r, ctx.iso(), after);
      return finish("changed");
    }
    if (await store.hasManifest(r.key)) {
      await discard(pack.name);
      return remoteHas(ctx, r, finish);
    }
    const manifest: Manifest = {
      format: MANIFEST_FORMAT,
      key: r.key,
      canonical: r.canonical,
      createdAt: ctx.iso(),
      publisher: { ...(ctx.nodeName ? { node: ctx.nodeName } : {}), version: ctx.version },
      pack,
      bytes: listing.bytes,
      files,
    };
    if ((await store.putManifest(manifest)) === "exists") {
      await discard(pack.name);
      return remoteHas(ctx, r, finish);
    }
    r.published = {
      at: ctx.iso(),
      fingerprint: listing.fingerprint,
      pack: pack.name,
    };
    r.remoteState = "present";
    r.remoteCheckedAt = ctx.iso();
    await ctx.records.put(r);
    return finish("published");
  } catch (err) {
    const e = toS3Error(err, r.key, "compile cache");
    if (packName) await discard(packName);
    return finish("failed", e);
  } finally {
    await rm(snap, { recursive: true, force: true });
  }
}
async function remoteHas(
  ctx: CacheContext,
  r: CacheRecord,
  finish: (o: PublishOutcome) => PublishResult,
): Promise<PublishResult> {
  r.remoteState = "present";
  r.remoteCheckedAt = ctx.iso();
  await ctx.records.put(r);
  return finish("exists");
}
