/**
 * The pull routes' names and references, checked against the OCI distribution spec (v1.1, "Pulling
 * manifests") and the image spec's digest grammar (descriptor.md) before anything else looks at
 * them. A request outside the grammar is a 400 with the spec's error code, never a lookup.
 *
 * The check runs on the request target exactly as it arrived (Fastify routes `/v2/*` on the raw
 * target and resolves no `..`), and on its percent-decoded form: the grammar has no character that
 * needs encoding, so an encoded name or reference can only be a disguised one (`%2e%2e`, `%2F`).
 */

/** `<name>`: path components of lowercase alphanumerics, joined by `.`, `_`, `__` or dashes. */
export const NAME = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$/;
/**
 * The longest `<name>` accepted. The spec asks registries to keep `<registry>/<name>` within the
 * 255 characters clients allow; the registry is not in the path, so the name alone is bounded.
 */
export const MAX_NAME_LENGTH = 255;
/** A tag (`<tag-or-digest>` as a tag): at most 128 characters. */
export const TAG = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
/** `algorithm ":" encoded` (image-spec descriptor.md), any algorithm. */
const DIGEST_GRAMMAR = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;
/** The registered algorithms' encodings (lowercase hex only: `[A-F]` MUST NOT be used). */
const REGISTERED: Record<string, RegExp> = {
  sha256: /^[a-f0-9]{64}$/,
  sha512: /^[a-f0-9]{128}$/,
  blake3: /^[a-f0-9]{64}$/,
};

export type Kind = "manifest" | "blob";

/** A pull route whose name and reference passed the grammar. */
export interface PullPath {
  name: string;
  kind: Kind;
  /** A digest (`algorithm:encoded`) or, for manifests only, a tag. */
  reference: string;
  isDigest: boolean;
}

/** Why a pull route is refused: the spec's code for a 400, a message, and the offending value. */
export interface InvalidPullPath {
  invalid: "NAME_INVALID" | "DIGEST_INVALID" | "MANIFEST_INVALID";
  message: string;
  detail: Record<string, string>;
}

const PULL_ROUTE = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/;

/**
 * Parses `/v2/<name>/(manifests|blobs)/<reference>` from the raw request target (query and all).
 * Undefined when the target is not a pull route at all (the caller's 404); an {@link InvalidPullPath}
 * when it is one with a name or reference outside the grammar:
 * - a name: `NAME_INVALID`;
 * - a blob's reference that is not a digest, or a manifest's that looks like a digest (has a `:`)
 *   and is not a valid one: `DIGEST_INVALID`;
 * - a manifest's reference that is neither a digest nor a tag: `MANIFEST_INVALID` (the spec lists no
 *   code for a malformed tag in a pull; this is the closest, and what distribution answers for one).
 */
export function parsePullPath(target: string): PullPath | InvalidPullPath | undefined {
  const m = PULL_ROUTE.exec(target.split("?")[0] ?? "");
  if (!m) return undefined;
  const rawName = m[1] as string;
  const kind: Kind = m[2] === "manifests" ? "manifest" : "blob";
  const rawRef = m[3] as string;

  // No character of the grammar needs an escape: a name that decodes to anything else is disguised.
  if (decoded(rawName) !== rawName || rawName.length > MAX_NAME_LENGTH || !NAME.test(rawName)) {
    return {
      invalid: "NAME_INVALID",
      message: `the repository name must match the distribution spec's <name> grammar, got ${JSON.stringify(rawName)}`,
      detail: { name: rawName },
    };
  }
  const name = rawName;
  // The same for references; the decoded form only decides which code a refusal carries.
  const ref = decoded(rawRef);
  const plain = ref === rawRef;
  if (plain && isDigest(rawRef)) return { name, kind, reference: rawRef, isDigest: true };
  if (kind === "blob" || (ref ?? rawRef).includes(":")) {
    return {
      invalid: "DIGEST_INVALID",
      message: `not a digest (algorithm:encoded, lowercase hex for sha256): ${JSON.stringify(rawRef)}`,
      detail: { digest: rawRef },
    };
  }
  if (plain && TAG.test(rawRef)) return { name, kind, reference: rawRef, isDigest: false };
  return {
    invalid: "MANIFEST_INVALID",
    message: `a manifest reference must be a digest or a tag ([a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}), got ${JSON.stringify(rawRef)}`,
    detail: { reference: rawRef },
  };
}

/** Whether `s` is a digest by the image spec's grammar, with a registered algorithm's encoding. */
export function isDigest(s: string): boolean {
  if (!DIGEST_GRAMMAR.test(s)) return false;
  const colon = s.indexOf(":");
  const encoding = REGISTERED[s.slice(0, colon)];
  return encoding === undefined || encoding.test(s.slice(colon + 1));
}

/** The percent-decoded string; undefined when its escapes are malformed (`%zz`). */
function decoded(raw: string): string | undefined {
  try {
    return decodeURIComponent(raw);
  } catch {
    return undefined;
  }
}
