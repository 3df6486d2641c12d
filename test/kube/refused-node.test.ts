/**
 * A node the daemon refuses (daemon.onRefusal serve) loses its model labels and gains
 * coldstart.io/refused, on a real API server: labels left by an earlier daemon (before
 * placement.require auto, say) would keep steering pods to a node that serves nothing. Once the node
 * passes, the daemon's labeler takes coldstart.io/refused off. Node facts from fake host trees
 * (test/support/fake-host.ts) through the real probes.
 *
 * Tier: integration
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CoreV1Api, KubeConfig } from "@kubernetes/client-node";
import { pino } from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config/load.js";
import { holdWhileRefused } from "../../src/daemon/refusal.js";
import { MODELS_ANNOTATION, modelLabelKey, NodeLabeler } from "../../src/kube/node-labels.js";
import {
  collectNodeFacts,
  factLabels,
  type NodeFactsOptions,
  policyViolations,
} from "../../src/node/node-facts.js";
import * as hosts from "../support/fake-host.js";
import { useControlPlane } from "../support/kube-control-plane.js";
import { settles, waitFor } from "../support/wait.js";

const NODE = "gpu-refused";
const { plane } = useControlPlane();
let work: string;
const cleanups: (() => Promise<void>)[] = [];

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "cs-refused-node-"));
});
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

async function factsOptions(make: () => Promise<hosts.FakeScenario>): Promise<NodeFactsOptions> {
  const s = await make();
  cleanups.push(s.cleanup);
  return hosts.noGpuFactsOptions(s);
}

describe("the labels of a refused node", { timeout: 120_000 }, () => {
  it("drop the model labels, name the refusing setting, and lose it once the node passes", async (ctx) => {
    const p = plane(ctx);
    const kubeConfig = new KubeConfig();
    kubeConfig.loadFromFile(p.kubeconfig);
    const core = kubeConfig.makeApiClient(CoreV1Api);
    const stale = modelLabelKey("org/llama");
    await core.createNode({
      body: {
        metadata: {
          name: NODE,
          labels: { "kubernetes.io/hostname": NODE, team: "ml", [stale]: "ready" },
          annotations: { [MODELS_ANNOTATION]: JSON.stringify({ x: "org/llama" }), keep: "me" },
        },
      },
    });
    cleanups.push(async () => {
      await core.deleteNode({ name: NODE });
    });

    // Refused: the staging root on the root volume beside instance storage. Fixed: on the instance store.
    const refusedNode = await factsOptions(hosts.daemonSetOnRootVolumeBesideInstanceStore);
    const fixedNode = await factsOptions(hosts.daemonSetOnEksInstanceStore);
    let fixed = false;
    const policy = { gdsMode: "off" as const, placementRequire: ["auto" as const] };
    const config = loadConfig({
      env: {
        COLDSTART_SOCKET: join(work, "refused.sock"),
        COLDSTART_LISTEN: "127.0.0.1:0",
        COLDSTART_METRICS_LISTEN: "127.0.0.1:0",
        COLDSTART_ON_REFUSAL: "serve",
      },
    });
    const stop = new AbortController();
    const held = holdWhileRefused(await collectNodeFacts(refusedNode), {
      config,
      logger: pino({ level: "silent" }),
      version: "test",
      probe: (previous, signal) => collectNodeFacts(fixed ? fixedNode : refusedNode, { previous, signal }),
      violations: (f) => policyViolations(f, policy),
      signal: stop.signal,
      intervalMs: 50,
      labeler: () =>
        new NodeLabeler({ nodeName: NODE, kubeConfig, retry: { baseDelayMs: 50, maxDelayMs: 500 } }),
    });
    cleanups.push(async () => {
      stop.abort();
      await held.catch(() => {});
    });

    const node = async () => (await core.readNode({ name: NODE })).metadata ?? {};
    await waitFor(async () => (await node()).labels?.["coldstart.io/refused"] === "placement.require", {
      what: "coldstart.io/refused on the Node",
    });
    const refused = await node();
    expect(refused.labels).toEqual({
      "kubernetes.io/hostname": NODE,
      team: "ml",
      "coldstart.io/refused": "placement.require",
      "coldstart.io/gds": "unavailable",
    });
    expect(refused.annotations).toEqual({ keep: "me" });

    fixed = true;
    const facts = await settles(held, { what: "the refusal to end once the node passes", timeoutMs: 60_000 });
    expect(facts?.placement.placement).toBe("nvme-instance-store");
    // The daemon that starts then labels its facts: no refusal.
    const labeler = new NodeLabeler({ nodeName: NODE, kubeConfig });
    try {
      labeler.setFacts(factLabels(facts as NonNullable<typeof facts>));
      await settles(labeler.flush(), { what: "the started daemon's labels", timeoutMs: 60_000 });
    } finally {
      labeler.close();
    }
    expect((await node()).labels).toEqual({
      "kubernetes.io/hostname": NODE,
      team: "ml",
      "coldstart.io/gds": "unavailable",
    });
  });
});
