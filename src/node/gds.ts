/**
 * The GPUDirect Storage verdict. "The library loads" proves nothing: with allow_compat_mode (the
 * default) every cuFile call succeeds without nvidia-fs, through bounce buffers, and a GDS loader is
 * then slower than the plain one. So the verdict needs every piece: the module, the library's view of
 * it, the NVMe bit, the filesystem and device under the staging root, and no translating IOMMU.
 */

import { describeOutcome, type GpuFacts } from "./gpus.js";
import type { CufileJsonFacts, IommuFacts, NvidiaFsFacts } from "./host-facts.js";
import type { CufileProbe, ProbeOutcome } from "./native.js";
import type { Finding, PlacementFacts } from "./placement.js";

export type GdsMode = "auto" | "on" | "off";
export type GdsVerdict = "enabled" | "compat" | "unavailable";
/** vLLM `--load-format`: fastsafetensors reads through GDS; safetensors is the default loader. */
export type LoadFormat = "fastsafetensors" | "safetensors";

/** cufile.h CUfileOpError values the probe can meet at driver open. */
const CUFILE_ERRORS: Readonly<Record<number, string>> = {
  5001: "CU_FILE_DRIVER_NOT_INITIALIZED",
  5002: "CU_FILE_DRIVER_INVALID_PROPS",
  5003: "CU_FILE_DRIVER_UNSUPPORTED_LIMIT",
  5004: "CU_FILE_DRIVER_VERSION_MISMATCH",
  5005: "CU_FILE_DRIVER_VERSION_READ_ERROR",
  5006: "CU_FILE_DRIVER_CLOSING",
  5007: "CU_FILE_PLATFORM_NOT_SUPPORTED",
  5008: "CU_FILE_IO_NOT_SUPPORTED",
  5009: "CU_FILE_DEVICE_NOT_SUPPORTED",
  5010: "CU_FILE_NVFS_DRIVER_ERROR",
  5011: "CU_FILE_CUDA_DRIVER_ERROR",
};

/** dstatusflags bits (cufile.h CUfileDriverStatusFlags_t) and the dcontrolflags compat bit. */
const STATUS_NVME = 1 << 4;
const STATUS_NVMEOF = 1 << 5;
const CONTROL_COMPAT = 1 << 1;

export interface CufileFacts {
  /** not-probed: gds.mode is off, so no CUDA context was created. */
  status: "ok" | "not-probed" | "native-unavailable" | "timeout" | "failed";
  /** The libcufile that loaded, or null. */
  library: string | null;
  /** Why nothing (or not everything) could be asked, in words. */
  reason: string | null;
  missingSymbols: string[];
  driverOpen: { err: number; cuErr: number; name: string } | null;
  /** cuFileDriverGetProperties' result; null when it was not called (open failed, symbol missing). */
  driverProperties: { err: number; cuErr: number; name: string } | null;
  nvfs: { major: number; minor: number } | null;
  maxDirectIoSize: number | null;
  dstatusflags: number | null;
  dcontrolflags: number | null;
  nvmeSupported: boolean | null;
  nvmeofSupported: boolean | null;
  compatAllowed: boolean | null;
  driverClose: { err: number; cuErr: number } | null;
}

/** The cuFile probe's outcome as facts (null: not probed). */
export function cufileFacts(outcome: ProbeOutcome<CufileProbe> | null): CufileFacts {
  const none: CufileFacts = {
    status: "not-probed",
    library: null,
    reason: null,
    missingSymbols: [],
    driverOpen: null,
    driverProperties: null,
    nvfs: null,
    maxDirectIoSize: null,
    dstatusflags: null,
    dcontrolflags: null,
    nvmeSupported: null,
    nvmeofSupported: null,
    compatAllowed: null,
    driverClose: null,
  };
  if (outcome === null) return { ...none, reason: "gds.mode is off" };
  if (outcome.status !== "ok")
    return { ...none, status: outcome.status, reason: describeOutcome("cuFile probe", outcome) };
  const r = outcome.result;
  const p = r.properties?.result.err === 0 ? r.properties : null;
  const flags = (v: number | undefined, bit: number) => (v === undefined ? null : (v & bit) !== 0);
  return {
    status: "ok",
    library: r.library.path,
    reason: r.library.loaded ? null : r.library.reason,
    missingSymbols: r.missingSymbols,
    driverOpen: r.open ? { ...r.open, name: cufileErrorName(r.open.err) } : null,
    driverProperties: r.properties
      ? { ...r.properties.result, name: cufileErrorName(r.properties.result.err) }
      : null,
    nvfs:
      p && p.nvfsMajor !== undefined && p.nvfsMinor !== undefined
        ? { major: p.nvfsMajor, minor: p.nvfsMinor }
        : null,
    maxDirectIoSize: p?.maxDirectIoSize ?? null,
    dstatusflags: p?.dstatusflags ?? null,
    dcontrolflags: p?.dcontrolflags ?? null,
    nvmeSupported: flags(p?.dstatusflags, STATUS_NVME),
    nvmeofSupported: flags(p?.dstatusflags, STATUS_NVMEOF),
    compatAllowed: flags(p?.dcontrolflags, CONTROL_COMPAT),
    driverClose: r.close,
  };
}

export function cufileErrorName(err: number): string {
  return err === 0 ? "CU_FILE_SUCCESS" : (CUFILE_ERRORS[err] ?? `cuFile error ${err}`);
}

