/**
 * `coldstart doctor` as data: node facts turned into checks in the spirit of `gdscheck -p`, each with
 * its value, pass/warn/fail and what to do. "fail" is reserved for what stops the daemon (the policy:
 * gds.mode on, placement.require); everything else that is not right is a warning.
 */
import { isDriverReason } from "./gds.js";
import type { NodeFacts, NodePolicy } from "./node-facts.js";
import { placementSummary, policyViolations } from "./node-facts.js";

export type CheckStatus = "pass" | "warn" | "fail";

export interface Check {
  /** Stable id, e.g. "gds.verdict". */
  id: string;
  title: string;
  value: string;
  status: CheckStatus;
  /** What to do about a warn or fail; null when it passes. */
  advice: string | null;
  /** Reason codes behind the status (docs/node-facts.md). */
  codes: string[];
}

const GOOD_PLACEMENTS = new Set(["nvme-instance-store", "nvme-local"]);

export function doctorChecks(f: NodeFacts, policy: NodePolicy): Check[] {
  const gdsOn = policy.gdsMode === "on";
  const gdsOff = policy.gdsMode === "off";
  const bad = (strict: boolean): CheckStatus => (strict ? "fail" : "warn");
  const violations = policyViolations(f, policy);
  const checks: Check[] = [];
  const add = (c: Omit<Check, "codes"> & { codes?: string[] }) => checks.push({ codes: [], ...c });

  add({
    id: "native.addon",
    title: "Native addon",
    value: f.native.available ? `loaded (${f.native.path})` : `unavailable: ${f.native.reason}`,
    status: f.native.available ? "pass" : bad(gdsOn),
    advice: f.native.available
      ? null
      : "GPU facts fall back to nvidia-smi and GDS cannot be probed. Rebuild it with `npm run build:native` (needs cmake and a C++ compiler), or point node.addonPath at a build.",
    codes: f.native.available ? [] : ["native_unavailable"],
  });

  const g = f.gpus;
  const gpuList = summarizeGpus(f);
  add({
    id: "gpu.devices",
    title: "GPUs",
    value:
      g.gpus.length > 0
        ? `${gpuList}; driver ${g.driverVersion ?? "?"}${g.cudaDriverVersion ? `, CUDA ${g.cudaDriverVersion}` : ""} (${g.source})`
        : `none found${g.notes.length ? `: ${g.notes.join("; ")}` : ""}`,
    status: g.gpus.length > 0 ? "pass" : "warn",
    advice:
      g.gpus.length > 0
        ? null
        : "coldstart sees no GPU: run the daemon with the NVIDIA runtime (NVIDIA_VISIBLE_DEVICES=all, NVIDIA_DRIVER_CAPABILITIES=utility) so libnvidia-ml.so.1 is present, or check the driver.",
    codes: g.gpus.length > 0 ? [] : ["no_gpus"],
  });

  const nf = f.nvidiaFs;
  add({
    id: "gds.nvidia_fs",
    title: "nvidia-fs kernel module",
    value: nf.loaded
      ? `loaded, version ${nf.version ? `${nf.version.major}.${nf.version.minor}` : "?"}, devcount ${nf.devcount ?? "?"}`
      : "not loaded",
    status: nf.loaded || gdsOff ? "pass" : bad(gdsOn),
    advice:
      nf.loaded || gdsOff
        ? null
        : "Install and load nvidia-fs (the GPU Operator's gds.enabled=true, or `modprobe nvidia_fs`); without it cuFile falls back to bounce buffers.",
    codes: nf.loaded ? [] : ["nvidia_fs_not_loaded"],
  });

  const cj = f.cufileJson;
  add({
    id: "gds.cufile_json",
    title: "cufile.json",
    value: cj.found
      ? `${cj.path}: allow_compat_mode ${cj.allowCompatMode}${cj.forceCompatMode ? ", force_compat_mode true" : ""}${cj.error ? `; unreadable: ${cj.error}` : ""}`
      : "not found (library defaults: compat mode allowed)",
    status: cj.error || cj.forceCompatMode ? bad(gdsOn) : "pass",
    advice: cj.error
      ? `Fix the syntax of ${cj.path}; cuFile will not read it either.`
      : cj.forceCompatMode
        ? "force_compat_mode makes cuFile skip GDS entirely: set it to false."
        : null,
    codes: cj.forceCompatMode ? ["compat_mode_forced"] : [],
  });

  const c = f.cufile;
  const cufileCodes = f.gds.reasons.map((r) => r.code).filter(isDriverReason);
  add({
    id: "gds.cufile_driver",
    title: "cuFile driver",
    value: cufileValue(f),
    status: gdsOff || cufileCodes.length === 0 ? "pass" : bad(gdsOn),
    advice:
      gdsOff || cufileCodes.length === 0
        ? null
        : c.status === "timeout"
          ? "cuFileDriverOpen did not return: check the NVIDIA driver (dmesg) and nvidia-fs; raise node.probeTimeoutMs only if the node is merely slow."
          : "cuFile cannot use GDS here; `/usr/local/cuda/gds/tools/gdscheck -p` on the node shows the library's own view.",
    codes: cufileCodes,
  });

  const io = f.iommu;
  add({
    id: "gds.iommu",
    title: "IOMMU",
    value:
      io.enabled === null
        ? "unknown (proc/cmdline and sys/class/iommu unreadable)"
        : io.enabled
          ? `enabled (${[...io.cmdline, ...io.units].join(", ")})`
          : io.passthrough
            ? "passthrough"
            : "off",
    status: io.enabled === true && !gdsOff ? bad(gdsOn) : "pass",
    advice:
      io.enabled === true && !gdsOff
        ? "GDS peer-to-peer DMA needs the IOMMU off or in passthrough: add iommu=pt (or intel_iommu=off / amd_iommu=off) to the kernel command line."
        : null,
    codes: io.enabled ? ["iommu_enabled"] : [],
  });

  const p = f.placement;
  const fsCodes = p.gdsBlockers.map((b) => b.code);
  add({
    id: "staging.filesystem",
    title: "Staging filesystem",
    value: p.mount
      ? `${p.mount.fsType} at ${p.mount.mountPoint} (${[...new Set([...p.mount.options, ...p.mount.superOptions])].join(",")})`
      : "mount not found",
    status: fsCodes.length === 0 || gdsOff ? "pass" : bad(gdsOn),
    advice:
      fsCodes.length === 0 || gdsOff
        ? null
        : `GDS needs ext4 (data=ordered) or xfs on NVMe: ${p.gdsBlockers.map((b) => b.message).join("; ")}`,
    codes: fsCodes,
  });

  const refused = violations.find((v) => v.code === "CS_PLACEMENT_REFUSED");
  // Instance-store disks the staging root could be on and is not (placement.require auto's question).
  const unused = p.placement === "nvme-instance-store" ? [] : p.instanceStore.spare;
  add({
    id: "staging.placement",
    title: "Staging placement",
    value: `${p.placement}: ${p.path} is ${placementSummary(p)}${p.sharesRootVolume ? ", shared with the root volume" : ""}${unused.length ? `; instance store unused: ${unused.join(", ")}` : ""}`,
    status: refused ? "fail" : GOOD_PLACEMENTS.has(p.placement) && p.warnings.length === 0 ? "pass" : "warn",
    advice: refused
      ? `${refused.message}.`
      : p.warnings.length > 0
        ? p.warnings.map((w) => w.message).join(" ")
        : GOOD_PLACEMENTS.has(p.placement)
          ? null
          : "Stage on the node's local NVMe (instance store) for the fastest cold start.",
    codes: p.warnings.map((w) => w.code),
  });

  const gds = f.gds;
  add({
    id: "gds.verdict",
    title: "GDS verdict",
    value: `${gds.verdict} → vLLM --load-format ${gds.loadFormat}${gds.reasons.length ? ` (${gds.reasons.map((r) => r.code).join(", ")})` : ""}`,
    status: gds.verdict === "enabled" || gdsOff ? "pass" : bad(gdsOn),
    advice:
      gds.verdict === "enabled" || gdsOff
        ? null
        : `${gds.reasons[0]?.message ?? ""}. Pods get COLDSTART_LOAD_FORMAT=safetensors, the default loader.`,
    codes: gds.reasons.map((r) => r.code),
  });
  return checks;
}

