// Starts/stops a throw-away Ceph RADOS Gateway (real S3 server) for tests.
// Wraps test/support/rgw/start-rgw.sh and stop-rgw.sh; node built-ins only.
import { mkdtempSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { fileURLToPath } from "node:url";
import { onPath, type RunResult, runCommand, tail } from "./commands.js";

export { onPath };

export interface RgwServer {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
  stop(): Promise<void>;
}

const HERE = fileURLToPath(new URL(".", import.meta.url));
const START_SCRIPT = join(HERE, "rgw", "start-rgw.sh");
const STOP_SCRIPT = join(HERE, "rgw", "stop-rgw.sh");

export const RGW_NOT_INSTALLED_MESSAGE =
  "run `bash scripts/install-test-deps.sh` (as root) to install Ceph RGW";

const REQUIRED_BINARIES = ["radosgw", "radosgw-admin", "ceph-mon", "ceph-osd", "ceph", "monmaptool"];

/** True if the Ceph binaries needed by start-rgw.sh are installed. */
export function rgwAvailable(): boolean {
  return REQUIRED_BINARIES.every(onPath);
}

/** The start and stop scripts: they have their own deadline; this one is a backstop. */
function run(cmd: string, args: string[], timeoutMs: number, extraEnv: Record<string, string> = {}) {
  return runCommand(cmd, args, timeoutMs + 15_000, {
    RGW_START_TIMEOUT: String(Math.max(1, Math.ceil(timeoutMs / 1000))),
    // the cluster is torn down by a watchdog if this process dies without stop()
    RGW_WATCH_PID: String(process.pid),
    ...extraEnv,
  });
}

/**
 * Brings up mon + osd + radosgw on loopback with all state in `dir` (default: a
 * fresh temp dir). Needs root and the Debian ceph packages.
 */
export async function startRgw(opts: { dir?: string; timeoutMs?: number } = {}): Promise<RgwServer> {
  if (!rgwAvailable()) {
    throw new Error(RGW_NOT_INSTALLED_MESSAGE);
  }
  const timeoutMs = opts.timeoutMs ?? 120_000;
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), "coldstart-rgw-"));

  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopped ??= run("bash", [STOP_SCRIPT, dir], 30_000).then((r) => {
      if (r.code !== 0) {
        throw new Error(`stop-rgw.sh ${dir} failed (exit ${r.code ?? r.signal}):\n${tail(r.stderr)}`);
      }
    });
    return stopped;
  };

  let res: RunResult;
  try {
    res = await run("bash", [START_SCRIPT, dir], timeoutMs);
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }

  const lastLine = res.stdout.trimEnd().split("\n").pop() ?? "";
  let info: Partial<Omit<RgwServer, "stop">> | undefined;
  if (res.code === 0) {
    try {
      info = JSON.parse(lastLine) as Partial<Omit<RgwServer, "stop">>;
    } catch {
      info = undefined;
    }
  }
  if (
    !info ||
    typeof info.endpoint !== "string" ||
    typeof info.accessKeyId !== "string" ||
    typeof info.secretAccessKey !== "string" ||
    typeof info.region !== "string"
  ) {
    // leave the directory (with its logs) in place only if the caller chose it
    const keep = opts.dir !== undefined;
    const why = res.timedOut
      ? `timed out after ${timeoutMs} ms`
      : res.code === 3
        ? RGW_NOT_INSTALLED_MESSAGE
        : `exit ${res.code ?? res.signal}`;
    if (keep) {
      // kill whatever was started but keep the logs for inspection
      await run("bash", [STOP_SCRIPT, dir], 30_000, { RGW_KEEP_DIR: "1" }).catch(() => undefined);
    } else {
      await stop().catch(() => undefined);
    }
    throw new Error(
      `start-rgw.sh failed (${why})${keep ? `; state and logs in ${dir}` : ""}:\n${tail(res.stderr)}` +
        (res.stdout.trim() ? `\nstdout: ${tail(res.stdout, 5)}` : ""),
    );
  }

  return {
    endpoint: info.endpoint,
    accessKeyId: info.accessKeyId,
    secretAccessKey: info.secretAccessKey,
    region: info.region,
    stop,
  };
}

/**
 * Runs `radosgw-admin ARGS` against the cluster whose radosgw serves `endpoint` and resolves with its
 * stdout; rejects on a non-zero exit. Test files get only the endpoint from the global setup, so the
 * cluster's ceph.conf is found through /proc: the live radosgw started with `--conf FILE` whose
 * frontend listens on the endpoint's host:port.
 */
export async function radosgwAdmin(endpoint: string, args: string[]): Promise<string> {
  const { hostname, port } = new URL(endpoint);
  const listens = new RegExp(`endpoint=${hostname.replaceAll(".", "\\.")}:${port}(\\s|$)`, "m");
  let conf: string | undefined;
  for (const pid of (await readdir("/proc")).filter((d) => /^\d+$/.test(d))) {
    // A process may be gone by the time it is read.
    const argv = (await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "")).split("\0");
    const at = argv.indexOf("--conf");
    const file = argv[at + 1];
    if (basename(argv[0] ?? "") !== "radosgw" || at < 0 || !file) continue;
    if (listens.test(await readFile(file, "utf8").catch(() => ""))) {
      conf = file;
      break;
    }
  }
  if (!conf) throw new Error(`no running radosgw serves ${endpoint}`);
  const res = await runCommand("radosgw-admin", ["--conf", conf, ...args], 60_000);
  if (res.code !== 0) {
    throw new Error(
      `radosgw-admin ${args.join(" ")} failed (exit ${res.code ?? res.signal}):\n${tail(res.stderr)}`,
    );
  }
  return res.stdout;
}
