/**
 * Everything coldstart knows about its node, gathered once: GPUs, GDS and where the staging root
 * really lives. The daemon collects it before it listens (so gds.mode on and placement.require can
 * refuse to start), serves it on GET /v1/node, exports it as metrics and labels, and hands the loader
 * choice to pods through `coldstart wait --env-file`. `coldstart doctor` prints it as checks.
 */
import { ColdstartError } from "../errors.js";
import { GDS_LABEL, GPU_PRODUCT_LABEL, REFUSED_LABEL } from "../kube/label-keys.js";
import type { Metrics } from "../metrics/metrics.js";
import { assessGds, type CufileFacts, cufileFacts, type GdsAssessment, type GdsMode } from "./gds.js";
import { type GpuFacts, gpuFacts } from "./gpus.js";
import {
  type CufileJsonFacts,
  type IommuFacts,
  type NvidiaFsFacts,
  readCufileJson,
  readIommu,
  readNvidiaFs,
} from "./host-facts.js";
import { type CufileProbe, type GpuProbe, type ProbeOutcome, runProbe } from "./native.js";
import { type Placement, type PlacementFacts, probePlacement, spareInstanceStore } from "./placement.js";

export interface NodeFactsOptions {
  hostRoot: string;
  stagingRoot: string;
  gdsMode: GdsMode;
  probeTimeoutMs: number;
  nvidiaSmi: string;
  addonPath?: string | undefined;
  nvmlLibrary?: string | undefined;
  cufileLibrary?: string | undefined;
  cufileJson?: string | undefined;
  /** Environment of the probe processes (config's view of the process's: src/wiring/node.ts). */
  env: NodeJS.ProcessEnv;
}

export interface NativeFacts {
  available: boolean;
  /** The addon file that loaded. */
  path: string | null;
  /** Why it is unavailable (missing build, load error, stale build), or null. */
  reason: string | null;
}

export interface NodeFacts {
  collectedAt: string;
  hostRoot: string;
  native: NativeFacts;
  gpus: GpuFacts;
  nvidiaFs: NvidiaFsFacts;
  cufileJson: CufileJsonFacts;
  cufile: CufileFacts;
  iommu: IommuFacts;
  placement: PlacementFacts;
  gds: GdsAssessment;
}

/** What the last cuFile probe was run against, so a refresh re-runs it only when that changed. */
const cufileRuns = new WeakMap<NodeFacts, { key: string; outcome: ProbeOutcome<CufileProbe> | null }>();

export interface CollectOptions {
  /**
   * The facts of the last collection. Its cuFile result is reused unless what it depends on changed
   * (nvidia-fs, cufile.json, the GPUs): every cuFile probe creates a CUDA context on every GPU, which
   * must not happen next to a running inference engine without a reason.
   */
  previous?: NodeFacts | undefined;
  /** Kills probes in flight (daemon shutdown). */
  signal?: AbortSignal | undefined;
}

/**
 * The GPU facts alone (NVML through the addon, else nvidia-smi), with the probe's outcome: for a
 * caller that needs no cuFile, host or placement facts (`coldstart cache key`).
 */
export async function probeGpuFacts(
  o: Pick<NodeFactsOptions, "addonPath" | "nvmlLibrary" | "nvidiaSmi" | "probeTimeoutMs" | "env">,
  signal?: AbortSignal,
): Promise<{ outcome: ProbeOutcome<GpuProbe>; facts: GpuFacts }> {
  const outcome = await runProbe("gpus", {
    addonPath: o.addonPath,
    libraryPath: o.nvmlLibrary,
    timeoutMs: o.probeTimeoutMs,
    env: o.env,
    signal,
  });
  return { outcome, facts: await gpuFacts(outcome, { nvidiaSmi: o.nvidiaSmi, timeoutMs: o.probeTimeoutMs }) };
}

