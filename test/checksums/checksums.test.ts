import { createHash } from "node:crypto";
import * as zlib from "node:zlib";
import { Crc32cJs, Crc64NvmeJs } from "@aws-sdk/checksums/crc";
import { describe, expect, it } from "vitest";
import { combineCrc, compositeOf } from "../../src/checksums/combine.js";
import { checksumFromHeaders, parseChecksumHeader } from "../../src/checksums/headers.js";
import {
  type ChecksumImplementation,
  checksumImplementation,
  createChecksum,
} from "../../src/checksums/streaming.js";
import { type ChecksumAlgorithm, type CrcAlgorithm, isCrcAlgorithm } from "../../src/checksums/types.js";
import { ColdstartError } from "../../src/errors.js";

const ALGORITHMS: ChecksumAlgorithm[] = ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"];
const CRCS: CrcAlgorithm[] = ["CRC32", "CRC32C", "CRC64NVME"];
const IMPLEMENTATIONS: Record<ChecksumAlgorithm, ChecksumImplementation[]> = {
  CRC32: ["node", "js"],
  CRC32C: ["wasm", "js"],
  CRC64NVME: ["wasm", "js"],
  SHA1: ["node"],
  SHA256: ["node"],
};
/** Every (algorithm, implementation) pair this runtime offers. */
const CASES = ALGORITHMS.flatMap((alg) => IMPLEMENTATIONS[alg].map((impl) => [alg, impl] as const));

