/**
 * GPU facts: NVML through the native probe, else `nvidia-smi`, else none. GPUs are keyed by UUID;
 * the index is only the driver's enumeration order.
 */
import { runBounded } from "./bounded-process.js";
import type { GpuProbe, ProbeOutcome } from "./native.js";

export interface GpuInfo {
  index: number;
  name: string | null;
  uuid: string | null;
  /** "9.0" for an H100. */
  computeCapability: string | null;
}

export interface GpuFacts {
  /** Where the facts came from; "none" when neither NVML nor nvidia-smi answered. */
  source: "nvml" | "nvidia-smi" | "none";
  driverVersion: string | null;
  /** "12.8" from NVML's 12080. */
  cudaDriverVersion: string | null;
  gpus: GpuInfo[];
  /**
   * The GPU product as a label-safe key, as NVIDIA's GPU feature discovery spells
   * `nvidia.com/gpu.product` ("NVIDIA-H100-80GB-HBM3"); "mixed" when the GPUs differ; null without GPUs.
   */
  product: string | null;
  /** What went wrong on the way, in words (library missing, NVML error, nvidia-smi absent). */
  notes: string[];
}

/** Turns the NVML probe's outcome into facts, asking nvidia-smi when NVML could not be used. */
export async function gpuFacts(
  outcome: ProbeOutcome<GpuProbe>,
  fallback: { nvidiaSmi: string; timeoutMs: number },
): Promise<GpuFacts> {
  const notes: string[] = [];
  if (outcome.status === "ok") {
    const r = outcome.result;
    if (!r.library.loaded) notes.push(`NVML not loaded: ${r.library.reason}`);
    for (const m of r.missingSymbols) notes.push(`NVML symbol missing: ${m}`);
    for (const e of r.errors) notes.push(`${e.call} failed: ${e.message} (${e.code})`);
    // A missing optional symbol (an old driver without nvmlSystemGetCudaDriverVersion) costs that fact
    // only; without a session (library, nvmlInit_v2, the device calls) NVML gave nothing.
    if (r.session) {
      const gpus = r.gpus.map((g) => ({
        index: g.index,
        name: g.name,
        uuid: g.uuid,
        computeCapability: g.computeCapability
          ? `${g.computeCapability.major}.${g.computeCapability.minor}`
          : null,
      }));
      return {
        source: "nvml",
        driverVersion: r.driverVersion,
        cudaDriverVersion: r.cudaDriverVersion === null ? null : cudaVersion(r.cudaDriverVersion),
        gpus,
        product: productKey(gpus),
        notes,
      };
    }
  } else {
    notes.push(describeOutcome("NVML probe", outcome));
  }
  const smi = await fromNvidiaSmi(fallback.nvidiaSmi, fallback.timeoutMs);
  if ("error" in smi) {
    notes.push(smi.error);
    return { source: "none", driverVersion: null, cudaDriverVersion: null, gpus: [], product: null, notes };
  }
  return { source: "nvidia-smi", ...smi, cudaDriverVersion: null, product: productKey(smi.gpus), notes };
}

/** One line for a probe that produced no result. */
export function describeOutcome(
  what: string,
  outcome: Exclude<ProbeOutcome<unknown>, { status: "ok" }>,
): string {
  switch (outcome.status) {
    case "native-unavailable":
      return `${what}: native addon unavailable: ${outcome.reason}`;
    case "timeout":
      return `${what}: no answer within ${outcome.timeoutMs} ms; the probe process was killed`;
    case "failed":
      return `${what} failed: ${outcome.reason}`;
  }
}

/** 12080 → "12.8" (NVML encodes major × 1000 + minor × 10). */
export function cudaVersion(n: number): string {
  return `${Math.floor(n / 1000)}.${Math.floor((n % 1000) / 10)}`;
}

/** The label-safe product key of a node's GPUs (see {@link GpuFacts.product}). */
export function productKey(gpus: readonly GpuInfo[]): string | null {
  const names = new Set(gpus.map((g) => g.name ?? "unknown"));
  if (names.size === 0) return null;
  if (names.size > 1) return "mixed";
  return labelSafe([...names][0] as string);
}

/** A Kubernetes label value: [A-Za-z0-9._-], alphanumeric at both ends, at most 63 characters. */
export function labelSafe(text: string): string {
  const s = text
    .trim()
    .replace(/[^A-Za-z0-9._-]+/g, "-")
    .slice(0, 63)
    .replace(/^[^A-Za-z0-9]+|[^A-Za-z0-9]+$/g, "");
  return s === "" ? "unknown" : s;
}

const SMI_QUERY = ["--query-gpu=index,name,uuid,compute_cap,driver_version", "--format=csv,noheader"];

async function fromNvidiaSmi(
  bin: string,
  timeoutMs: number,
): Promise<{ driverVersion: string | null; gpus: GpuInfo[] } | { error: string }> {
  // nvidia-smi hangs with the driver it asks: the same hard deadline as the native probes.
  const run = await runBounded(bin, SMI_QUERY, { timeoutMs });
  const out: { stdout: string } | { error: string } =
    run.error?.code === "ENOENT"
      ? { error: `nvidia-smi fallback: ${bin} not found` }
      : run.error
        ? { error: `nvidia-smi fallback failed: ${run.error.message}` }
        : run.timedOut
          ? { error: `nvidia-smi fallback: no answer within ${timeoutMs} ms; killed` }
          : run.code !== 0
            ? {
                error: `nvidia-smi fallback exited with ${run.code ?? run.signal}: ${run.stderr.trim().split("\n")[0]}`,
              }
            : { stdout: run.stdout };
  if ("error" in out) return out;
  const gpus: GpuInfo[] = [];
  let driverVersion: string | null = null;
  for (const line of out.stdout.split("\n")) {
    if (line.trim() === "") continue;
    const [index, name, uuid, cc, driver] = line.split(",").map((f) => f.trim());
    if (index === undefined || !/^\d+$/.test(index) || !name) {
      return { error: `nvidia-smi fallback: unexpected line ${JSON.stringify(line.slice(0, 200))}` };
    }
    gpus.push({
      index: Number(index),
      name,
      uuid: uuid || null,
      computeCapability: cc && /^\d+\.\d+$/.test(cc) ? cc : null,
    });
    driverVersion = driver || driverVersion;
  }
  return { driverVersion, gpus };
}
