/**
 * CRC parameters and slicing-by-16 tables for CRC32, CRC32C and CRC64NVME, shared by the plain-JS
 * and the WebAssembly kernels and by CRC combination.
 */
import type { CrcAlgorithm } from "./types.js";

// ---------------------------------------------------------------------------------------------
// CRC parameters and tables. All three CRCs are reflected, with init and xorout all ones, so the
// "register" (the running value before the final inversion) starts as all ones and the digest is
// its complement. A 64-bit register is held as two unsigned 32-bit halves: no BigInt anywhere.
// ---------------------------------------------------------------------------------------------

export interface CrcSpec {
  readonly width: 32 | 64;
  /** Reflected polynomial, high and low 32 bits (high is 0 for 32-bit CRCs). */
  readonly polyHi: number;
  readonly polyLo: number;
}

export const CRC_SPECS: Readonly<Record<CrcAlgorithm, CrcSpec>> = {
  CRC32: { width: 32, polyHi: 0, polyLo: 0xedb88320 },
  CRC32C: { width: 32, polyHi: 0, polyLo: 0x82f63b78 },
  CRC64NVME: { width: 64, polyHi: 0x9a6c9329, polyLo: 0xac4bc9b5 },
};

/** Slicing-by-16: 16 tables of 256 entries; table k advances a byte through k further zero bytes. */
export const SLICES = 16;

/** 32-bit CRC tables, table k at [k*256, k*256+256). */
function crc32Tables(poly: number): Uint32Array {
  const t = new Uint32Array(256 * SLICES);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let j = 0; j < 8; j++) c = c & 1 ? (c >>> 1) ^ poly : c >>> 1;
    t[i] = c >>> 0;
  }
  for (let i = 256; i < t.length; i++) {
    const prev = t[i - 256] as number;
    t[i] = (prev >>> 8) ^ (t[prev & 255] as number);
  }
  return t;
}

/** 64-bit CRC tables as interleaved [lo, hi] halves, table k at [k*512, k*512+512). */
function crc64Tables(polyHi: number, polyLo: number): Uint32Array {
  const t = new Uint32Array(512 * SLICES);
  for (let i = 0; i < 256; i++) {
    let lo = i;
    let hi = 0;
    for (let j = 0; j < 8; j++) {
      const mask = -(lo & 1);
      lo = ((lo >>> 1) | (hi << 31)) ^ (polyLo & mask);
      hi = (hi >>> 1) ^ (polyHi & mask);
    }
    t[2 * i] = lo >>> 0;
    t[2 * i + 1] = hi >>> 0;
  }
  for (let i = 512; i < t.length; i += 2) {
    const lo = t[i - 512] as number;
    const hi = t[i - 511] as number;
    const x = (lo & 255) << 1;
    t[i] = ((lo >>> 8) | (hi << 24)) ^ (t[x] as number);
    t[i + 1] = (hi >>> 8) ^ (t[x + 1] as number);
  }
  return t;
}

const tableCache = new Map<CrcAlgorithm, Uint32Array>();

export function tablesFor(alg: CrcAlgorithm): Uint32Array {
  let t = tableCache.get(alg);
  if (t === undefined) {
    const spec = CRC_SPECS[alg];
    t = spec.width === 64 ? crc64Tables(spec.polyHi, spec.polyLo) : crc32Tables(spec.polyLo);
    tableCache.set(alg, t);
  }
  return t;
}

/** A 32-bit CRC as S3 encodes it: 4 bytes, big-endian. */
export function be32(value: number): Buffer {
  const out = Buffer.allocUnsafe(4);
  out.writeUInt32BE(value >>> 0, 0);
  return out;
}

/** A 64-bit CRC (two 32-bit halves) as S3 encodes it: 8 bytes, big-endian. */
export function be64(hi: number, lo: number): Buffer {
  const out = Buffer.allocUnsafe(8);
  out.writeUInt32BE(hi >>> 0, 0);
  out.writeUInt32BE(lo >>> 0, 4);
  return out;
}