/**
 * Reason codes that come from the native probe and the cuFile library (as opposed to the host, the
 * filesystem or the IOMMU): what the doctor's "cuFile driver" check reports.
 */
const DRIVER_REASON =
  /^(native_unavailable|probe_timeout|probe_failed|cufile_library_missing|cufile_symbols_missing|driver_open_failed:|properties_failed:|gds_unconfirmed|nvfs_version_zero|nvme_not_supported)/;

export function isDriverReason(code: string): boolean {
  return DRIVER_REASON.test(code);
}

export interface GdsAssessment {
  mode: GdsMode;
  verdict: GdsVerdict;
  /** Only "fastsafetensors" when the verdict is enabled. */
  loadFormat: LoadFormat;
  /** Why the verdict is not "enabled" (empty when it is); codes are stable (docs/node-facts.md). */
  reasons: Finding[];
}

export interface GdsInputs {
  mode: GdsMode;
  gpus: GpuFacts;
  cufile: CufileFacts;
  nvidiaFs: NvidiaFsFacts;
  cufileJson: CufileJsonFacts;
  iommu: IommuFacts;
  placement: PlacementFacts;
}

/** Decides enabled / compat / unavailable from every fact, listing each reason it is not enabled. */
export function assessGds(i: GdsInputs): GdsAssessment {
  if (i.mode === "off") {
    return {
      mode: "off",
      verdict: "unavailable",
      loadFormat: "safetensors",
      reasons: [{ code: "gds_disabled", message: "gds.mode is off: GDS was not probed" }],
    };
  }
  const reasons: Finding[] = [];
  const add = (code: string, message: string) => reasons.push({ code, message });
  if (i.gpus.gpus.length === 0) add("no_gpus", `no GPU found (${i.gpus.notes.join("; ") || "none listed"})`);

  const c = i.cufile;
  if (c.status === "native-unavailable") add("native_unavailable", c.reason ?? "native addon unavailable");
  else if (c.status === "timeout") add("probe_timeout", c.reason ?? "the cuFile probe timed out");
  else if (c.status === "failed") add("probe_failed", c.reason ?? "the cuFile probe failed");
  else if (c.status === "ok") {
    if (c.library === null) add("cufile_library_missing", `libcufile not loadable: ${c.reason}`);
    else if (c.missingSymbols.length > 0) add("cufile_symbols_missing", c.missingSymbols.join("; "));
    else if (c.driverOpen && c.driverOpen.err !== 0) {
      add(
        `driver_open_failed:${c.driverOpen.err}`,
        `cuFileDriverOpen returned ${c.driverOpen.err} (${c.driverOpen.name}, CUDA ${c.driverOpen.cuErr})`,
      );
    }
    const opened = c.driverOpen?.err === 0;
    if (opened && c.missingSymbols.length === 0 && c.driverProperties?.err !== 0) {
      const p = c.driverProperties;
      add(
        `properties_failed:${p?.err ?? "none"}`,
        p
          ? `cuFileDriverGetProperties returned ${p.err} (${p.name}): nvidia-fs version and NVMe support unknown`
          : "cuFileDriverGetProperties was not answered: nvidia-fs version and NVMe support unknown",
      );
    }
    if (c.nvfs && c.nvfs.major === 0 && c.nvfs.minor === 0) {
      add(
        "nvfs_version_zero",
        "cuFile reports nvidia-fs version 0.0: the library does not see the nvidia-fs driver",
      );
    }
    if (c.nvmeSupported === false) {
      add("nvme_not_supported", "cuFile reports no NVMe support (dstatusflags bit 4 clear)");
    }
  }
  if (!i.nvidiaFs.loaded) add("nvidia_fs_not_loaded", "the nvidia_fs kernel module is not in /proc/modules");
  if (i.cufileJson.forceCompatMode) {
    add("compat_mode_forced", `${i.cufileJson.path} sets force_compat_mode: cuFile never uses GDS`);
  }
  if (i.iommu.enabled === true) {
    add(
      "iommu_enabled",
      `the IOMMU translates DMA (${[...i.iommu.cmdline, ...i.iommu.units].join(", ") || "enabled"}); GDS needs it off or iommu=pt`,
    );
  }
  reasons.push(...i.placement.gdsBlockers);

  // "enabled" needs positive evidence, not the absence of a reason: the driver opened and reported a
  // non-zero nvidia-fs version and NVMe support.
  const confirmed =
    c.status === "ok" &&
    c.driverOpen?.err === 0 &&
    c.nvfs !== null &&
    (c.nvfs.major !== 0 || c.nvfs.minor !== 0) &&
    c.nvmeSupported === true;
  if (reasons.length === 0 && !confirmed) {
    add("gds_unconfirmed", "the cuFile driver did not confirm an nvidia-fs version and NVMe support");
  }
  if (reasons.length === 0)
    return { mode: i.mode, verdict: "enabled", loadFormat: "fastsafetensors", reasons };
  const cufileWorks = c.status === "ok" && c.library !== null && c.driverOpen?.err === 0;
  const compatAllowed = i.cufileJson.allowCompatMode || c.compatAllowed === true;
  if (cufileWorks && compatAllowed) {
    reasons.unshift({
      code: "compat_mode_only",
      message:
        "cuFile works only in compatibility mode (POSIX reads through bounce buffers), slower than the default loader",
    });
    return { mode: i.mode, verdict: "compat", loadFormat: "safetensors", reasons };
  }
  return { mode: i.mode, verdict: "unavailable", loadFormat: "safetensors", reasons };
}
