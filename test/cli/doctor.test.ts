/**
 * `coldstart doctor` as a real child process over fake host trees and the ABI doubles.
 */
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import * as hosts from "../support/fake-host.js";
import { builtAddon, type FakeLibraries, fakeLibraries } from "../support/native-doubles.js";
import { coldstart, finish } from "../support/processes.js";

const NO_S3 = { endpoint: "http://127.0.0.1:1", accessKeyId: "x", secretAccessKey: "x", region: "us-east-1" };
let libs: FakeLibraries;
const cleanups: (() => Promise<void>)[] = [];
beforeAll(() => {
  libs = fakeLibraries();
  builtAddon();
});
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

async function doctor(
  host: () => Promise<hosts.FakeScenario>,
  args: string[],
  env: Record<string, string> = {},
) {
  const s = await host();
  cleanups.push(s.cleanup);
  return finish(
    coldstart(["doctor", "--root", s.stagingRoot, ...args], NO_S3, {
      COLDSTART_HOST_ROOT: s.hostRoot,
      COLDSTART_NVML_LIBRARY: libs.nvml,
      COLDSTART_CUFILE_LIBRARY: libs.cufile,
      COLDSTART_NVIDIA_SMI: "/nonexistent/nvidia-smi",
      ...env,
    }),
  );
}

