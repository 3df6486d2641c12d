/**
 * Reading and validating the header of a .safetensors file, following the rules of the reference reader
 * (huggingface/safetensors, `SafeTensors::read_metadata` and `Metadata::validate`):
 *
 *   8 bytes   N, little-endian u64, at most 100,000,000
 *   N bytes   UTF-8 JSON object: optional "__metadata__" (string -> string) and one entry per tensor,
 *             {"dtype", "shape", "data_offsets": [begin, end]}, offsets relative to the data buffer
 *   rest      the data buffer, tiled exactly by the tensors' byte ranges
 *
 * A file that passes describes itself completely: every byte of the data buffer belongs to exactly one
 * tensor, and each tensor's byte range is exactly what its dtype and shape need.
 */
import { open } from "node:fs/promises";
import pLimit from "p-limit";
import { ColdstartError } from "../errors.js";

/** One tensor as the header describes it; `begin`/`end` are offsets into the data buffer. */
export interface TensorInfo {
  name: string;
  dtype: string;
  shape: number[];
  /** First byte of the tensor, relative to the start of the data buffer (file offset `dataOffset + begin`). */
  begin: number;
  /** One past the last byte, relative to the start of the data buffer. */
  end: number;
}

/** A validated header. Tensors are sorted by data offset (then name). */
export interface SafetensorsHeader {
  /** N: length in bytes of the JSON header, padding included. */
  headerBytes: number;
  /** 8 + N: file offset at which the data buffer starts. */
  dataOffset: number;
  tensors: TensorInfo[];
  metadata: Record<string, string> | undefined;
}

/** The reference reader refuses headers longer than this. */
export const MAX_HEADER_BYTES = 100_000_000;

/**
 * Deepest nesting a header may have. A valid one has three levels (the header object, a tensor's
 * object, its shape and offsets arrays); refusing deeper ones right after parsing, before anything
 * walks the value, keeps a hostile header (100,000 nested arrays) from exhausting the stack.
 */
export const MAX_HEADER_DEPTH = 8;

/**
 * Element width in bits of every dtype the current reference implementation defines (safetensors 0.6+,
 * `Dtype::bitsize`): the sub-byte MX types F4 / F6_*, F8_E8M0, the FNUZ FP8 variants and C64 included.
 */
const DTYPE_BITS: ReadonlyMap<string, number> = new Map([
  ["BOOL", 8],
  ["F4", 4],
  ["F6_E2M3", 6],
  ["F6_E3M2", 6],
  ["U8", 8],
  ["I8", 8],
  ["F8_E5M2", 8],
  ["F8_E4M3", 8],
  ["F8_E8M0", 8],
  ["F8_E4M3FNUZ", 8],
  ["F8_E5M2FNUZ", 8],
  ["I16", 16],
  ["U16", 16],
  ["F16", 16],
  ["BF16", 16],
  ["I32", 32],
  ["U32", 32],
  ["F32", 32],
  ["C64", 64],
  ["F64", 64],
  ["I64", 64],
  ["U64", 64],
]);

/** Every dtype name a header may use. */
export const SAFETENSORS_DTYPES: readonly string[] = [...DTYPE_BITS.keys()];

/** Width of one element of `dtype` in bits, or undefined for a name safetensors does not define. */
export function dtypeBits(dtype: string): number | undefined {
  return DTYPE_BITS.get(dtype);
}

export type TensorSize = { ok: true; bytes: number } | { ok: false; reason: string };

/**
 * Bytes a tensor of `dtype` and `shape` occupies, in checked arithmetic: fails (with a reason naming the
 * values) for an unknown dtype, a bit count that is not whole bytes, or a size beyond 2^53 - 1.
 */
export function tensorByteLength(dtype: string, shape: readonly number[]): TensorSize {
  const bits = DTYPE_BITS.get(dtype);
  if (bits === undefined) return { ok: false, reason: `unknown dtype ${show(dtype)}` };
  let elements = 1n;
  for (const dim of shape) elements *= BigInt(dim);
  const totalBits = elements * BigInt(bits);
  if (totalBits % 8n !== 0n) {
    return {
      ok: false,
      reason: `shape ${showList(shape)} of ${dtype} is ${totalBits} bits, not a whole number of bytes`,
    };
  }
  const bytes = totalBits / 8n;
  if (bytes > BigInt(Number.MAX_SAFE_INTEGER)) {
    return {
      ok: false,
      reason: `shape ${showList(shape)} of ${dtype} needs ${bytes} bytes, more than 2^53-1 (overflow)`,
    };
  }
  return { ok: true, bytes: Number(bytes) };
}

