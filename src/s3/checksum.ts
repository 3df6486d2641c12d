/**
 * S3 object checksums: streaming CRC32, CRC32C, CRC64NVME, SHA1 and SHA256 with S3's byte encoding,
 * combination of CRCs of adjacent ranges, and parsing of the `x-amz-checksum-*` response headers.
 *
 * Ranges are downloaded in parallel and out of order, and S3 returns no checksum for an arbitrary
 * range, so a FULL_OBJECT CRC is checked by computing each range's CRC while it streams and folding
 * them together in object order with {@link combineCrc}. COMPOSITE checksums (SHA, and by default
 * CRC32/CRC32C of multipart uploads) are a checksum of the parts' raw checksums: {@link compositeOf}.
 *
 * Speed: these run over every staged byte (10–140 GB per model). SHA1/SHA256 use node:crypto and
 * CRC32 uses zlib.crc32 (native, SIMD). Node has no native CRC32C or CRC64NVME, so those run as a
 * slicing-by-16 table kernel in WebAssembly, generated below at load time (no build step, no binary
 * blob), about 4× the AWS SDK's pure-JS CRC64NVME and CRC32C. The same algorithm in plain
 * JavaScript is the fallback where WebAssembly is unavailable (`node --jitless`). Every update is
 * synchronous and CPU-bound: at tens of Gbit/s, checksum in worker threads, not on the event loop.
 */
import { createHash, type Hash } from "node:crypto";
import * as zlib from "node:zlib";
import { ColdstartError } from "../errors.js";

export type ChecksumAlgorithm = "CRC32" | "CRC32C" | "CRC64NVME" | "SHA1" | "SHA256";
export type CrcAlgorithm = "CRC32" | "CRC32C" | "CRC64NVME";

/** Which code computes a checksum: Node's own (zlib, crypto), the WebAssembly kernel, or plain JS. */
export type ChecksumImplementation = "node" | "wasm" | "js";

export interface StreamingChecksum {
  /** Feeds the next bytes of the stream; chunks may have any size, including zero. */
  update(chunk: Uint8Array): void;
  /**
   * The checksum of all bytes fed so far, as the raw big-endian bytes S3 base64-encodes in its
   * headers. It does not end the stream: update() may continue and digest() be called again.
   */
  digest(): Buffer;
}

export interface CreateChecksumOptions {
  /**
   * Forces one implementation (tests and benchmarks); the default picks the fastest available.
   * Throws CS_INTERNAL where the algorithm has no such implementation here.
   */
  implementation?: ChecksumImplementation;
}

/** Digest size in bytes of each algorithm, as S3 encodes it. */
const DIGEST_BYTES: Readonly<Record<ChecksumAlgorithm, number>> = {
  CRC32: 4,
  CRC32C: 4,
  CRC64NVME: 8,
  SHA1: 20,
  SHA256: 32,
};

/**
 * Header lookup order when a response carries more than one checksum (S3 sends one; a proxy or a
 * future S3 might send more): full-object-capable CRCs first, since ranges can be verified with them.
 */
const HEADER_PREFERENCE: readonly ChecksumAlgorithm[] = ["CRC64NVME", "CRC32C", "CRC32", "SHA256", "SHA1"];

/** S3 allows at most 10,000 parts, so a composite suffix above that is malformed. */
const MAX_PARTS = 10_000;

// ---------------------------------------------------------------------------------------------
// CRC parameters and tables. All three CRCs are reflected, with init and xorout all ones, so the
// "register" (the running value before the final inversion) starts as all ones and the digest is
// its complement. A 64-bit register is held as two unsigned 32-bit halves: no BigInt anywhere.
// ---------------------------------------------------------------------------------------------

interface CrcSpec {
  readonly width: 32 | 64;
  /** Reflected polynomial, high and low 32 bits (high is 0 for 32-bit CRCs). */
  readonly polyHi: number;
  readonly polyLo: number;
}

const CRC_SPECS: Readonly<Record<CrcAlgorithm, CrcSpec>> = {
  CRC32: { width: 32, polyHi: 0, polyLo: 0xedb88320 },
  CRC32C: { width: 32, polyHi: 0, polyLo: 0x82f63b78 },
  CRC64NVME: { width: 64, polyHi: 0x9a6c9329, polyLo: 0xac4bc9b5 },
};

