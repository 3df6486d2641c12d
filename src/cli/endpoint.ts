import { readFile } from "node:fs/promises";
import { parseTokens } from "../api/auth.js";
import type { DaemonEndpoint } from "../api/client.js";
import type { Config } from "../config/schema.js";
import { ColdstartError } from "../errors.js";

const DEFAULT_SOCKET = "/run/coldstart/coldstart.sock";

/**
 * How a node-local command reaches the daemon: its unix socket (the default), or the TCP API with
 * the bearer token of --token-file.
 */
export async function daemonEndpoint(
  w: Pick<Config["wait"], "url" | "socket" | "tokenFile">,
): Promise<DaemonEndpoint> {
  if (!w.url) return { socketPath: w.socket ?? DEFAULT_SOCKET };
  if (!w.tokenFile) {
    throw new ColdstartError(
      "CS_CONFIG_INVALID",
      "--url needs --token-file (the TCP API requires a bearer token)",
      {
        details: { field: "wait.tokenFile" },
      },
    );
  }
  return { url: w.url, token: parseTokens(await readFile(w.tokenFile, "utf8"))[0] };
}