/** Seeded PRNG (mulberry32) so a failure reproduces; the seed is in the test name. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomBuffer(next: () => number, length: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) out[i] = Math.floor(next() * 256);
  return out;
}

function oneShot(alg: ChecksumAlgorithm, data: Uint8Array, implementation?: ChecksumImplementation): Buffer {
  const sum = createChecksum(alg, implementation === undefined ? {} : { implementation });
  sum.update(data);
  return sum.digest();
}

const CHECK = Buffer.from("123456789");

describe("createChecksum known vectors", () => {
  // CRC catalogue check values ("123456789") and vectors from AWS's aws-c-checksums / aws-crt tests.
  const vectors: Array<[ChecksumAlgorithm, Buffer | string, string]> = [
    ["CRC32", CHECK, "cbf43926"],
    ["CRC32", "Hello", (4_157_704_578).toString(16)],
    ["CRC32", "", "00000000"],
    ["CRC32C", CHECK, "e3069283"],
    ["CRC32C", "Hello", (2_178_485_787).toString(16)],
    ["CRC32C", "", "00000000"],
    ["CRC64NVME", CHECK, "ae8b14860a799888"],
    ["CRC64NVME", "aaaaaaaaaa", "0c1a80036d65c555"],
    ["CRC64NVME", Buffer.alloc(32), "cf3473434d4ecf3b"],
    ["CRC64NVME", "", "0000000000000000"],
    ["SHA1", "", "da39a3ee5e6b4b0d3255bfef95601890afd80709"],
    ["SHA256", "", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"],
    ["SHA256", "abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"],
  ];
  for (const [alg, input, hex] of vectors) {
    for (const impl of IMPLEMENTATIONS[alg]) {
      it(`${alg} (${impl}) of ${JSON.stringify(input.toString())}`, () => {
        expect(oneShot(alg, Buffer.from(input), impl).toString("hex")).toBe(hex);
      });
    }
  }

  it("encodes CRC64NVME as S3 does (base64 of 8 big-endian bytes)", () => {
    // `echo 'Hello, World!' | crc64nvme | base64` in minio's crc64nvme README.
    expect(oneShot("CRC64NVME", Buffer.from("Hello, World!\n")).toString("base64")).toBe("SoXXbx67KpE=");
  });

  it("returns digests of the algorithm's size", () => {
    const sizes = { CRC32: 4, CRC32C: 4, CRC64NVME: 8, SHA1: 20, SHA256: 32 };
    for (const [alg, impl] of CASES) expect(oneShot(alg, CHECK, impl)).toHaveLength(sizes[alg]);
  });

  it("picks the native or WebAssembly implementation by default", () => {
    expect(checksumImplementation("CRC32")).toBe("node");
    expect(checksumImplementation("CRC32C")).toBe("wasm");
    expect(checksumImplementation("CRC64NVME")).toBe("wasm");
    expect(checksumImplementation("SHA256")).toBe("node");
  });

  it("refuses an implementation the algorithm does not have", () => {
    expect(() => createChecksum("SHA256", { implementation: "wasm" })).toThrow(ColdstartError);
    expect(() => createChecksum("CRC32C", { implementation: "node" })).toThrow(/CRC32C has no node/);
  });
});

describe("createChecksum streaming", () => {
  const seed = 0xc0ffee;
  const next = rng(seed);
  // Crosses the WebAssembly kernel's 256 KiB input window and leaves odd tails.
  const data = randomBuffer(next, 600 * 1024 + 13);

  for (const [alg, impl] of CASES) {
    it(`${alg} (${impl}) in random chunk sizes equals one shot (seed ${seed})`, () => {
      const expected = oneShot(alg, data, impl);
      for (let round = 0; round < 4; round++) {
        const sum = createChecksum(alg, { implementation: impl });
        let off = 0;
        while (off < data.length) {
          // Mostly small, unaligned chunks, with the odd empty and large one.
          const r = next();
          const size = r < 0.05 ? 0 : r < 0.9 ? Math.floor(next() * 100) : Math.floor(next() * 400_000);
          sum.update(data.subarray(off, off + size));
          off += size;
        }
        expect(sum.digest().toString("hex")).toBe(expected.toString("hex"));
      }
    });
  }

  it("every implementation agrees on every length 0..100 at every alignment 0..7", () => {
    const base = randomBuffer(next, 128);
    for (const alg of ["CRC32", "CRC32C", "CRC64NVME"] as const) {
      const [first, second] = IMPLEMENTATIONS[alg] as [ChecksumImplementation, ChecksumImplementation];
      for (let offset = 0; offset < 8; offset++) {
        for (let length = 0; length <= 100; length++) {
          const slice = base.subarray(offset, offset + length);
          expect(oneShot(alg, slice, first).equals(oneShot(alg, slice, second))).toBe(true);
        }
      }
    }
  });

  it("digest() is a snapshot: updating afterwards continues the same stream", () => {
    for (const [alg, impl] of CASES) {
      const sum = createChecksum(alg, { implementation: impl });
      sum.update(data.subarray(0, 1000));
      expect(sum.digest().equals(oneShot(alg, data.subarray(0, 1000)))).toBe(true);
      expect(sum.digest().equals(oneShot(alg, data.subarray(0, 1000)))).toBe(true);
      sum.update(data.subarray(1000, 5000));
      expect(sum.digest().equals(oneShot(alg, data.subarray(0, 5000)))).toBe(true);
    }
  });

  it("CRC32 matches zlib.crc32 and SHA256 matches node:crypto", () => {
    expect(oneShot("CRC32", data, "js").readUInt32BE(0)).toBe(zlib.crc32(data));
    expect(oneShot("SHA256", data).equals(createHash("sha256").update(data).digest())).toBe(true);
  });
});

describe("cross-check against the AWS SDK's own CRC32C and CRC64NVME", () => {
  const seed = 20_250_101;
  const next = rng(seed);
  const lengths = [0, 1, 7, 8, 15, 16, 17, 31, 4095, 65_536 + 3, 262_144, 262_144 + 1, 1_048_576 + 5];

  for (const length of lengths) {
    it(`random ${length} bytes (seed ${seed})`, async () => {
      const data = randomBuffer(next, length);
      const sdk32c = new Crc32cJs();
      sdk32c.update(data);
      const sdk64 = new Crc64NvmeJs();
      sdk64.update(data);
      const want32c = Buffer.from(await sdk32c.digest()).toString("hex");
      const want64 = Buffer.from(await sdk64.digest()).toString("hex");
      for (const impl of IMPLEMENTATIONS.CRC32C)
        expect(oneShot("CRC32C", data, impl).toString("hex")).toBe(want32c);
      for (const impl of IMPLEMENTATIONS.CRC64NVME) {
        expect(oneShot("CRC64NVME", data, impl).toString("hex")).toBe(want64);
      }
    });
  }
});

/**
 * An independent reference for combineCrc: zlib 1.2.11's crc32_combine (GF(2) operator matrices,
 * squared once per bit of the length), generalised to 64 bits with BigInt. The code under test
 * multiplies by x^(8n) mod P instead, so agreement is not the same arithmetic checking itself.
 */
