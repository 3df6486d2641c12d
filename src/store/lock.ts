import { randomUUID } from "node:crypto";
import { link, readFile, rename, rm, stat, utimes, writeFile } from "node:fs/promises";
import { hostname } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import { ColdstartError } from "../errors.js";
import { ioError } from "./paths.js";

/** A holder refreshes the lock's mtime this often… */
const HEARTBEAT_MS = 5_000;
/** …so a lock untouched for this long has no live holder anywhere (another pod, another pid namespace). */
const STALE_MS = 30_000;

interface LockInfo {
  pid: number;
  host: string;
  nonce: string;
}

/** Locks held by this process: a second job on the same destination must not share its temp files. */
const heldHere = new Set<string>();

/**
 * An exclusive lock on a destination. The lock file is written whole under a temporary name and
 * link()ed into place, so it never exists half-written and exactly one contender creates it. A lock
 * is taken over when its holder is provably gone: the same host (pod) and a pid that no longer runs
 * (a crash or SIGKILL: resume is immediate), or no heartbeat for STALE_MS (a holder we cannot see,
 * e.g. a dead pod sharing the hostPath). Release removes the lock only if it is still ours.
 */
/** A held destination lock. */
export interface HeldLock {
  /** Throws CS_DEST_LOCKED unless the lock file is still ours (call before making anything visible). */
  verify(): Promise<void>;
  /** Stops the heartbeat and removes the lock if it is still ours. */
  release(): Promise<void>;
}

export interface LockOptions {
  /** How long to wait for a live holder's lock to go stale before failing (default 0). */
  waitMs?: number;
  signal?: AbortSignal;
  /** Called once if the heartbeat finds the lock gone or someone else's (taken over, deleted). */
  onLost?: (why: string) => void;
  /** Heartbeat period (default 5 s; the stale limit stays 30 s). */
  heartbeatMs?: number;
}

export async function acquireLock(path: string, options: LockOptions = {}): Promise<HeldLock> {
  if (heldHere.has(path)) {
    throw new ColdstartError("CS_DEST_LOCKED", `${path} is held by another job in this process`, {
      details: { value: path },
    });
  }
  // Claimed before the first await: a second acquire in this process fails above, never races.
  heldHere.add(path);
  try {
    return await acquire(path, options);
  } catch (err) {
    heldHere.delete(path);
    throw err;
  }
}

async function acquire(path: string, options: LockOptions): Promise<HeldLock> {
  const deadline = Date.now() + (options.waitMs ?? 0);
  const me: LockInfo = { pid: process.pid, host: hostname(), nonce: randomUUID() };
  const tmp = `${path}.${me.nonce}`;
  await writeFile(tmp, JSON.stringify(me)).catch((e) => {
    throw ioError(e, `creating lock ${path}`);
  });
  try {
    for (let tries = 0; ; tries++) {
      try {
        await link(tmp, path);
        break;
      } catch (e) {
        const err = e as NodeJS.ErrnoException;
        if (err.code !== "EEXIST") throw ioError(err, `creating lock ${path}`);
      }
      const holder = await readHolder(path);
      const stale = await isStale(path, holder);
      if (!stale && Date.now() < deadline) {
        // A replaced pod's lock goes stale when its heartbeat stops: wait for that, abortably.
        await sleep(1000, undefined, options.signal ? { signal: options.signal } : {});
        continue;
      }
      if (tries >= 50 || !stale) {
        throw new ColdstartError(
          "CS_DEST_LOCKED",
          holder
            ? `another coldstart process (pid ${holder.pid} on ${holder.host}) holds ${path}`
            : `${path} is held by another coldstart process`,
          { details: { value: holder?.pid } },
        );
      }
      // Move the stale lock aside, then check that what moved is the lock judged stale: a racing
      // contender may have taken it over and linked a fresh one in between. If so, put it back.
      const aside = `${path}.stale.${me.nonce}`;
      const moved = await rename(path, aside).then(
        () => true,
        () => false,
      );
      if (moved) {
        const was = await readHolder(aside);
        if (holder && was?.nonce !== holder.nonce) {
          await link(aside, path).catch(() => {});
          await rm(aside, { force: true });
          throw new ColdstartError("CS_DEST_LOCKED", `${path} was taken over by another process`, {
            details: { value: was?.pid },
          });
        }
        await rm(aside, { force: true });
      }
    }
  } finally {
    await rm(tmp, { force: true });
  }
  // The heartbeat also checks that the lock is still ours: a holder frozen past STALE_MS may have
  // been taken over, and must stop rather than go on writing beside the new holder.
  let lost = false;
  const heartbeat = setInterval(async () => {
    const holder = await readHolder(path);
    if (holder?.nonce !== me.nonce) {
      if (!lost) {
        lost = true;
        clearInterval(heartbeat);
        options.onLost?.(holder ? `taken over by pid ${holder.pid} on ${holder.host}` : "lock file removed");
      }
      return;
    }
    const now = new Date();
    await utimes(path, now, now).catch(() => {});
  }, options.heartbeatMs ?? HEARTBEAT_MS);
  heartbeat.unref();
  // Commits that verify at the same moment share one read of the lock file: a takeover needs the
  // lock stale for STALE_MS, so a read begun a moment earlier is as good as a fresh one.
  let reading: Promise<LockInfo | undefined> | undefined;
  return {
    async verify() {
      reading ??= readHolder(path).finally(() => {
        reading = undefined;
      });
      const holder = await reading;
      if (holder?.nonce !== me.nonce) {
        throw new ColdstartError(
          "CS_DEST_LOCKED",
          `lost the lock ${path}: ${holder ? `now held by pid ${holder.pid} on ${holder.host}` : "lock file removed"}`,
          { details: { value: holder?.pid } },
        );
      }
    },
    async release() {
      clearInterval(heartbeat);
      heldHere.delete(path);
      const holder = await readHolder(path);
      if (holder?.nonce === me.nonce) await rm(path, { force: true });
    },
  };
}

async function readHolder(path: string): Promise<LockInfo | undefined> {
  try {
    return JSON.parse(await readFile(path, "utf8")) as LockInfo;
  } catch {
    return undefined;
  }
}

async function isStale(path: string, holder: LockInfo | undefined): Promise<boolean> {
  // Same host: a dead pid is a crashed holder; our own pid is a previous incarnation of this process
  // (PID 1 of a restarted container), since locks this process holds are in heldHere.
  if (holder && holder.host === hostname() && (holder.pid === process.pid || !isAlive(holder.pid)))
    return true;
  const st = await stat(path).catch(() => undefined);
  return st === undefined || Date.now() - st.mtimeMs > STALE_MS;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}
