/**
 * `npm run bench:fleet-sim`: N nodes (1 to 1,000) starting one model together, simulated in time
 * steps. It answers what the fan-out lab cannot reach (the lab runs at most a handful of nodes on two
 * cores): S3 egress, S3's request rate and its SlowDown answers, and time to all ready, against N,
 * for three policies:
 *
 *   independent   every node reads the whole model from S3 (no peers)
 *   today         the shipped peer behaviour: each node takes the parts in its own random order; a
 *                 part a peer holds comes from that peer, a part a peer is fetching from S3 is waited
 *                 for (up to 30 s), anything else comes from S3. A node sees its peers' progress only
 *                 as of its last look (discoveryLagMs: peers answer "not held" for a model they are
 *                 still listing, and that answer is kept a while), which is where the waste comes from
 *   cooperative   every part has one fetching node among the nodes staging the model (rendezvous
 *                 hashing over the set the ModelCache resource selects, known to every node from the
 *                 start); a node reads its own parts from S3 first, and every other part from whichever
 *                 node holds it, waiting for the owner within a bound and falling back to S3 past it
 *
 * The model, stated: each node has its own S3 link (s3Gbps) shared equally by its S3 transfers; a
 * connection carries at most connGbps; the peer network gives each node peerGbps up and peerGbps down
 * (a transfer runs at the smaller of its sender's and receiver's shares). A part is one GET (8 MiB
 * ranges, the default). S3 answers at most prefixGetsPerSecond GETs per second on the model's prefix
 * (S3's documented 5,500 GET/HEAD per second per prefix); a GET beyond it is answered 503 SlowDown and
 * retried after a jittered backoff. Latency is one round trip per part (rttMs). The "lab" preset is
 * calibrated against bench/RESULTS-fanout.md (60 Mbit/s per node, 10 Mbit/s per connection, 20 ms,
 * 512 MiB); the "eks" preset is a GPU pool (25 Gbit/s to S3 per node, 100 Gbit/s between nodes, a
 * 15 GiB model). bench/README.md says what the model leaves out.
 */
import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";

export interface SimParams {
  nodes: number;
  modelBytes: number;
  partBytes: number;
  /** Parts each node has in flight (download.concurrency). */
  concurrency: number;
  /**
   * Pieces each node fetches from peers at once (peers.maxInFlight). Today a peer piece also takes a
   * download slot; the cooperative policy gives peer pieces this budget alone, so that a node's own
   * parts keep its S3 link full while its peers' parts stream in beside them.
   */
  peerConcurrency: number;
  s3Gbps: number;
  connGbps: number;
  peerGbps: number;
  rttMs: number;
  prefixGetsPerSecond: number;
  /** How stale a node's view of its peers is (today's policy). */
  discoveryLagMs: number;
  /** Nodes "starting together" start spread uniformly over this long (requests, listings). */
  startSpreadMs: number;
  /**
   * Cooperative: a node writes its entry when its start comes and begins fetching once no member
   * has joined for this long (or gatherMaxMs after it joined); members joining later still take
   * over their share of what nobody has started.
   */
  gatherQuietMs: number;
  gatherMaxMs: number;
  /** How long a node waits for a part a peer is fetching before it reads it from S3 itself. */
  pieceWaitMs: number;
  stepMs: number;
  seed: number;
}

export type Policy = "independent" | "today" | "cooperative";

export interface SimResult {
  policy: Policy;
  nodes: number;
  s3Models: number;
  peerModels: number;
  s3GetsPerSecondPeak: number;
  slowDowns: number;
  allReadySeconds: number;
}

const GBIT = 1e9 / 8;

const at = (a: ArrayLike<number>, i: number): number => a[i] as number;
const inc = (a: Uint32Array, i: number, by = 1): void => {
  a[i] = at(a, i) + by;
};

/** A small deterministic PRNG (mulberry32): the same seed gives the same run. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Rendezvous (highest random weight) hashing: node `n`'s weight for part `p`. */
function weight(n: number, p: number): number {
  return createHash("sha256").update(`${n}/${p}`).digest().readUInt32BE(0);
}

/** The node among the first `nodes` that fetches part `p` from S3 (rendezvous hashing). */
export function owner(p: number, nodes: number): number {
  let best = 0;
  let bestScore = -1;
  for (let n = 0; n < nodes; n++) {
    const score = weight(n, p);
    if (score > bestScore) {
      best = n;
      bestScore = score;
    }
  }
  return best;
}