/** Slicing-by-16: 16 tables of 256 entries; table k advances a byte through k further zero bytes. */
const SLICES = 16;

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

function tablesFor(alg: CrcAlgorithm): Uint32Array {
  let t = tableCache.get(alg);
  if (t === undefined) {
    const spec = CRC_SPECS[alg];
    t = spec.width === 64 ? crc64Tables(spec.polyHi, spec.polyLo) : crc32Tables(spec.polyLo);
    tableCache.set(alg, t);
  }
  return t;
}

// ---------------------------------------------------------------------------------------------
// Plain-JS kernels (the fallback). Words are assembled from bytes, so host endianness and chunk
// alignment do not matter. Indexing a typed array in bounds always yields a number; the casts only
// tell the compiler so (noUncheckedIndexedAccess).
// ---------------------------------------------------------------------------------------------

/** Advances a 32-bit register over `d`; returns the new register. */
function crc32Js(t: Uint32Array, reg: number, d: Uint8Array): number {
  let r = reg;
  const n = d.length;
  const end = n - (n & 15);
  let i = 0;
  for (; i < end; i += 16) {
    const a =
      r ^
      ((d[i] as number) |
        ((d[i + 1] as number) << 8) |
        ((d[i + 2] as number) << 16) |
        ((d[i + 3] as number) << 24));
    r =
      (t[3840 + (a & 255)] as number) ^
      (t[3584 + ((a >>> 8) & 255)] as number) ^
      (t[3328 + ((a >>> 16) & 255)] as number) ^
      (t[3072 + (a >>> 24)] as number) ^
      (t[2816 + (d[i + 4] as number)] as number) ^
      (t[2560 + (d[i + 5] as number)] as number) ^
      (t[2304 + (d[i + 6] as number)] as number) ^
      (t[2048 + (d[i + 7] as number)] as number) ^
      (t[1792 + (d[i + 8] as number)] as number) ^
      (t[1536 + (d[i + 9] as number)] as number) ^
      (t[1280 + (d[i + 10] as number)] as number) ^
      (t[1024 + (d[i + 11] as number)] as number) ^
      (t[768 + (d[i + 12] as number)] as number) ^
      (t[512 + (d[i + 13] as number)] as number) ^
      (t[256 + (d[i + 14] as number)] as number) ^
      (t[d[i + 15] as number] as number);
  }
  for (; i < n; i++) r = (r >>> 8) ^ (t[(r ^ (d[i] as number)) & 255] as number);
  return r >>> 0;
}