/** Gathers every fact; never throws for something missing on the node (that is a fact too). */
export async function collectNodeFacts(o: NodeFactsOptions, c: CollectOptions = {}): Promise<NodeFacts> {
  const probe = { addonPath: o.addonPath, timeoutMs: o.probeTimeoutMs, env: o.env, signal: c.signal };
  // Without a host file, libcufile in the probe would read this container's /etc/cufile.json: assess
  // that one, so the verdict and the library see the same settings.
  const cufileJsonRead = readCufileJson(o.hostRoot, o.cufileJson).then((host) =>
    host.found || o.cufileJson || o.hostRoot === "/" ? host : readCufileJson("/"),
  );
  const gpusRead = probeGpuFacts(o, c.signal);
  const probeCufile = (json: CufileJsonFacts) =>
    runProbe("cufile", {
      ...probe,
      libraryPath: o.cufileLibrary,
      // CUFILE_ENV_PATH_JSON names the file assessed, so the library reads exactly that one.
      env: json.path ? { ...o.env, CUFILE_ENV_PATH_JSON: json.path } : o.env,
    });
  const last = c.previous ? cufileRuns.get(c.previous) : undefined;
  // A first collection has nothing to reuse: probe cuFile alongside NVML rather than after it (and
  // after a possible nvidia-smi fallback), or a wedged driver costs every timeout in a row at start-up.
  const earlyCufile = o.gdsMode !== "off" && !last ? cufileJsonRead.then(probeCufile) : undefined;

  const [nvidiaFs, cufileJson, iommu, placement, gpuRead] = await Promise.all([
    readNvidiaFs(o.hostRoot),
    cufileJsonRead,
    readIommu(o.hostRoot),
    probePlacement({ hostRoot: o.hostRoot, stagingRoot: o.stagingRoot }),
    gpusRead,
  ]);
  const { outcome: gpuOutcome, facts: gpus } = gpuRead;
  const key = JSON.stringify([nvidiaFs.loaded, nvidiaFs.version, cufileJson, gpus.gpus.map((g) => g.uuid)]);
  let cufileOutcome: ProbeOutcome<CufileProbe> | null;
  if (o.gdsMode === "off") cufileOutcome = null;
  else if (earlyCufile) cufileOutcome = await earlyCufile;
  else if (last && last.key === key && last.outcome?.status === "ok") cufileOutcome = last.outcome;
  else cufileOutcome = await probeCufile(cufileJson);
  const cufile = cufileFacts(cufileOutcome);
  const facts: NodeFacts = {
    collectedAt: new Date().toISOString(),
    hostRoot: o.hostRoot,
    native: nativeFacts(gpuOutcome, cufileOutcome),
    gpus,
    nvidiaFs,
    cufileJson,
    cufile,
    iommu,
    placement,
    gds: assessGds({ mode: o.gdsMode, gpus, cufile, nvidiaFs, cufileJson, iommu, placement }),
  };
  cufileRuns.set(facts, { key, outcome: cufileOutcome });
  return facts;
}

function nativeFacts(...outcomes: (ProbeOutcome<unknown> | null)[]): NativeFacts {
  for (const o of outcomes) {
    if (o?.status === "native-unavailable") return { available: false, path: null, reason: o.reason };
  }
  for (const o of outcomes) {
    if (o?.status === "ok") return { available: true, path: o.addonPath, reason: null };
  }
  // Both probes timed out or crashed: the addon may be fine, the driver is not answering.
  return { available: false, path: null, reason: "no probe finished; see gpus.notes and cufile.reason" };
}

export interface NodePolicy {
  gdsMode: GdsMode;
  /**
   * placement.require: the placements the daemon may start on ([] any), or ["auto"]: any but the
   * root volume of a node that has instance-store disks of its own.
   */
  placementRequire: readonly (Placement | "auto")[];
}

