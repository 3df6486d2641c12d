/** Opening the daemon's listeners: address problems become configuration errors naming the option. */
import { chmod, mkdir, rm } from "node:fs/promises";
import { dirname } from "node:path";
import { ColdstartError } from "../errors.js";

/** A listen() whose address problems are configuration errors naming the option. */
export async function listen(start: () => Promise<string>, field: string, value: string): Promise<string> {
  try {
    return await start();
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "EADDRINUSE" || code === "EADDRNOTAVAIL" || code === "EACCES") {
      throw new ColdstartError("CS_CONFIG_INVALID", `${field} ${value} cannot be used: ${code}`, {
        cause: e,
        details: { field, value },
      });
    }
    throw e;
  }
}

/** The handshake socket: its folder made, a file left by a killed predecessor replaced, group rw. */
export async function listenSocket(start: (path: string) => Promise<string>, path: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o750 });
  await rm(path, { force: true });
  await listen(() => start(path), "daemon.socketPath", path);
  await chmod(path, 0o660);
}

/** "[::1]:8476" -> ["::1", "8476"] */
export function splitHostPort(hp: string): [string, string] {
  const i = hp.lastIndexOf(":");
  return [hp.slice(0, i).replace(/^\[|\]$/g, ""), hp.slice(i + 1)];
}

export function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\./.test(host);
}
