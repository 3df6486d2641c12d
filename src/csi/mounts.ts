/**
 * Bind mounts for published volumes, and the kernel's view of them (/proc/self/mountinfo). Mounting
 * is util-linux's `mount`/`umount` (in every image that has a shell, and what the kubelet's own
 * mounter runs): Node has no mount(2), and two well-known commands beat a native binding here.
 */
import { execFile } from "node:child_process";
import { readFile } from "node:fs/promises";
import { promisify } from "node:util";
import { ColdstartError } from "../errors.js";

const run = promisify(execFile);

/** One line of /proc/self/mountinfo (proc(5)). */
export interface MountEntry {
  mountPoint: string;
  /** The directory of the source filesystem mounted there (a bind mount's source, relative to its fs). */
  root: string;
  options: string[];
  fsType: string;
}

/** The mount table as this process sees it. */
export async function mountTable(path = "/proc/self/mountinfo"): Promise<MountEntry[]> {
  return parseMountInfo(await readFile(path, "utf8"));
}

export function parseMountInfo(text: string): MountEntry[] {
  const entries: MountEntry[] = [];
  for (const line of text.split("\n")) {
    const f = line.split(" ");
    const sep = f.indexOf("-", 6);
    if (f.length < 10 || sep < 0) continue;
    entries.push({
      root: unescapeOctal(f[3] as string),
      mountPoint: unescapeOctal(f[4] as string),
      options: (f[5] as string).split(","),
      fsType: f[sep + 1] as string,
    });
  }
  return entries;
}

/** mountinfo escapes space, tab, newline and backslash as three octal digits. */
function unescapeOctal(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8)));
}

/** The seam the node service mounts through; tests may record calls, the daemon uses the system's. */
export interface Mounter {
  /**
   * Bind-mounts `source` at `target` (an existing directory), read-only when asked. `recursive`
   * takes the mounts below `source` along (a volume directory with the model mounted inside).
   */
  bind(source: string, target: string, o: { readOnly: boolean; recursive?: boolean }): Promise<void>;
  /** Unmounts `target` and everything mounted below it; nothing mounted there is not an error. */
  unmount(target: string): Promise<void>;
  /** True when something is mounted exactly at `target`. */
  isMounted(target: string): Promise<boolean>;
  /** Every mount point now: one look at the mount table for a question about many paths. */
  mountPoints(): Promise<Set<string>>;
}

export class SystemMounter implements Mounter {
  readonly #timeoutMs: number;
  readonly #table: () => Promise<MountEntry[]>;

  constructor(o: { timeoutMs?: number; table?: () => Promise<MountEntry[]> } = {}) {
    this.#timeoutMs = o.timeoutMs ?? 30_000;
    this.#table = o.table ?? (() => mountTable());
  }

  async bind(source: string, target: string, o: { readOnly: boolean; recursive?: boolean }): Promise<void> {
    await this.#cmd("mount", [o.recursive ? "--rbind" : "--bind", source, target], target);
    if (!o.readOnly) return;
    // A bind mount takes its flags from a second, remount call (MS_RDONLY is ignored on the first).
    try {
      await this.#cmd("mount", ["-o", "remount,bind,ro", target], target);
    } catch (err) {
      // Never leave it mounted read-write: if that unmount fails too, say both.
      await this.unmount(target).catch((e: Error) => {
        (err as Error).message += `; and unmounting it again failed: ${e.message}`;
      });
      throw err;
    }
  }

  async unmount(target: string): Promise<void> {
    if (!(await this.isMounted(target))) return;
    await this.#cmd("umount", ["--recursive", target], target);
  }

  async isMounted(target: string): Promise<boolean> {
    return (await this.mountPoints()).has(target);
  }

  async mountPoints(): Promise<Set<string>> {
    return new Set((await this.#table()).map((e) => e.mountPoint));
  }

  async #cmd(cmd: string, args: string[], target: string): Promise<void> {
    try {
      await run(cmd, args, { timeout: this.#timeoutMs });
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      throw new ColdstartError(
        "CS_CSI_MOUNT_FAILED",
        `${cmd} ${args.join(" ")} failed: ${(e.stderr ?? "").trim() || e.message}`,
        { details: { field: "target_path", value: target }, cause: err },
      );
    }
  }
}
