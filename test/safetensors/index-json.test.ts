import { describe, expect, it } from "vitest";
import type { ColdstartError } from "../../src/errors.js";
import { buildSafetensors } from "../../src/safetensors/build.js";
import type { SafetensorsHeader } from "../../src/safetensors/header.js";
import { parseSafetensorsHeader } from "../../src/safetensors/header.js";
import type { SafetensorsIndex } from "../../src/safetensors/index-json.js";
import { checkIndexAgainstShards, parseSafetensorsIndex } from "../../src/safetensors/index-json.js";
import { expectColdstartError, thrownBy } from "../support/expect-error.js";

const INDEX = "models/m/model.safetensors.index.json";
const S1 = "model-00001-of-00002.safetensors";
const S2 = "model-00002-of-00002.safetensors";

function shard(tensors: { name: string; dtype: string; shape: number[] }[]): SafetensorsHeader {
  const file = buildSafetensors(tensors);
  return parseSafetensorsHeader(file, file.length);
}

/** Two shards: S1 holds embed (F16 [4, 8] = 64 bytes) and layer.0 (F32 [8] = 32), S2 holds lm_head (BF16 [8, 4] = 64). */
function model(): Map<string, SafetensorsHeader> {
  return new Map([
    [
      S1,
      shard([
        { name: "embed", dtype: "F16", shape: [4, 8] },
        { name: "layer.0", dtype: "F32", shape: [8] },
      ]),
    ],
    [S2, shard([{ name: "lm_head", dtype: "BF16", shape: [8, 4] }])],
  ]);
}

function indexText(weightMap: Record<string, string>, totalSize: number | undefined = 160): string {
  const metadata = totalSize === undefined ? {} : { total_size: totalSize };
  return JSON.stringify({ metadata, weight_map: weightMap });
}

const GOOD_MAP = { embed: S1, "layer.0": S1, lm_head: S2 };

function expectInvalid(fn: () => unknown, pattern: RegExp): ColdstartError {
  const err = expectColdstartError(thrownBy(fn), "CS_SAFETENSORS_INDEX_INVALID");
  expect(err.message.startsWith(`${INDEX}: `)).toBe(true);
  expect(err.message).toMatch(pattern);
  expect(err.details.key).toBe(INDEX);
  return err;
}

function check(index: SafetensorsIndex, shards = model()): void {
  checkIndexAgainstShards(index, shards, INDEX);
}

describe("parseSafetensorsIndex", () => {
  it("parses total_size and the weight map, tolerating extra metadata", () => {
    const text = JSON.stringify({ metadata: { total_size: 160, format: "pt" }, weight_map: GOOD_MAP });
    const index = parseSafetensorsIndex(text, INDEX);
    expect(index.totalSize).toBe(160);
    expect([...index.weightMap]).toEqual([
      ["embed", S1],
      ["layer.0", S1],
      ["lm_head", S2],
    ]);
    expect(parseSafetensorsIndex(JSON.stringify({ weight_map: GOOD_MAP })).totalSize).toBeUndefined();
  });

  it("refuses malformed JSON", () => {
    const err = expectInvalid(() => parseSafetensorsIndex('{"weight_map": {', INDEX), /not valid JSON/);
    expect(err.cause).toBeInstanceOf(SyntaxError);
  });

  it("refuses a wrong shape", () => {
    expectInvalid(() => parseSafetensorsIndex("[]", INDEX), /top level/);
    expectInvalid(() => parseSafetensorsIndex(JSON.stringify({ metadata: {} }), INDEX), /weight_map/);
    expectInvalid(
      () => parseSafetensorsIndex(JSON.stringify({ weight_map: { a: 1 } }), INDEX),
      /weight_map\.a/,
    );
    expectInvalid(
      () =>
        parseSafetensorsIndex(
          JSON.stringify({ metadata: { total_size: "160" }, weight_map: GOOD_MAP }),
          INDEX,
        ),
      /metadata\.total_size/,
    );
    expectInvalid(() => parseSafetensorsIndex(indexText({}), INDEX), /weight_map is empty/);
  });

  it("refuses a tensor listed twice", () => {
    expectInvalid(
      () => parseSafetensorsIndex(`{"weight_map":{"embed":"${S1}","embed":"${S2}"}}`, INDEX),
      /duplicate key "weight_map" > "embed"/,
    );
  });

  it.each([
    ["../model.safetensors", /path separator/],
    ["sub/model.safetensors", /path separator/],
    ["sub\\model.safetensors", /path separator/],
    ["/etc/passwd", /path separator/],
    ["..", /directory reference/],
    [".", /directory reference/],
    ["", /empty/],
    ["model\0.safetensors", /NUL/],
  ])("refuses the unsafe shard name %j", (name, reason) => {
    expectInvalid(
      () => parseSafetensorsIndex(indexText({ embed: name }), INDEX),
      new RegExp(`weight_map\\["embed"\\] = .* is not a bare shard file name: .*${reason.source}`),
    );
  });

  it("allows names that only look unusual", () => {
    const index = parseSafetensorsIndex(indexText({ a: "model..v2.safetensors", b: ".hidden.safetensors" }));
    expect(index.weightMap.get("a")).toBe("model..v2.safetensors");
  });
});

