import { open, readFile, rm } from "node:fs/promises";
import { ColdstartError } from "../errors.js";
import { ioError } from "./paths.js";

/**
 * An exclusive lock on a destination: a file holding the owner's pid, created with O_EXCL. A lock
 * left by a process that no longer exists (SIGKILL, crash) is taken over, so resume just works.
 */
export async function acquireLock(path: string): Promise<() => Promise<void>> {
  for (let tries = 0; tries < 3; tries++) {
    try {
      const fh = await open(path, "wx");
      await fh.writeFile(String(process.pid));
      await fh.close();
      return async () => {
        await rm(path, { force: true });
      };
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      if (err.code !== "EEXIST") throw ioError(err, `creating lock ${path}`);
      const pid = Number.parseInt(await readFile(path, "utf8").catch(() => ""), 10);
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && isAlive(pid)) {
        throw new ColdstartError("CS_DEST_LOCKED", `another coldstart process (pid ${pid}) holds ${path}`, {
          details: { value: pid },
        });
      }
      await rm(path, { force: true });
    }
  }
  throw new ColdstartError("CS_DEST_LOCKED", `could not take ${path}: it keeps reappearing`);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}
