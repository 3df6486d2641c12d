import { mkdtemp, readFile, rm, utimes, writeFile } from "node:fs/promises";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { acquireLock } from "../../src/store/lock.js";
import { waitFor } from "../support/wait.js";

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "cs-lock-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("destination lock", () => {
  it("two acquires started together in one process: exactly one wins (both did)", async () => {
    const path = join(dir, "lock");
    const results = await Promise.allSettled([acquireLock(path), acquireLock(path)]);
    expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
    expect(results.find((r) => r.status === "rejected")).toMatchObject({
      reason: { code: "CS_DEST_LOCKED" },
    });
    for (const r of results) if (r.status === "fulfilled") await r.value.release();
  });

  it("takes over a lock whose holder on this host is dead, at once", async () => {
    const path = join(dir, "lock");
    await writeFile(path, JSON.stringify({ pid: 2 ** 22 + 12345, host: hostname(), nonce: "dead" }));
    const lock = await acquireLock(path);
    expect(JSON.parse(await readFile(path, "utf8")).pid).toBe(process.pid);
    await lock.release();
  });

  it("refuses a live holder on another host, and takes over once its heartbeat is 30 s old", async () => {
    const path = join(dir, "lock");
    await writeFile(path, JSON.stringify({ pid: 1, host: "other-pod", nonce: "theirs" }));
    await expect(acquireLock(path)).rejects.toMatchObject({ code: "CS_DEST_LOCKED" });
    const old = new Date(Date.now() - 31_000);
    await utimes(path, old, old);
    const lock = await acquireLock(path);
    await lock.release();
  });

  it("release leaves a lock that is no longer ours alone", async () => {
    const path = join(dir, "lock");
    const lock = await acquireLock(path);
    await writeFile(path, JSON.stringify({ pid: 1, host: "other-pod", nonce: "theirs" }));
    await lock.release();
    expect(JSON.parse(await readFile(path, "utf8")).nonce).toBe("theirs");
  });

  it("a holder notices it lost the lock: verify() throws and the heartbeat calls onLost (it wrote on)", async () => {
    const path = join(dir, "lock");
    let lost = "";
    const lock = await acquireLock(path, { heartbeatMs: 20, onLost: (why) => (lost = why) });
    await lock.verify();
    // Frozen past the stale limit, then taken over by another pod.
    await writeFile(path, JSON.stringify({ pid: 7, host: "new-pod", nonce: "theirs" }));
    await expect(lock.verify()).rejects.toMatchObject({ code: "CS_DEST_LOCKED" });
    // The next heartbeat (every 20 ms) notices.
    await waitFor(() => lost !== "", { what: "onLost" });
    expect(lost).toMatch(/taken over by pid 7 on new-pod/);
    await lock.release();
    expect(JSON.parse(await readFile(path, "utf8")).nonce).toBe("theirs");
  });
});
