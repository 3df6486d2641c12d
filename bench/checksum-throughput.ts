/**
 * Single-thread throughput of each checksum implementation in src/checksums/, beside the AWS
 * SDK's own CRC32C/CRC64NVME (what the SDK runs when it validates responses) and, when installed,
 * the optional native packages evaluated for it.
 *
 *   npx tsx bench/checksum-throughput.ts [sizeMiB=256] [chunkKiB=64] [repeats=3]
 *
 * Data is fed in chunks of chunkKiB, as a socket would deliver it; 0 feeds the whole buffer at once.
 * Each line is the best of `repeats` passes, in MB/s (10^6 bytes per second of wall time).
 */
import { createRequire } from "node:module";
import {
  type ChecksumImplementation,
  checksumImplementation,
  createChecksum,
} from "../src/checksums/streaming.js";
import type { ChecksumAlgorithm } from "../src/checksums/types.js";

const MiB = 1024 * 1024;
const sizeMiB = Number(process.argv[2] ?? 256);
const chunkBytes = Number(process.argv[3] ?? 64) * 1024;
const repeats = Number(process.argv[4] ?? 3);

const data = Buffer.allocUnsafe(sizeMiB * MiB);
let x = 0x9e3779b9;
for (let i = 0; i < Math.min(data.length, MiB); i++) {
  x ^= x << 13;
  x ^= x >>> 17;
  x ^= x << 5;
  data[i] = x & 255;
}
for (let filled = MiB; filled < data.length; filled *= 2) data.copy(data, filled, 0, filled);

function feed(update: (chunk: Uint8Array) => void): void {
  if (chunkBytes <= 0) {
    update(data);
    return;
  }
  for (let off = 0; off < data.length; off += chunkBytes) update(data.subarray(off, off + chunkBytes));
}

async function measure(label: string, run: () => Promise<string> | string): Promise<void> {
  let best = Number.POSITIVE_INFINITY;
  let result = "";
  for (let r = 0; r < repeats; r++) {
    const start = performance.now();
    result = await run();
    best = Math.min(best, performance.now() - start);
  }
  const mbps = data.length / 1e3 / best;
  console.log(`${label.padEnd(40)} ${mbps.toFixed(0).padStart(7)} MB/s  ${result}`);
}

interface SdkHash {
  update(data: Uint8Array): void;
  digest(): Promise<Uint8Array>;
}
type SdkCtor = new () => SdkHash;

const require = createRequire(import.meta.url);
function optional<T>(name: string): T | undefined {
  try {
    return require(name) as T;
  } catch {
    return undefined;
  }
}

console.log(
  `node ${process.version}, ${sizeMiB} MiB, chunks of ${chunkBytes > 0 ? `${chunkBytes / 1024} KiB` : "the whole buffer"}`,
);

const algorithms: ChecksumAlgorithm[] = ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"];
const implementations: ChecksumImplementation[] = ["node", "wasm", "js"];
for (const alg of algorithms) {
  for (const implementation of implementations) {
    let probe: ReturnType<typeof createChecksum>;
    try {
      probe = createChecksum(alg, { implementation });
    } catch {
      continue;
    }
    probe.update(data.subarray(0, 1024)); // compile the kernels before timing
    const picked = checksumImplementation(alg) === implementation ? " (default)" : "";
    await measure(`${alg} coldstart ${implementation}${picked}`, () => {
      const sum = createChecksum(alg, { implementation });
      feed((chunk) => sum.update(chunk));
      return sum.digest().toString("hex");
    });
  }
}

const sdk = optional<Record<string, SdkCtor>>("@aws-sdk/checksums/crc");
for (const [alg, name] of [
  ["CRC32C", "Crc32c"],
  ["CRC64NVME", "Crc64Nvme"],
] as const) {
  const Ctor = sdk?.[name];
  if (Ctor === undefined) continue;
  await measure(`${alg} @aws-sdk/checksums ${name}`, async () => {
    const sum = new Ctor();
    feed((chunk) => sum.update(chunk));
    return Buffer.from(await sum.digest()).toString("hex");
  });
}

type CrcFn = (data: Uint8Array, previous?: number) => number;
const nodeRs = optional<{ crc32: CrcFn; crc32c: CrcFn }>("@node-rs/crc32");
if (nodeRs !== undefined) {
  for (const [alg, fn] of [
    ["CRC32", nodeRs.crc32],
    ["CRC32C", nodeRs.crc32c],
  ] as const) {
    await measure(`${alg} @node-rs/crc32`, () => {
      let crc = 0;
      feed((chunk) => {
        crc = fn(chunk, crc);
      });
      return (crc >>> 0).toString(16).padStart(8, "0");
    });
  }
}

const crt = optional<{
  checksums: { crc32c: CrcFn; crc64nvme: (d: Uint8Array, prev?: DataView) => DataView };
}>("aws-crt");
if (crt !== undefined) {
  await measure("CRC32C aws-crt", () => {
    let crc = 0;
    feed((chunk) => {
      crc = crt.checksums.crc32c(chunk, crc);
    });
    return (crc >>> 0).toString(16).padStart(8, "0");
  });
  await measure("CRC64NVME aws-crt", () => {
    let crc: DataView | undefined;
    feed((chunk) => {
      crc = crt.checksums.crc64nvme(chunk, crc);
    });
    return crc === undefined ? "" : Buffer.from(crc.buffer, crc.byteOffset, crc.byteLength).toString("hex");
  });
}