/** Advances a 64-bit register (`state` = [lo, hi]) over `d`, in place. */
function crc64Js(t: Uint32Array, state: Uint32Array, d: Uint8Array): void {
  let lo = state[0] as number;
  let hi = state[1] as number;
  const n = d.length;
  const end = n - (n & 15);
  let i = 0;
  for (; i < end; i += 16) {
    const a =
      lo ^
      ((d[i] as number) |
        ((d[i + 1] as number) << 8) |
        ((d[i + 2] as number) << 16) |
        ((d[i + 3] as number) << 24));
    const b =
      hi ^
      ((d[i + 4] as number) |
        ((d[i + 5] as number) << 8) |
        ((d[i + 6] as number) << 16) |
        ((d[i + 7] as number) << 24));
    // Entry offsets into the interleaved table: slice s, byte v -> s*512 + 2*v (lo), +1 (hi).
    const x0 = 7680 + ((a & 255) << 1);
    const x1 = 7168 + ((a >>> 7) & 510);
    const x2 = 6656 + ((a >>> 15) & 510);
    const x3 = 6144 + ((a >>> 23) & 510);
    const x4 = 5632 + ((b & 255) << 1);
    const x5 = 5120 + ((b >>> 7) & 510);
    const x6 = 4608 + ((b >>> 15) & 510);
    const x7 = 4096 + ((b >>> 23) & 510);
    const x8 = 3584 + ((d[i + 8] as number) << 1);
    const x9 = 3072 + ((d[i + 9] as number) << 1);
    const x10 = 2560 + ((d[i + 10] as number) << 1);
    const x11 = 2048 + ((d[i + 11] as number) << 1);
    const x12 = 1536 + ((d[i + 12] as number) << 1);
    const x13 = 1024 + ((d[i + 13] as number) << 1);
    const x14 = 512 + ((d[i + 14] as number) << 1);
    const x15 = (d[i + 15] as number) << 1;
    lo =
      (t[x0] as number) ^
      (t[x1] as number) ^
      (t[x2] as number) ^
      (t[x3] as number) ^
      (t[x4] as number) ^
      (t[x5] as number) ^
      (t[x6] as number) ^
      (t[x7] as number) ^
      (t[x8] as number) ^
      (t[x9] as number) ^
      (t[x10] as number) ^
      (t[x11] as number) ^
      (t[x12] as number) ^
      (t[x13] as number) ^
      (t[x14] as number) ^
      (t[x15] as number);
    hi =
      (t[x0 + 1] as number) ^
      (t[x1 + 1] as number) ^
      (t[x2 + 1] as number) ^
      (t[x3 + 1] as number) ^
      (t[x4 + 1] as number) ^
      (t[x5 + 1] as number) ^
      (t[x6 + 1] as number) ^
      (t[x7 + 1] as number) ^
      (t[x8 + 1] as number) ^
      (t[x9 + 1] as number) ^
      (t[x10 + 1] as number) ^
      (t[x11 + 1] as number) ^
      (t[x12 + 1] as number) ^
      (t[x13 + 1] as number) ^
      (t[x14 + 1] as number) ^
      (t[x15 + 1] as number);
  }
  for (; i < n; i++) {
    const x = ((lo ^ (d[i] as number)) & 255) << 1;
    lo = ((lo >>> 8) | (hi << 24)) ^ (t[x] as number);
    hi = (hi >>> 8) ^ (t[x + 1] as number);
  }
  state[0] = lo;
  state[1] = hi;
}

// ---------------------------------------------------------------------------------------------
// WebAssembly kernels. The same slicing-by-16 algorithm, but with native 64-bit registers and loads;
// it runs near the speed of the same algorithm compiled from C. The module is assembled here from
// opcodes (about 800 bytes) so it can be read and reviewed; WAT equivalent of the loop body:
//   w = i64.load(p) ^ crc                               ;; the 8 bytes that meet the register
//   crc = T15[w & 255] ^ T14[(w >> 8) & 255] ^ … ^ T8[w >> 56]
//       ^ T7[load8_u(p + 8)] ^ … ^ T0[load8_u(p + 15)]  ;; XORed as a balanced tree, not a chain
// Memory layout (fixed, never grown; wasm memory is little-endian on every host):
// ---------------------------------------------------------------------------------------------

const WASM_CRC64_TABLES = 0; // 16 slices × 256 × 8 bytes = 32 KiB
const WASM_CRC32C_TABLES = 32_768; // 16 slices × 256 × 4 bytes = 16 KiB
const WASM_STATE = 49_152; // the CRC64 kernel stores its register here
const WASM_DATA = 65_536; // input window: each update copies its chunk here, a window at a time
const WASM_WINDOW = 256 * 1024;
const WASM_PAGES = (WASM_DATA + WASM_WINDOW) / 65_536;

const OP = {
  block: 0x02,
  loop: 0x03,
  end: 0x0b,
  br: 0x0c,
  brIf: 0x0d,
  localGet: 0x20,
  localSet: 0x21,
  i32Load: 0x28,
  i64Load: 0x29,
  i32Load8U: 0x2d,
  i64Store: 0x37,
  i32Const: 0x41,
  i64Const: 0x42,
  i32GeU: 0x4f,
  i32Add: 0x6a,
  i32And: 0x71,
  i32Xor: 0x73,
  i32Shl: 0x74,
  i32ShrU: 0x76,
  i64Or: 0x84,
  i64Xor: 0x85,
  i64Shl: 0x86,
  i64ShrU: 0x88,
  i32WrapI64: 0xa7,
  i64ExtendI32U: 0xad,
} as const;
const BLOCK_VOID = 0x40;
const I32 = 0x7f;
const I64 = 0x7e;

