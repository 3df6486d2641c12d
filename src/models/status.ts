import type { StageProgress } from "../staging/job-types.js";
import type { SpaceWait } from "./eviction.js";
import { isPinned, type ModelRecord, type ModelState } from "./model-registry.js";

/** A model as the API shows it. */
export interface ModelStatus {
  id: string;
  source: string;
  state: ModelState;
  path: string;
  /** Pinned by the API or by a ModelCache resource (pinnedBy names the resources). */
  pinned: boolean;
  pinnedBy: string[];
  bytesTotal: number;
  bytesDone: number;
  filesTotal: number;
  filesDone: number;
  bytesPerSecond: number;
  etaSeconds: number | null;
  startedAt: string | null;
  readyAt: string | null;
  lastUsedAt: string | null;
  /** CSI volumes that have the model mounted into pods now (it is never evicted while any do). */
  mounts: number;
  error?: { code: string; message: string };
  /**
   * Present while the model's staging waits for room that pinned models or models in use hold now
   * (state stays `staging`): how many bytes it needs and why it cannot have them yet.
   */
  waiting?: SpaceWait;
}

/** What a model's status is derived from besides its record. */
export interface StatusFacts {
  /** The progress of the job staging the model now, if one is. */
  progress?: StageProgress | undefined;
  /** The model's directory (ModelManager.modelPath). */
  path: string;
  /** Why its job waits for room, when it does. */
  waiting?: SpaceWait | undefined;
  /** CSI volumes that have it mounted. */
  mounts?: number | undefined;
}

/** The stored state, except that a running job's verifying phase (never persisted) shows as such. */
export function liveState(r: ModelRecord, progress: StageProgress | undefined): ModelState {
  return progress?.phase === "verifying" ? "verifying" : r.state;
}

/** A record as the API shows it: a running job's live progress wins over what was stored. */
export function modelStatus(r: ModelRecord, facts: StatusFacts): ModelStatus {
  const p = facts.progress;
  const seconds = p ? Math.max((Date.now() - p.startedAt) / 1000, 0.001) : 0;
  const rate = p ? Math.round((p.bytesDone - p.resumedBytes) / seconds) : 0;
  const bytesTotal = p && p.phase !== "listing" ? p.bytesTotal : r.bytesTotal;
  const bytesDone = p ? p.bytesDone : r.state === "ready" ? r.bytesTotal : 0;
  return {
    id: r.id,
    source: r.source,
    state: liveState(r, p),
    path: facts.path,
    pinned: isPinned(r),
    pinnedBy: [...(r.pinnedBy ?? [])],
    bytesTotal,
    bytesDone,
    filesTotal: p && p.phase !== "listing" ? p.filesTotal : r.filesTotal,
    filesDone: p ? p.filesDone : r.state === "ready" ? r.filesTotal : 0,
    bytesPerSecond: rate,
    etaSeconds: p && rate > 0 ? Math.ceil((bytesTotal - bytesDone) / rate) : r.state === "ready" ? 0 : null,
    startedAt: r.startedAt ?? null,
    readyAt: r.readyAt ?? null,
    lastUsedAt: r.lastUsedAt ?? null,
    mounts: facts.mounts ?? 0,
    ...(r.error ? { error: r.error } : {}),
    ...(facts.waiting ? { waiting: facts.waiting } : {}),
  };
}

/** Models by live state (metrics), every state present. */
export function countByState(
  records: Iterable<ModelRecord>,
  progressOf: (id: string) => StageProgress | undefined,
): Record<ModelState, number> {
  const out: Record<ModelState, number> = {
    pending: 0,
    staging: 0,
    verifying: 0,
    ready: 0,
    failed: 0,
    evicting: 0,
  };
  for (const r of records) out[liveState(r, progressOf(r.id))]++;
  return out;
}
