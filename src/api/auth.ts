import { createHash, timingSafeEqual } from "node:crypto";
import { type FSWatcher, readFileSync, statSync, watch } from "node:fs";
import { dirname } from "node:path";
import type { Logger } from "pino";
import { ColdstartError } from "../errors.js";

/**
 * Accepted API tokens, read from a file (a mounted Secret: one token per line, blank lines and
 * `#` comments ignored) and reloaded when it changes. Kubernetes updates Secret volumes by swapping a
 * symlink, so the directory is watched, and the file's mtime is also polled as a fallback.
 */
export class TokenFile {
  readonly path: string;
  #digests: Buffer[] = [];
  #first: string | undefined;
  #mtimeMs = -1;
  readonly #watcher: FSWatcher | undefined;
  readonly #timer: NodeJS.Timeout;
  readonly #logger: Logger | undefined;

  constructor(path: string, options: { logger?: Logger; pollMs?: number } = {}) {
    this.path = path;
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

  /** The first token: what this daemon presents to its peers (one Secret for the whole DaemonSet). */
  get first(): string | undefined {
    return this.#first;
  }

  get count(): number {
    return this.#digests.length;
  }

  close(): void {
    this.#watcher?.close();
    clearInterval(this.#timer);
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
          `daemon.tokenFile ${this.path} cannot be read: ${(e as Error).message}`,
          {
            cause: e,
            details: { field: "daemon.tokenFile", value: this.path },
          },
        );
      }
      this.#logger?.warn({ path: this.path }, "token file unreadable; keeping the previous tokens");
      return;
    }
    const tokens = parseTokens(text);
    if (tokens.length === 0) {
      if (first) {
        throw new ColdstartError("CS_CONFIG_INVALID", `daemon.tokenFile ${this.path} holds no token`, {
          details: { field: "daemon.tokenFile", value: this.path },
        });
      }
      this.#logger?.warn({ path: this.path }, "token file is empty; keeping the previous tokens");
      return;
    }
    this.#digests = tokens.map(digest);
    this.#first = tokens[0];
    this.#mtimeMs = mtimeMs;
    if (!first) this.#logger?.info({ tokens: tokens.length }, "reloaded API tokens");
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
 * Whether an `Authorization` header carries an accepted bearer token; with no token file
 * (`daemon.auth: none`) everything is accepted.
 */
export function bearerAccepted(tokens: TokenFile | undefined, header: string | undefined): boolean {
  if (tokens === undefined) return true;
  const m = /^Bearer ([^\s]+)$/.exec(header ?? "");
  return m?.[1] !== undefined && tokens.accepts(m[1]);
}

/** Fixed-length digests make the comparison constant-time whatever the tokens' lengths. */
function digest(token: string): Buffer {
  return createHash("sha256").update(token).digest();
}