function uleb(value: number): number[] {
  const out: number[] = [];
  let v = value;
  do {
    const byte = v & 0x7f;
    v = Math.floor(v / 128);
    out.push(v === 0 ? byte : byte | 0x80);
  } while (v !== 0);
  return out;
}

/** Signed LEB128 for the small constants used here (|value| < 2^31). */
function sleb(value: number): number[] {
  const out: number[] = [];
  let v = value | 0;
  for (;;) {
    const byte = v & 0x7f;
    v >>= 7;
    if ((v === 0 && (byte & 0x40) === 0) || (v === -1 && (byte & 0x40) !== 0)) {
      out.push(byte);
      return out;
    }
    out.push(byte | 0x80);
  }
}

/** A memory instruction with its alignment hint (log2) and static offset. */
function mem(op: number, alignLog2: number, offset: number): number[] {
  return [op, alignLog2, ...uleb(offset)];
}

/**
 * Body of one CRC kernel, locals included.
 * width 64: (p, n, lo, hi) -> (), register read from lo/hi and stored at WASM_STATE.
 * width 32: (p, n, crc) -> crc.
 */
function crcKernelBody(width: 32 | 64, tableBase: number): number[] {
  const wide = width === 64;
  const P = 0;
  const N = 1;
  const CRC = wide ? 5 : 2;
  const END = wide ? 4 : 3;
  const W = wide ? 6 : 4;
  const entryShift = wide ? 3 : 2;
  const sliceBytes = 256 << entryShift;
  const tableLoad = wide ? OP.i64Load : OP.i32Load;
  const xor = wide ? OP.i64Xor : OP.i32Xor;
  const get = (i: number) => [OP.localGet, i];
  const set = (i: number) => [OP.localSet, i];
  const i32c = (v: number) => [OP.i32Const, ...sleb(v)];
  const i64c = (v: number) => [OP.i64Const, ...sleb(v)];

  // Byte j (0..15) of the 16-byte block goes through table slice 15 - j.
  const term = (j: number): number[] => {
    const table = mem(tableLoad, entryShift, tableBase + (SLICES - 1 - j) * sliceBytes);
    if (j >= 8) return [...get(P), ...mem(OP.i32Load8U, 0, j), ...i32c(entryShift), OP.i32Shl, ...table];
    const shifted = j === 0 ? get(W) : [...get(W), ...i64c(8 * j), OP.i64ShrU];
    const masked = j === 7 ? [] : [...i32c(255), OP.i32And];
    return [...shifted, OP.i32WrapI64, ...masked, ...i32c(entryShift), OP.i32Shl, ...table];
  };
  const tree = (from: number, to: number): number[] => {
    if (from === to) return term(from);
    const mid = (from + to) >> 1;
    return [...tree(from, mid), ...tree(mid + 1, to), xor];
  };

  const locals = wide ? [2, 1, I32, 2, I64] : [2, 1, I32, 1, I64];
  const loadRegister = wide
    ? [
        ...get(2),
        OP.i64ExtendI32U,
        ...get(3),
        OP.i64ExtendI32U,
        ...i64c(32),
        OP.i64Shl,
        OP.i64Or,
        ...set(CRC),
      ]
    : [];
  const registerAsI64 = wide ? get(CRC) : [...get(CRC), OP.i64ExtendI32U];
  const registerLowByte = wide ? [...get(CRC), OP.i32WrapI64] : get(CRC);
  const shiftRegister = wide ? [...get(CRC), ...i64c(8), OP.i64ShrU] : [...get(CRC), ...i32c(8), OP.i32ShrU];
  const storeRegister = wide ? [...i32c(0), ...get(CRC), ...mem(OP.i64Store, 3, WASM_STATE)] : get(CRC);

  /** `while (p < end) { body; p += step }` */
  const whileBelowEnd = (step: number, body: number[]) => [
    OP.block,
    BLOCK_VOID,
    OP.loop,
    BLOCK_VOID,
    ...get(P),
    ...get(END),
    OP.i32GeU,
    OP.brIf,
    1,
    ...body,
    ...get(P),
    ...i32c(step),
    OP.i32Add,
    ...set(P),
    OP.br,
    0,
    OP.end,
    OP.end,
  ];

  return [
    ...locals,
    ...loadRegister,
    // end = p + (n & -16)
    ...get(P),
    ...get(N),
    ...i32c(-16),
    OP.i32And,
    OP.i32Add,
    ...set(END),
    ...whileBelowEnd(16, [
      ...get(P),
      ...mem(OP.i64Load, 0, 0),
      ...registerAsI64,
      OP.i64Xor,
      ...set(W),
      ...tree(0, SLICES - 1),
      ...set(CRC),
    ]),
    // the last n & 15 bytes, one at a time
    ...get(END),
    ...get(N),
    ...i32c(15),
    OP.i32And,
    OP.i32Add,
    ...set(END),
    ...whileBelowEnd(1, [
      ...shiftRegister,
      ...registerLowByte,
      ...get(P),
      ...mem(OP.i32Load8U, 0, 0),
      OP.i32Xor,
      ...i32c(255),
      OP.i32And,
      ...i32c(entryShift),
      OP.i32Shl,
      ...mem(tableLoad, entryShift, tableBase),
      xor,
      ...set(CRC),
    ]),
    ...storeRegister,
    OP.end,
  ];
}

