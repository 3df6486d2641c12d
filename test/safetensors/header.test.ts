import { mkdtemp, open, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ColdstartError } from "../../src/errors.js";
import { buildSafetensors, buildSafetensorsHeader } from "../../src/safetensors/build.js";
import {
  findDuplicateJsonKey,
  parseSafetensorsHeader,
  readSafetensorsHeader,
  SAFETENSORS_DTYPES,
  tensorByteLength,
} from "../../src/safetensors/header.js";
import { expectColdstartError, thrownBy } from "../support/expect-error.js";

const FILE = "model-00001-of-00002.safetensors";

/** A file from raw header bytes (no padding added) and `dataBytes` zero bytes of data. */
function fromHeaderBytes(header: Buffer, dataBytes: number, declaredLength = header.length): Buffer {
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(declaredLength));
  return Buffer.concat([prefix, header, Buffer.alloc(dataBytes)]);
}

/** A file whose header is `JSON.stringify(header)` (or the given text) followed by `dataBytes` of data. */
function fromHeader(header: unknown, dataBytes: number): Buffer {
  const text = typeof header === "string" ? header : JSON.stringify(header);
  return fromHeaderBytes(Buffer.from(text, "utf8"), dataBytes);
}

function parse(file: Buffer, fileSize = file.length) {
  return parseSafetensorsHeader(file, fileSize, FILE);
}

/** Asserts CS_SAFETENSORS_INVALID with a message that names the file and matches `pattern`. */
function expectInvalid(fn: () => unknown, pattern: RegExp): ColdstartError {
  const err = expectColdstartError(thrownBy(fn), "CS_SAFETENSORS_INVALID");
  expect(err.message.startsWith(`${FILE}: `)).toBe(true);
  expect(err.message).toMatch(pattern);
  expect(err.details.key).toBe(FILE);
  return err;
}

const t = (dtype: string, shape: number[], begin: number, end: number) => ({
  dtype,
  shape,
  data_offsets: [begin, end],
});

describe("parseSafetensorsHeader: valid files", () => {
  it("parses tensors sorted by offset, metadata and the data offset", () => {
    const file = buildSafetensors(
      [
        { name: "b", dtype: "F16", shape: [4, 4] },
        { name: "a", dtype: "BF16", shape: [3] },
        { name: "c", dtype: "I64", shape: [] },
      ],
      { format: "pt" },
    );
    const h = parse(file);
    expect(h.headerBytes % 8).toBe(0);
    expect(h.dataOffset).toBe(8 + h.headerBytes);
    expect(h.metadata).toEqual({ format: "pt" });
    expect(h.tensors).toEqual([
      { name: "b", dtype: "F16", shape: [4, 4], begin: 0, end: 32 },
      { name: "a", dtype: "BF16", shape: [3], begin: 32, end: 38 },
      { name: "c", dtype: "I64", shape: [], begin: 38, end: 46 },
    ]);
    expect(file.length).toBe(h.dataOffset + 46);
  });

  it("accepts header entries in any order, zero-size tensors, and no __metadata__", () => {
    const file = fromHeader(
      {
        z: t("F32", [2], 8, 16),
        empty: t("F32", [0, 3], 0, 0),
        a: t("U8", [8], 0, 8),
        end: t("I8", [0], 16, 16),
      },
      16,
    );
    const h = parse(file);
    expect(h.metadata).toBeUndefined();
    expect(h.tensors.map((x) => x.name)).toEqual(["empty", "a", "z", "end"]);
  });

  it("accepts trailing space padding (the reference writer pads to 8 bytes)", () => {
    const h = parse(fromHeader(`${JSON.stringify({ a: t("U8", [3], 0, 3) })}       `, 3));
    expect(h.tensors).toHaveLength(1);
  });

  it("accepts an empty tensor set with an empty data buffer, and __metadata__ null", () => {
    expect(parse(fromHeader({}, 0)).tensors).toEqual([]);
    expect(parse(fromHeader({ __metadata__: null }, 0)).metadata).toBeUndefined();
  });

  it("accepts every dtype of the current spec, sub-byte types in whole bytes", () => {
    expect(SAFETENSORS_DTYPES).toHaveLength(22);
    const specs = SAFETENSORS_DTYPES.map((dtype, i) => ({ name: `t${i}`, dtype, shape: [2, 4] }));
    const h = parse(buildSafetensors(specs));
    const f4 = h.tensors.find((x) => x.dtype === "F4");
    expect(f4 && f4.end - f4.begin).toBe(4);
    expect(tensorByteLength("F4", [2, 4])).toEqual({ ok: true, bytes: 4 });
    expect(tensorByteLength("F6_E2M3", [4])).toEqual({ ok: true, bytes: 3 });
    expect(tensorByteLength("C64", [3])).toEqual({ ok: true, bytes: 24 });
  });

  it("keeps a __proto__ key as data", () => {
    const h = parse(
      fromHeader(`{"__metadata__":{"__proto__":"x"},"__proto__":${JSON.stringify(t("U8", [1], 0, 1))}}`, 1),
    );
    expect(Object.keys(h.metadata ?? {})).toEqual(["__proto__"]);
    expect(h.tensors[0]?.name).toBe("__proto__");
  });
});