function matrixCombine(alg: CrcAlgorithm, crcA: Buffer, crcB: Buffer, lengthB: bigint): Buffer {
  const width = alg === "CRC64NVME" ? 64 : 32;
  const poly = { CRC32: 0xedb88320n, CRC32C: 0x82f63b78n, CRC64NVME: 0x9a6c9329ac4bc9b5n }[alg];
  const times = (mat: bigint[], vec: bigint): bigint => {
    let sum = 0n;
    for (let i = 0, v = vec; v !== 0n; i++, v >>= 1n) if (v & 1n) sum ^= mat[i] as bigint;
    return sum;
  };
  const square = (mat: bigint[]): bigint[] => mat.map((row) => times(mat, row));
  const read = (b: Buffer) => (width === 64 ? b.readBigUInt64BE(0) : BigInt(b.readUInt32BE(0)));
  let crc1 = read(crcA);
  const crc2 = read(crcB);
  let len = lengthB;
  if (len > 0n) {
    let odd: bigint[] = [poly]; // operator for one zero bit
    for (let n = 1; n < width; n++) odd.push(1n << BigInt(n - 1));
    let even = square(odd); // two zero bits
    odd = square(even); // four zero bits
    for (;;) {
      even = square(odd);
      if (len & 1n) crc1 = times(even, crc1);
      len >>= 1n;
      if (len === 0n) break;
      odd = square(even);
      if (len & 1n) crc1 = times(odd, crc1);
      len >>= 1n;
      if (len === 0n) break;
    }
  }
  const out = Buffer.alloc(width / 8);
  if (width === 64) out.writeBigUInt64BE(crc1 ^ crc2);
  else out.writeUInt32BE(Number(crc1 ^ crc2));
  return out;
}

describe("combineCrc", () => {
  const seed = 77;
  const next = rng(seed);
  const data = randomBuffer(next, 300_000);

  for (const alg of CRCS) {
    it(`${alg}: crc(A||B) from crc(A), crc(B), len(B) over random splits (seed ${seed})`, () => {
      const whole = oneShot(alg, data);
      const splits = [0, data.length, 1, data.length - 1, 16, 17];
      for (let i = 0; i < 20; i++) splits.push(Math.floor(next() * data.length));
      for (const at of splits) {
        const a = oneShot(alg, data.subarray(0, at));
        const b = oneShot(alg, data.subarray(at));
        expect(combineCrc(alg, a, b, data.length - at).toString("hex"), `split at ${at}`).toBe(
          whole.toString("hex"),
        );
      }
    });

    it(`${alg}: empty A, empty B and both empty`, () => {
      const empty = oneShot(alg, Buffer.alloc(0));
      const x = oneShot(alg, data.subarray(0, 999));
      expect(combineCrc(alg, empty, x, 999).equals(x)).toBe(true);
      expect(combineCrc(alg, x, empty, 0).equals(x)).toBe(true);
      expect(combineCrc(alg, empty, empty, 0).equals(empty)).toBe(true);
    });

    it(`${alg}: folding out-of-order range CRCs in object order gives the object's CRC`, () => {
      // What the downloader does: ranges finish in any order, each with its own CRC, and are
      // folded in object order at the end.
      const rangeBytes = 8 * 1024 + 7;
      const count = Math.ceil(data.length / rangeBytes);
      const order = Array.from({ length: count }, (_, i) => i);
      for (let i = count - 1; i > 0; i--) {
        const j = Math.floor(next() * (i + 1));
        [order[i], order[j]] = [order[j] as number, order[i] as number];
      }
      const crcs: Buffer[] = new Array(count);
      for (const i of order) crcs[i] = oneShot(alg, data.subarray(i * rangeBytes, (i + 1) * rangeBytes));
      let acc = oneShot(alg, Buffer.alloc(0));
      crcs.forEach((crc, i) => {
        acc = combineCrc(alg, acc, crc, Math.min(rangeBytes, data.length - i * rangeBytes));
      });
      expect(acc.equals(oneShot(alg, data))).toBe(true);
    });

    it(`${alg}: appending zero bytes equals combining with the CRC of the zeros`, () => {
      const a = oneShot(alg, data.subarray(0, 5000));
      for (const n of [1, 8, 4096, 1_000_003]) {
        const zeros = Buffer.alloc(n);
        const direct = oneShot(alg, Buffer.concat([data.subarray(0, 5000), zeros]));
        expect(combineCrc(alg, a, oneShot(alg, zeros), n).equals(direct), `n=${n}`).toBe(true);
      }
    });

    it(`${alg}: lengths past 2^32 agree with the GF(2) matrix reference and associativity`, () => {
      const a = oneShot(alg, data.subarray(0, 100));
      const b = oneShot(alg, data.subarray(100, 200));
      const c = oneShot(alg, data.subarray(200, 300));
      for (const n of [
        4096,
        2 ** 32 - 1,
        2 ** 32,
        2 ** 32 + 1,
        140e9,
        2 ** 40 + 12_345,
        Number.MAX_SAFE_INTEGER,
      ]) {
        expect(combineCrc(alg, a, b, n).toString("hex"), `n=${n}`).toBe(
          matrixCombine(alg, a, b, BigInt(n)).toString("hex"),
        );
      }
      // (a·b)·c = a·(b·c) with len(b) + len(c) > 2^32 only on the right-hand side.
      const lenB = 3e9;
      const lenC = 2.5e9;
      const left = combineCrc(alg, combineCrc(alg, a, b, lenB), c, lenC);
      const right = combineCrc(alg, a, combineCrc(alg, b, c, lenC), lenB + lenC);
      expect(left.equals(right)).toBe(true);
    });
  }

  it("rejects wrong sizes, bad lengths and non-CRC algorithms", () => {
    const four = Buffer.alloc(4);
    const eight = Buffer.alloc(8);
    expect(() => combineCrc("CRC32", eight, four, 1)).toThrow(/crcA must be 4 bytes, got 8/);
    expect(() => combineCrc("CRC64NVME", eight, four, 1)).toThrow(/crcB must be 8 bytes, got 4/);
    expect(() => combineCrc("CRC32", four, four, -1)).toThrow(ColdstartError);
    expect(() => combineCrc("CRC32", four, four, 1.5)).toThrow(/non-negative safe integer/);
    expect(() => combineCrc("CRC32", four, four, 2 ** 53)).toThrow(/non-negative safe integer/);
    expect(() => combineCrc("SHA256" as CrcAlgorithm, four, four, 1)).toThrow(/needs a CRC algorithm/);
    try {
      combineCrc("CRC32", eight, four, 1);
    } catch (err) {
      expect((err as ColdstartError).code).toBe("CS_INTERNAL");
    }
  });
});

