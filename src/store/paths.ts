import { lstat, mkdir } from "node:fs/promises";
import { join } from "node:path";
import { ColdstartError } from "../errors.js";

/** Where coldstart keeps its own state inside a destination: temp files, journals, the manifest. */
export const STATE_DIR = ".coldstart";

/**
 * Validates the path a key would take under the destination (the key relative to the source prefix)
 * and returns its segments. Refuses anything that could escape the destination or alias another
 * file: absolute paths, `.`/`..`/empty segments, backslashes, NUL and other control characters, and
 * the state directory. Pure: no filesystem access.
 */
export function safeRelativePath(relative: string, key: string): string[] {
  const refuse = (why: string): never => {
    throw new ColdstartError("CS_KEY_UNSAFE", `refusing key ${JSON.stringify(key)}: ${why}`, {
      details: { key, value: relative },
    });
  };
  if (relative.length === 0) refuse("it names the prefix itself, not a file");
  if (relative.length > 4096) refuse("it is longer than 4096 characters");
  if (relative.includes("\\")) refuse("it contains a backslash");
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are exactly what we refuse
  if (/[\u0000-\u001f\u007f]/.test(relative)) refuse("it contains a NUL or control character");
  if (relative.startsWith("/")) refuse("it is an absolute path");
  const segments = relative.split("/");
  for (const s of segments) {
    if (s === "" || s === "." || s === "..") refuse(`it has a ${s === "" ? "empty" : `"${s}"`} path segment`);
    if (Buffer.byteLength(s) > 255) refuse("a path segment is longer than 255 bytes");
  }
  if (segments[0] === STATE_DIR) refuse(`${STATE_DIR}/ is reserved for coldstart's own state`);
  return segments;
}

/**
 * Creates the parent directories of `segments` under `root`, refusing if any existing component is
 * a symlink or not a directory (a planted link could redirect the write outside the root), and
 * returns the absolute target path. The final component may exist only as a regular file.
 */
export async function prepareTarget(root: string, segments: string[], key: string): Promise<string> {
  let dir = root;
  for (const s of segments.slice(0, -1)) {
    dir = join(dir, s);
    const st = await lstat(dir).catch((e: NodeJS.ErrnoException) => {
      if (e.code === "ENOENT") return undefined;
      throw ioError(e, `inspecting ${dir}`, key);
    });
    if (st === undefined) {
      await mkdir(dir).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== "EEXIST") throw ioError(e, `creating ${dir}`, key);
      });
      // Re-check: a racing writer could have planted a link between lstat and mkdir.
      const again = await lstat(dir);
      if (!again.isDirectory()) throw unsafe(key, `${dir} is not a directory`);
    } else if (!st.isDirectory()) {
      throw unsafe(key, `${dir} is ${st.isSymbolicLink() ? "a symlink" : "not a directory"}`);
    }
  }
  const target = join(root, ...segments);
  const st = await lstat(target).catch(() => undefined);
  if (st && !st.isFile())
    throw unsafe(key, `${target} exists and is ${st.isSymbolicLink() ? "a symlink" : "not a file"}`);
  return target;
}

function unsafe(key: string, why: string): ColdstartError {
  return new ColdstartError("CS_KEY_UNSAFE", `refusing key ${JSON.stringify(key)}: ${why}`, {
    details: { key },
  });
}

export function ioError(err: NodeJS.ErrnoException, doing: string, key?: string): ColdstartError {
  const code = err.code === "ENOSPC" || err.code === "EDQUOT" ? "CS_DISK_FULL" : "CS_IO_ERROR";
  return new ColdstartError(code, `${doing}: ${err.code ?? ""} ${err.message}`.trim(), {
    cause: err,
    ...(key ? { details: { key } } : {}),
  });
}