describe("parseSafetensorsHeader: invalid files", () => {
  it("refuses a file shorter than the length prefix", () => {
    expectInvalid(() => parse(Buffer.from([1, 2, 3])), /3 bytes, too short/);
  });

  it("refuses N above 100,000,000", () => {
    const file = fromHeaderBytes(Buffer.from("{}"), 0, 100_000_001);
    expectInvalid(() => parse(file, 200_000_000), /header length 100000001 exceeds the limit of 100000000/);
    const huge = Buffer.alloc(8, 0xff);
    expectInvalid(() => parse(huge), /header length 18446744073709551615 exceeds/);
  });

  it("refuses N beyond the end of the file", () => {
    const file = fromHeaderBytes(Buffer.from("{}"), 0, 50);
    expectInvalid(() => parse(file), /header length 50 runs past the end of the file \(8 \+ 50 > 10 bytes\)/);
  });

  it("refuses a header that is not UTF-8", () => {
    const bytes = Buffer.from('{"a\xff":1}', "latin1");
    const err = expectInvalid(() => parse(fromHeaderBytes(bytes, 0)), /header is not valid UTF-8/);
    expect(err.cause).toBeDefined();
  });

  it("refuses bad JSON, a leading BOM, and a header that is not an object", () => {
    expectInvalid(() => parse(fromHeader('{"a": ', 0)), /header is not valid JSON/);
    expectInvalid(() => parse(fromHeader("\ufeff{}", 0)), /header is not valid JSON/);
    expectInvalid(() => parse(fromHeader("[]", 0)), /header must be a JSON object, got an array/);
    expectInvalid(() => parse(fromHeader("", 0)), /header is not valid JSON/);
    expectInvalid(() => parse(fromHeaderBytes(Buffer.from("{}\0\0"), 0)), /header is not valid JSON/);
  });

  it("refuses duplicate keys, at the top level and inside entries", () => {
    const entry = JSON.stringify(t("U8", [1], 0, 1));
    expectInvalid(() => parse(fromHeader(`{"w":${entry},"w":${entry}}`, 1)), /duplicate key "w"/);
    expectInvalid(
      () => parse(fromHeader(`{"w":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, 1)),
      /duplicate key "dtype" in "w"/,
    );
    expectInvalid(() => parse(fromHeader(`{"a":${entry},"\\u0061":${entry}}`, 1)), /duplicate key "a"/);
    expectInvalid(
      () => parse(fromHeader(`{"__metadata__":{"k":"1","k":"2"}}`, 0)),
      /duplicate key "k" in "__metadata__"/,
    );
  });

  it("refuses __metadata__ that is not an object of strings", () => {
    expectInvalid(() => parse(fromHeader({ __metadata__: ["x"] }, 0)), /__metadata__ must be an object/);
    expectInvalid(
      () => parse(fromHeader({ __metadata__: { n: 1 } }, 0)),
      /__metadata__ "n" must be a string, got 1/,
    );
  });

  it("refuses unknown dtypes", () => {
    expectInvalid(() => parse(fromHeader({ w: t("F7", [1], 0, 1) }, 1)), /tensor "w" has unknown dtype "F7"/);
    expectInvalid(() => parse(fromHeader({ w: t("f16", [1], 0, 2) }, 2)), /unknown dtype "f16"/);
  });

  it("refuses negative, fractional and non-numeric shapes", () => {
    expectInvalid(() => parse(fromHeader({ w: t("U8", [2, -1], 0, 0) }, 0)), /shape must be .* got \[2,-1\]/);
    expectInvalid(() => parse(fromHeader({ w: t("U8", [1.5], 0, 1) }, 1)), /shape must be .* got \[1.5\]/);
    expectInvalid(() => parse(fromHeader({ w: { ...t("U8", [], 0, 1), shape: "1" } }, 1)), /got "1"/);
  });

  it("refuses malformed data_offsets", () => {
    expectInvalid(
      () => parse(fromHeader({ w: { ...t("U8", [1], 0, 1), data_offsets: [0] } }, 1)),
      /two non-negative/,
    );
    expectInvalid(() => parse(fromHeader({ w: t("U8", [1], -1, 0) }, 1)), /got \[-1,0\]/);
    expectInvalid(() => parse(fromHeader({ w: t("U8", [0], 5, 4) }, 5)), /data_offsets \[5, 4\] end before/);
  });

  it("refuses extra and missing keys in a tensor entry", () => {
    expectInvalid(
      () => parse(fromHeader({ w: { ...t("U8", [1], 0, 1), offset: 3 } }, 1)),
      /unexpected key "offset"/,
    );
    expectInvalid(() => parse(fromHeader({ w: { dtype: "U8", shape: [1] } }, 1)), /missing "data_offsets"/);
    expectInvalid(() => parse(fromHeader({ w: 3 }, 0)), /tensor "w" must be an object .* got number 3/);
  });

  it("refuses a byte span that disagrees with dtype × shape", () => {
    expectInvalid(
      () => parse(fromHeader({ "lm_head.weight": t("F16", [4, 4], 0, 10) }, 10)),
      /tensor "lm_head.weight" data_offsets \[0, 10\] span 10 bytes but shape \[4, 4\] of F16 needs 32/,
    );
  });

  it("refuses sub-byte tensors that are not whole bytes", () => {
    expectInvalid(() => parse(fromHeader({ w: t("F4", [3], 0, 2) }, 2)), /shape \[3\] of F4 is 12 bits/);
  });

  it("refuses shapes whose size overflows", () => {
    expectInvalid(
      () => parse(fromHeader({ w: t("F16", [2 ** 40, 2 ** 40], 0, 8) }, 8)),
      /shape \[1099511627776, 1099511627776\] of F16 needs 2417851639229258349412352 bytes.*overflow/,
    );
  });

  it("refuses a data buffer that does not start at 0", () => {
    expectInvalid(
      () => parse(fromHeader({ w: t("U8", [4], 4, 8) }, 8)),
      /first tensor "w" begins at 4, not 0/,
    );
  });

  it("refuses gaps and overlaps", () => {
    expectInvalid(
      () => parse(fromHeader({ a: t("U8", [4], 0, 4), b: t("U8", [4], 6, 10) }, 10)),
      /gap: tensor "b" begins at 6 but "a" ends at 4/,
    );
    expectInvalid(
      () => parse(fromHeader({ a: t("U8", [4], 0, 4), b: t("U8", [4], 2, 6) }, 6)),
      /tensor "b" data_offsets \[2, 6\] overlap tensor "a" ending at 4/,
    );
    expectInvalid(
      () => parse(fromHeader({ a: t("U8", [4], 0, 4), b: t("U8", [0], 2, 2) }, 4)),
      /tensor "b" .* overlap tensor "a"/,
    );
  });

  it("refuses a file whose length is not 8 + N + the data buffer", () => {
    const file = buildSafetensors([{ name: "w", dtype: "F32", shape: [4] }]);
    expectInvalid(() => parse(Buffer.concat([file, Buffer.from("junk")])), /4 trailing bytes/);
    expectInvalid(() => parse(file.subarray(0, file.length - 3)), /truncated by 3 bytes/);
    expectInvalid(() => parse(fromHeader({}, 2)), /2 trailing bytes/);
  });

  it("reports a caller that passes fewer than 8 + N bytes as a bug, not a bad file", () => {
    const file = buildSafetensors([{ name: "w", dtype: "U8", shape: [1] }]);
    expect(() => parseSafetensorsHeader(file.subarray(0, 12), file.length)).toThrow(
      expect.objectContaining({ code: "CS_INTERNAL" }),
    );
  });
});

describe("findDuplicateJsonKey", () => {
  it("ignores repeated strings that are values, and keys in different objects", () => {
    expect(findDuplicateJsonKey('{"a":"a","b":{"a":["a",{"a":1}]},"c":"x\\"a"}')).toBeUndefined();
    expect(findDuplicateJsonKey('{"a":[{"b":1,"b":2}]}')).toEqual(["a", "b"]);
  });
});

describe("buildSafetensorsHeader", () => {
  it("gives a header whose data the caller can stream", () => {
    const { header, dataBytes } = buildSafetensorsHeader([{ name: "w", dtype: "BF16", shape: [3, 5] }], {
      a: "b",
    });
    expect(dataBytes).toBe(30);
    expect(header.length % 8).toBe(0);
    const h = parseSafetensorsHeader(header, header.length + dataBytes);
    expect(h.dataOffset).toBe(header.length);
    expect(h.metadata).toEqual({ a: "b" });
  });

  it("fills data deterministically and refuses bad specs", () => {
    const a = buildSafetensors([{ name: "w", dtype: "U8", shape: [300] }]);
    expect(a.equals(buildSafetensors([{ name: "w", dtype: "U8", shape: [300] }]))).toBe(true);
    const b = buildSafetensors([{ name: "w", dtype: "U8", shape: [4] }], undefined, (i) => i + 254);
    expect([...b.subarray(b.length - 4)]).toEqual([254, 255, 0, 1]);
    expect(() => buildSafetensorsHeader([{ name: "w", dtype: "X", shape: [1] }])).toThrow(
      /unknown dtype "X"/,
    );
    const twice = [
      { name: "w", dtype: "U8", shape: [1] },
      { name: "w", dtype: "U8", shape: [1] },
    ];
    expect(() => buildSafetensorsHeader(twice)).toThrow(/reserved or repeated/);
  });
});

describe("readSafetensorsHeader", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "coldstart-safetensors-"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("reads and validates the header of a real file", async () => {
    const path = join(dir, "ok.safetensors");
    await writeFile(path, buildSafetensors([{ name: "w", dtype: "F16", shape: [8, 8] }], { format: "pt" }));
    const h = await readSafetensorsHeader(path, "models/m/ok.safetensors");
    expect(h.tensors).toEqual([{ name: "w", dtype: "F16", shape: [8, 8], begin: 0, end: 128 }]);
    expect(h.metadata).toEqual({ format: "pt" });
  });

  it("never reads the data buffer (a 4 GiB sparse file parses at once)", async () => {
    const path = join(dir, "big.safetensors");
    const { header, dataBytes } = buildSafetensorsHeader([{ name: "w", dtype: "BF16", shape: [2 ** 31] }]);
    const handle = await open(path, "w");
    try {
      await handle.write(header, 0, header.length, 0);
      await handle.truncate(header.length + dataBytes);
    } finally {
      await handle.close();
    }
    const h = await readSafetensorsHeader(path);
    expect(h.tensors[0]?.end).toBe(2 ** 32);
  });

  it("names the path in errors when no key is given", async () => {
    const path = join(dir, "bad.safetensors");
    await writeFile(path, fromHeaderBytes(Buffer.from("{}"), 0, 1000));
    await expect(readSafetensorsHeader(path)).rejects.toMatchObject({
      code: "CS_SAFETENSORS_INVALID",
      message: `${path}: header length 1000 runs past the end of the file (8 + 1000 > 10 bytes)`,
    });
    const tiny = join(dir, "tiny.safetensors");
    await writeFile(tiny, Buffer.from([1, 0]));
    await expect(readSafetensorsHeader(tiny, "k")).rejects.toMatchObject({
      code: "CS_SAFETENSORS_INVALID",
      message: "k: file is 2 bytes, too short for the 8-byte header length",
      details: { key: "k" },
    });
  });

  it("reports a missing file as CS_IO_ERROR", async () => {
    await expect(readSafetensorsHeader(join(dir, "nope.safetensors"), "k")).rejects.toMatchObject({
      code: "CS_IO_ERROR",
      cause: expect.objectContaining({ code: "ENOENT" }),
    });
  });
});
