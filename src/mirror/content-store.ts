/**
 * containerd's content store, read-only, straight from its directory: blobs are kept exactly as
 * pulled (compressed layers, manifests, configs) at `<dir>/blobs/sha256/<hex>`, written there only
 * once containerd has verified them against their digest. Reading files needs no gRPC client and
 * serves ranges with one positioned read. Verified at pull time is not verified now (a disk rots, a
 * file is replaced): the mirror checks a blob's bytes against its digest on the way out (this
 * node's, in mirror-app.ts; a peer's, in relay.ts).
 */
import type { FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { ColdstartError } from "../errors.js";
import { openFileBeneath } from "../store/beneath.js";

/** An OCI content digest as the distribution API names blobs; only sha256 is served. */
export const DIGEST = /^sha256:([0-9a-f]{64})$/;

export interface Blob {
  size: number;
  fh: FileHandle;
  /** The file's path, for logs (the bytes are read through `fh`, never by this path). */
  path: string;
  /**
   * Which file this is: device, inode, size and change times. Equal stamps are the same bytes
   * unless the file was altered behind the filesystem's back (a verdict on them can be reused).
   */
  stamp: string;
}

export class ContentStore {
  readonly dir: string;

  constructor(dir: string) {
    this.dir = dir;
  }

  /**
   * The blob `digest` names, opened (the caller closes `fh`); undefined when the digest is not a
   * sha256 digest or the store does not hold it. Nothing outside `dir` is ever opened: no component
   * below `dir` (`blobs`, `sha256`, the blob) is followed if it is a symlink (`dir` itself is
   * configuration and trusted).
   *
   * @throws ColdstartError `CS_PATH_UNSAFE` when a component below `dir` is a symlink or not a
   *   directory, or the blob is not a regular file: the store was tampered with (the mirror answers
   *   a miss, the peer route 403); `details.value` is the refused path.
   * @throws ColdstartError `CS_IO_ERROR` when the filesystem fails otherwise (EACCES, EIO, ...).
   */
  async open(digest: string): Promise<Blob | undefined> {
    const hex = DIGEST.exec(digest)?.[1];
    if (!hex) return undefined;
    const segments = ["blobs", "sha256", hex];
    const opened = await openFileBeneath(this.dir, segments);
    if (!opened) return undefined;
    const path = join(this.dir, ...segments);
    const st = await opened.fh.stat({ bigint: true }).catch(async (err: unknown) => {
      await opened.fh.close();
      throw new ColdstartError("CS_IO_ERROR", `stat ${path}: ${(err as Error).message}`, { cause: err });
    });
    return {
      size: opened.size,
      fh: opened.fh,
      path,
      stamp: `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`,
    };
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
