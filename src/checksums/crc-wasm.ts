/**
 * CRC32C and CRC64NVME in WebAssembly (Node has no native code for either): a slicing-by-16 table
 * kernel generated below at load time (no build step, no binary blob), about 4× the AWS SDK's
 * pure-JS CRC64NVME and CRC32C (`tsx bench/checksum-throughput.ts`).
 */
import { be32, be64, SLICES, tablesFor } from "./crc-tables.js";
import type { StreamingChecksum } from "./types.js";

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

export interface WasmKernels {
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
export function wasmKernels(): WasmKernels | null {
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

/** Copies `chunk` into the module's data window a window at a time, running `kernel` on each. */
function eachWindow(k: WasmKernels, chunk: Uint8Array, kernel: (length: number) => void): void {
  for (let off = 0; off < chunk.length; off += WASM_WINDOW) {
    const part = chunk.subarray(off, off + WASM_WINDOW);
    k.bytes.set(part, WASM_DATA);
    kernel(part.length);
  }
}

export class WasmCrc32c implements StreamingChecksum {
  private reg = 0xffffffff;
  /** Made once: no closure per update on the byte path. */
  private readonly step = (length: number) => {
    this.reg = this.k.crc32c(WASM_DATA, length, this.reg) >>> 0;
  };
  constructor(private readonly k: WasmKernels) {}
  update(chunk: Uint8Array): void {
    eachWindow(this.k, chunk, this.step);
  }
  digest(): Buffer {
    return be32(~this.reg);
  }
}

export class WasmCrc64 implements StreamingChecksum {
  private lo = 0xffffffff;
  private hi = 0xffffffff;
  private readonly step = (length: number) => {
    const { k } = this;
    k.crc64(WASM_DATA, length, this.lo, this.hi);
    this.lo = k.view.getUint32(WASM_STATE, true);
    this.hi = k.view.getUint32(WASM_STATE + 4, true);
  };
  constructor(private readonly k: WasmKernels) {}
  update(chunk: Uint8Array): void {
    eachWindow(this.k, chunk, this.step);
  }
  digest(): Buffer {
    return be64(~this.hi, ~this.lo);
  }
}
