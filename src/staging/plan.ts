import picomatch from "picomatch";
import type { ObjectInfo, ObjectSource } from "../s3/object-source.js";
import { safeRelativePath } from "../store/paths.js";

/** One object to stage: where it comes from, where it goes, and how it is cut into ranged GETs. */
export interface FilePlan {
  key: string;
  /** Path relative to the destination, "/"-separated (the key relative to the prefix). */
  relPath: string;
  segments: string[];
  size: number;
  etag: string;
  /** Part start offsets plus the size at the end; one part [0, 0] for an empty object. */
  bounds: number[];
}

export interface Filters {
  include: readonly string[];
  exclude: readonly string[];
}

/**
 * Globs match the key relative to the prefix. A pattern without "/" matches the base name at any
 * depth (`*.safetensors`), as in .gitignore; one with "/" matches the whole relative path.
 */
export function compileFilters(filters: Filters): (relPath: string) => boolean {
  const opts = { dot: true, basename: true };
  const inc = filters.include.length ? picomatch([...filters.include], opts) : () => true;
  const exc = filters.exclude.length ? picomatch([...filters.exclude], opts) : () => false;
  return (p) => inc(p) && !exc(p);
}

/** Byte bounds of `size` cut into parts of `partSize` (the last one shorter). */
export function partBounds(size: number, partSize: number): number[] {
  if (size === 0) return [0, 0];
  const bounds: number[] = [];
  for (let at = 0; at < size; at += partSize) bounds.push(at);
  bounds.push(size);
  return bounds;
}

/**
 * Bounds that never cross an S3 part boundary: each part of `partSizes` is cut into ranges of at most
 * `partSize` (or kept whole with `wholeParts`), so every part's checksum can be rebuilt from its ranges.
 */
export function alignedBounds(partSizes: readonly number[], partSize: number, wholeParts: boolean): number[] {
  const bounds: number[] = [];
  let at = 0;
  for (const size of partSizes) {
    const cut = wholeParts
      ? [at]
      : partBounds(size, partSize)
          .slice(0, -1)
          .map((b) => at + b);
    bounds.push(...cut);
    at += size;
  }
  bounds.push(at);
  return bounds;
}

/**
 * Lists the prefix and turns every object that passes the filters into a FilePlan (with how many
 * objects were listed, and how many of them the filters removed). Directory
 * markers (keys ending in "/" with no bytes) are skipped. Any unsafe key fails the whole plan before
 * a byte is written: a model with a file we refuse to place is not a model we can stage.
 */
export async function planJob(
  source: ObjectSource,
  bucket: string,
  prefix: string,
  filters: Filters,
  partSize: number,
  signal?: AbortSignal,
): Promise<{ files: FilePlan[]; listed: number; filteredOut: number }> {
  const keep = compileFilters(filters);
  const files: FilePlan[] = [];
  let listed = 0;
  let filteredOut = 0;
  for await (const o of source.list(bucket, prefix, signal)) {
    if (!o.key.startsWith(prefix)) continue;
    const relPath = o.key.slice(prefix.length);
    if (relPath.endsWith("/") && o.size === 0) continue;
    listed++;
    if (!keep(relPath)) {
      filteredOut++;
      continue;
    }
    const segments = safeRelativePath(relPath, o.key);
    files.push(toPlan(o, relPath, segments, partSize));
  }
  return { files, listed, filteredOut };
}

function toPlan(o: ObjectInfo, relPath: string, segments: string[], partSize: number): FilePlan {
  return { key: o.key, relPath, segments, size: o.size, etag: o.etag, bounds: partBounds(o.size, partSize) };
}
