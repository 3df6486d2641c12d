/**
 * containerd's content store, read-only, straight from its directory: blobs are kept exactly as
 * pulled (compressed layers, manifests, configs) at `<dir>/blobs/sha256/<hex>`, written there only
 * once containerd has verified them against their digest. Reading files needs no gRPC client and
 * serves ranges with one positioned read.
 */
import { constants } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";
import { join } from "node:path";

/** An OCI content digest as the distribution API names blobs; only sha256 is served. */
export const DIGEST = /^sha256:([0-9a-f]{64})$/;

export interface Blob {
  size: number;
  fh: FileHandle;
}

export class ContentStore {
  readonly dir: string;

  constructor(dir: string) {
    this.dir = dir;
  }

  /** The blob, opened (the caller closes `fh`), or undefined when the store does not hold it. */
  async open(digest: string): Promise<Blob | undefined> {
    const hex = DIGEST.exec(digest)?.[1];
    if (!hex) return undefined;
    const fh = await open(
      join(this.dir, "blobs", "sha256", hex),
      constants.O_RDONLY | constants.O_NOFOLLOW,
    ).catch(() => undefined);
    if (!fh) return undefined;
    const st = await fh.stat();
    if (!st.isFile()) {
      await fh.close();
      return undefined;
    }
    return { size: st.size, fh };
  }
}

/**
 * The media type of a manifest blob, from its own `mediaType` field, else from its shape (an OCI
 * index lists `manifests`, an image manifest lists `layers`). The distribution API must send it as
 * Content-Type, or containerd cannot tell an index from a manifest.
 */
export function manifestMediaType(bytes: Buffer): string | undefined {
  let m: { mediaType?: unknown; manifests?: unknown; layers?: unknown; schemaVersion?: unknown };
  try {
    m = JSON.parse(bytes.toString("utf8"));
  } catch {
    return undefined;
  }
  if (typeof m.mediaType === "string" && /^[\w.+-]+\/[\w.+-]+$/.test(m.mediaType)) return m.mediaType;
  if (Array.isArray(m.manifests)) return "application/vnd.oci.image.index.v1+json";
  if (Array.isArray(m.layers)) return "application/vnd.oci.image.manifest.v1+json";
  return undefined;
}
