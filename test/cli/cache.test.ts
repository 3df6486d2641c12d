/**
 * `coldstart cache key` as a real child process. GPU facts come from the NVML ABI double
 * (test/support/native/fake-nvml.c), which plays two H100s, two L40S or one of each.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { cacheKey } from "../../src/compile-cache/key.js";
import { builtAddon, type FakeLibraries, fakeLibraries } from "../support/native-doubles.js";
import { coldstart, finish } from "../support/processes.js";

const NO_S3 = { endpoint: "http://127.0.0.1:1", accessKeyId: "x", secretAccessKey: "x", region: "us-east-1" };
const STACK = ["--torch", "2.5.1+cu124", "--torch-cuda", "12.4", "--triton", "3.1.0", "--vllm", "0.6.4"];
let libs: FakeLibraries;
beforeAll(() => {
  libs = fakeLibraries();
  builtAddon();
});

const key = (args: string[], nvml = "h100x2") =>
  finish(
    coldstart(["cache", "key", ...args], NO_S3, {
      COLDSTART_NVML_LIBRARY: libs.nvml,
      COLDSTART_NVIDIA_SMI: "/nonexistent/nvidia-smi",
      FAKE_NVML: nvml,
    }),
  );

describe("coldstart cache key", () => {
  it("prints the key of this node's GPUs (probed through NVML) and the declared stack", async () => {
    const out = await key(STACK);
    expect(out.stderr).toBe("");
    expect(out.code).toBe(0);
    const expected = cacheKey({
      gpuProduct: "NVIDIA-H100-80GB-HBM3",
      computeCapability: "9.0",
      driverMajor: "570",
      torch: "2.5.1+cu124",
      torchCuda: "12.4",
      triton: "3.1.0",
      vllm: "0.6.4",
    });
    expect(out.stdout).toBe(`${expected.key}\n`);
  });

  it("gives another GPU kind another key, and --json shows what went in", async () => {
    const h100 = JSON.parse((await key([...STACK, "--json"])).stdout);
    const out = await key([...STACK, "--json"], "l40sx2");
    expect(out.code).toBe(0);
    const l40s = JSON.parse(out.stdout);
    expect(l40s.key).toMatch(/^nvidia-l40s-sm89-drv570-[0-9a-f]{20}$/);
    expect(l40s.key).not.toBe(h100.key);
    expect(l40s.gpuFactsFrom).toBe("nvml");
    expect(l40s.material).toMatchObject({ "gpu.product": "NVIDIA-L40S", "gpu.compute_capability": "8.9" });
    expect(l40s.canonical.split("\n")[0]).toBe("coldstart-compile-cache-key/v1");
  });

  it("takes any well-formed --extra key, even one named like an object's own property", async () => {
    const out = await key([...STACK, "--extra", "constructor=x", "--json"]);
    expect(out.stderr).toBe("");
    expect(JSON.parse(out.stdout).material["extra.constructor"]).toBe("x");
  });

  it("needs no GPU when the GPU facts are given as flags", async () => {
    const gpu = [
      "--gpu-product",
      "NVIDIA-H100-80GB-HBM3",
      "--compute-capability",
      "9.0",
      "--driver-major",
      "570",
    ];
    const out = await key([...STACK, ...gpu], "none");
    expect(out.code).toBe(0);
    expect(out.stdout).toBe((await key(STACK)).stdout);
  });

  it.each([
    [
      "no framework identity",
      [] as string[],
      "h100x2",
      /CS_CACHE_KEY_INVALID: compile-cache key: torch is missing/,
    ],
    ["GPUs of two kinds", STACK, "mixed", /gpuProduct "mixed" is invalid: expected one GPU kind/],
    ["no GPU and no GPU flags", STACK, "none", /no GPU found on this node .*pass --gpu-product/],
    [
      "a malformed --extra",
      [...STACK, "--extra", "novalue"],
      "h100x2",
      /extra "novalue" is invalid: expected KEY=VALUE/,
    ],
    ["a bad tenant", [...STACK, "--tenant", "Team A"], "h100x2", /tenant "Team A" is invalid/],
    [
      "an --extra key given twice",
      [...STACK, "--extra", "a=1", "--extra", "a=2"],
      "h100x2",
      /a is given twice/,
    ],
  ])("exits 2 with one line naming the field: %s", async (_what, args, nvml, message) => {
    const out = await key(args, nvml);
    expect(out.code).toBe(2);
    expect(out.stdout).toBe("");
    expect(out.stderr.trim().split("\n")).toHaveLength(1);
    expect(out.stderr).toMatch(message);
  });
});
