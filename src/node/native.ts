/**
 * The one module that loads the native addon (native/, built to build/Release/coldstart_native.node).
 *
 * Nothing here loads it into the daemon: each probe runs in a short-lived child process, because
 * cuFileDriverOpen creates a CUDA context on every GPU (memory the inference engine next door wants),
 * and because a wedged driver can hang any call into it. A hung child is SIGKILLed at the deadline
 * and reported as such; the daemon never blocks on the driver.
 */
import { access } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { z } from "zod";
import { runBounded } from "./bounded-process.js";

/** The result shapes this build of coldstart understands; native/addon.cc carries the same number. */
export const ADDON_ABI_VERSION = 2;

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
  /** nvmlInit_v2 succeeded: what follows came from the driver (missing optional symbols aside). */
  session: z.boolean(),
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
  /** Kills the child (daemon shutdown). */
  signal?: AbortSignal | undefined;
}

/** Marks the result line: a library may print to stdout too. */
const SENTINEL = "COLDSTART_PROBE_RESULT ";
const RESULT_LINE = new RegExp(`^${SENTINEL}(.*)\n`, "m");

// Runs in the child, as CommonJS (`node -e`). Plain JavaScript, kept tiny: load, check the ABI,
// call one probe, print one JSON line.
const CHILD = `
const [kind, addonPath, libraryPath, abi, sentinel] = process.argv.slice(1);
const out = (o) => process.stdout.write(sentinel + JSON.stringify(o) + "\\n");
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
  const args = ["-e", CHILD, kind, addonPath, options.libraryPath ?? "", String(ADDON_ABI_VERSION), SENTINEL];
  const run = await runBounded(process.execPath, args, {
    timeoutMs: options.timeoutMs,
    env: options.env,
    signal: options.signal,
    doneWhen: (out) => RESULT_LINE.test(out),
  });
  if (run.timedOut) return { status: "timeout", timeoutMs: options.timeoutMs };
  if (run.aborted) return { status: "failed", reason: "probe cancelled (shutting down)" };
  let parsed: unknown;
  try {
    parsed = JSON.parse(RESULT_LINE.exec(run.stdout)?.[1] ?? "");
  } catch {
    const how = run.error
      ? `could not start (${run.error.message})`
      : run.signal
        ? `killed by ${run.signal}`
        : `exited with ${run.code}`;
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

function lastLine(text: string): string {
  const lines = text.trim().split("\n");
  return (lines[lines.length - 1] ?? "").slice(0, 500);
}
