/**
 * Combining checksums of pieces into the object's. Ranges are downloaded in parallel and out of
 * order, and S3 returns no checksum for an arbitrary range, so a FULL_OBJECT CRC is checked by
 * computing each range's CRC while it streams and folding them together in object order with
 * {@link combineCrc}. COMPOSITE checksums (SHA, and by default CRC32/CRC32C of multipart uploads)
 * are a checksum of the parts' raw checksums: {@link compositeOf}.
 */
import { ColdstartError } from "../errors.js";
import { be32, be64, CRC_SPECS, type CrcSpec } from "./crc-tables.js";
import { createChecksum } from "./streaming.js";
import { type ChecksumAlgorithm, type CrcAlgorithm, DIGEST_BYTES } from "./types.js";

// ---------------------------------------------------------------------------------------------
// CRC combination: crc(A||B) = crc(A)·x^(8·len(B)) mod P  XOR  crc(B), valid on the final values
// because init and xorout are both all ones (zlib's crc32_combine). x^(8n) mod P is built from a
// table of x^(2^k) by square-and-multiply over the bits of n: O(log n) GF(2) products, so any
// length up to 2^53 costs microseconds. Values are [hi, lo] pairs; for 32-bit CRCs hi is 0. In the
// reflected bit order, bit (width-1) holds the x^0 coefficient.
// ---------------------------------------------------------------------------------------------

type Pair = readonly [hi: number, lo: number];

/** a·b mod P (zlib's multmodp). */
function mulMod(spec: CrcSpec, a: Pair, b: Pair): Pair {
  let pHi = 0;
  let pLo = 0;
  let [bHi, bLo] = b;
  const [aHi, aLo] = a;
  for (let bit = spec.width - 1; bit >= 0; bit--) {
    const set = bit >= 32 ? (aHi >>> (bit - 32)) & 1 : (aLo >>> bit) & 1;
    if (set !== 0) {
      pHi ^= bHi;
      pLo ^= bLo;
    }
    const carry = bLo & 1;
    bLo = (bLo >>> 1) | ((bHi & 1) << 31);
    bHi >>>= 1;
    if (carry !== 0) {
      bHi ^= spec.polyHi;
      bLo ^= spec.polyLo;
    }
  }
  return [pHi >>> 0, pLo >>> 0];
}

function one(spec: CrcSpec): Pair {
  return spec.width === 64 ? [0x80000000, 0] : [0, 0x80000000];
}

const powerTables = new Map<CrcAlgorithm, Pair[]>();

/** x^(2^k) mod P for k = 0..63. */
function powersOfX(alg: CrcAlgorithm): Pair[] {
  let table = powerTables.get(alg);
  if (table === undefined) {
    const spec = CRC_SPECS[alg];
    const [hi, lo] = one(spec);
    table = [[hi >>> 1, (lo >>> 1) | ((hi & 1) << 31)]]; // x^1
    for (let k = 1; k < 64; k++) {
      const prev = table[k - 1] as Pair;
      table.push(mulMod(spec, prev, prev));
    }
    powerTables.set(alg, table);
  }
  return table;
}

/** Ranges of one download share a length, so the last few operators are worth keeping. */
const shiftCache = new Map<string, Pair>();
const SHIFT_CACHE_ENTRIES = 64;

/** x^(8n) mod P: the operator that appends n zero bytes to a register. */
function zeroBytesOperator(alg: CrcAlgorithm, n: number): Pair {
  const key = `${alg}:${n}`;
  const cached = shiftCache.get(key);
  if (cached !== undefined) return cached;
  const spec = CRC_SPECS[alg];
  const powers = powersOfX(alg);
  let op = one(spec);
  let rest = n;
  for (let k = 3; rest > 0; k++) {
    const bit = rest % 2;
    if (bit === 1) op = mulMod(spec, powers[k] as Pair, op);
    rest = (rest - bit) / 2;
  }
  if (shiftCache.size >= SHIFT_CACHE_ENTRIES) shiftCache.clear();
  shiftCache.set(key, op);
  return op;
}

function crcToPair(alg: CrcAlgorithm, crc: Buffer, which: string): Pair {
  const bytes = DIGEST_BYTES[alg];
  if (crc.length !== bytes) {
    throw new ColdstartError(
      "CS_INTERNAL",
      `combineCrc ${alg} ${which} must be ${bytes} bytes, got ${crc.length}`,
      {
        details: { field: which, value: crc.length },
      },
    );
  }
  return bytes === 8 ? [crc.readUInt32BE(0), crc.readUInt32BE(4)] : [0, crc.readUInt32BE(0)];
}

/** CRC of A||B from crc(A), crc(B) and len(B). Only CRC algorithms. Values as raw Buffers (4 or 8 bytes, S3's big-endian encoding). */
export function combineCrc(alg: CrcAlgorithm, crcA: Buffer, crcB: Buffer, lengthB: number): Buffer {
  if (!(alg in CRC_SPECS)) {
    throw new ColdstartError("CS_INTERNAL", `combineCrc needs a CRC algorithm, got ${String(alg)}`, {
      details: { field: "alg", value: alg },
    });
  }
  if (!Number.isSafeInteger(lengthB) || lengthB < 0) {
    throw new ColdstartError(
      "CS_INTERNAL",
      `combineCrc lengthB must be a non-negative safe integer, got ${lengthB}`,
      {
        details: { field: "lengthB", value: lengthB },
      },
    );
  }
  const a = crcToPair(alg, crcA, "crcA");
  const [bHi, bLo] = crcToPair(alg, crcB, "crcB");
  const [hi, lo] = mulMod(CRC_SPECS[alg], zeroBytesOperator(alg, lengthB), a);
  return CRC_SPECS[alg].width === 64 ? be64(hi ^ bHi, lo ^ bLo) : be32(lo ^ bLo);
}

/** Composite check: checksum over the concatenation of raw part checksums equals `composite.raw`. */
export function compositeOf(alg: ChecksumAlgorithm, partChecksums: Buffer[]): Buffer {
  const sum = createChecksum(alg);
  for (const part of partChecksums) {
    if (part.length !== DIGEST_BYTES[alg]) {
      throw new ColdstartError(
        "CS_INTERNAL",
        `compositeOf ${alg} part checksums must be ${DIGEST_BYTES[alg]} bytes, got ${part.length}`,
        { details: { field: "partChecksums", value: part.length } },
      );
    }
    sum.update(part);
  }
  return sum.digest();
}
