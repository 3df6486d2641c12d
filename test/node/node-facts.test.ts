/**
 * The GDS verdict end to end: fake host trees (test/support/fake-host.ts) for proc, sys and etc,
 * ABI doubles for libnvidia-ml and libcufile, the real addon in real probe processes. Each scenario
 * asserts the verdict, its reason codes and the loader it recommends.
 */
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { doctorChecks } from "../../src/node/doctor.js";
import type { GdsMode } from "../../src/node/gds.js";
import { collectNodeFacts, factLabels, type NodeFacts, policyViolations } from "../../src/node/node-facts.js";
import * as hosts from "../support/fake-host.js";
import { builtAddon, type FakeLibraries, fakeLibraries } from "../support/native-doubles.js";

let libs: FakeLibraries;
let addonPath: string;
let dir: string;
const cleanups: (() => Promise<void>)[] = [];
beforeAll(async () => {
  libs = fakeLibraries();
  addonPath = builtAddon();
  dir = await mkdtemp(join(tmpdir(), "cs-facts-"));
});
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

interface Run {
  host: () => Promise<hosts.FakeScenario>;
  vars?: Record<string, string>;
  mode?: GdsMode;
  addon?: string;
  timeoutMs?: number;
}

/** The probes' deadline where they should answer: Node child processes on a loaded machine. */
const PROBE_MS = 30_000;

async function facts(r: Run): Promise<NodeFacts> {
  const s = await r.host();
  cleanups.push(s.cleanup);
  return collectNodeFacts({
    hostRoot: s.hostRoot,
    stagingRoot: s.stagingRoot,
    gdsMode: r.mode ?? "auto",
    probeTimeoutMs: r.timeoutMs ?? PROBE_MS,
    nvidiaSmi: join(dir, "no-nvidia-smi"),
    addonPath: r.addon ?? addonPath,
    nvmlLibrary: libs.nvml,
    cufileLibrary: libs.cufile,
    env: { PATH: process.env.PATH ?? "", ...r.vars },
  });
}

const codes = (f: NodeFacts) => f.gds.reasons.map((r) => r.code);

