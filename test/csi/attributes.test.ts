import { describe, expect, it } from "vitest";
import { AccessPolicy, parseAccessRule } from "../../src/csi/access.js";
import { volumeSpec } from "../../src/csi/attributes.js";
import { parseMountInfo } from "../../src/csi/mounts.js";
import { expectColdstartError, thrownBy } from "../support/expect-error.js";

const POD = {
  "csi.storage.k8s.io/pod.namespace": "ml-serving",
  "csi.storage.k8s.io/pod.name": "vllm-0",
  "csi.storage.k8s.io/pod.uid": "u-1",
  "csi.storage.k8s.io/serviceAccount.name": "default",
  "csi.storage.k8s.io/ephemeral": "true",
};

describe("volume attributes", () => {
  it("reads the model, the source and both filter forms, as the API's PUT takes them", () => {
    const spec = volumeSpec({
      ...POD,
      model: "meta/llama",
      source: "s3://models/llama",
      include: '["*.json", "*.safetensors"]',
      exclude: "*.{bin,pt}",
    });
    expect(spec).toEqual({
      kind: "model",
      modelId: "meta/llama",
      // Normalised as the API's PUT normalises it: the prefix is a directory.
      source: "s3://models/llama/",
      include: ["*.json", "*.safetensors"],
      exclude: ["*.{bin,pt}"],
      pod: { namespace: "ml-serving", name: "vllm-0", uid: "u-1", serviceAccount: "default" },
    });
  });

  it.each([
    [{ ...POD, model: "m", source: "s3://bkt/p/", modle: "m" }, "volumeAttributes.modle"],
    [{ ...POD, source: "s3://bkt/p/" }, "volumeAttributes.model"],
    [{ ...POD, model: "m" }, "volumeAttributes.source"],
    [{ ...POD, model: "m", source: "s3://bkt/p/", include: "[1]" }, "volumeAttributes.include"],
    [{ ...POD, model: "m", source: "s3://bkt/p/", include: "[oops" }, "volumeAttributes.include"],
    [
      { ...POD, "csi.storage.k8s.io/ephemeral": "false", model: "m", source: "s3://bkt/p/" },
      "csi.storage.k8s.io/ephemeral",
    ],
    [
      { ...POD, "csi.storage.k8s.io/pod.namespace": "", model: "m", source: "s3://bkt/p/" },
      "csi.storage.k8s.io/pod.namespace",
    ],
  ])("refuses %j naming %s", (context, field) => {
    const err = expectColdstartError(
      thrownBy(() => volumeSpec(context as Record<string, string>)),
      "CS_CSI_VOLUME_INVALID",
    );
    expect(err.details.field).toBe(field);
    expect(err.message).toContain(field);
  });

  it("reads a compile-cache volume's identity and remote, and refuses model attributes on it", () => {
    const spec = volumeSpec({
      ...POD,
      kind: "compile-cache",
      vllm: "0.11.0",
      torch: "2.8.0",
      extra: '{"image": "vllm/vllm-openai:v0.11.0"}',
      remote: "s3://caches/cc",
    });
    expect(spec).toMatchObject({
      kind: "compile-cache",
      identity: { vllm: "0.11.0", torch: "2.8.0", extra: { image: "vllm/vllm-openai:v0.11.0" } },
      remote: "s3://caches/cc/",
    });
    const onCache = expectColdstartError(
      thrownBy(() => volumeSpec({ ...POD, kind: "compile-cache", model: "m" })),
      "CS_CSI_VOLUME_INVALID",
    );
    expect(onCache.message).toContain("volumeAttributes.model is not an attribute of a compile-cache volume");
    for (const extra of ['["a"]', '{"a": 1}', "{"]) {
      const err = expectColdstartError(
        thrownBy(() => volumeSpec({ ...POD, kind: "compile-cache", extra })),
        "CS_CSI_VOLUME_INVALID",
      );
      expect(err.details.field).toBe("volumeAttributes.extra");
    }
    const kind = expectColdstartError(
      thrownBy(() => volumeSpec({ ...POD, kind: "cache", model: "m", source: "s3://bkt/p/" })),
      "CS_CSI_VOLUME_INVALID",
    );
    expect(kind.message).toBe('volumeAttributes.kind must be one of model, compile-cache, got "cache"');
  });

  it("refuses a model id or a source the API would refuse, with the API's codes", () => {
    expectColdstartError(
      thrownBy(() => volumeSpec({ ...POD, model: "../x", source: "s3://bkt/p/" })),
      "CS_MODEL_ID_INVALID",
    );
    expectColdstartError(
      thrownBy(() => volumeSpec({ ...POD, model: "m", source: "https://b/p/" })),
      "CS_SOURCE_URI_INVALID",
    );
  });
});

describe("csi.allow", () => {
  it("denies by default and allows a namespace only the sources its rules name", () => {
    expectColdstartError(
      thrownBy(() => new AccessPolicy([]).check("ml", "s3://bkt/p/")),
      "CS_CSI_NAMESPACE_DENIED",
    );
    const policy = new AccessPolicy(
      ["ml-*=s3://models/meta-llama/**", "research=s3://scratch/**"].map((r) => parseAccessRule(r) as never),
    );
    expect(() => policy.check("ml-serving", "s3://models/meta-llama/Llama-3.1-8B/")).not.toThrow();
    expect(() => policy.check("research", "s3://scratch/x/")).not.toThrow();
    const err = expectColdstartError(
      thrownBy(() => policy.check("ml-serving", "s3://scratch/x/")),
      "CS_CSI_NAMESPACE_DENIED",
    );
    expect(err.message).toContain("namespace ml-serving may not mount s3://scratch/x/");
  });

  it("splits a rule at its first =, so a source may hold one", () => {
    expect(parseAccessRule("ns=s3://b/k=v/**")).toEqual({ namespace: "ns", source: "s3://b/k=v/**" });
    expect(parseAccessRule("=s3://b/")).toBeUndefined();
    expect(parseAccessRule("ns=")).toBeUndefined();
  });
});

describe("mountinfo", () => {
  it("reads mount points and roots, with the kernel's octal escapes", () => {
    const text = [
      "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue",
      "40 36 8:1 /var/lib/coldstart/models/m /var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/my\\040vol/mount ro,relatime shared:5 - xfs /dev/nvme1n1 rw",
      "",
    ].join("\n");
    expect(parseMountInfo(text)).toEqual([
      { root: "/mnt1", mountPoint: "/mnt2", options: ["rw", "noatime"], fsType: "ext3" },
      {
        root: "/var/lib/coldstart/models/m",
        mountPoint: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/my vol/mount",
        options: ["ro", "relatime"],
        fsType: "xfs",
      },
    ]);
  });
});
