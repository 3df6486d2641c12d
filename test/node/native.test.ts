/**
 * The native addon against ABI-level doubles of libnvidia-ml and libcufile (test/support/native),
 * always in a child process as the product runs it.
 */
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cufileFacts } from "../../src/node/gds.js";
import { gpuFacts } from "../../src/node/gpus.js";
import { type CufileProbe, type GpuProbe, type ProbeOutcome, runProbe } from "../../src/node/native.js";
import { builtAddon, type FakeLibraries, fakeLibraries } from "../support/native-doubles.js";
import { settles, waitFor } from "../support/wait.js";

let libs: FakeLibraries;
let addonPath: string;
let dir: string;
beforeAll(async () => {
  libs = fakeLibraries();
  addonPath = builtAddon();
  dir = await mkdtemp(join(tmpdir(), "cs-native-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const env = (vars: Record<string, string>) => ({ PATH: process.env.PATH ?? "", ...vars });

/**
 * The deadline of a probe that should answer: a Node child process on a loaded machine. Tests of the
 * deadline itself give a short one to a probe that hangs for good, so no machine is too fast or slow.
 */
const PROBE_MS = 30_000;

async function gpus(
  vars: Record<string, string> = {},
  timeoutMs = PROBE_MS,
): Promise<ProbeOutcome<GpuProbe>> {
  return runProbe("gpus", { addonPath, libraryPath: libs.nvml, timeoutMs, env: env(vars) });
}
async function cufile(
  vars: Record<string, string> = {},
  timeoutMs = PROBE_MS,
): Promise<ProbeOutcome<CufileProbe>> {
  return runProbe("cufile", { addonPath, libraryPath: libs.cufile, timeoutMs, env: env(vars) });
}
function ok<T>(o: ProbeOutcome<T>): T {
  if (o.status !== "ok") throw new Error(`probe did not succeed: ${JSON.stringify(o)}`);
  return o.result;
}

/** Whether a process is still there (a zombie is not: it has exited, only its entry is left). */
async function alive(pid: number): Promise<boolean> {
  try {
    return !/^\d+ \(.*\) Z /.test(await readFile(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}

/** Whether a live process has `NAME=value` in its environment (a zombie's environment reads empty). */
async function anyProcessWith(variable: string): Promise<boolean> {
  const pids = (await readdir("/proc")).filter((n) => /^\d+$/.test(n));
  const environs = await Promise.all(
    pids.map((pid) => readFile(`/proc/${pid}/environ`, "utf8").catch(() => "")),
  );
  return environs.some((e) => e.split("\0").includes(variable));
}

/** The pid the NVML double wrote to `file` (FAKE_NVML_PID), once it has. */
async function pidIn(file: string): Promise<number> {
  const written = () =>
    readFile(file, "utf8").then(
      (t) => (t.endsWith("\n") ? t : ""),
      () => "",
    );
  const text = await waitFor(written, { what: `a pid in ${file}` });
  return Number(text.trim());
}

describe("NVML probe", () => {
  it("lists two H100s by index, name, UUID and compute capability, with driver and CUDA versions", async () => {
    const log = join(dir, "nvml-h100.log");
    const r = ok(await gpus({ FAKE_NVML: "h100x2", FAKE_NVML_LOG: log }));
    expect(r.library).toEqual({ loaded: true, path: libs.nvml, reason: null });
    expect(r.missingSymbols).toEqual([]);
    expect(r.errors).toEqual([]);
    expect(r.driverVersion).toBe("570.86.15");
    expect(r.cudaDriverVersion).toBe(12080);
    expect(r.gpus).toEqual([
      {
        index: 0,
        name: "NVIDIA H100 80GB HBM3",
        uuid: "GPU-11111111-2222-3333-4444-555555555555",
        computeCapability: { major: 9, minor: 0 },
      },
      {
        index: 1,
        name: "NVIDIA H100 80GB HBM3",
        uuid: "GPU-66666666-7777-8888-9999-000000000000",
        computeCapability: { major: 9, minor: 0 },
      },
    ]);
    // Every session is closed again.
    expect((await readFile(log, "utf8")).trim().split("\n")).toEqual(["nvmlInit_v2", "nvmlShutdown"]);

    const facts = await gpuFacts(await gpus({ FAKE_NVML: "h100x2" }), {
      nvidiaSmi: "/nonexistent",
      timeoutMs: PROBE_MS,
    });
    expect(facts).toMatchObject({
      source: "nvml",
      cudaDriverVersion: "12.8",
      product: "NVIDIA-H100-80GB-HBM3",
      gpus: [{ computeCapability: "9.0" }, { computeCapability: "9.0" }],
    });
  });

  it("reports a driver with no GPUs as an empty list, not an error", async () => {
    const r = ok(await gpus({ FAKE_NVML: "none" }));
    expect(r.errors).toEqual([]);
    expect(r.gpus).toEqual([]);
    expect(r.driverVersion).toBe("570.86.15");
  });

  it("reports nvmlInit_v2 failing with NVML's own error text when the driver is not loaded", async () => {
    const r = ok(await gpus({ FAKE_NVML: "driver-not-loaded" }));
    expect(r.errors).toEqual([{ call: "nvmlInit_v2", code: 9, message: "Driver Not Loaded" }]);
    expect(r.gpus).toEqual([]);
    expect(r.driverVersion).toBeNull();
  });

  it("gives dlerror()'s text when the library is absent, and each missing symbol by name", async () => {
    const absent = ok(
      await runProbe("gpus", { addonPath, libraryPath: join(dir, "libnvidia-ml.so.1"), timeoutMs: PROBE_MS }),
    );
    expect(absent.library.loaded).toBe(false);
    expect(absent.library.reason).toContain("cannot open shared object file: No such file or directory");

    // The cuFile double has none of NVML's symbols.
    const wrong = ok(await runProbe("gpus", { addonPath, libraryPath: libs.cufile, timeoutMs: PROBE_MS }));
    expect(wrong.library.loaded).toBe(true);
    expect(wrong.missingSymbols).toHaveLength(10);
    expect(wrong.missingSymbols[0]).toMatch(/undefined symbol: nvmlInit_v2/);
    expect(wrong.gpus).toEqual([]);
  });

  it("returns at the deadline even when a forked helper keeps the probe's pipes open", async () => {
    // The helper holds stdout for as long as the caller holds the read end: a caller that waited for
    // the pipes to close before letting go of them would never return (settles() fails it).
    const o = await settles(gpus({ FAKE_NVML: "hang-forked" }, 1500), {
      what: "the probe, whose helper holds its pipes until the caller lets go",
    });
    expect(o).toEqual({ status: "timeout", timeoutMs: 1500 });
  });

  it("finds its result line among what the library prints to stdout", async () => {
    const r = ok(await gpus({ FAKE_NVML_NOISE: "1" }));
    expect(r.gpus).toHaveLength(2);
  });

  it("keeps the GPUs when an optional NVML symbol is missing (an older driver)", async () => {
    const facts = await gpuFacts(
      await runProbe("gpus", { addonPath, libraryPath: libs.nvmlOld, timeoutMs: PROBE_MS }),
      { nvidiaSmi: "/nonexistent", timeoutMs: PROBE_MS },
    );
    expect(facts.source).toBe("nvml");
    expect(facts.gpus).toHaveLength(2);
    expect(facts.driverVersion).toBe("570.86.15");
    expect(facts.cudaDriverVersion).toBeNull();
    expect(facts.notes).toEqual([
      expect.stringMatching(/NVML symbol missing: .*nvmlSystemGetCudaDriverVersion/),
    ]);
  });

  it("kills the probe when the caller aborts (daemon shutdown)", async () => {
    const pidFile = join(dir, "abort.pid");
    const stop = new AbortController();
    // A deadline no test waits for: only the abort can end this probe.
    const probe = runProbe("gpus", {
      addonPath,
      libraryPath: libs.nvml,
      timeoutMs: 600_000,
      signal: stop.signal,
      env: env({ FAKE_NVML: "hang", FAKE_NVML_PID: pidFile }),
    });
    // Abort once the probe is inside the hanging driver call.
    const pid = await pidIn(pidFile);
    stop.abort();
    const o = await settles(probe, { what: "the aborted probe" });
    expect(o).toEqual({ status: "failed", reason: "probe cancelled (shutting down)" });
    await waitFor(async () => !(await alive(pid)), { what: `the aborted probe (pid ${pid}) gone` });
  });

  it("kills a probe whose driver call hangs and says so", async () => {
    // Found by a mark in its environment: on a loaded machine the deadline may pass before the
    // probe even reaches the driver, and it must be gone all the same.
    const mark = `COLDSTART_TEST_PROBE=hang-${process.pid}-${Date.now()}`;
    const [name, value] = mark.split("=") as [string, string];
    const o = await gpus({ FAKE_NVML: "hang", [name]: value }, 1500);
    expect(o).toEqual({ status: "timeout", timeoutMs: 1500 });
    await waitFor(async () => !(await anyProcessWith(mark)), { what: "the timed-out probe gone" });
  });
});

describe("cuFile probe", () => {
  it("opens the driver, reads the leading nvfs properties from an oversized buffer, and closes it", async () => {
    const log = join(dir, "cufile-ok.log");
    const r = ok(await cufile({ FAKE_CUFILE_LOG: log }));
    expect(r.open).toEqual({ err: 0, cuErr: 0 });
    expect(r.properties).toEqual({
      result: { err: 0, cuErr: 0 },
      nvfsMajor: 2,
      nvfsMinor: 17,
      pollThreshSize: 64,
      maxDirectIoSize: 16384,
      dstatusflags: 16,
      dcontrolflags: 0,
    });
    expect(r.close).toEqual({ err: 0, cuErr: 0 });
    // The reference-counted close of CUDA 12.2+ is preferred over the old name.
    expect((await readFile(log, "utf8")).trim().split("\n")).toEqual([
      "cuFileDriverOpen",
      "cuFileDriverGetProperties",
      "cuFileDriverClose_v2",
    ]);
    expect(cufileFacts({ status: "ok", addonPath, result: r })).toMatchObject({
      status: "ok",
      driverOpen: { err: 0, name: "CU_FILE_SUCCESS" },
      nvfs: { major: 2, minor: 17 },
      nvmeSupported: true,
      compatAllowed: false,
    });
  });

  it("returns cuFileDriverOpen's error (5001) and neither reads properties nor closes", async () => {
    const log = join(dir, "cufile-5001.log");
    const r = ok(await cufile({ FAKE_CUFILE_OPEN: "5001", FAKE_CUFILE_LOG: log }));
    expect(r.open).toEqual({ err: 5001, cuErr: 0 });
    expect(r.properties).toBeNull();
    expect(r.close).toBeNull();
    expect((await readFile(log, "utf8")).trim()).toBe("cuFileDriverOpen");
    expect(cufileFacts({ status: "ok", addonPath, result: r }).driverOpen).toEqual({
      err: 5001,
      cuErr: 0,
      name: "CU_FILE_DRIVER_NOT_INITIALIZED",
    });
  });

  it("reads nvfs 0.0, a clear NVMe bit and the compat bit as the driver sets them", async () => {
    const r = ok(await cufile({ FAKE_CUFILE_NVFS: "0.0", FAKE_CUFILE_NVME: "0", FAKE_CUFILE_COMPAT: "1" }));
    const f = cufileFacts({ status: "ok", addonPath, result: r });
    expect(f.nvfs).toEqual({ major: 0, minor: 0 });
    expect(f.nvmeSupported).toBe(false);
    expect(f.compatAllowed).toBe(true);
    expect(f.dcontrolflags).toBe(2);
  });

  it("tries libcufile.so.0 then libcufile.so and reports both dlerror() texts", async () => {
    const r = ok(
      await runProbe("cufile", { addonPath, timeoutMs: PROBE_MS, env: env({ LD_LIBRARY_PATH: dir }) }),
    );
    expect(r.library.loaded).toBe(false);
    expect(r.library.reason).toMatch(
      /^libcufile\.so\.0: cannot open shared object file.*; libcufile\.so: cannot open/,
    );
    expect(r.open).toBeNull();
  });

  it("loads libcufile.so.0 by soname from the library path", async () => {
    const r = ok(
      await runProbe("cufile", {
        addonPath,
        timeoutMs: PROBE_MS,
        env: env({ LD_LIBRARY_PATH: join(libs.cufile, "..") }),
      }),
    );
    expect(r.library).toEqual({ loaded: true, path: "libcufile.so.0", reason: null });
    expect(r.open).toEqual({ err: 0, cuErr: 0 });
  });

  it("kills a probe hanging in cuFileDriverOpen", async () => {
    expect(await cufile({ FAKE_CUFILE_HANG: "1" }, 1500)).toEqual({ status: "timeout", timeoutMs: 1500 });
  });
});

describe("without the addon", () => {
  it("says native-unavailable with the reason when the file is missing", async () => {
    const o = await runProbe("gpus", { addonPath: join(dir, "missing.node"), timeoutMs: PROBE_MS });
    expect(o.status).toBe("native-unavailable");
    expect(o.status === "native-unavailable" && o.reason).toContain("ENOENT");
  });

  it("says native-unavailable with the loader's error when the file is not an addon", async () => {
    const bogus = join(dir, "bogus.node");
    await writeFile(bogus, "not an ELF file");
    const o = await runProbe("cufile", { addonPath: bogus, timeoutMs: PROBE_MS });
    expect(o.status).toBe("native-unavailable");
    expect(o.status === "native-unavailable" && o.reason).toMatch(
      /cannot load .*bogus\.node: .*(invalid ELF header|file too short)/,
    );
  });

  it("falls back to nvidia-smi for GPU facts", async () => {
    const smi = join(dir, "nvidia-smi");
    await writeFile(
      smi,
      `#!/bin/sh\n[ "$1" = "--query-gpu=index,name,uuid,compute_cap,driver_version" ] || exit 9\necho "0, NVIDIA H100 PCIe, GPU-aaaa, 9.0, 550.54.15"\n`,
      { mode: 0o755 },
    );
    const facts = await gpuFacts(
      { status: "native-unavailable", reason: "missing" },
      { nvidiaSmi: smi, timeoutMs: PROBE_MS },
    );
    expect(facts).toEqual({
      source: "nvidia-smi",
      driverVersion: "550.54.15",
      cudaDriverVersion: null,
      gpus: [{ index: 0, name: "NVIDIA H100 PCIe", uuid: "GPU-aaaa", computeCapability: "9.0" }],
      product: "NVIDIA-H100-PCIe",
      notes: ["NVML probe: native addon unavailable: missing"],
    });
    // nvidia-smi hangs with a wedged driver too, and what it forks may hold its pipes: here for
    // longer than settles() waits, so a fallback that waited for them would fail it.
    const hung = join(dir, "nvidia-smi-hung");
    const forked = join(dir, "nvidia-smi-hung.pid");
    await writeFile(hung, `#!/bin/sh\nsleep 120 &\necho $! > '${forked}'\nexec sleep 120\n`, { mode: 0o755 });
    try {
      const stuck = await settles(
        gpuFacts({ status: "failed", reason: "x" }, { nvidiaSmi: hung, timeoutMs: 1000 }),
        { what: "the nvidia-smi fallback, whose child holds its pipes" },
      );
      expect(stuck.notes[1]).toBe("nvidia-smi fallback: no answer within 1000 ms; killed");
    } finally {
      const pid = Number(await readFile(forked, "utf8").catch(() => ""));
      if (pid > 0) process.kill(pid, "SIGKILL");
    }
    const none = await gpuFacts(
      { status: "failed", reason: "x" },
      { nvidiaSmi: join(dir, "absent"), timeoutMs: PROBE_MS },
    );
    expect(none.source).toBe("none");
    expect(none.notes[1]).toMatch(/nvidia-smi fallback: .*absent not found/);
  });
});
