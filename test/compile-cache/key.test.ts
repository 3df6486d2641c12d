import { describe, expect, it } from "vitest";
import { type CacheKeyInput, cacheKey, driverMajor } from "../../src/compile-cache/key.js";
import { expectColdstartError, thrownBy } from "../support/expect-error.js";

const H100: CacheKeyInput = {
  gpuProduct: "NVIDIA-H100-80GB-HBM3",
  computeCapability: "9.0",
  driverMajor: "570",
  torch: "2.5.1+cu124",
  torchCuda: "12.4",
  triton: "3.1.0",
  vllm: "0.6.4.post1",
};

describe("the compile-cache key", () => {
  it("is stable: this exact input has had this exact key since v1 (changing it orphans every cache)", () => {
    const k = cacheKey(H100);
    expect(k.canonical).toBe(
      [
        "coldstart-compile-cache-key/v1",
        "driver.major=570",
        "framework.torch=2.5.1+cu124",
        "framework.torch_cuda=12.4",
        "framework.triton=3.1.0",
        "framework.vllm=0.6.4.post1",
        "gpu.compute_capability=9.0",
        "gpu.product=NVIDIA-H100-80GB-HBM3",
      ].join("\n"),
    );
    expect(k.key).toBe("nvidia-h100-80gb-hbm3-sm90-drv570-3f6fd550cd9fcc503525");
    expect(k.key).toBe(cacheKey({ ...H100 }).key);
  });

  it("does not depend on the order extra pairs are given in", () => {
    const a = cacheKey({ ...H100, extra: { image: "sha256:abc", build: "7" } });
    const b = cacheKey({ ...H100, extra: { build: "7", image: "sha256:abc" } });
    expect(a.key).toBe(b.key);
  });

  it("changes with every input that makes artifacts incompatible", () => {
    const variants: CacheKeyInput[] = [
      { ...H100, gpuProduct: "NVIDIA-H100-PCIe" },
      { ...H100, computeCapability: "9.1" },
      { ...H100, driverMajor: "550" },
      { ...H100, torch: "2.5.0" },
      { ...H100, torchCuda: "12.1" },
      { ...H100, triton: "3.0.0" },
      { ...H100, vllm: "0.6.3" },
      { ...H100, extra: { image: "sha256:abc" } },
      { ...H100, tenant: "team-a" },
      { ...H100, torchCuda: undefined },
    ];
    const keys = new Set([cacheKey(H100).key, ...variants.map((v) => cacheKey(v).key)]);
    expect(keys.size).toBe(variants.length + 1);
  });

  it("puts the tenant first, so one tenant's caches share a prefix", () => {
    expect(cacheKey({ ...H100, tenant: "team-a" }).key).toMatch(
      /^team-a--nvidia-h100-80gb-hbm3-sm90-drv570-/,
    );
  });

  it("is one safe path and S3 key segment for any valid input", () => {
    const k = cacheKey({
      gpuProduct: "NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition.Extra_Long_Name-X",
      computeCapability: "12.0",
      driverMajor: "580",
      extra: { "image.digest": "sha256:0123/abc=" },
    });
    expect(k.key).toMatch(/^[a-z0-9][a-z0-9-]{0,120}$/);
    expect(k.key).not.toContain("--");
  });

  it.each([
    [{ ...H100, torch: undefined, vllm: undefined }, "torch", undefined],
    [{ ...H100, gpuProduct: "mixed" }, "gpuProduct", "mixed"],
    [{ ...H100, gpuProduct: "NVIDIA H100" }, "gpuProduct", "NVIDIA H100"],
    [{ ...H100, computeCapability: "9" }, "computeCapability", "9"],
    [{ ...H100, driverMajor: "570.86" }, "driverMajor", "570.86"],
    [{ ...H100, torch: "2.5 1" }, "torch", "2.5 1"],
    [{ ...H100, tenant: "Team_A" }, "tenant", "Team_A"],
    [{ ...H100, tenant: "a--b" }, "tenant", "a--b"],
    [{ ...H100, extra: { "Bad Key": "x" } }, "extra.Bad Key", "Bad Key"],
    [{ ...H100, gpuProduct: "unknown" }, "gpuProduct", "unknown"],
    [{ ...H100, computeCapability: "09.0" }, "computeCapability", "09.0"],
    [{ ...H100, driverMajor: "0570" }, "driverMajor", "0570"],
    [{ ...H100, extra: { image: "" } }, "extra.image", ""],
  ] as [CacheKeyInput, string, string | undefined][])(
    "refuses a bad input with CS_CACHE_KEY_INVALID naming the field (%#)",
    (input, field, value) => {
      const err = expectColdstartError(
        thrownBy(() => cacheKey(input)),
        "CS_CACHE_KEY_INVALID",
      );
      expect(err.details.field).toBe(field);
      if (value !== undefined) {
        expect(err.details.value).toBe(value);
        expect(err.message).toContain(JSON.stringify(value));
      }
    },
  );

  it("names an input it does not know", () => {
    const err = expectColdstartError(
      thrownBy(() => cacheKey({ ...H100, cuda: "12" } as CacheKeyInput)),
      "CS_CACHE_KEY_INVALID",
    );
    expect(err.details.field).toBe("cuda");
    expect(err.message).toMatch(/cuda is not an input/);
  });

  it("never lets a product read as a tenant prefix", () => {
    const k = cacheKey({ ...H100, gpuProduct: "A--B" });
    expect(k.key).toMatch(/^a-b-sm90-drv570-/);
  });

  it("takes the driver's major from its full version", () => {
    expect(driverMajor("570.86.15")).toBe("570");
    expect(driverMajor("580")).toBe("580");
    expect(driverMajor(null)).toBeNull();
    expect(driverMajor("v570")).toBeNull();
  });
});