interface Transfer {
  node: number;
  part: number;
  /** -1: S3; else the sending node. */
  from: number;
  left: number;
  /** Round trip still to wait before bytes flow. */
  latency: number;
  /** Which budget it holds: a download slot, or (cooperative) a peer slot. */
  peerSlot?: boolean;
}

interface Waiting {
  node: number;
  part: number;
  /** Simulated time after which it stops waiting and reads from S3. */
  until: number;
  /** Retry after a SlowDown: not before this time. */
  retryAt?: number;
}

export function simulate(policy: Policy, p: SimParams): SimResult {
  const random = rng(p.seed);
  const parts = Math.ceil(p.modelBytes / p.partBytes);
  const size = (part: number) => Math.min(p.partBytes, p.modelBytes - part * p.partBytes);
  const dt = p.stepMs / 1000;
  // have[n][part]: 0 missing, 1 in flight from S3, 2 in flight from a peer, 3 done, 4 waited for
  const have = Array.from({ length: p.nodes }, () => new Uint8Array(parts));
  /** The nodes that hold each part, in the order they got it (a node never loses a part). */
  const holders: number[][] = Array.from({ length: parts }, () => []);
  const fetchingFromS3 = new Uint32Array(parts);
  // What the nodes saw at their last look at their peers (today's policy): how many holders each
  // part had then (a prefix of holders[part]), and how many nodes were fetching it from S3.
  const seenHolders = new Uint32Array(parts);
  const seenFetching = new Uint32Array(parts);
  const queue: number[][] = [];
  for (let n = 0; n < p.nodes; n++) {
    const order = Array.from({ length: parts }, (_, i) => i);
    for (let i = order.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [order[i], order[j]] = [order[j] as number, order[i] as number];
    }
    queue.push(order);
  }
  const next = new Uint32Array(p.nodes);
  // Cooperative: each part's owner among the nodes that have joined so far (rendezvous over the
  // members, as every node sees them), and each node's own parts not taken yet, which it takes
  // before any other. A node that joins takes over the parts it outweighs the owner on: only those
  // move (src/peers/cohort.ts), and the others reorder what they have not started.
  const owners = new Int32Array(parts).fill(-1);
  const ownerWeight = new Float64Array(parts).fill(-1);
  const owned: Set<number>[] = Array.from({ length: p.nodes }, () => new Set<number>());
  const joined = new Uint8Array(p.nodes);
  const join = (n: number) => {
    joined[n] = 1;
    for (let part = 0; part < parts; part++) {
      const w = weight(n, part);
      if (w <= (ownerWeight[part] as number)) continue;
      const was = owners[part] as number;
      if (was >= 0) (owned[was] as Set<number>).delete(part);
      owners[part] = n;
      ownerWeight[part] = w;
      if ((have[n] as Uint8Array)[part] === 0) (owned[n] as Set<number>).add(part);
    }
  };
  /** Each node's S3 transfers in flight. */
  const s3ByNode = new Uint32Array(p.nodes);
  const startAt = Array.from(
    { length: p.nodes },
    (_, n) => (n === 0 ? 0 : random() * p.startSpreadMs) / 1000,
  );
  // When each node begins fetching: the daemons' gather (src/daemon/model-caches.ts).
  const joins = [...startAt].sort((a, b) => a - b);
  const begins = startAt.map((own) => {
    const quiet = p.gatherQuietMs / 1000;
    // Alone so far, a node waits for a second member (up to gatherMaxMs), then for the quiet.
    const second = joins[1];
    const alone = joins.filter((j) => j <= own).length < 2;
    let at = alone && second !== undefined ? Math.max(own, second) + quiet : own + quiet;
    for (const j of joins) if (j > own && j <= at) at = j + quiet;
    return policy === "cooperative" ? Math.min(at, own + p.gatherMaxMs / 1000) : own;
  });
  const inFlight = new Uint32Array(p.nodes);
  /** Cooperative only: peer pieces in flight (their own budget, no download slot). */
  const peerInFlight = new Uint32Array(p.nodes);
  const finished = new Uint32Array(p.nodes);
  const uploads = new Uint32Array(p.nodes);
  const transfers: Transfer[] = [];
  let waiting: Waiting[] = [];
  let s3Bytes = 0;
  let peerBytes = 0;
  let slowDowns = 0;
  let peak = 0;
  const getsInWindow: number[] = [];
  let getsThisSecond = 0;
  let t = 0;
  let lastLook = -Infinity;
  let allReady = Number.NaN;

  const startS3 = (node: number, part: number): boolean => {
    // S3's per-prefix request rate: a GET past it is answered SlowDown (and retried).
    if (getsThisSecond >= p.prefixGetsPerSecond) {
      slowDowns++;
      waiting.push({ node, part, until: t, retryAt: t + 0.05 + random() * 0.2 });
      return false;
    }
    getsThisSecond++;
    inc(s3ByNode, node);
    (have[node] as Uint8Array)[part] = 1;
    inc(fetchingFromS3, part);
    transfers.push({ node, part, from: -1, left: size(part), latency: p.rttMs / 1000 });
    return true;
  };
  const startPeer = (node: number, part: number, from: number, peerSlot = false) => {
    (have[node] as Uint8Array)[part] = 2;
    inc(uploads, from);
    transfers.push({ node, part, from, left: size(part), latency: p.rttMs / 1000, peerSlot });
  };
  /**
   * A node that holds `part`: the least busy of up to 8 sampled holders (every holder serves, so the
   * spread is a tree, as peers sample holders in src/peers/locator.ts). `seenOnly`: among those the
   * asking node knew of at its last look.
   */
  const holder = (part: number, seenOnly: boolean): number => {
    const list = holders[part] as number[];
    const known = seenOnly ? (seenHolders[part] as number) : list.length;
    if (known === 0) return -1;
    let best = -1;
    for (let k = 0; k < Math.min(8, known); k++) {
      const m = list[known <= 8 ? k : Math.floor(random() * known)] as number;
      if (best < 0 || (uploads[m] as number) < (uploads[best] as number)) best = m;
    }
    return best;
  };
  const place = (node: number, part: number) => {
    if (policy === "independent") return void startS3(node, part);
    if (policy === "today") {
      // What the node knows is its last look at its peers.
      const from = holder(part, true);
      if (from >= 0) return startPeer(node, part, from);
      if ((seenFetching[part] as number) > 0)
        return void waiting.push({ node, part, until: t + p.pieceWaitMs / 1000 });
      return void startS3(node, part);
    }
    // Cooperative: its own part from S3, unless another node already took it over (see the waiters'
    // steal). Anything else waits, without a download slot, for a holder and a peer slot.
    if (owners[part] === node && at(fetchingFromS3, part) === 0 && holder(part, false) < 0)
      return void startS3(node, part);
    inc(inFlight, node, -1);
    // Taken: neither its own-parts list nor its queue hands it out again.
    (have[node] as Uint8Array)[part] = 4;
    waiting.push({ node, part, until: t + p.pieceWaitMs / 1000 });
  };

  for (let steps = 0; steps < 10_000_000; steps++) {
    if (t - lastLook >= p.discoveryLagMs / 1000) {
      for (let part = 0; part < parts; part++) seenHolders[part] = (holders[part] as number[]).length;
      seenFetching.set(fetchingFromS3);
      lastLook = t;
    }
    if (Math.floor(t) !== Math.floor(t - dt)) {
      getsInWindow.push(getsThisSecond);
      peak = Math.max(peak, getsThisSecond);
      getsThisSecond = 0;
    }
    const takeWaiters = () => {
      // Waiters: a part now held (or the wait over) goes ahead.
      const stillWaiting: Waiting[] = [];
      const previous = waiting;
      waiting = [];
      for (const w of previous) {
        if (w.retryAt !== undefined) {
          if (t < w.retryAt) stillWaiting.push(w);
          else startS3(w.node, w.part);
          continue;
        }
        const from = holder(w.part, policy === "today");
        if (policy !== "cooperative") {
          if (from >= 0) startPeer(w.node, w.part, from);
          else if (t >= w.until) startS3(w.node, w.part);
          else stillWaiting.push(w);
          continue;
        }
        // A cooperative waiter holds no slot: it goes ahead only when one is free. It reads S3 itself
        // when nobody has started the part and its own S3 work is done: a late or slow owner, which
        // then takes the part from this node. (No node fails here, so an owner's fetch never stalls:
        // the fallback to S3 for a failed owner is the fan-out lab's to measure.)
        const free = at(inFlight, w.node) < p.concurrency;
        const ownWorkDone = (owned[w.node] as Set<number>).size === 0 && at(s3ByNode, w.node) === 0;
        const unstarted = at(fetchingFromS3, w.part) === 0;
        if (from >= 0 && at(peerInFlight, w.node) < p.peerConcurrency) {
          inc(peerInFlight, w.node);
          startPeer(w.node, w.part, from, true);
        } else if (from >= 0 && free && ownWorkDone) {
          // Its own S3 work done, the node's download slots serve peers' parts too.
          inc(inFlight, w.node);
          startPeer(w.node, w.part, from);
        } else if (from < 0 && free && unstarted && (ownWorkDone || t >= w.until)) {
          // Past the wait's bound (peers.cohortWaitMs) too, if the owner has not started it. A part
          // being fetched is waited for: the daemon asks for it only once a download slot frees (its
          // own parts first), not from the start as this waiter list does, so its 30 s piece wait
          // begins near the end of the owner's fetch.
          inc(inFlight, w.node);
          startS3(w.node, w.part);
        } else stillWaiting.push(w);
      }
      for (const w of stillWaiting) waiting.push(w);
    };
    const takeQueue = () => {
      // Free slots take the next parts: in a first wave, the node's own parts first.
      for (let n = 0; n < p.nodes; n++) {
        if (t < (startAt[n] as number)) continue;
        if (policy === "cooperative") {
          if (!joined[n]) join(n);
          if (t < (begins[n] as number)) continue;
          const mine = owned[n] as Set<number>;
          for (const part of mine) {
            if (at(inFlight, n) >= p.concurrency) break;
            mine.delete(part);
            if ((have[n] as Uint8Array)[part] !== 0) continue;
            inc(inFlight, n);
            place(n, part);
          }
        }
        const q = queue[n] as number[];
        while (at(inFlight, n) < p.concurrency && at(next, n) < q.length) {
          const part = q[next[n] as number] as number;
          inc(next, n);
          if ((have[n] as Uint8Array)[part] !== 0) continue;
          inc(inFlight, n);
          place(n, part);
        }
      }
    };
    // Cooperative: a node's own parts take its free slots before peers' parts do, so its S3 link
    // stays full; today's policy serves waiters first, as the daemon's scheduler does.
    if (policy === "cooperative") {
      takeQueue();
      takeWaiters();
    } else {
      takeWaiters();
      takeQueue();
    }
    // Bandwidth shares this step.
    const s3Active = new Uint32Array(p.nodes);
    const peerDown = new Uint32Array(p.nodes);
    for (const tr of transfers) {
      if (tr.latency > 0) continue;
      if (tr.from < 0) inc(s3Active, tr.node);
      else inc(peerDown, tr.node);
    }
    for (let i = transfers.length - 1; i >= 0; i--) {
      const tr = transfers[i] as Transfer;
      const dropAt = (at: number) => {
        transfers[at] = transfers[transfers.length - 1] as Transfer;
        transfers.pop();
      };
      if (tr.latency > 0) {
        tr.latency -= dt;
        continue;
      }
      const rate =
        tr.from < 0
          ? Math.min((p.s3Gbps * GBIT) / at(s3Active, tr.node), p.connGbps * GBIT)
          : Math.min(
              (p.peerGbps * GBIT) / at(peerDown, tr.node),
              (p.peerGbps * GBIT) / Math.max(at(uploads, tr.from), 1),
            );
      const moved = Math.min(tr.left, rate * dt);
      tr.left -= moved;
      if (tr.from < 0) s3Bytes += moved;
      else peerBytes += moved;
      if (tr.left > 0) continue;
      dropAt(i);
      if (tr.from < 0) {
        inc(fetchingFromS3, tr.part, -1);
        inc(s3ByNode, tr.node, -1);
      } else inc(uploads, tr.from, -1);
      (have[tr.node] as Uint8Array)[tr.part] = 3;
      (holders[tr.part] as number[]).push(tr.node);
      if (tr.peerSlot) inc(peerInFlight, tr.node, -1);
      else inc(inFlight, tr.node, -1);
      inc(finished, tr.node);
    }
    t += dt;
    if (finished.every((f) => f === parts)) {
      allReady = t;
      break;
    }
  }
  return {
    policy,
    nodes: p.nodes,
    s3Models: s3Bytes / p.modelBytes,
    peerModels: peerBytes / p.modelBytes,
    s3GetsPerSecondPeak: Math.max(peak, getsThisSecond),
    slowDowns,
    allReadySeconds: allReady,
  };
}

