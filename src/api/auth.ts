import { createHash, timingSafeEqual } from "node:crypto";
import { type FSWatcher, readFileSync, statSync, watch } from "node:fs";
import { dirname } from "node:path";
import type { Logger } from "pino";
import { ColdstartError } from "../errors.js";

/**
 * Accepted bearer tokens, read from a file (a mounted Secret: one token per line, blank lines and
 * `#` comments ignored) and reloaded when it changes. Kubernetes updates Secret volumes by swapping a
 * symlink, so the directory is watched, and the file's mtime is also polled as a fallback. One class
 * for each credential: the API's (`daemon.tokenFile`), the peers' (`peers.tokenFile`) and the
 * mirror's (`mirror.tokenFile`); `field` names the option in errors and logs.
 */
export class TokenFile {
  readonly path: string;
  /** The option the file comes from, e.g. `peers.tokenFile`. */
  readonly field: string;
  #digests: Buffer[] = [];
  #first: string | undefined;
  #mtimeMs = -1;
  readonly #watcher: FSWatcher | undefined;
  readonly #timer: NodeJS.Timeout;
  readonly #logger: Logger | undefined;
  readonly #listeners = new Set<() => void>();

  constructor(path: string, options: { logger?: Logger; pollMs?: number; field?: string } = {}) {
    this.path = path;
    this.field = options.field ?? "daemon.tokenFile";
    this.#logger = options.logger;
    this.#load(true);
    try {
      this.#watcher = watch(dirname(path), () => this.#load(false));
    } catch {
      this.#watcher = undefined;
    }
    this.#timer = setInterval(() => this.#load(false), options.pollMs ?? 5000);
    this.#timer.unref();
  }

  /** Constant-time check of a presented token against every accepted one. */
  accepts(token: string): boolean {
    const presented = digest(token);
    let ok = false;
    for (const d of this.#digests) ok = timingSafeEqual(presented, d) || ok;
    return ok;
  }

  /**
   * The first token: what this daemon presents where the file's credential is sent (one Secret for
   * the whole DaemonSet): to peers, or in hosts.toml for containerd.
   */
  get first(): string | undefined {
    return this.#first;
  }

  /** How many tokens the file holds. */
  get count(): number {
    return this.#digests.length;
  }

  /** Calls `listener` after each reload that changed the tokens; returns its removal. */
  onReload(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Stops watching the file. */
  close(): void {
    this.#watcher?.close();
    clearInterval(this.#timer);
    this.#listeners.clear();
  }

  #load(first: boolean): void {
    let mtimeMs: number;
    let text: string;
    try {
      mtimeMs = statSync(this.path).mtimeMs;
      if (!first && mtimeMs === this.#mtimeMs) return;
      text = readFileSync(this.path, "utf8");
    } catch (e) {
      if (first) {
        throw new ColdstartError(
          "CS_CONFIG_INVALID",
          `${this.field} ${this.path} cannot be read: ${(e as Error).message}`,
          {
            cause: e,
            details: { field: this.field, value: this.path },
          },
        );
      }
      this.#logger?.warn(
        { path: this.path, field: this.field },
        "token file unreadable; keeping the previous tokens",
      );
      return;
    }
    const tokens = parseTokens(text);
    if (tokens.length === 0) {
      if (first) {
        throw new ColdstartError("CS_CONFIG_INVALID", `${this.field} ${this.path} holds no token`, {
          details: { field: this.field, value: this.path },
        });
      }
      this.#logger?.warn(
        { path: this.path, field: this.field },
        "token file is empty; keeping the previous tokens",
      );
      return;
    }
    this.#digests = tokens.map(digest);
    this.#first = tokens[0];
    this.#mtimeMs = mtimeMs;
    if (first) return;
    this.#logger?.info({ tokens: tokens.length, field: this.field }, "reloaded tokens");
    for (const listener of this.#listeners) listener();
  }
}

/** A token file's tokens: one per line, blank lines and `#` comments skipped. */
export function parseTokens(text: string): string[] {
  return text
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"));
}

/**
 * What a token may reach (docs/api.md, "Scoped credentials"): `api` is everything on the TCP API
 * (models, caches, node; the peer routes too); `peer` the peer protocol's routes (`/v1/peer/*`);
 * `mirror` the OCI mirror (`/v2/*`).
 */
export type Scope = "api" | "peer" | "mirror";

/**
 * The token files a listener checks: the API's grants every scope, a scoped file (when set) its own
 * scope only. Without the scoped files, the API's tokens are the only ones, as before they existed.
 */
export interface ScopedTokens {
  /** daemon.tokenFile; undefined means `daemon.auth: none` (local demos only): nothing is checked. */
  tokens: TokenFile | undefined;
  /** peers.tokenFile: what peers present; reaches `/v1/peer/*` only. */
  peerTokens?: TokenFile | undefined;
  /** mirror.tokenFile: what containerd presents (hosts.toml); reaches the mirror only. */
  mirrorTokens?: TokenFile | undefined;
}

/**
 * A request's verdict: `ok`; `unauthorized` (no bearer token, or one no file holds: 401); or
 * `forbidden` (a valid token scoped elsewhere, `scopes` says where: 403).
 */
export type AuthVerdict =
  | { ok: true }
  | { ok: false; reason: "unauthorized" }
  | { ok: false; reason: "forbidden"; scopes: Scope[] };

/** Whether the bearer token in an `Authorization` header reaches `scope`. */
export function authorize(t: ScopedTokens, header: string | undefined, scope: Scope): AuthVerdict {
  if (t.tokens === undefined) return { ok: true };
  const m = /^Bearer ([^\s]+)$/.exec(header ?? "");
  const token = m?.[1];
  if (token === undefined) return { ok: false, reason: "unauthorized" };
  // Every file is asked, whatever the first answer, so the time taken says nothing about which.
  const api = t.tokens.accepts(token);
  const peer = t.peerTokens?.accepts(token) ?? false;
  const mirror = t.mirrorTokens?.accepts(token) ?? false;
  if (api || (scope === "peer" && peer) || (scope === "mirror" && mirror)) return { ok: true };
  const scopes: Scope[] = [...(peer ? ["peer" as const] : []), ...(mirror ? ["mirror" as const] : [])];
  return scopes.length > 0
    ? { ok: false, reason: "forbidden", scopes }
    : { ok: false, reason: "unauthorized" };
}

/** The token this daemon presents to its peers: the first of peers.tokenFile, else of daemon.tokenFile. */
export function peerToken(t: ScopedTokens): string | undefined {
  return t.peerTokens?.first ?? t.tokens?.first;
}

/** The token containerd presents to the mirror (hosts.toml): mirror.tokenFile's, else daemon.tokenFile's. */
export function mirrorToken(t: ScopedTokens): string | undefined {
  return t.mirrorTokens?.first ?? t.tokens?.first;
}

/** Calls `listener` after any of the files reloads; returns its removal from all of them. */
export function onTokensReloaded(t: ScopedTokens, listener: () => void): () => void {
  const offs = [t.tokens, t.peerTokens, t.mirrorTokens].map((f) => f?.onReload(listener));
  return () => {
    for (const off of offs) off?.();
  };
}

/** Fixed-length digests make the comparison constant-time whatever the tokens' lengths. */
function digest(token: string): Buffer {
  return createHash("sha256").update(token).digest();
}
