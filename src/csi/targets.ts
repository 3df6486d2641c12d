/**
 * Target paths as the kubelet sends them, checked before anything is made, mounted or removed there:
 * the driver acts only where the kubelet could have asked it to.
 */
import { lstat, mkdir, realpath, rmdir } from "node:fs/promises";
import { dirname, isAbsolute, join, normalize, relative } from "node:path";
import { invalid } from "./attributes.js";

export class TargetPaths {
  readonly #pods: string;
  readonly #root: string;
  /** The pods directory, symlinks resolved (a host may link /var/lib/kubelet elsewhere). */
  #realPods: Promise<string> | undefined;

  constructor(kubeletDir: string, stagingRoot: string) {
    this.#pods = join(kubeletDir, "pods");
    this.#root = stagingRoot;
  }

  /**
   * A target path the kubelet could have sent: absolute, normalised, below <kubeletDir>/pods/, not
   * in the staging root, and reached through real directories only (a symlink on the way would send
   * the mount elsewhere). For an unpublish, a parent that is gone means there is nothing to do.
   */
  async check(path: string, publishing: boolean): Promise<string> {
    const pods = this.#pods;
    const root = this.#root;
    if (!isAbsolute(path) || normalize(path) !== path || path.endsWith("/") || !path.startsWith(`${pods}/`)) {
      throw invalid("target_path", path, `must be a normalised absolute path below ${pods}/`);
    }
    if (path === root || path.startsWith(`${root}/`) || root.startsWith(`${path}/`)) {
      throw invalid("target_path", path, `must not be inside (or around) the staging root ${root}`);
    }
    this.#realPods ??= realpath(pods).catch(() => pods);
    const expected = join(await this.#realPods, relative(pods, dirname(path)));
    const real = await realpath(dirname(path)).catch(() => undefined);
    if (real === expected || (real === undefined && !publishing)) return path;
    throw invalid(
      "target_path",
      path,
      real === undefined
        ? "must have an existing parent directory (the kubelet makes it)"
        : `must be reached through real directories, but its parent resolves to ${real}`,
    );
  }
}

/** Makes the target directory (its parent is the kubelet's), and refuses anything but a directory there. */
export async function makeTarget(path: string): Promise<void> {
  await mkdir(path).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== "EEXIST") throw e;
  });
  const st = await lstat(path);
  if (!st.isDirectory()) {
    throw invalid("target_path", path, "must be a directory (not a symlink or a file) if it exists");
  }
}

/** rmdir, not rm -r: a directory that still holds anything (a mount that did not go) stays. */
export async function removeDir(path: string): Promise<void> {
  try {
    await rmdir(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
}