/**
 * Reads and validates the header of the file at `path`: opens it, reads 8 bytes, then N bytes; never reads
 * the data buffer. `key` names the file in messages (defaults to `path`). Throws CS_SAFETENSORS_INVALID for
 * a file that is not a valid safetensors file, CS_IO_ERROR when it cannot be read.
 */
export function readSafetensorsHeader(path: string, key?: string): Promise<SafetensorsHeader> {
  return oneAtATime(() => readHeader(path, key));
}

/**
 * Headers are checked one at a time in a process: a header may be 100 MB of JSON whose parse takes
 * about ten times that while it is checked (1,000,000 tensors in 73 MB peak near 770 MB), so two at
 * once must not add up. Shards finishing together wait for each other here, for milliseconds.
 */
const oneAtATime = pLimit(1);

async function readHeader(path: string, key: string | undefined): Promise<SafetensorsHeader> {
  const label = key ?? path;
  let handle: Awaited<ReturnType<typeof open>> | undefined;
  try {
    handle = await open(path, "r");
    const { size } = await handle.stat();
    const lengthPrefix = await readExactly(handle, 0, Math.min(8, size), label);
    const n = checkHeaderLength(lengthPrefix, size, label, key);
    const headerBytes = await readExactly(handle, 8, n, label);
    return validateHeader(Buffer.concat([lengthPrefix, headerBytes]), size, label, key);
  } catch (err) {
    if (err instanceof ColdstartError) throw err;
    const message = err instanceof Error ? err.message : String(err);
    throw new ColdstartError("CS_IO_ERROR", `${label}: cannot read safetensors header: ${message}`, {
      cause: err,
      details: details(key),
    });
  } finally {
    await handle?.close();
  }
}

/**
 * Pure validator for callers that already hold the bytes. `prefix` holds at least the first 8 + N bytes of
 * the file; `fileSize` is the total file length. `key` names the file in messages.
 */
export function parseSafetensorsHeader(prefix: Buffer, fileSize: number, key?: string): SafetensorsHeader {
  return validateHeader(prefix, fileSize, key ?? "safetensors file", key);
}

function validateHeader(
  prefix: Buffer,
  fileSize: number,
  label: string,
  key: string | undefined,
): SafetensorsHeader {
  const fail = (message: string, cause?: unknown): never => {
    throw invalid(label, key, message, cause);
  };
  if (!Number.isSafeInteger(fileSize) || fileSize < 0) {
    throw new ColdstartError(
      "CS_INTERNAL",
      `${label}: fileSize must be a non-negative integer, got ${fileSize}`,
      {
        details: details(key),
      },
    );
  }
  const n = checkHeaderLength(prefix.subarray(0, 8), fileSize, label, key);
  if (prefix.length < 8 + n) {
    throw new ColdstartError(
      "CS_INTERNAL",
      `${label}: parseSafetensorsHeader needs the first ${8 + n} bytes, got ${prefix.length}`,
      { details: details(key) },
    );
  }

  let text: string;
  try {
    // ignoreBOM keeps a leading BOM in the text so that JSON.parse refuses it, as the reference reader does.
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(prefix.subarray(8, 8 + n));
  } catch (err) {
    return fail("header is not valid UTF-8", err);
  }
  let parsed: unknown;
  try {
    // JSON whitespace (trailing 0x20 padding included) is allowed around the object, as in serde_json.
    // V8's parser is not recursive: a header nested 100,000 deep parses. Parsed first, so the scan
    // below only ever meets closed strings (its string pattern is quadratic on an unclosed one).
    parsed = JSON.parse(text);
  } catch (err) {
    return fail(`header is not valid JSON: ${err instanceof Error ? err.message : String(err)}`, err);
  }
  // Before anything walks the parsed value recursively (or stringifies a part of it for a message).
  const scan = scanJson(text);
  if (scan.depth > MAX_HEADER_DEPTH) {
    return fail(`header nests more than ${MAX_HEADER_DEPTH} levels deep (a valid one has 3)`);
  }
  if (!isPlainObject(parsed)) return fail(`header must be a JSON object, got ${kindOf(parsed)}`);
  // JSON.parse keeps the last of duplicate keys, so fewer keys than the text names means one repeats;
  // only then is the (costlier) search for which one run.
  if (countKeys(parsed) !== scan.keys) {
    const duplicate = findDuplicateJsonKey(text);
    if (duplicate !== undefined) return fail(`header has duplicate key ${describeKeyPath(duplicate)}`);
  }

  let metadata: Record<string, string> | undefined;
  const tensors: TensorInfo[] = [];
  for (const name of Object.keys(parsed)) {
    const entry = parsed[name];
    if (name === "__metadata__") {
      metadata = checkMetadata(entry, fail);
      continue;
    }
    tensors.push(checkTensor(name, entry, fail));
  }

  tensors.sort(
    (a, b) => a.begin - b.begin || a.end - b.end || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
  );
  let cursor = 0;
  let previous: TensorInfo | undefined;
  for (const t of tensors) {
    if (t.begin > cursor) {
      fail(
        previous === undefined
          ? `data buffer has a gap: the first tensor ${show(t.name)} begins at ${t.begin}, not 0`
          : `data buffer has a gap: tensor ${show(t.name)} begins at ${t.begin} but ${show(previous.name)} ends at ${cursor}`,
      );
    }
    if (t.begin < cursor) {
      fail(
        `tensor ${show(t.name)} data_offsets [${t.begin}, ${t.end}] overlap tensor ${show(previous?.name)} ending at ${cursor}`,
      );
    }
    cursor = t.end;
    previous = t;
  }

  const expected = 8 + n + cursor;
  if (expected !== fileSize) {
    const what =
      fileSize > expected
        ? `${fileSize - expected} trailing bytes`
        : `truncated by ${expected - fileSize} bytes`;
    fail(
      `file is ${fileSize} bytes but header (8 + ${n}) and data buffer (${cursor}) add up to ${expected}: ${what}`,
    );
  }
  return { headerBytes: n, dataOffset: 8 + n, tensors, metadata };
}

