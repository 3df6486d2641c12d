/**
 * Tags for the mirror (mirror.resolveTags): what `<registry>/<repository>:<tag>` points at, from this
 * node's containerd and every peer's (GET /v1/peer/tag, answered from the peer's own containerd
 * only, never relayed). Every answer is collected within peers.timeoutMs and the one containerd
 * updated last wins: a tag moved at the registry and pulled again on some node wins over an older
 * pull elsewhere. The manifest itself is then served by digest, verified like any blob.
 */
import type { Logger } from "pino";
import { anySignal, bearerHeaders } from "../peers/http.js";
import type { ImageResolver, ResolvedTag } from "./containerd-images.js";
import { DIGEST } from "./content-store.js";

export interface TagResolverOptions {
  /** This node's containerd, when its socket is configured. */
  local?: ImageResolver | undefined;
  urls: () => string[];
  token: () => string | undefined;
  timeoutMs: number;
  logger: Logger;
}

export interface Resolution extends ResolvedTag {
  /** Where the winning answer came from: "local", or the peer's URL. */
  from: string;
}

/** An OCI repository name and tag (distribution spec), so nothing else reaches containerd. */
export const REPOSITORY =
  /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$/;
export const TAG = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
const REGISTRY = /^[A-Za-z0-9.-]+(?::[0-9]{1,5})?$/;

/** containerd's name for an image by tag, or undefined when any part is not a valid reference. */
export function imageRef(registry: string, repository: string, tag: string): string | undefined {
  if (!REGISTRY.test(registry) || !REPOSITORY.test(repository) || !TAG.test(tag)) return undefined;
  if (registry.length + repository.length > 255) return undefined;
  return `${registry}/${repository}:${tag}`;
}

export class TagResolver {
  readonly #o: TagResolverOptions;

  constructor(options: TagResolverOptions) {
    this.#o = options;
  }

  async resolve(ref: string, signal?: AbortSignal): Promise<Resolution | undefined> {
    const asks: Promise<Resolution | undefined>[] = [];
    if (this.#o.local) {
      asks.push(
        this.#o.local.resolve(ref).then(
          (r) => (r ? { ...r, from: "local" } : undefined),
          (err: unknown) => {
            this.#o.logger.warn({ ref, err: (err as Error).message }, "containerd could not resolve a tag");
            return undefined;
          },
        ),
      );
    }
    for (const peer of this.#o.urls()) asks.push(this.#askPeer(peer, ref, signal));
    const answers = (await Promise.all(asks)).filter((a): a is Resolution => a !== undefined);
    // The latest pull wins; among equals, this node's own containerd.
    return answers.reduce<Resolution | undefined>(
      (best, a) => (!best || a.updatedAt > best.updatedAt ? a : best),
      undefined,
    );
  }

  async #askPeer(peer: string, ref: string, signal?: AbortSignal): Promise<Resolution | undefined> {
    try {
      const res = await fetch(new URL(`/v1/peer/tag?${new URLSearchParams({ ref })}`, peer), {
        headers: bearerHeaders(this.#o.token()),
        signal: anySignal(signal, AbortSignal.timeout(this.#o.timeoutMs)),
      });
      if (res.status !== 200) {
        await res.body?.cancel();
        return undefined;
      }
      const body = (await res.json()) as Partial<ResolvedTag>;
      if (!validTag(body)) throw new Error("a malformed answer");
      return {
        digest: body.digest,
        mediaType: body.mediaType,
        size: body.size,
        updatedAt: body.updatedAt,
        from: peer,
      };
    } catch (err) {
      this.#o.logger.warn({ peer, ref, err: (err as Error).message }, "peer could not resolve a tag");
      return undefined;
    }
  }
}

function validTag(b: Partial<ResolvedTag> | null): b is ResolvedTag {
  return (
    !!b &&
    typeof b.digest === "string" &&
    DIGEST.test(b.digest) &&
    typeof b.mediaType === "string" &&
    b.mediaType.length < 256 &&
    Number.isSafeInteger(b.size) &&
    (b.size as number) >= 0 &&
    Number.isSafeInteger(b.updatedAt)
  );
}
