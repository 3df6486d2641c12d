/**
 * Who the peers are: a static list from config, plus the addresses a DNS name resolves to. In a
 * cluster that name is the DaemonSet's headless Service (deploy/services.yaml, coldstart-peers):
 * one A record per ready daemon pod, kept by Kubernetes, so there is no registry to run and no single
 * point of failure. This node's own address is left out.
 */
import { promises as dns } from "node:dns";
import type { Logger } from "pino";

export interface DiscoveryOptions {
  /** Base URLs given as such. */
  static: string[];
  /** host:port whose A/AAAA records are peers (a headless Service), if any. */
  dnsName?: string | undefined;
  /** This pod's own address (status.podIP), never its own peer. */
  self?: string | undefined;
  refreshMs?: number;
  logger: Logger;
}

export class PeerDirectory {
  readonly #o: DiscoveryOptions;
  #resolved: string[] = [];
  #timer: NodeJS.Timeout | undefined;

  constructor(options: DiscoveryOptions) {
    // Origins, as the resolved ones are and as cohorts name nodes: once here, not on every ask.
    this.#o = { ...options, static: options.static.map(origin) };
  }

  /** Resolves once now, then every refreshMs (30 s) in the background. */
  async start(): Promise<void> {
    if (!this.#o.dnsName) return;
    await this.#refresh();
    this.#timer = setInterval(() => void this.#refresh(), this.#o.refreshMs ?? 30_000);
    this.#timer.unref();
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  /** The peers to ask now. */
  urls(): string[] {
    return [...new Set([...this.#o.static, ...this.#resolved])];
  }

  async #refresh(): Promise<void> {
    const name = this.#o.dnsName as string;
    const at = name.lastIndexOf(":");
    const host = name.slice(0, at);
    const port = name.slice(at + 1);
    // getaddrinfo, as every other client on the node resolves (cluster DNS, search domains, hosts).
    // A failed lookup (DNS down for a moment) keeps the peers known so far.
    const found = await dns.lookup(host, { all: true }).catch(() => undefined);
    if (!found) return;
    const next = found
      .map((a) => (a.family === 6 ? `http://[${a.address}]:${port}` : `http://${a.address}:${port}`))
      .filter((u) => !this.#o.self || new URL(u).hostname.replace(/^\[|\]$/g, "") !== this.#o.self);
    if (next.join() !== this.#resolved.join())
      this.#o.logger.info({ peers: next.length, dns: name }, "peers");
    this.#resolved = next;
  }
}

/** "http://10.0.0.7:8476/" -> "http://10.0.0.7:8476"; what is no URL stays as it is. */
function origin(u: string): string {
  try {
    return new URL(u).origin;
  } catch {
    return u;
  }
}
