/**
 * The one module that loads the native addon (native/, built to build/Release/coldstart_native.node).
 *
 * Nothing here loads it into the daemon: each probe runs in a short-lived child process, because
 * cuFileDriverOpen creates a CUDA context on every GPU (memory the inference engine next door wants),
 * and because a wedged driver can hang any call into it. A hung child is SIGKILLed at the deadline
 * and reported as such; the daemon never blocks on the driver.
 */
import { spawn } from "node:child_process";
import { access } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { z } from "zod";

/** The result shapes this build of coldstart understands; native/addon.cc carries the same number. */
export const ADDON_ABI_VERSION = 1;

/** Where `npm install` (cmake-js) puts the addon, relative to the package root. */
export const DEFAULT_ADDON_PATH = fileURLToPath(
  new URL("../../build/Release/coldstart_native.node", import.meta.url),
);

const library = z.object({ loaded: z.boolean(), path: z.string().nullable(), reason: z.string().nullable() });
const cufileError = z.object({ err: z.number().int(), cuErr: z.number().int() });

/** What `probeGpus` returns (NVML). */
export const gpuProbeSchema = z.object({
  library,
  missingSymbols: z.array(z.string()),
  errors: z.array(z.object({ call: z.string(), code: z.number().int(), message: z.string() })),
  driverVersion: z.string().nullable(),
  cudaDriverVersion: z.number().int().nullable(),
  gpus: z.array(
    z.object({
      index: z.number().int().nonnegative(),
      name: z.string().nullable(),
      uuid: z.string().nullable(),
      computeCapability: z.object({ major: z.number().int(), minor: z.number().int() }).nullable(),
    }),
  ),
});
export type GpuProbe = z.infer<typeof gpuProbeSchema>;

/** What `probeCufile` returns (cuFileDriverOpen, cuFileDriverGetProperties, cuFileDriverClose). */
export const cufileProbeSchema = z.object({
  library,
  missingSymbols: z.array(z.string()),
  open: cufileError.nullable(),
  properties: z
    .object({
      result: cufileError,
      nvfsMajor: z.number().int().optional(),
      nvfsMinor: z.number().int().optional(),
      pollThreshSize: z.number().optional(),
      maxDirectIoSize: z.number().optional(),
      dstatusflags: z.number().int().optional(),
      dcontrolflags: z.number().int().optional(),
    })
    .nullable(),
  close: cufileError.nullable(),
});
export type CufileProbe = z.infer<typeof cufileProbeSchema>;

export type ProbeKind = "gpus" | "cufile";

/** How a probe ended. Never a throw: every way it can go wrong is a fact to report. */
export type ProbeOutcome<T> =
  | { status: "ok"; addonPath: string; result: T }
  /** The addon is missing, failed to load or is a stale build: `reason` says which and why. */
  | { status: "native-unavailable"; reason: string }
  /** The child did not answer within `timeoutMs` and was killed (a hung driver call). */
  | { status: "timeout"; timeoutMs: number }
  /** The child crashed or printed something that is not a probe result. */
  | { status: "failed"; reason: string };

export interface ProbeOptions {
  /** The addon file; default {@link DEFAULT_ADDON_PATH}. */
  addonPath?: string | undefined;
  /** The library to dlopen instead of the soname (libnvidia-ml.so.1 / libcufile.so.0). */
  libraryPath?: string | undefined;
  /** Kill the child after this long. */
  timeoutMs: number;
  /** The child's environment (default: inherited). cuFile reads CUFILE_ENV_PATH_JSON from it. */
  env?: NodeJS.ProcessEnv | undefined;
}

const MAX_OUTPUT_BYTES = 1024 * 1024;

