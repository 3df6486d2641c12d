/**
 * Garbage collection of the shared store (`coldstart cache prune`): caches neither published nor hit
 * within the retention, packs no manifest names (a publisher killed after its upload, or one that
 * lost the race), and multipart uploads never finished (a publisher killed mid-upload). The last
 * two only once older than the upload grace, so a publish in progress is never cut.
 */
import type { RemoteObject, RemoteStore } from "./remote.js";

export interface PruneAction {
  kind: "expired" | "orphan-pack" | "unfinished-upload";
  cacheKey: string;
  /** Objects to delete (a whole cache: the manifest first, so readers stop seeing it at once). */
  objects: string[];
  bytes: number;
  /** When the thing was last published, hit, written or started. */
  lastActivity: string;
  uploadId?: string;
}

export interface PrunePlan {
  remote: string;
  /** Caches kept, with their last activity. */
  kept: { cacheKey: string; lastActivity: string; bytes: number }[];
  actions: PruneAction[];
}

export async function planPrune(
  store: RemoteStore,
  o: { retentionMs: number; uploadGraceMs: number; now: number },
): Promise<PrunePlan> {
  const byKey = new Map<string, (RemoteObject & { rest: string })[]>();
  for await (const obj of store.objects()) {
    if (!obj.cacheKey) continue;
    const list = byKey.get(obj.cacheKey) ?? [];
    list.push(obj);
    byKey.set(obj.cacheKey, list);
  }
  const iso = (t: number) => new Date(t).toISOString();
  const plan: PrunePlan = { remote: store.uri, kept: [], actions: [] };
  for (const [cacheKey, objs] of [...byKey].sort(([a], [b]) => a.localeCompare(b))) {
    const manifest = objs.find((x) => x.rest === "manifest.json");
    const hit = objs.find((x) => x.rest === "last-hit");
    const bytes = objs.reduce((n, x) => n + x.size, 0);
    if (manifest) {
      const last = Math.max(manifest.lastModified, hit?.lastModified ?? 0);
      if (o.now - last > o.retentionMs) {
        plan.actions.push({
          kind: "expired",
          cacheKey,
          objects: [manifest.key, ...objs.filter((x) => x !== manifest).map((x) => x.key)],
          bytes,
          lastActivity: iso(last),
        });
        continue;
      }
      plan.kept.push({ cacheKey, lastActivity: iso(last), bytes });
      // Packs other than the manifest's: losers of a race, or left by a publisher that died.
      const named = await store.manifest(cacheKey).then(
        (m) => m?.pack.name,
        () => undefined,
      );
      if (named === undefined) continue; // unreadable: never guess which pack is in use
      for (const x of objs) {
        if (x.rest.startsWith("packs/") && x.rest !== named && o.now - x.lastModified > o.uploadGraceMs) {
          plan.actions.push(orphan(cacheKey, x));
        }
      }
      continue;
    }
    // No manifest: packs of publishes that never finished, and a stale hit marker.
    for (const x of objs) {
      if (o.now - x.lastModified <= o.uploadGraceMs) continue;
      if (x.rest.startsWith("packs/") || (x.rest === "last-hit" && o.now - x.lastModified > o.retentionMs))
        plan.actions.push(orphan(cacheKey, x));
    }
  }
  for (const u of await store.unfinishedUploads()) {
    if (o.now - u.initiated <= o.uploadGraceMs) continue;
    plan.actions.push({
      kind: "unfinished-upload",
      cacheKey: cacheKeyOf(store, u.key),
      objects: [u.key],
      bytes: 0,
      lastActivity: iso(u.initiated),
      uploadId: u.uploadId,
    });
  }
  return plan;
}

/** Carries out a plan, action by action; returns the actions done. */
export async function applyPrune(store: RemoteStore, plan: PrunePlan): Promise<PruneAction[]> {
  const done: PruneAction[] = [];
  for (const a of plan.actions) {
    if (a.kind === "unfinished-upload" && a.uploadId)
      await store.abortUpload(a.objects[0] as string, a.uploadId);
    else {
      // The manifest goes alone and first: a reader then sees a miss, never a manifest without its pack.
      const [first, ...rest] = a.objects;
      if (first) await store.delete([first]);
      await store.delete(rest);
    }
    done.push(a);
  }
  return done;
}

function orphan(cacheKey: string, x: RemoteObject): PruneAction {
  return {
    kind: "orphan-pack",
    cacheKey,
    objects: [x.key],
    bytes: x.size,
    lastActivity: new Date(x.lastModified).toISOString(),
  };
}

function cacheKeyOf(store: RemoteStore, objectKey: string): string {
  const within = objectKey.startsWith(store.prefix) ? objectKey.slice(store.prefix.length) : objectKey;
  return within.split("/")[0] ?? "";
}
