/**
 * Builds valid safetensors files for tests, the demo and the benchmark. Layout matches the reference
 * writer: tensors in the order given, packed back to back from offset 0, the JSON header padded with spaces
 * so the data buffer starts on an 8-byte boundary.
 */
import { ColdstartError } from "../errors.js";
import { tensorByteLength } from "./header.js";

/** A tensor to lay out: its data is generated, not given. */
export interface TensorSpec {
  name: string;
  dtype: string;
  shape: number[];
}

/**
 * Builds just the header (8-byte length + padded JSON) for `tensors`, so a caller can stream `dataBytes`
 * bytes of data after it. Throws CS_INTERNAL for an unknown dtype, a sub-byte tensor that is not whole
 * bytes, a duplicate or reserved name.
 */
export function buildSafetensorsHeader(
  tensors: readonly TensorSpec[],
  metadata?: Record<string, string>,
): { header: Buffer; dataBytes: number } {
  const entries: [string, unknown][] = [];
  if (metadata !== undefined) entries.push(["__metadata__", metadata]);
  const seen = new Set<string>();
  let offset = 0;
  for (const t of tensors) {
    if (t.name === "__metadata__" || seen.has(t.name)) {
      throw new ColdstartError(
        "CS_INTERNAL",
        `buildSafetensorsHeader: tensor name "${t.name}" is reserved or repeated`,
      );
    }
    seen.add(t.name);
    const size = tensorByteLength(t.dtype, t.shape);
    if (!size.ok)
      throw new ColdstartError("CS_INTERNAL", `buildSafetensorsHeader: tensor "${t.name}" ${size.reason}`);
    entries.push([t.name, { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + size.bytes] }]);
    offset += size.bytes;
  }
  // Object.fromEntries keeps a "__proto__" tensor name as an ordinary key.
  const json = Buffer.from(JSON.stringify(Object.fromEntries(entries)), "utf8");
  const padded = Math.ceil(json.length / 8) * 8;
  const header = Buffer.alloc(8 + padded, 0x20);
  header.writeBigUInt64LE(BigInt(padded), 0);
  json.copy(header, 8);
  return { header, dataBytes: offset };
}

/**
 * Builds a whole safetensors file in memory. Data byte `i` of the data buffer is `fill(i) & 0xff`; the
 * default fill is a fixed pattern, so the same arguments always give the same bytes.
 */
export function buildSafetensors(
  tensors: readonly TensorSpec[],
  metadata?: Record<string, string>,
  fill: (i: number) => number = defaultFill,
): Buffer {
  const { header, dataBytes } = buildSafetensorsHeader(tensors, metadata);
  const file = Buffer.allocUnsafe(header.length + dataBytes);
  header.copy(file, 0);
  for (let i = 0; i < dataBytes; i++) file[header.length + i] = fill(i) & 0xff;
  return file;
}

function defaultFill(i: number): number {
  return (i * 131 + 7) ^ (i >>> 8);
}
