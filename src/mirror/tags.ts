/**
 * Tags for the mirror (mirror.resolveTags): what `<registry>/<repository>:<tag>` points at, from this
 * node's containerd, else from peers' (GET /v1/peer/tag, answered from the peer's own containerd
 * only, never relayed). This node's own answer wins: it is what this node already runs. Among peers,
 * the one whose containerd updated the tag last wins, with a time no later than now (a peer cannot
 * win by claiming the future). The manifest itself is then served by digest, verified like any blob.
 *
 * An answer is what some node pulled, not the registry's word now: a tag that moves at the registry
 * keeps resolving to the old image while any node has it. `latest` is therefore never answered.
 */
import type { Logger } from "pino";
import { anySignal, bearerHeaders, PeerCooldown } from "../lib/node-client.js";
import type { ImageResolver, ResolvedTag } from "./containerd-images.js";
import { DIGEST } from "./content-store.js";
import { NAME, TAG } from "./reference.js";

export interface TagResolverOptions {
  /** This node's containerd, when its socket is configured. */
  local?: ImageResolver | undefined;
  urls: () => string[];
  /** Presented to peers as a bearer token: the peer token (peers.tokenFile), else the API token. */
  token: () => string | undefined;
  timeoutMs: number;
  logger: Logger;
}

export interface Resolution extends ResolvedTag {
  /** Where the winning answer came from: "local", or the peer's URL. */
  from: string;
}

const REGISTRY = /^[A-Za-z0-9.-]+(?::[0-9]{1,5})?$/;

/** containerd's name for an image by tag, or undefined when any part is not a valid reference. */
export function imageRef(registry: string, repository: string, tag: string): string | undefined {
  // The repository and tag grammar (distribution spec), so nothing else reaches containerd.
  if (!REGISTRY.test(registry) || !NAME.test(repository) || !TAG.test(tag)) return undefined;
  if (registry.length + repository.length > 255) return undefined;
  return `${registry}/${repository}:${tag}`;
}

/** The tag that by convention always moves: never answered from what nodes happen to hold. */
const MOVING_TAG = "latest";
/** How far in the future a peer's "updated at" may be (clock skew) before it is clamped. */
const MAX_SKEW_MS = 60_000;

export class TagResolver {
  readonly #o: TagResolverOptions;
  /** A peer that failed to answer is not asked again for 30 s. */
  readonly #resting = new PeerCooldown();

  constructor(options: TagResolverOptions) {
    this.#o = options;
  }

  async resolve(ref: string, signal?: AbortSignal): Promise<Resolution | undefined> {
    if (ref.endsWith(`:${MOVING_TAG}`)) return undefined;
    if (this.#o.local) {
      const local = await this.#o.local.resolve(ref).catch((err: unknown) => {
        this.#o.logger.warn({ ref, err: (err as Error).message }, "containerd could not resolve a tag");
        return undefined;
      });
      if (local) return { ...local, from: "local" };
    }
    const peers = this.#o.urls().filter((p) => this.#resting.ready(p));
    const answers = (await Promise.all(peers.map((p) => this.#askPeer(p, ref, signal)))).filter(
      (a): a is Resolution => a !== undefined,
    );
    const latest = Date.now() + MAX_SKEW_MS;
    return answers
      .map((a) => ({ ...a, updatedAt: Math.min(a.updatedAt, latest) }))
      .reduce<Resolution | undefined>(
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
      // Unreachable, too slow or talking nonsense: one timeout per 30 s, not one per pull.
      if (!signal?.aborted) this.#resting.rest(peer);
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