/**
 * Finds a repeated key in any object of a JSON text that JSON.parse has already accepted (JSON.parse keeps
 * the last value silently). One linear pass that tracks strings and nesting; returns the path of the first
 * repeated key (parent keys first), or undefined.
 */
export function findDuplicateJsonKey(text: string): string[] | undefined {
  // One frame per open object or array: the keys seen so far (null for arrays) and the key it sits under.
  const frames: { keys: Set<string> | null; under: string | undefined }[] = [];
  let expectKey = false;
  let lastKey: string | undefined;
  // Tokens that matter: whole strings and structural characters; numbers, literals and whitespace are skipped.
  const tokens = /"[^"\\]*(?:\\.[^"\\]*)*"|[{}[\],]/g;
  for (let m = tokens.exec(text); m !== null; m = tokens.exec(text)) {
    const token = m[0];
    const frame = frames[frames.length - 1];
    if (token.length > 1) {
      if (!expectKey || !frame?.keys) continue;
      // Decode escapes so that "a" and "\u0061" count as the same key, as they do for JSON.parse.
      const keyText = token.includes("\\") ? (JSON.parse(token) as string) : token.slice(1, -1);
      if (frame.keys.has(keyText)) {
        const path = frames.map((f) => f.under).filter((k): k is string => k !== undefined);
        return [...path, keyText];
      }
      frame.keys.add(keyText);
      lastKey = keyText;
      expectKey = false;
    } else if (token === "{" || token === "[") {
      frames.push({ keys: token === "{" ? new Set() : null, under: frame?.keys ? lastKey : undefined });
      expectKey = token === "{";
    } else if (token === "}" || token === "]") {
      frames.pop();
      expectKey = false;
    } else {
      expectKey = frame?.keys != null;
    }
  }
  return undefined;
}

/**
 * One pass over a JSON text JSON.parse accepted (its strings are closed, which keeps the string
 * pattern linear): its deepest nesting (counted up to just past `MAX_HEADER_DEPTH`) and
 * how many object keys it names (a string followed by ":"). Strings are skipped whole, so brackets
 * inside them do not count.
 */
function scanJson(text: string): { depth: number; keys: number } {
  const tokens = /"[^"\\]*(?:\\.[^"\\]*)*"|[{}[\]:]/g;
  let depth = 0;
  let deepest = 0;
  let keys = 0;
  let afterString = false;
  for (let m = tokens.exec(text); m !== null; m = tokens.exec(text)) {
    const c = m[0];
    if (c.length > 1) {
      afterString = true;
      continue;
    }
    if (c === ":") {
      if (afterString) keys++;
    } else if (c === "{" || c === "[") {
      depth++;
      if (depth > deepest) deepest = depth;
      if (deepest > MAX_HEADER_DEPTH) break;
    } else depth--;
    afterString = false;
  }
  return { depth: deepest, keys };
}

/** Keys of every object in a parsed JSON value (arrays walked, not counted). */
function countKeys(value: unknown): number {
  if (Array.isArray(value)) {
    let n = 0;
    for (const v of value) if (typeof v === "object" && v !== null) n += countKeys(v);
    return n;
  }
  if (typeof value !== "object" || value === null) return 0;
  let n = 0;
  for (const k in value) {
    n++;
    const v = (value as Record<string, unknown>)[k];
    if (typeof v === "object" && v !== null) n += countKeys(v);
  }
  return n;
}

/** Reads the 8-byte length prefix and checks N against the limit and the file size; returns N. */
function checkHeaderLength(
  lengthPrefix: Buffer,
  fileSize: number,
  label: string,
  key: string | undefined,
): number {
  if (lengthPrefix.length < 8 || fileSize < 8) {
    throw invalid(label, key, `file is ${fileSize} bytes, too short for the 8-byte header length`);
  }
  const n = lengthPrefix.readBigUInt64LE(0);
  if (n > BigInt(MAX_HEADER_BYTES)) {
    throw invalid(label, key, `header length ${n} exceeds the limit of ${MAX_HEADER_BYTES} bytes`);
  }
  if (8n + n > BigInt(fileSize)) {
    throw invalid(
      label,
      key,
      `header length ${n} runs past the end of the file (8 + ${n} > ${fileSize} bytes)`,
    );
  }
  return Number(n);
}

function checkMetadata(entry: unknown, fail: (message: string) => never): Record<string, string> | undefined {
  // The reference reader deserializes __metadata__ as Option<HashMap<String, String>>: null means absent.
  if (entry === null) return undefined;
  if (!isPlainObject(entry)) return fail(`__metadata__ must be an object of strings, got ${kindOf(entry)}`);
  for (const [k, v] of Object.entries(entry)) {
    if (typeof v !== "string") return fail(`__metadata__ ${show(k)} must be a string, got ${show(v)}`);
  }
  // Object.fromEntries defines own properties, so a "__proto__" key stays a key.
  return Object.fromEntries(Object.entries(entry as Record<string, string>));
}

const TENSOR_KEYS = ["dtype", "shape", "data_offsets"];

function checkTensor(name: string, entry: unknown, fail: (message: string) => never): TensorInfo {
  const where = `tensor ${show(name)}`;
  if (!isPlainObject(entry)) {
    return fail(`${where} must be an object with dtype, shape and data_offsets, got ${kindOf(entry)}`);
  }
  for (const k of Object.keys(entry)) {
    if (!TENSOR_KEYS.includes(k)) return fail(`${where} has unexpected key ${show(k)}`);
  }
  for (const k of TENSOR_KEYS) {
    if (!(k in entry)) return fail(`${where} is missing "${k}"`);
  }
  const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
  if (typeof dtype !== "string" || !DTYPE_BITS.has(dtype))
    return fail(`${where} has unknown dtype ${show(dtype)}`);
  if (!Array.isArray(shape) || !shape.every(isNonNegativeSafeInteger)) {
    return fail(`${where} shape must be an array of non-negative integers, got ${show(shape)}`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isNonNegativeSafeInteger)) {
    return fail(`${where} data_offsets must be two non-negative integers [begin, end], got ${show(offsets)}`);
  }
  const [begin, end] = offsets as [number, number];
  if (end < begin) return fail(`${where} data_offsets [${begin}, ${end}] end before they begin`);
  const size = tensorByteLength(dtype, shape);
  if (!size.ok) return fail(`${where} ${size.reason}`);
  if (size.bytes !== end - begin) {
    return fail(
      `${where} data_offsets [${begin}, ${end}] span ${end - begin} bytes but shape ${showList(shape)} of ${dtype} needs ${size.bytes}`,
    );
  }
  return { name, dtype, shape: [...shape], begin, end };
}

async function readExactly(
  handle: Awaited<ReturnType<typeof open>>,
  position: number,
  length: number,
  label: string,
): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await handle.read(buf, done, length - done, position + done);
    if (bytesRead === 0) {
      throw new Error(
        `${label} ended at byte ${position + done} while reading the header (was it truncated?)`,
      );
    }
    done += bytesRead;
  }
  return buf;
}

function invalid(label: string, key: string | undefined, message: string, cause?: unknown): ColdstartError {
  return new ColdstartError("CS_SAFETENSORS_INVALID", `${label}: ${message}`, {
    cause,
    details: details(key),
  });
}

function details(key: string | undefined): { key?: string } {
  return key === undefined ? {} : { key };
}

function describeKeyPath(path: string[]): string {
  const last = show(path[path.length - 1]);
  return path.length === 1 ? last : `${last} in ${path.slice(0, -1).map(show).join(" > ")}`;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isNonNegativeSafeInteger(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

function kindOf(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  return typeof v === "object" ? "an object" : `${typeof v} ${show(v)}`;
}

function showList(values: readonly number[]): string {
  return `[${values.join(", ")}]`;
}

/** JSON rendering of an offending value, cut short so a hostile header cannot flood a log line. */
function show(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 120 ? `${s.slice(0, 117)}...` : s;
}
