/** The CRC kernels in plain JavaScript: the fallback where WebAssembly is unavailable (`--jitless`). */

// ---------------------------------------------------------------------------------------------
// Plain-JS kernels (the fallback). Words are assembled from bytes, so host endianness and chunk
// alignment do not matter. Indexing a typed array in bounds always yields a number; the casts only
// tell the compiler so (noUncheckedIndexedAccess).
// ---------------------------------------------------------------------------------------------

/** Advances a 32-bit register over `d`; returns the new register. */
export function crc32Js(t: Uint32Array, reg: number, d: Uint8Array): number {
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
export function crc64Js(t: Uint32Array, state: Uint32Array, d: Uint8Array): void {
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
