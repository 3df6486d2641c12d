/**
 * Streaming checksums with S3's byte encoding: SHA1 and SHA256 from node:crypto, CRC32 from zlib
 * (native, SIMD), CRC32C and CRC64NVME from the WebAssembly kernel (src/checksums/crc-wasm.ts), with
 * the same algorithm in plain JavaScript as the fallback where WebAssembly is unavailable (`node
 * --jitless`). Every update is synchronous and CPU-bound: at tens of Gbit/s, checksum in worker
 * threads, not on the event loop.
 */
import { createHash, type Hash } from "node:crypto";
import * as zlib from "node:zlib";
import { ColdstartError } from "../errors.js";
import { crc32Js, crc64Js } from "./crc-js.js";
import { be32, be64, tablesFor } from "./crc-tables.js";
import { WasmCrc32c, WasmCrc64, wasmKernels } from "./crc-wasm.js";
import type { ChecksumAlgorithm, StreamingChecksum } from "./types.js";

/** Which code computes a checksum: Node's own (zlib, crypto), the WebAssembly kernel, or plain JS. */
export type ChecksumImplementation = "node" | "wasm" | "js";

export interface CreateChecksumOptions {
  /**
   * Forces one implementation (tests and benchmarks); the default picks the fastest available.
   * Throws CS_INTERNAL where the algorithm has no such implementation here.
   */
  implementation?: ChecksumImplementation;
}

// ---------------------------------------------------------------------------------------------
// Streaming checksum classes.
// ---------------------------------------------------------------------------------------------

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
