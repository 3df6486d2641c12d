/** The pull routes' grammar (src/mirror/reference.ts): names, digests and tags as the specs define them. */
import { describe, expect, it } from "vitest";
import { isDigest, parsePullPath } from "../../src/mirror/reference.js";

const hex = "a".repeat(64);

describe("parsePullPath", () => {
  it("accepts names, digests and tags of the grammar", () => {
    expect(parsePullPath(`/v2/library/ubuntu/blobs/sha256:${hex}?ns=docker.io`)).toEqual({
      name: "library/ubuntu",
      kind: "blob",
      reference: `sha256:${hex}`,
      isDigest: true,
    });
    expect(parsePullPath("/v2/a__b/c-d--e/f.g_h/manifests/V1.2_3-rc")).toEqual({
      name: "a__b/c-d--e/f.g_h",
      kind: "manifest",
      reference: "V1.2_3-rc",
      isDigest: false,
    });
    // A repository may itself be named like a route segment.
    expect(parsePullPath(`/v2/x/blobs/y/blobs/sha256:${hex}`)).toMatchObject({ name: "x/blobs/y" });
    // Unregistered algorithms follow the grammar only; registered ones their encoding.
    expect(isDigest("multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8")).toBe(true);
    expect(isDigest(`sha512:${"0".repeat(128)}`)).toBe(true);
    expect(isDigest(`sha512:${hex}`)).toBe(false);
  });

  it("is undefined for what is not a pull route", () => {
    for (const t of [
      "/v2/",
      "/v2/x/tags/list",
      "/v2/x/blobs/",
      "/v2//blobs/x",
      "/v1/x/blobs/y",
      "http://h/v2/x/blobs/y",
    ]) {
      expect([t, parsePullPath(t)]).toEqual([t, undefined]);
    }
  });

  it("refuses names outside the grammar, raw or percent-encoded", () => {
    for (const name of [
      "..",
      "../../../etc",
      "%2e%2e/%2e%2e",
      "library/..%2F..%2Fx",
      "test%2fimg",
      "te%73t",
      "UPPER",
      "a/",
      "a//b",
      "-a",
      "a-",
      "a..b",
      "a___b",
      "%zz",
      "a".repeat(256),
    ]) {
      expect([name, parsePullPath(`/v2/${name}/blobs/sha256:${hex}`)]).toEqual([
        name,
        { invalid: "NAME_INVALID", message: expect.any(String), detail: { name } },
      ]);
    }
    expect(parsePullPath(`/v2/${"a".repeat(255)}/blobs/sha256:${hex}`)).toMatchObject({ isDigest: true });
  });

  it("refuses references that are neither a digest nor (for manifests) a tag", () => {
    const cases: [string, string][] = [
      ["blobs/latest", "DIGEST_INVALID"],
      [`blobs/sha256:${hex.toUpperCase()}`, "DIGEST_INVALID"],
      [`blobs/sha256:${hex}0`, "DIGEST_INVALID"],
      [`blobs/sha256%3A${hex}`, "DIGEST_INVALID"],
      ["blobs/sha256:", "DIGEST_INVALID"],
      [":abc", "DIGEST_INVALID"],
      ["manifests/SHA256:abc", "DIGEST_INVALID"],
      [`manifests/sha256%3A${hex}`, "DIGEST_INVALID"],
      ["manifests/..", "MANIFEST_INVALID"],
      ["manifests/.x", "MANIFEST_INVALID"],
      ["manifests/-x", "MANIFEST_INVALID"],
      ["manifests/%2e%2e", "MANIFEST_INVALID"],
      ["manifests/%zz", "MANIFEST_INVALID"],
      [`manifests/${"t".repeat(129)}`, "MANIFEST_INVALID"],
    ];
    for (const [tail, code] of cases) {
      const got = parsePullPath(`/v2/x/${tail.startsWith(":") ? `blobs/${tail}` : tail}`);
      expect([tail, got && "invalid" in got ? got.invalid : got]).toEqual([tail, code]);
    }
    expect(parsePullPath(`/v2/x/manifests/${"t".repeat(128)}`)).toMatchObject({ isDigest: false });
  });
});