function wasmModuleBytes(): Uint8Array {
  const vec = (items: number[][]) => [...uleb(items.length), ...items.flat()];
  const section = (id: number, content: number[]) => [id, ...uleb(content.length), ...content];
  const name = (s: string) => [...uleb(s.length), ...Array.from(s, (c) => c.charCodeAt(0))];
  const withSize = (body: number[]) => [...uleb(body.length), ...body];
  const types = vec([
    [0x60, ...vec([[I32], [I32], [I32], [I32]]), ...vec([])], // crc64(p, n, lo, hi)
    [0x60, ...vec([[I32], [I32], [I32]]), ...vec([[I32]])], // crc32c(p, n, crc) -> crc
  ]);
  return Uint8Array.from([
    ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00],
    ...section(1, types),
    ...section(3, vec([[0], [1]])),
    ...section(5, vec([[0x01, ...uleb(WASM_PAGES), ...uleb(WASM_PAGES)]])),
    ...section(
      7,
      vec([
        [...name("crc64"), 0x00, 0],
        [...name("crc32c"), 0x00, 1],
        [...name("memory"), 0x02, 0],
      ]),
    ),
    ...section(
      10,
      vec([withSize(crcKernelBody(64, WASM_CRC64_TABLES)), withSize(crcKernelBody(32, WASM_CRC32C_TABLES))]),
    ),
  ]);
}

interface WasmKernels {
  crc64(ptr: number, len: number, lo: number, hi: number): void;
  crc32c(ptr: number, len: number, reg: number): number;
  bytes: Uint8Array;
  view: DataView;
}

/** The subset of the WebAssembly global used here; lib "dom" is not in this project's tsconfig. */
interface WebAssemblyApi {
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports?: object) => { exports: Record<string, unknown> };
}

let wasmState: WasmKernels | null | undefined;

/** Compiles and fills the kernels once per thread; null where WebAssembly is unavailable. */
function wasmKernels(): WasmKernels | null {
  if (wasmState !== undefined) return wasmState;
  const api = (globalThis as { WebAssembly?: WebAssemblyApi }).WebAssembly;
  wasmState = null;
  if (api === undefined) return null;
  try {
    const { exports } = new api.Instance(new api.Module(wasmModuleBytes()));
    const memory = exports.memory as { buffer: ArrayBuffer };
    const view = new DataView(memory.buffer);
    const t64 = tablesFor("CRC64NVME");
    for (let i = 0; i < t64.length; i++) view.setUint32(WASM_CRC64_TABLES + 4 * i, t64[i] as number, true);
    const t32 = tablesFor("CRC32C");
    for (let i = 0; i < t32.length; i++) view.setUint32(WASM_CRC32C_TABLES + 4 * i, t32[i] as number, true);
    wasmState = {
      crc64: exports.crc64 as WasmKernels["crc64"],
      crc32c: exports.crc32c as WasmKernels["crc32c"],
      bytes: new Uint8Array(memory.buffer),
      view,
    };
  } catch {
    // A runtime that refuses to compile (policy, --jitless variants) gets the JS fallback.
    wasmState = null;
  }
  return wasmState;
}