/** The errors that make these facts unacceptable under the policy (empty: fine to run). */
export function policyViolations(facts: NodeFacts, policy: NodePolicy): ColdstartError[] {
  const out: ColdstartError[] = [];
  if (policy.gdsMode === "on" && facts.gds.verdict !== "enabled") {
    const why = facts.gds.reasons.map((r) => r.code).join(", ");
    out.push(
      new ColdstartError(
        "CS_GDS_UNAVAILABLE",
        `gds.mode is on but GDS is ${facts.gds.verdict} here: ${why}`,
        {
          details: { field: "gds.mode", value: policy.gdsMode },
        },
      ),
    );
  }
  const p = facts.placement.placement;
  const allowed = policy.placementRequire;
  const spare = spareInstanceStore(facts.placement);
  if (allowed.includes("auto")) {
    if (p === "root-volume" && spare) {
      out.push(
        new ColdstartError(
          "CS_PLACEMENT_REFUSED",
          `staging root ${facts.placement.path} is on root-volume (${placementSummary(facts.placement)}), and placement.require auto refuses the root volume on a node with instance storage: ${spare.found}. ${spare.fix}`,
          { details: { field: "placement.require", value: p } },
        ),
      );
    }
  } else if (allowed.length > 0 && !allowed.includes(p)) {
    out.push(
      new ColdstartError(
        "CS_PLACEMENT_REFUSED",
        `staging root ${facts.placement.path} is on ${p} (${placementSummary(facts.placement)}); placement.require allows ${allowed.join(", ")}`,
        { details: { field: "placement.require", value: p } },
      ),
    );
  }
  return out;
}

/** "ext4 on md0 (nvme1n1, nvme2n1)" */
export function placementSummary(p: PlacementFacts): string {
  if (!p.mount) return "mount not found";
  const disks = p.disks.map((d) => d.name).join(", ");
  const via = p.chain[0] && p.chain[0] !== p.disks[0]?.name ? `${p.chain[0]} (${disks})` : disks;
  return `${p.mount.fsType} on ${via || p.mount.source}`;
}

/**
 * The node-fact labels: the GDS verdict, the GPU product (removed when there is none), and which
 * setting refuses the node (removed when none does: a daemon that stages).
 */
export function factLabels(
  facts: NodeFacts,
  refused: readonly ColdstartError[] = [],
): Record<string, string | null> {
  const field = refused[0]?.details.field;
  return {
    [GDS_LABEL]: facts.gds.verdict,
    [GPU_PRODUCT_LABEL]: facts.gpus.product,
    [REFUSED_LABEL]: typeof field === "string" ? field : null,
  };
}

/** Replaces the node-fact metrics with these facts (old label sets are dropped, not left at 1). */
export function publishNodeFacts(metrics: Metrics, facts: NodeFacts): void {
  metrics.gdsInfo.reset();
  metrics.gdsInfo.set(
    { verdict: facts.gds.verdict, mode: facts.gds.mode, load_format: facts.gds.loadFormat },
    1,
  );
  metrics.gdsReasons.reset();
  for (const r of facts.gds.reasons) metrics.gdsReasons.set({ code: r.code }, 1);
  metrics.placementInfo.reset();
  const p = facts.placement;
  metrics.placementInfo.set(
    { placement: p.placement, fstype: p.mount?.fsType ?? "unknown", device: p.chain[0] ?? "unknown" },
    1,
  );
  metrics.placementWarnings.reset();
  for (const w of p.warnings) metrics.placementWarnings.set({ code: w.code }, 1);
  metrics.gpuInfo.reset();
  for (const g of facts.gpus.gpus) {
    metrics.gpuInfo.set(
      {
        index: String(g.index),
        uuid: g.uuid ?? "unknown",
        name: g.name ?? "unknown",
        compute_capability: g.computeCapability ?? "unknown",
        driver_version: facts.gpus.driverVersion ?? "unknown",
      },
      1,
    );
  }
  metrics.nativeAvailable.set(facts.native.available ? 1 : 0);
}
