import { lstat, mkdir, realpath } from "node:fs/promises";
import { join, relative, sep } from "node:path";
import { ColdstartError } from "../errors.js";
import { mkdirBeneath } from "../store/beneath.js";
import { ioError, STATE_DIR } from "../store/paths.js";

/**
 * Makes a job's destination a real directory and its temp directory (`.coldstart/tmp`), and returns
 * both with the destination's real path. With `within` (the daemon's staging root), every level is
 * made below it without following a symlink, and a destination that resolves elsewhere is refused.
 */
export async function prepareDestination(
  dest: string,
  within: string | undefined,
): Promise<{ root: string; tmpDir: string }> {
  // A model directory is created one level at a time, never through a symlink planted on the way:
  // mkdir -p would follow one and stage the model (and serve it) outside the staging root.
  if (within) await mkdirBeneath(within, relative(within, dest).split(sep));
  await mkdir(dest, { recursive: true }).catch((e) => {
    throw new ColdstartError("CS_DEST_INVALID", `cannot create destination ${dest}: ${e.message}`, {
      cause: e,
      details: { field: "dest", value: dest },
    });
  });
  const st = await lstat(dest).catch((e) => {
    throw ioError(e, `inspecting destination ${dest}`);
  });
  if (!st.isDirectory()) {
    throw new ColdstartError(
      "CS_DEST_INVALID",
      `destination ${dest} is ${st.isSymbolicLink() ? "a symlink" : "not a directory"}`,
      { details: { field: "dest", value: dest } },
    );
  }
  const root = await realpath(dest);
  // A directory swapped for a link between the walk above and here would move the job's root.
  if (within && root !== join(await realpath(within), relative(within, dest))) {
    throw new ColdstartError(
      "CS_PATH_UNSAFE",
      `refusing ${dest}: it resolves to ${root}, outside ${within}`,
      {
        details: { value: dest },
      },
    );
  }
  const tmpDir = join(root, STATE_DIR, "tmp");
  await mkdir(tmpDir, { recursive: true }).catch((e) => {
    throw ioError(e, `creating ${tmpDir}`);
  });
  return { root, tmpDir };
}