describe("GDS verdict", () => {
  it("enabled on ext4 over an instance-store NVMe RAID0 with nvidia-fs loaded: fastsafetensors", async () => {
    const f = await facts({ host: hosts.gdsReady });
    expect(f.gds).toEqual({ mode: "auto", verdict: "enabled", loadFormat: "fastsafetensors", reasons: [] });
    expect(f.placement.placement).toBe("nvme-instance-store");
    expect(f.native).toEqual({ available: true, path: addonPath, reason: null });
    expect(f.gpus.product).toBe("NVIDIA-H100-80GB-HBM3");
    expect(f.cufile).toMatchObject({ nvfs: { major: 2, minor: 17 }, nvmeSupported: true });
    expect(factLabels(f)).toEqual({
      "coldstart.io/gds": "enabled",
      "coldstart.io/gpu-product": "NVIDIA-H100-80GB-HBM3",
      "coldstart.io/refused": null,
    });
    // A refused node names the setting that refuses it.
    expect(
      factLabels(f, policyViolations(f, { gdsMode: "auto", placementRequire: ["root-volume"] }))[
        "coldstart.io/refused"
      ],
    ).toBe("placement.require");
  });

  it("compat when nvidia-fs is missing but compat mode lets every cuFile call succeed", async () => {
    const f = await facts({
      host: hosts.compatOnly,
      vars: { FAKE_CUFILE_NVFS: "0.0", FAKE_CUFILE_COMPAT: "1" },
    });
    expect(f.gds.verdict).toBe("compat");
    expect(f.gds.loadFormat).toBe("safetensors");
    expect(codes(f)).toEqual(["compat_mode_only", "nvfs_version_zero", "nvidia_fs_not_loaded"]);
  });

  it("unavailable when nvidia-fs is missing and compat mode is off: the driver open fails with 5001", async () => {
    const f = await facts({ host: hosts.nvidiaFsMissing, vars: { FAKE_CUFILE_OPEN: "5001" } });
    expect(f.gds.verdict).toBe("unavailable");
    expect(codes(f)).toEqual(["driver_open_failed:5001", "nvidia_fs_not_loaded"]);
    expect(f.gds.reasons[0]?.message).toContain("CU_FILE_DRIVER_NOT_INITIALIZED");
  });

  it("not enabled with the IOMMU translating DMA", async () => {
    const f = await facts({ host: hosts.iommuOn });
    expect(f.gds.verdict).toBe("unavailable");
    expect(codes(f)).toEqual(["iommu_enabled"]);
    expect(f.gds.reasons[0]?.message).toContain("intel_iommu=on");
  });

  it("not enabled when the driver reports no NVMe support", async () => {
    const f = await facts({ host: hosts.gdsReady, vars: { FAKE_CUFILE_NVME: "0" } });
    expect(codes(f)).toEqual(["nvme_not_supported"]);
    expect(f.gds.loadFormat).toBe("safetensors");
  });

  it("never enabled without the driver's properties: nvfs version and NVMe support must be confirmed", async () => {
    const f = await facts({ host: hosts.gdsReady, vars: { FAKE_CUFILE_PROPS: "5002" } });
    expect(f.gds.verdict).toBe("unavailable");
    expect(codes(f)).toEqual(["properties_failed:5002"]);
    expect(f.gds.reasons[0]?.message).toContain("CU_FILE_DRIVER_INVALID_PROPS");
  });

  it("a refresh reuses the cuFile result until nvidia-fs, cufile.json or the GPUs change", async () => {
    const s = await hosts.compatOnly();
    cleanups.push(s.cleanup);
    const log = join(dir, "reuse.log");
    const o = {
      hostRoot: s.hostRoot,
      stagingRoot: s.stagingRoot,
      gdsMode: "auto" as const,
      probeTimeoutMs: 10_000,
      nvidiaSmi: join(dir, "no-nvidia-smi"),
      addonPath,
      nvmlLibrary: libs.nvml,
      cufileLibrary: libs.cufile,
      env: { PATH: process.env.PATH ?? "", FAKE_CUFILE_LOG: log },
    };
    const first = await collectNodeFacts(o);
    const second = await collectNodeFacts(o, { previous: first });
    expect(second.gds).toEqual(first.gds);
    const opens = async () =>
      (await readFile(log, "utf8")).split("\n").filter((l) => l === "cuFileDriverOpen").length;
    expect(await opens()).toBe(1);
    // The GPU Operator loads nvidia-fs: the next refresh probes cuFile again.
    await writeFile(join(s.hostRoot, "proc/modules"), "nvidia_fs 270336 0 - Live 0x0000000000000000\n", {
      flag: "a",
    });
    const third = await collectNodeFacts(o, { previous: second });
    expect(await opens()).toBe(2);
    expect(third.nvidiaFs.loaded).toBe(true);
  });

  it("not enabled with staging on overlayfs, tmpfs or a journalled ext4", async () => {
    const overlay = await facts({ host: hosts.onOverlay });
    expect(codes(overlay)).toContain("fs_unsupported:overlay");
    expect(overlay.placement.warnings.map((w) => w.code)).toContain("staging_on_overlayfs");
    const tmpfs = await facts({ host: hosts.onTmpfs });
    expect(tmpfs.placement.placement).toBe("tmpfs");
    expect(codes(tmpfs)).toContain("fs_unsupported:tmpfs");
    const journal = await facts({ host: hosts.ext4DataJournal });
    expect(codes(journal)).toContain("fs_unsupported:ext4-data=journal");
  });

  it("warns when staging shares the root EBS volume", async () => {
    const f = await facts({ host: hosts.onRootVolume });
    expect(f.placement.placement).toBe("root-volume");
    expect(f.placement.sharesRootVolume).toBe(true);
    expect(f.placement.warnings.map((w) => w.code)).toContain("staging_on_root_volume");
  });

  it("off: cuFile is never called (no CUDA context), and the verdict says why", async () => {
    const log = join(dir, "off.log");
    const f = await facts({ host: hosts.gdsReady, mode: "off", vars: { FAKE_CUFILE_LOG: log } });
    expect(f.gds).toEqual({
      mode: "off",
      verdict: "unavailable",
      loadFormat: "safetensors",
      reasons: [{ code: "gds_disabled", message: "gds.mode is off: GDS was not probed" }],
    });
    expect(f.cufile.status).toBe("not-probed");
    expect(existsSync(log)).toBe(false);
    expect(f.gpus.gpus).toHaveLength(2);
  });

  it("at start-up cuFile is probed alongside NVML: a hanging cuFile probe is killed and reported, GPU facts still arrive", async () => {
    // NVML answers only once cuFile has been called. Probed one after the other (a wedged driver then
    // cost one deadline per probe in a row), NVML would wait for a call that comes after it, and time out.
    const cufileCalled = join(dir, "alongside-cufile.log");
    await rm(cufileCalled, { force: true });
    const f = await facts({
      host: hosts.gdsReady,
      vars: { FAKE_CUFILE_HANG: "1", FAKE_CUFILE_LOG: cufileCalled, FAKE_NVML_AFTER: cufileCalled },
      // One deadline for both probes: NVML's must hold two probe processes' start on a loaded
      // machine; cuFile's is what this test waits out.
      timeoutMs: 15_000,
    });
    expect(f.cufile.status).toBe("timeout");
    expect(codes(f)).toEqual(["probe_timeout"]);
    expect(f.gpus.source).toBe("nvml");
    expect(f.gpus.gpus).toHaveLength(2);
  });

  it("both drivers wedged: each probe is killed at its deadline and reported", async () => {
    const f = await facts({
      host: hosts.gdsReady,
      vars: { FAKE_NVML: "hang", FAKE_CUFILE_HANG: "1" },
      timeoutMs: 3000,
    });
    expect(f.cufile.status).toBe("timeout");
    expect(f.gpus.notes[0]).toBe("NVML probe: no answer within 3000 ms; the probe process was killed");
    expect(codes(f)).toEqual(["no_gpus", "probe_timeout"]);
  });

  it("without the addon: native unavailable with the reason, no GPUs without nvidia-smi, nothing throws", async () => {
    const f = await facts({ host: hosts.gdsReady, addon: join(dir, "gone.node") });
    expect(f.native.available).toBe(false);
    expect(f.native.reason).toContain("gone.node: ENOENT");
    expect(codes(f)).toEqual(["no_gpus", "native_unavailable"]);
    expect(f.gds.verdict).toBe("unavailable");
    expect(f.gpus.product).toBeNull();
    expect(factLabels(f)).toEqual({
      "coldstart.io/gds": "unavailable",
      "coldstart.io/gpu-product": null,
      "coldstart.io/refused": null,
    });
  });

  it("reads the cuFile config it hands to the probe: CUFILE_ENV_PATH_JSON points at the same file", async () => {
    const f = await facts({ host: hosts.gdsReady });
    expect(f.cufileJson).toMatchObject({ found: true, allowCompatMode: false });
    expect(f.cufileJson.path).toMatch(/etc\/cufile\.json$/);
    expect(await readFile(f.cufileJson.path as string, "utf8")).toContain("allow_compat_mode");
  });
});