export const PRESETS: Record<"lab" | "eks", Omit<SimParams, "nodes" | "seed">> = {
  // bench/RESULTS-fanout.md: 60 Mbit/s per node to S3, 10 Mbit/s per connection, 20 ms, a LAN of
  // about 10 Gbit/s, 512 MiB in 8 MiB parts, 32 in flight; discovery lag fitted to the lab's egress.
  lab: {
    modelBytes: 512 * 2 ** 20,
    partBytes: 8 * 2 ** 20,
    concurrency: 32,
    peerConcurrency: 16,
    s3Gbps: 0.06,
    connGbps: 0.01,
    peerGbps: 10,
    rttMs: 20,
    prefixGetsPerSecond: 5500,
    discoveryLagMs: 250,
    startSpreadMs: 1000,
    gatherQuietMs: 300,
    gatherMaxMs: 3000,
    pieceWaitMs: 30_000,
    stepMs: 20,
  },
  eks: {
    modelBytes: 15 * 2 ** 30,
    partBytes: 8 * 2 ** 20,
    concurrency: 32,
    peerConcurrency: 16,
    s3Gbps: 25,
    connGbps: 0.8,
    peerGbps: 100,
    rttMs: 2,
    prefixGetsPerSecond: 5500,
    discoveryLagMs: 250,
    startSpreadMs: 1000,
    gatherQuietMs: 300,
    gatherMaxMs: 3000,
    pieceWaitMs: 30_000,
    // A peer piece takes about 10 ms here: a coarser step would round every one up to the next step.
    stepMs: 2,
  },
};

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      preset: { type: "string", default: "eks" },
      nodes: { type: "string", default: "1,2,3,4,8,16,64,256,1000" },
      "discovery-lag-ms": { type: "string" },
      "start-spread-ms": { type: "string" },
      seeds: { type: "string", default: "5" },
      json: { type: "string" },
    },
  });
  const preset = (PRESETS as Record<string, Omit<SimParams, "nodes" | "seed"> | undefined>)[
    values.preset as string
  ];
  if (!preset) throw new Error(`--preset must be one of ${Object.keys(PRESETS).join(", ")}`);
  const base = {
    ...preset,
    ...(values["discovery-lag-ms"] ? { discoveryLagMs: Number(values["discovery-lag-ms"]) } : {}),
    ...(values["start-spread-ms"] ? { startSpreadMs: Number(values["start-spread-ms"]) } : {}),
  };
  const seeds = Number(values.seeds);
  const rows: (SimResult & { s3ModelsMin: number; s3ModelsMax: number; seeds: number })[] = [];
  console.log(
    `preset ${values.preset}: ${(base.modelBytes / 2 ** 30).toFixed(2)} GiB in ${base.partBytes / 2 ** 20} MiB parts, ${base.concurrency} in flight, S3 ${base.s3Gbps} Gbit/s per node (${base.connGbps} per connection), peers ${base.peerGbps} Gbit/s, ${base.rttMs} ms, ${base.prefixGetsPerSecond} GET/s per prefix, discovery lag ${base.discoveryLagMs} ms, starts spread over ${base.startSpreadMs} ms; means of ${seeds} seeds (egress min-max)`,
  );
  console.log(
    "| nodes | policy | S3 egress (models) | from peers (models) | S3 GET/s peak | SlowDowns | all ready s |",
  );
  console.log("| ---: | --- | ---: | ---: | ---: | ---: | ---: |");
  for (const nodes of String(values.nodes).split(",").map(Number)) {
    for (const policy of ["independent", "today", "cooperative"] as const) {
      if (nodes === 1 && policy !== "independent") continue;
      // Large pools run once: their spread over seeds is small, and each run takes minutes.
      const n = policy === "independent" || nodes >= 256 ? 1 : seeds;
      const runs = Array.from({ length: n }, (_, seed) =>
        simulate(policy, { ...base, nodes, seed: seed + 1 }),
      );
      const mean = (f: (r: SimResult) => number) => runs.reduce((a, r) => a + f(r), 0) / runs.length;
      const egress = runs.map((r) => r.s3Models);
      const r = {
        policy,
        nodes,
        s3Models: mean((x) => x.s3Models),
        s3ModelsMin: Math.min(...egress),
        s3ModelsMax: Math.max(...egress),
        peerModels: mean((x) => x.peerModels),
        s3GetsPerSecondPeak: Math.round(mean((x) => x.s3GetsPerSecondPeak)),
        slowDowns: Math.round(mean((x) => x.slowDowns)),
        allReadySeconds: mean((x) => x.allReadySeconds),
        seeds: runs.length,
      };
      rows.push(r);
      console.log(
        `| ${nodes} | ${policy} | ${r.s3Models.toFixed(2)} (${r.s3ModelsMin.toFixed(2)}-${r.s3ModelsMax.toFixed(2)}) | ${r.peerModels.toFixed(2)} | ${r.s3GetsPerSecondPeak} | ${r.slowDowns} | ${r.allReadySeconds.toFixed(1)} |`,
      );
    }
  }
  if (values.json)
    writeFileSync(resolve(values.json), `${JSON.stringify({ params: base, rows }, null, 1)}\n`);
}

if (
  import.meta.url === `file://${process.argv[1]}` ||
  process.argv[1]?.endsWith(join("bench", "fleet-sim.ts"))
) {
  await main();
}