describe("parseChecksumHeader", () => {
  it("parses a plain base64 value", () => {
    expect(parseChecksumHeader("y/Q5Jg==")).toEqual({ raw: Buffer.from("cbf43926", "hex") });
    expect(parseChecksumHeader("rosUhgp5mIg=")).toEqual({ raw: Buffer.from("ae8b14860a799888", "hex") });
  });

  it("parses a composite value with its part count", () => {
    expect(parseChecksumHeader("y/Q5Jg==-3")).toEqual({ raw: Buffer.from("cbf43926", "hex"), parts: 3 });
    expect(parseChecksumHeader("y/Q5Jg==-10000")?.parts).toBe(10_000);
  });

  it("tolerates surrounding whitespace", () => {
    expect(parseChecksumHeader(" y/Q5Jg== ")?.raw.toString("hex")).toBe("cbf43926");
  });

  it("returns undefined for malformed values", () => {
    for (const bad of [
      "",
      "-3",
      "y/Q5Jg",
      "y/Q5Jg=",
      "y/Q5Jg==-",
      "y/Q5Jg==-0",
      "y/Q5Jg==-03",
      "y/Q5Jg==-x",
      "y/Q5Jg==-10001",
      "y/Q5Jg==-3-4",
      "y/Q5Jg===",
      "y_Q5Jg==",
      "y/Q5 Jg==",
      "AAB=", // non-zero pad bits: not what any encoder emits
      "====",
    ]) {
      expect(parseChecksumHeader(bad), JSON.stringify(bad)).toBeUndefined();
    }
    expect(parseChecksumHeader(undefined as unknown as string)).toBeUndefined();
  });
});