// ---------------------------------------------------------------------------------------------
// Streaming checksum classes.
// ---------------------------------------------------------------------------------------------

function be32(value: number): Buffer {
  const out = Buffer.allocUnsafe(4);
  out.writeUInt32BE(value >>> 0, 0);
  return out;
}

function be64(hi: number, lo: number): Buffer {
  const out = Buffer.allocUnsafe(8);
  out.writeUInt32BE(hi >>> 0, 0);
  out.writeUInt32BE(lo >>> 0, 4);
  return out;
}

class ZlibCrc32 implements StreamingChecksum {
  private crc = 0;
  update(chunk: Uint8Array): void {
    this.crc = zlib.crc32(chunk, this.crc);
  }
  digest(): Buffer {
    return be32(this.crc);
  }
}

class JsCrc32 implements StreamingChecksum {
  private reg = 0xffffffff;
  constructor(private readonly tables: Uint32Array) {}
  update(chunk: Uint8Array): void {
    this.reg = crc32Js(this.tables, this.reg, chunk);
  }
  digest(): Buffer {
    return be32(~this.reg);
  }
}

class WasmCrc32c implements StreamingChecksum {
  private reg = 0xffffffff;
  constructor(private readonly k: WasmKernels) {}
  update(chunk: Uint8Array): void {
    const { k } = this;
    for (let off = 0; off < chunk.length; off += WASM_WINDOW) {
      const part = chunk.subarray(off, off + WASM_WINDOW);
      k.bytes.set(part, WASM_DATA);
      this.reg = k.crc32c(WASM_DATA, part.length, this.reg) >>> 0;
    }
  }
  digest(): Buffer {
    return be32(~this.reg);
  }
}

class JsCrc64 implements StreamingChecksum {
  private readonly state = new Uint32Array([0xffffffff, 0xffffffff]);
  constructor(private readonly tables: Uint32Array) {}
  update(chunk: Uint8Array): void {
    crc64Js(this.tables, this.state, chunk);
  }
  digest(): Buffer {
    return be64(~(this.state[1] as number), ~(this.state[0] as number));
  }
}

class WasmCrc64 implements StreamingChecksum {
  private lo = 0xffffffff;
  private hi = 0xffffffff;
  constructor(private readonly k: WasmKernels) {}
  update(chunk: Uint8Array): void {
    const { k } = this;
    for (let off = 0; off < chunk.length; off += WASM_WINDOW) {
      const part = chunk.subarray(off, off + WASM_WINDOW);
      k.bytes.set(part, WASM_DATA);
      k.crc64(WASM_DATA, part.length, this.lo, this.hi);
      this.lo = k.view.getUint32(WASM_STATE, true);
      this.hi = k.view.getUint32(WASM_STATE + 4, true);
    }
  }
  digest(): Buffer {
    return be64(~this.hi, ~this.lo);
  }
}

class CryptoChecksum implements StreamingChecksum {
  private readonly hash: Hash;
  constructor(algorithm: "sha1" | "sha256") {
    this.hash = createHash(algorithm);
  }
  update(chunk: Uint8Array): void {
    this.hash.update(chunk);
  }
  digest(): Buffer {
    // copy() keeps the running hash open, so digest() is a snapshot like the CRCs'.
    return this.hash.copy().digest();
  }
}

function availableImplementations(alg: ChecksumAlgorithm): ChecksumImplementation[] {
  switch (alg) {
    case "SHA1":
    case "SHA256":
      return ["node"];
    case "CRC32":
      return typeof zlib.crc32 === "function" ? ["node", "js"] : ["js"];
    case "CRC32C":
    case "CRC64NVME":
      return wasmKernels() === null ? ["js"] : ["wasm", "js"];
  }
}

/** The implementation createChecksum(alg) picks on this runtime (for logs and benchmarks). */
export function checksumImplementation(alg: ChecksumAlgorithm): ChecksumImplementation {
  const impl = availableImplementations(alg)[0];
  if (impl === undefined) throw new ColdstartError("CS_INTERNAL", `no implementation of ${alg}`);
  return impl;
}

