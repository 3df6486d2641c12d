import { statfs } from "node:fs/promises";
import { ioError } from "./paths.js";

/** Bytes an unprivileged writer can still use on the filesystem holding `path`. */
export async function freeBytes(path: string): Promise<number> {
  const s = await statfs(path).catch((e) => {
    throw ioError(e, `statfs ${path}`);
  });
  return Number(s.bavail) * Number(s.bsize);
}
