import type { Logger } from "pino";
import type { CompileCacheManager } from "../compile-cache/cache-manager.js";
import type { Metrics } from "../metrics/metrics.js";
import type { MirrorCheck } from "../mirror/containerd-check.js";
import type { ImageResolver } from "../mirror/containerd-images.js";
import type { ContentStore } from "../mirror/content-store.js";
import type { ModelManager } from "../models/model-manager.js";
import type { PageCacheWarmer } from "../models/page-cache.js";
import type { NodeFacts } from "../node/node-facts.js";
import type { RateLimiter } from "../staging/rate-limiter.js";
import type { TokenFile } from "./auth.js";

/** Which listener an app serves: the authenticated TCP API, or the node-local handshake socket. */
export type Surface = "tcp" | "socket";

export interface AppDeps {
  manager: ModelManager;
  logger: Logger;
  metrics?: Metrics;
  /** Accepted API tokens (daemon.tokenFile); undefined means `daemon.auth: none` (local demos only). */
  tokens: TokenFile | undefined;
  /** peers.tokenFile, when set: tokens that reach the peer routes (`/v1/peer/*`) and nothing else. */
  peerTokens?: TokenFile | undefined;
  /** mirror.tokenFile, when set: known here only to answer them 403 rather than 401. */
  mirrorTokens?: TokenFile | undefined;
  bodyLimitBytes: number;
  /** True once the store is loaded and the daemon is not draining. */
  isReady: () => boolean;
  /** Keyed torch.compile caches (absent in tests that do not need them). */
  compileCaches?: CompileCacheManager;
  /** Whether containerd uses the mirror (when it is on), for /v1/node. */
  mirrorCheck?: () => MirrorCheck | undefined;
  /** containerd's content store, when the mirror is on: peers' mirrors fetch blobs from it. */
  contentStore?: ContentStore | undefined;
  /** This node's containerd Images API (mirror.containerdSocket): peers' mirrors resolve tags here. */
  images?: ImageResolver | undefined;
  /** Caps what this node serves to peers (peers.maxUploadBytesPerSecond), when set. */
  peerUploadLimiter?: RateLimiter | undefined;
  /** The node's facts (GPUs, GDS, placement), when collected. */
  nodeFacts?: () => NodeFacts;
  /** Reads a ready model into the page cache before a handshake answers ready (pageCache.warm). */
  pageCache?: Pick<PageCacheWarmer, "warm"> | undefined;
}