describe("coldstart doctor", () => {
  it("--json: every check passes where GDS is enabled, exit 0, facts included", async () => {
    const out = await doctor(hosts.gdsReady, ["--json"]);
    expect(out.stderr).toBe("");
    expect(out.code).toBe(0);
    const report = JSON.parse(out.stdout);
    expect(report.summary).toEqual({ pass: 9, warn: 0, fail: 0 });
    expect(report.facts.gds).toEqual({
      mode: "auto",
      verdict: "enabled",
      loadFormat: "fastsafetensors",
      reasons: [],
    });
    expect(report.facts.gpus.gpus).toHaveLength(2);
    expect(report.checks[0]).toEqual({
      id: "native.addon",
      title: "Native addon",
      value: expect.stringMatching(/^loaded \(.*coldstart_native\.node\)$/),
      status: "pass",
      advice: null,
      codes: [],
    });
  });

  it("exits 1 with a FAIL line and advice when --gds on meets a compat-only node", async () => {
    const out = await doctor(hosts.compatOnly, ["--gds", "on"], { FAKE_CUFILE_NVFS: "0.0" });
    expect(out.code).toBe(1);
    expect(out.stdout).toMatch(
      /^ {2}FAIL {2}GDS verdict +compat → vLLM --load-format safetensors \(compat_mode_only, /m,
    );
    expect(out.stdout).toMatch(
      /^ {2}FAIL {2}nvidia-fs kernel module +not loaded\n +→ Install and load nvidia-fs/m,
    );
    expect(out.stdout).toMatch(
      /GDS compat: use vLLM --load-format safetensors\. \d+ passed, \d+ warnings, 3 failed\.\n$/,
    );
  });

  it("the same node in auto mode only warns, and exits 0", async () => {
    const out = await doctor(hosts.compatOnly, [], { FAKE_CUFILE_NVFS: "0.0" });
    expect(out.code).toBe(0);
    expect(out.stdout).toMatch(/^ {2}WARN {2}GDS verdict/m);
    expect(out.stdout).not.toMatch(/FAIL/);
  });

  it("runs without the addon: reports it unavailable with the reason, and does not crash", async () => {
    const out = await doctor(hosts.gdsReady, ["--json"], {
      COLDSTART_NATIVE_ADDON: "/nonexistent/coldstart_native.node",
    });
    expect(out.code).toBe(0);
    const report = JSON.parse(out.stdout);
    expect(report.facts.native).toEqual({
      available: false,
      path: null,
      reason: expect.stringContaining("/nonexistent/coldstart_native.node: ENOENT"),
    });
    expect(report.checks.find((c: { id: string }) => c.id === "native.addon").status).toBe("warn");
    expect(report.facts.gds.reasons.map((r: { code: string }) => r.code)).toEqual([
      "no_gpus",
      "native_unavailable",
    ]);
  });

  it("fails the placement check where placement.require refuses the root volume", async () => {
    const out = await doctor(hosts.onRootVolume, ["--require-placement", "nvme-instance-store", "--json"]);
    expect(out.code).toBe(1);
    const placement = JSON.parse(out.stdout).checks.find((c: { id: string }) => c.id === "staging.placement");
    expect(placement).toMatchObject({
      status: "fail",
      codes: expect.arrayContaining(["staging_on_root_volume"]),
    });
  });

  it("placement.require auto fails on the root volume beside instance storage: the device, the disks, the fix", async () => {
    const out = await doctor(hosts.daemonSetOnRootVolumeBesideInstanceStore, ["--require-placement", "auto"]);
    expect(out.code).toBe(1);
    const lines = out.stdout.split("\n");
    const at = lines.findIndex((l) => /^ {2}FAIL {2}Staging placement /.test(l));
    expect(lines[at]).toMatch(
      / {2}root-volume: \/var\/lib\/coldstart is ext4 on nvme0n1p1 \(nvme0n1\), shared with the root volume; instance store unused: nvme1n1, nvme2n1$/,
    );
    expect(lines[at + 1]?.trim()).toBe(
      "→ staging root /var/lib/coldstart is on root-volume (ext4 on nvme0n1p1 (nvme0n1)), and placement.require " +
        'auto refuses the root volume on a node with instance storage: nvme1n1, nvme2n1 ("Amazon EC2 NVMe ' +
        'Instance Storage") mounted at /mnt/k8s-disks/0 (xfs on md127). Point the staging root at the ' +
        "instance-store mount: the DaemonSet's staging hostPath /mnt/k8s-disks/0/coldstart (kustomize component " +
        "deploy/components/instance-store).",
    );
    expect(out.stdout).toMatch(/ 1 failed\.\n$/);

    const json = await doctor(hosts.daemonSetOnRootVolumeBesideInstanceStore, [
      "--require-placement",
      "auto",
      "--json",
    ]);
    expect(json.code).toBe(1);
    const report = JSON.parse(json.stdout);
    expect(report.checks.find((c: { id: string }) => c.id === "staging.placement")).toMatchObject({
      status: "fail",
      codes: ["staging_on_root_volume", "instance_store_unused", "staging_on_remote_disk"],
      advice: expect.stringContaining("/mnt/k8s-disks/0/coldstart"),
    });
    expect(report.facts.placement.instanceStore).toEqual({
      disks: [
        { name: "nvme1n1", nvme: true, model: "Amazon EC2 NVMe Instance Storage", kind: "instance-store" },
        { name: "nvme2n1", nvme: true, model: "Amazon EC2 NVMe Instance Storage", kind: "instance-store" },
      ],
      mounts: [
        { mountPoint: "/mnt/k8s-disks/0", fsType: "xfs", device: "md127", disks: ["nvme1n1", "nvme2n1"] },
      ],
      spare: ["nvme1n1", "nvme2n1"],
    });
  });

  it("placement.require auto passes on the instance-store RAID0, and only warns on a root volume without instance storage", async () => {
    const onArray = await doctor(hosts.daemonSetOnEksInstanceStore, ["--require-placement", "auto"]);
    expect(onArray.code).toBe(0);
    expect(onArray.stdout).toMatch(
      /^ {2}PASS {2}Staging placement +nvme-instance-store: \/var\/lib\/coldstart is xfs on md127 \(nvme1n1, nvme2n1\)$/m,
    );
    const root = await doctor(hosts.daemonSetOnRootVolume, ["--require-placement", "auto", "--json"]);
    expect(root.code).toBe(0);
    expect(
      JSON.parse(root.stdout).checks.find((c: { id: string }) => c.id === "staging.placement"),
    ).toMatchObject({
      status: "warn",
      codes: ["staging_on_root_volume", "staging_on_remote_disk"],
    });
  });

  it("exits 2 naming the option for a bad value", async () => {
    const out = await doctor(hosts.gdsReady, ["--gds", "maybe"]);
    expect(out.code).toBe(2);
    expect(out.stderr).toMatch(
      /^coldstart: CS_CONFIG_INVALID: gds\.mode \(from flag --gds\) must be one of auto, on, off, got "maybe"\n$/,
    );
    const placement = await doctor(hosts.gdsReady, ["--require-placement", "ssd"]);
    expect(placement.code).toBe(2);
    expect(placement.stderr).toMatch(
      /placement\.require \(from flag --require-placement\) each entry must be one of .*, got "ssd"\n$/,
    );
  });
});