describe("checksumFromHeaders", () => {
  const crc64 = Buffer.from("ae8b14860a799888", "hex");
  const crc32 = Buffer.from("cbf43926", "hex");

  it("reads a full-object CRC64NVME", () => {
    expect(
      checksumFromHeaders({
        "x-amz-checksum-crc64nvme": crc64.toString("base64"),
        "x-amz-checksum-type": "FULL_OBJECT",
        etag: '"abc"',
      }),
    ).toEqual({ alg: "CRC64NVME", raw: crc64, type: "FULL_OBJECT" });
  });

  it("reads a composite checksum with its part count", () => {
    expect(
      checksumFromHeaders({
        "x-amz-checksum-crc32": `${crc32.toString("base64")}-3`,
        "x-amz-checksum-type": "COMPOSITE",
      }),
    ).toEqual({ alg: "CRC32", raw: crc32, type: "COMPOSITE", parts: 3 });
  });

  it("infers the type from the -N suffix when x-amz-checksum-type is absent", () => {
    expect(checksumFromHeaders({ "x-amz-checksum-crc32c": `${crc32.toString("base64")}-12` })?.type).toBe(
      "COMPOSITE",
    );
    expect(checksumFromHeaders({ "x-amz-checksum-crc32c": crc32.toString("base64") })?.type).toBe(
      "FULL_OBJECT",
    );
    expect(checksumFromHeaders({ "x-amz-checksum-crc32c": crc32.toString("base64") })?.alg).toBe("CRC32C");
  });

  it("keeps a declared COMPOSITE for a part GET, which answers the part's checksum without -N", () => {
    const sha = createHash("sha256").update("part").digest();
    expect(
      checksumFromHeaders({
        "x-amz-checksum-sha256": sha.toString("base64"),
        "x-amz-checksum-type": "composite",
      }),
    ).toEqual({ alg: "SHA256", raw: sha, type: "COMPOSITE" });
  });

  it("skips values that are malformed or the wrong size for their algorithm", () => {
    expect(checksumFromHeaders({ "x-amz-checksum-crc32": crc64.toString("base64") })).toBeUndefined();
    expect(checksumFromHeaders({ "x-amz-checksum-sha1": "not base64!" })).toBeUndefined();
    expect(
      checksumFromHeaders({
        "x-amz-checksum-crc64nvme": "garbage",
        "x-amz-checksum-crc32": crc32.toString("base64"),
      }),
    ).toMatchObject({ alg: "CRC32" });
  });

  it("prefers CRC64NVME when several are present, and answers undefined when none is", () => {
    expect(
      checksumFromHeaders({
        "x-amz-checksum-crc32": crc32.toString("base64"),
        "x-amz-checksum-crc64nvme": crc64.toString("base64"),
      })?.alg,
    ).toBe("CRC64NVME");
    expect(
      checksumFromHeaders({ "content-length": "5", "x-amz-checksum-type": "FULL_OBJECT" }),
    ).toBeUndefined();
    expect(checksumFromHeaders({ "x-amz-checksum-crc32": undefined })).toBeUndefined();
  });
});

describe("compositeOf", () => {
  const parts = [Buffer.from("first part"), Buffer.from("second part, longer"), Buffer.from("3")];

  it("SHA256: checksum of the concatenated raw part SHA256s, as S3's '<base64>-N'", () => {
    const partSums = parts.map((p) => createHash("sha256").update(p).digest());
    const byHand = createHash("sha256").update(Buffer.concat(partSums)).digest();
    const composite = compositeOf("SHA256", partSums);
    expect(composite.equals(byHand)).toBe(true);
    const header = checksumFromHeaders({ "x-amz-checksum-sha256": `${byHand.toString("base64")}-3` });
    expect(header?.parts).toBe(3);
    expect(header?.raw.equals(composite)).toBe(true);
  });

  it("CRC32: CRC32 of the concatenated 4-byte big-endian part CRCs", () => {
    const partSums = parts.map((p) => oneShot("CRC32", p));
    const byHand = Buffer.alloc(4);
    byHand.writeUInt32BE(zlib.crc32(Buffer.concat(partSums)));
    expect(compositeOf("CRC32", partSums).equals(byHand)).toBe(true);
  });

  it("rejects a part checksum of the wrong size", () => {
    expect(() => compositeOf("SHA1", [Buffer.alloc(20), Buffer.alloc(32)])).toThrow(
      /must be 20 bytes, got 32/,
    );
  });
});

describe("isCrcAlgorithm", () => {
  it("is true only for CRCs", () => {
    expect(ALGORITHMS.filter(isCrcAlgorithm)).toEqual(CRCS);
  });
});
