/**
 * Memory the page cache may take for a model about to be loaded: the host's MemAvailable, and, in a
 * container, what its memory cgroup still allows. Pages a process reads in are charged to that
 * process's cgroup, so the daemon's own limit bounds what it can keep warm for a pod: past it, the
 * kernel reclaims the daemon's oldest pages first (docs/deploy.md, "Page-cache warm").
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";

export interface MemoryRoom {
  /** MemAvailable of <hostRoot>/proc/meminfo, bytes; null when unreadable. */
  hostAvailable: number | null;
  /** memory.max − memory.current of this process's cgroup (v2), bytes; null without a limit. */
  cgroupRoom: number | null;
}

export async function memoryRoom(hostRoot: string, cgroupDir = "/sys/fs/cgroup"): Promise<MemoryRoom> {
  const meminfo = await readFile(join(hostRoot, "proc/meminfo"), "utf8").catch(() => "");
  const kb = /^MemAvailable:\s+(\d+)\s+kB$/m.exec(meminfo)?.[1];
  const max = (await readFile(join(cgroupDir, "memory.max"), "utf8").catch(() => "")).trim();
  const current = (await readFile(join(cgroupDir, "memory.current"), "utf8").catch(() => "")).trim();
  const cgroupRoom =
    /^\d+$/.test(max) && /^\d+$/.test(current) ? Math.max(Number(max) - Number(current), 0) : null;
  return { hostAvailable: kb === undefined ? null : Number(kb) * 1024, cgroupRoom };
}

/** What the daemon keeps of its own cgroup's room for itself (its heap, the workers' buffers). */
export const CGROUP_HEADROOM_BYTES = 256 * 1024 * 1024;

/**
 * What a warm may read: the host's MemAvailable less `reserveBytes` (memory the node's pods need),
 * and no more than the cgroup's room less the daemon's own headroom (beyond it the kernel would
 * reclaim the first pages read to make room for the last). Never below 0; null when neither is known.
 */
export function warmBudget(room: MemoryRoom, reserveBytes: number): number | null {
  const bounds: number[] = [];
  if (room.hostAvailable !== null) bounds.push(room.hostAvailable - reserveBytes);
  if (room.cgroupRoom !== null) bounds.push(room.cgroupRoom - CGROUP_HEADROOM_BYTES);
  if (bounds.length === 0) return null;
  return Math.max(Math.min(...bounds), 0);
}