/** A new streaming checksum of `alg`, using the fastest implementation this runtime offers. */
export function createChecksum(
  alg: ChecksumAlgorithm,
  options: CreateChecksumOptions = {},
): StreamingChecksum {
  const available = availableImplementations(alg);
  const impl = options.implementation ?? available[0];
  if (impl === undefined || !available.includes(impl)) {
    throw new ColdstartError(
      "CS_INTERNAL",
      `checksum ${alg} has no ${String(impl)} implementation here (available: ${available.join(", ")})`,
      { details: { field: "implementation", value: impl } },
    );
  }
  switch (alg) {
    case "SHA1":
      return new CryptoChecksum("sha1");
    case "SHA256":
      return new CryptoChecksum("sha256");
    case "CRC32":
      return impl === "node" ? new ZlibCrc32() : new JsCrc32(tablesFor("CRC32"));
    case "CRC32C": {
      const k = impl === "wasm" ? wasmKernels() : null;
      return k !== null ? new WasmCrc32c(k) : new JsCrc32(tablesFor("CRC32C"));
    }
    case "CRC64NVME": {
      const k = impl === "wasm" ? wasmKernels() : null;
      return k !== null ? new WasmCrc64(k) : new JsCrc64(tablesFor("CRC64NVME"));
    }
  }
}

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

// ---------------------------------------------------------------------------------------------
// Headers and composite checksums.
// ---------------------------------------------------------------------------------------------

const HEADER_VALUE = /^([A-Za-z0-9+/]+={0,2})(?:-([1-9][0-9]{0,4}))?$/;

/** Parses an x-amz-checksum-* header value: base64, optionally "-N" composite suffix. Throws nothing; returns undefined for malformed. */
export function parseChecksumHeader(value: string): { raw: Buffer; parts?: number } | undefined {
  if (typeof value !== "string") return undefined;
  const match = HEADER_VALUE.exec(value.trim());
  if (match === null) return undefined;
  const b64 = match[1] as string;
  if (b64.length % 4 !== 0) return undefined;
  const raw = Buffer.from(b64, "base64");
  // Node's decoder is lenient; a round trip rejects stray padding and non-zero pad bits.
  if (raw.length === 0 || raw.toString("base64") !== b64) return undefined;
  if (match[2] === undefined) return { raw };
  const parts = Number(match[2]);
  if (parts > MAX_PARTS) return undefined;
  return { raw, parts };
}

/**
 * Finds the checksum headers on a response (header names lowercase): returns alg, value, and type
 * (FULL_OBJECT|COMPOSITE from x-amz-checksum-type if present, else inferred from "-N").
 *
 * A value that is malformed, or whose length does not fit its algorithm, counts as absent. With
 * more than one checksum header, CRC64NVME, CRC32C, CRC32, SHA256, SHA1 is the order of preference.
 * Note that a `partNumber` or part-aligned GET of a composite object answers the part's own
 * checksum: type COMPOSITE with no `parts`.
 */
export function checksumFromHeaders(
  headers: Record<string, string | undefined>,
): { alg: ChecksumAlgorithm; raw: Buffer; type: "FULL_OBJECT" | "COMPOSITE"; parts?: number } | undefined {
  const declared = headers["x-amz-checksum-type"]?.trim().toUpperCase();
  for (const alg of HEADER_PREFERENCE) {
    const value = headers[`x-amz-checksum-${alg.toLowerCase()}`];
    if (value === undefined) continue;
    const parsed = parseChecksumHeader(value);
    if (parsed === undefined || parsed.raw.length !== DIGEST_BYTES[alg]) continue;
    const type =
      declared === "FULL_OBJECT" || declared === "COMPOSITE"
        ? declared
        : parsed.parts !== undefined
          ? "COMPOSITE"
          : "FULL_OBJECT";
    return parsed.parts === undefined
      ? { alg, raw: parsed.raw, type }
      : { alg, raw: parsed.raw, type, parts: parsed.parts };
  }
  return undefined;
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

/** True for the CRC algorithms, whose full-object values {@link combineCrc} can assemble from ranges. */
export function isCrcAlgorithm(alg: ChecksumAlgorithm): alg is CrcAlgorithm {
  return alg === "CRC32" || alg === "CRC32C" || alg === "CRC64NVME";
}