function summarizeGpus(f: NodeFacts): string {
  const byName = new Map<string, number>();
  for (const gpu of f.gpus.gpus) {
    const key = `${gpu.name ?? "unknown"}${gpu.computeCapability ? ` (sm ${gpu.computeCapability})` : ""}`;
    byName.set(key, (byName.get(key) ?? 0) + 1);
  }
  return [...byName].map(([name, n]) => `${n} × ${name}`).join(", ");
}

function cufileValue(f: NodeFacts): string {
  const c = f.cufile;
  if (c.status === "not-probed") return "not probed (gds.mode off)";
  if (c.status !== "ok") return c.reason ?? c.status;
  if (c.library === null) return `libcufile not found: ${c.reason}`;
  const parts = [c.library];
  if (c.driverOpen) parts.push(`cuFileDriverOpen ${c.driverOpen.name} (${c.driverOpen.err})`);
  if (c.nvfs) parts.push(`nvfs ${c.nvfs.major}.${c.nvfs.minor}`);
  if (c.nvmeSupported !== null) parts.push(`NVMe ${c.nvmeSupported ? "supported" : "not supported"}`);
  if (c.compatAllowed !== null) parts.push(`compat ${c.compatAllowed ? "allowed" : "off"}`);
  if (c.maxDirectIoSize !== null) parts.push(`max direct I/O ${c.maxDirectIoSize}`);
  if (c.missingSymbols.length) parts.push(`missing: ${c.missingSymbols.join("; ")}`);
  return parts.join(", ");
}