describe("checkIndexAgainstShards", () => {
  it("accepts an index that matches its shards", () => {
    check(parseSafetensorsIndex(indexText(GOOD_MAP)));
    check(parseSafetensorsIndex(indexText(GOOD_MAP, undefined)));
  });

  it("refuses a missing shard", () => {
    const shards = model();
    shards.delete(S2);
    expectInvalid(
      () => check(parseSafetensorsIndex(indexText(GOOD_MAP)), shards),
      /shard "model-00002.*" \(named for tensor "lm_head"\) is missing/,
    );
  });

  it("refuses a tensor in the map but in no shard", () => {
    const index = parseSafetensorsIndex(indexText({ ...GOOD_MAP, "layer.1": S2 }));
    expectInvalid(
      () => check(index),
      /tensor "layer.1" is in weight_map \(shard "model-00002-of-00002.safetensors"\) but in no shard/,
    );
  });

  it("refuses a tensor in a shard but not in the map", () => {
    const { lm_head: _, ...rest } = GOOD_MAP;
    const index = parseSafetensorsIndex(indexText({ ...rest }, 96));
    expectInvalid(
      () => check(index),
      /tensor "lm_head" in shard "model-00002-of-00002.safetensors" is not in weight_map/,
    );
  });

  it("refuses a tensor in the wrong shard", () => {
    const index = parseSafetensorsIndex(indexText({ ...GOOD_MAP, "layer.0": S2 }));
    expectInvalid(
      () => check(index),
      /weight_map puts tensor "layer.0" in "model-00002-of-00002.safetensors" but it is in "model-00001-of-00002.safetensors"/,
    );
  });

  it("refuses a tensor held by two shards", () => {
    const shards = model();
    shards.set(
      S2,
      shard([
        { name: "lm_head", dtype: "BF16", shape: [8, 4] },
        { name: "embed", dtype: "U8", shape: [1] },
      ]),
    );
    expectInvalid(
      () => check(parseSafetensorsIndex(indexText(GOOD_MAP)), shards),
      /tensor "embed" is in both/,
    );
  });

  it("refuses a total_size that is not the sum of tensor data bytes", () => {
    // total_size counts tensor data only (huggingface_hub sums tensor sizes); the sum of file sizes is wrong.
    const headerBytes = [...model().values()].reduce((sum, h) => sum + h.dataOffset, 0);
    expectInvalid(
      () => check(parseSafetensorsIndex(indexText(GOOD_MAP, 161))),
      /metadata.total_size is 161 but the shards hold 160 bytes of tensor data/,
    );
    expectInvalid(() => check(parseSafetensorsIndex(indexText(GOOD_MAP, 160 + headerBytes))), /total_size/);
  });

  it("uses a default name in messages when no key is given", () => {
    const index = parseSafetensorsIndex(indexText(GOOD_MAP, 1));
    expect(() => checkIndexAgainstShards(index, model())).toThrow(
      /^model\.safetensors\.index\.json: metadata/,
    );
  });
});
