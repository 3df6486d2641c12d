/**
 * `mirror.manageHostsToml`: while the daemon runs, each mirrored registry's hosts.toml names this
 * node's mirror first; when it stops, the node's own file is back. An existing file is kept as
 * `hosts.toml.coldstart-backup`, and its hosts follow the mirror in the managed file, so what the
 * node had configured still applies after a miss. The token containerd must send is in the file:
 * it is written 0600.
 */
import { mkdir, readFile, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { parse, stringify } from "smol-toml";
import { writeFileAtomic } from "../store/atomic-file.js";

const MARK = "# managed by coldstart";
const BACKUP = "hosts.toml.coldstart-backup";

export interface ManagedHosts {
  /** Puts every file back as it was (the backup, or no file). */
  restore(): Promise<void>;
  files: string[];
}

/**
 * Writes `<certsDir>/<registry>/hosts.toml` for each registry (`_default` for all) with `mirrorUrl`
 * first. Throws on a file system error; what was written before it is restored.
 */
export async function manageHostsToml(o: {
  certsDir: string;
  registries: string[];
  mirrorUrl: string;
  token: string | undefined;
  /** mirror.resolveTags: containerd may ask the mirror what a tag points at. */
  resolve?: boolean | undefined;
}): Promise<ManagedHosts> {
  const done: { dir: string; hadBackup: boolean }[] = [];
  const restore = async () => {
    for (const { dir, hadBackup } of done.splice(0).reverse()) {
      if (hadBackup) await rename(join(dir, BACKUP), join(dir, "hosts.toml")).catch(() => {});
      else await rm(join(dir, "hosts.toml"), { force: true });
    }
  };
  try {
    for (const registry of o.registries.length > 0 ? o.registries : ["_default"]) {
      const dir = join(o.certsDir, registry);
      const file = join(dir, "hosts.toml");
      await mkdir(dir, { recursive: true });
      const current = await readFile(file, "utf8").catch(() => undefined);
      let original = current;
      if (current?.startsWith(MARK)) {
        // Ours, left by a daemon that did not stop cleanly: the original is the backup, if any.
        original = await readFile(join(dir, BACKUP), "utf8").catch(() => undefined);
      } else if (current !== undefined) {
        await rename(file, join(dir, BACKUP));
      }
      const hadBackup = original !== undefined;
      done.push({ dir, hadBackup });
      const theirs = original === undefined ? {} : (parse(original) as Record<string, unknown>);
      const mirror: Record<string, unknown> = { capabilities: o.resolve ? ["pull", "resolve"] : ["pull"] };
      if (o.token) mirror.header = { Authorization: [`Bearer ${o.token}`] };
      const hosts = {
        [o.mirrorUrl]: mirror,
        ...((theirs.host as Record<string, unknown> | undefined) ?? {}),
      };
      const server = theirs.server ?? (registry === "_default" ? undefined : `https://${registry}`);
      const doc = { ...theirs, ...(server ? { server } : {}), host: hosts };
      const header = `${MARK} while its daemon runs (docs/peers.md)${hadBackup ? `; the node's own file is ${BACKUP}` : ""}\n`;
      await writeFileAtomic(file, `${header}${stringify(doc)}\n`, 0o600);
    }
  } catch (err) {
    await restore();
    throw err;
  }
  return { restore, files: done.map((d) => join(d.dir, "hosts.toml")) };
}