describe("policy and doctor", () => {
  it("gds.mode on refuses compat with CS_GDS_UNAVAILABLE naming every reason; auto only warns", async () => {
    const f = await facts({ host: hosts.compatOnly, vars: { FAKE_CUFILE_NVFS: "0.0" } });
    const [v, ...rest] = policyViolations(f, { gdsMode: "on", placementRequire: [] });
    expect(rest).toEqual([]);
    expect(v?.code).toBe("CS_GDS_UNAVAILABLE");
    expect(v?.message).toBe(
      "gds.mode is on but GDS is compat here: compat_mode_only, nvfs_version_zero, nvidia_fs_not_loaded",
    );
    expect(policyViolations(f, { gdsMode: "auto", placementRequire: [] })).toEqual([]);

    const on = doctorChecks(f, { gdsMode: "on", placementRequire: [] });
    expect(on.filter((c) => c.status === "fail").map((c) => c.id)).toEqual([
      "gds.nvidia_fs",
      "gds.cufile_driver",
      "gds.verdict",
    ]);
    const auto = doctorChecks(f, { gdsMode: "auto", placementRequire: [] });
    expect(auto.filter((c) => c.status === "fail")).toEqual([]);
    expect(auto.find((c) => c.id === "gds.verdict")).toMatchObject({
      status: "warn",
      codes: expect.arrayContaining(["compat_mode_only"]),
    });
  });

  it("placement.require refuses the root volume with CS_PLACEMENT_REFUSED", async () => {
    const f = await facts({ host: hosts.onRootVolume });
    const [v] = policyViolations(f, { gdsMode: "auto", placementRequire: ["nvme-instance-store"] });
    expect(v?.code).toBe("CS_PLACEMENT_REFUSED");
    expect(v?.message).toMatch(
      /is on root-volume \(ext4 on .*nvme0n1.*\); placement\.require allows nvme-instance-store$/,
    );
    const placement = doctorChecks(f, { gdsMode: "auto", placementRequire: ["nvme-instance-store"] }).find(
      (c) => c.id === "staging.placement",
    );
    expect(placement?.status).toBe("fail");
  });

  it("every check passes on a node where GDS is enabled, even under gds.mode on", async () => {
    const f = await facts({ host: hosts.gdsReady });
    const checks = doctorChecks(f, { gdsMode: "on", placementRequire: ["nvme-instance-store"] });
    expect(checks.map((c) => [c.id, c.status])).toEqual([
      ["native.addon", "pass"],
      ["gpu.devices", "pass"],
      ["gds.nvidia_fs", "pass"],
      ["gds.cufile_json", "pass"],
      ["gds.cufile_driver", "pass"],
      ["gds.iommu", "pass"],
      ["staging.filesystem", "pass"],
      ["staging.placement", "pass"],
      ["gds.verdict", "pass"],
    ]);
    expect(checks.find((c) => c.id === "gds.verdict")?.value).toBe(
      "enabled → vLLM --load-format fastsafetensors",
    );
  });
});
