import { ColdstartError } from "../errors.js";

export interface S3Location {
  bucket: string;
  /** Key prefix, empty or ending in "/": `s3://b/models/llama` means the "directory" models/llama/. */
  prefix: string;
}

// Lenient on purpose: S3-compatible stores (Ceph, MinIO) accept names AWS would not (uppercase, _).
const BUCKET = /^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$/;

/** `s3://BUCKET/PREFIX/`, as parseS3Uri normalises it (the one spelling compared against allowlists). */
export function normalizeS3Uri(uri: string, field = "source"): string {
  const { bucket, prefix } = parseS3Uri(uri, field);
  return `s3://${bucket}/${prefix}`;
}

/** Parses `s3://BUCKET/PREFIX`. The prefix is treated as a directory, as `aws s3 cp --recursive` does. */
export function parseS3Uri(uri: string, field = "source"): S3Location {
  const m = /^s3:\/\/([^/]+)(?:\/(.*))?$/.exec(uri);
  const bucket = m?.[1];
  if (!m || bucket === undefined || !BUCKET.test(bucket)) {
    throw new ColdstartError(
      "CS_SOURCE_URI_INVALID",
      `${field} must look like s3://BUCKET/PREFIX/ with a valid bucket name, got ${JSON.stringify(uri)}`,
      { details: { field, value: uri } },
    );
  }
  let prefix = m[2] ?? "";
  if (prefix.includes("\0")) {
    throw new ColdstartError(
      "CS_SOURCE_URI_INVALID",
      `${field} contains a NUL byte: ${JSON.stringify(uri)}`,
      {
        details: { field, value: uri },
      },
    );
  }
  if (prefix !== "" && !prefix.endsWith("/")) prefix += "/";
  return { bucket, prefix };
}
