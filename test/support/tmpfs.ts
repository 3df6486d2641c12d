import { execFileSync } from "node:child_process";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";

/** A small tmpfs under `parent`, so "disk full" is real (needs root, as CI has). */
export async function tmpfs(parent: string, sizeBytes: number): Promise<string> {
  const mnt = join(parent, `mnt-${Math.random().toString(36).slice(2)}`);
  await mkdir(mnt);
  execFileSync("mount", ["-t", "tmpfs", "-o", `size=${sizeBytes}`, "tmpfs", mnt]);
  return mnt;
}

export function umount(mnt: string): void {
  execFileSync("umount", [mnt]);
}
