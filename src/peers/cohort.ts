/**
 * The cooperative first wave: nodes that start staging one model together each read a different
 * share of it from S3, and the rest from each other, so the pool reads S3 about once.
 *
 * A cohort is the set of daemons (by peer URL) staging one source together, as the ModelCache
 * resource's status lists them (src/daemon/model-caches.ts keeps it). Every part has one owner among
 * the live members, chosen by rendezvous (highest random weight) hashing of the part against each
 * member: every node computes the same owner from the same membership with no coordination, and a
 * member leaving moves only its own parts. A node takes the parts it owns first (StageJob's `owns`),
 * from S3; a part another member owns it waits for within a bound (src/peers/peer-source.ts) and
 * reads from S3 past it. Views of the membership may differ for a moment: two nodes may then both
 * read a part (a little extra egress) or both wait for the other (bounded), never anything worse.
 */

import type { PartOwnership } from "../staging/job-types.js";

export interface CohortView {
  /** The members' peer URLs, this node's own among them. */
  members: readonly string[];
}

interface Cohort {
  bucket: string;
  prefix: string;
  members: string[];
}

export class Cohorts {
  /** This node's peer URL as its cohorts list it (http://<pod IP>:<port>), if it has one. */
  self: string | undefined;
  readonly #byId = new Map<string, Cohort>();
  /** Counts membership changes: a job orders its parts not started yet again when it moves. */
  #version = 0;

  constructor(self: string | undefined) {
    this.self = self;
  }

  /**
   * The members staging s3://bucket/prefix together (`id`: who keeps this cohort, one resource);
   * fewer than two members, or none that is this node: no cohort.
   */
  set(id: string, bucket: string, prefix: string, members: readonly string[]): void {
    const unique = [...new Set(members)].sort();
    if (!this.self || unique.length < 2 || !unique.includes(this.self)) {
      this.delete(id);
      return;
    }
    const was = this.#byId.get(id);
    if (was && was.bucket === bucket && was.prefix === prefix && was.members.join() === unique.join()) return;
    this.#byId.set(id, { bucket, prefix, members: unique });
    this.#version++;
  }

  /** What a staging job of the bucket asks: does this node read the part from S3 itself? */
  ownership(bucket: string): PartOwnership {
    return { owns: (key, start) => this.owns(bucket, key, start), version: () => this.#version };
  }

  /** Every member of every cohort but this node: peers to ask even before discovery lists them. */
  others(): string[] {
    const all = new Set<string>();
    for (const c of this.#byId.values()) for (const m of c.members) if (m !== this.self) all.add(m);
    return [...all];
  }

  delete(id: string): void {
    if (this.#byId.delete(id)) this.#version++;
  }

  /** The cohort staging the object (the longest source prefix that covers it), if any. */
  of(bucket: string, key: string): CohortView | undefined {
    let best: Cohort | undefined;
    for (const c of this.#byId.values()) {
      if (c.bucket !== bucket || !key.startsWith(c.prefix)) continue;
      if (!best || c.prefix.length > best.prefix.length) best = c;
    }
    return best;
  }

  /**
   * The member that reads the part (the object's bytes from `start`) from S3: the highest rendezvous
   * weight among the members `live` admits. Undefined outside a cohort.
   */
  owner(
    bucket: string,
    key: string,
    start: number,
    live: (url: string) => boolean = () => true,
  ): string | undefined {
    const cohort = this.of(bucket, key);
    if (!cohort) return undefined;
    return rendezvous(
      cohort.members.filter((m) => m === this.self || live(m)),
      `${bucket}/${key}@${start}`,
    );
  }

  /** Whether this node reads the part from S3 itself: it owns it, or it stages the object alone. */
  owns(bucket: string, key: string, start: number): boolean {
    const owner = this.owner(bucket, key, start);
    return owner === undefined || owner === this.self;
  }
}

/** The member with the highest weight for `item` (ties: the smaller URL). */
export function rendezvous(members: readonly string[], item: string): string | undefined {
  let best: string | undefined;
  let bestWeight = -1;
  for (const m of members) {
    const w = weight(m, item);
    if (w > bestWeight || (w === bestWeight && best !== undefined && m < best)) {
      best = m;
      bestWeight = w;
    }
  }
  return best;
}

/**
 * FNV-1a over "member\0item", finished with murmur3's fmix32: well spread, and cheap enough to weigh
 * every part of a model against every member (a cryptographic hash buys nothing here: the members are
 * not adversaries of each other, and a skewed split costs time, never correctness).
 */
function weight(member: string, item: string): number {
  let h = 0x811c9dc5;
  const mix = (s: string) => {
    for (let i = 0; i < s.length; i++) {
      h ^= s.charCodeAt(i);
      h = Math.imul(h, 0x01000193);
    }
  };
  mix(member);
  h ^= 0;
  h = Math.imul(h, 0x01000193);
  mix(item);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}