// Runs in the child, as CommonJS (`node -e`). Plain JavaScript, kept tiny: load, check the ABI,
// call one probe, print one JSON line.
const CHILD = `
const [kind, addonPath, libraryPath, abi] = process.argv.slice(1);
const out = (o) => process.stdout.write(JSON.stringify(o) + "\\n");
let addon;
try {
  addon = require(addonPath);
} catch (e) {
  out({ unavailable: "cannot load " + addonPath + ": " + String((e && e.message) || e).split("\\n")[0] });
  process.exit(0);
}
if (addon.abiVersion !== Number(abi)) {
  out({ unavailable: addonPath + " is a stale build (surface " + addon.abiVersion + ", expected " + abi + "): rebuild with npm run build:native" });
  process.exit(0);
}
out({ result: kind === "gpus" ? addon.probeGpus(libraryPath || undefined) : addon.probeCufile(libraryPath || undefined) });
`;

/** Runs one native probe in a child process; see the module comment for why. */
export async function runProbe(kind: "gpus", options: ProbeOptions): Promise<ProbeOutcome<GpuProbe>>;
export async function runProbe(kind: "cufile", options: ProbeOptions): Promise<ProbeOutcome<CufileProbe>>;
export async function runProbe(
  kind: ProbeKind,
  options: ProbeOptions,
): Promise<ProbeOutcome<GpuProbe | CufileProbe>>;
export async function runProbe(
  kind: ProbeKind,
  options: ProbeOptions,
): Promise<ProbeOutcome<GpuProbe | CufileProbe>> {
  const addonPath = options.addonPath ?? DEFAULT_ADDON_PATH;
  try {
    await access(addonPath);
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code ?? String(err);
    return {
      status: "native-unavailable",
      reason: `${addonPath}: ${why} (the addon was not built; npm run build:native builds it)`,
    };
  }
  const args = ["-e", CHILD, kind, addonPath, options.libraryPath ?? "", String(ADDON_ABI_VERSION)];
  const run = await runChild(args, options.timeoutMs, options.env);
  if (run.timedOut) return { status: "timeout", timeoutMs: options.timeoutMs };
  const line = run.stdout.split("\n")[0] ?? "";
  let parsed: unknown;
  try {
    parsed = JSON.parse(line);
  } catch {
    const how = run.signal ? `killed by ${run.signal}` : `exited with ${run.code}`;
    return {
      status: "failed",
      reason: `probe ${how} without a result: ${lastLine(run.stderr) || "no output"}`,
    };
  }
  const envelope = parsed as { unavailable?: unknown; result?: unknown };
  if (typeof envelope.unavailable === "string") {
    return { status: "native-unavailable", reason: envelope.unavailable };
  }
  const schema = kind === "gpus" ? gpuProbeSchema : cufileProbeSchema;
  const checked = schema.safeParse(envelope.result);
  if (!checked.success) {
    return { status: "failed", reason: `probe result has an unexpected shape: ${checked.error.message}` };
  }
  return { status: "ok", addonPath, result: checked.data };
}

interface ChildRun {
  stdout: string;
  stderr: string;
  code: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
}

function runChild(args: string[], timeoutMs: number, env: NodeJS.ProcessEnv | undefined): Promise<ChildRun> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, args, {
      stdio: ["ignore", "pipe", "pipe"],
      ...(env ? { env } : {}),
    });
    let stdout = "";
    let stderr = "";
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, timeoutMs);
    child.stdout.setEncoding("utf8").on("data", (d: string) => {
      if (stdout.length < MAX_OUTPUT_BYTES) stdout += d;
    });
    child.stderr.setEncoding("utf8").on("data", (d: string) => {
      if (stderr.length < MAX_OUTPUT_BYTES) stderr += d;
    });
    child.on("error", (err) => {
      clearTimeout(timer);
      resolve({ stdout, stderr: `${stderr}${err.message}`, code: null, signal: null, timedOut });
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      // A complete result line counts even if the library then hung in its exit handlers.
      const complete = stdout.includes("\n");
      resolve({ stdout, stderr, code, signal, timedOut: timedOut && !complete });
    });
  });
}

function lastLine(text: string): string {
  const lines = text.trim().split("\n");
  return (lines[lines.length - 1] ?? "").slice(0, 500);
}
