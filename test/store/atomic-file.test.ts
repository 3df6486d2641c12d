import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { syncDir } from "../../src/store/atomic-file.js";

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "cs-syncdir-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("syncDir (group commit)", () => {
  it("answers every one of many concurrent calls on one directory", async () => {
    const calls = Array.from({ length: 64 }, () => syncDir(dir));
    await expect(Promise.all(calls)).resolves.toHaveLength(64);
    // And later calls start afresh.
    await expect(syncDir(dir)).resolves.toBeUndefined();
  });

  it("a failed sync fails its callers only: the directory synced once it exists again", async () => {
    const gone = join(dir, "gone");
    const failing = [syncDir(gone), syncDir(gone), syncDir(gone)];
    const outcomes = await Promise.allSettled(failing);
    expect(outcomes.map((o) => o.status)).toEqual(["rejected", "rejected", "rejected"]);
    expect((outcomes[0] as PromiseRejectedResult).reason.code).toBe("ENOENT");
    await mkdir(gone);
    await expect(syncDir(gone)).resolves.toBeUndefined();
  });
});
