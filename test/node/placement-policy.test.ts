/**
 * placement.require auto, the deploy/ base's setting: on the root volume of a node that has local
 * instance-store NVMe of its own, the daemon refuses to start (CS_PLACEMENT_REFUSED, exit 1, as an
 * explicit placement.require list refuses) naming the staging root's device, the instance-store disks
 * and the fix; on the root volume of a node without instance storage it starts with the warning, and
 * on instance store it starts clean. Fake host trees (test/support/fake-host.ts), the real command as
 * child processes, and the metric the running daemon exports.
 */
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Registry } from "prom-client";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config/load.js";
import { holdWhileRefused } from "../../src/daemon/refusal.js";
import { Metrics } from "../../src/metrics/metrics.js";
import {
  collectNodeFacts,
  type NodeFacts,
  policyViolations,
  publishNodeFacts,
} from "../../src/node/node-facts.js";
import { probePlacement } from "../../src/node/placement.js";
import { expectColdstartError, thrownBy } from "../support/expect-error.js";
import * as hosts from "../support/fake-host.js";
import {
  ec2Node,
  FakeHost,
  type FakeMount,
  type FakeScenario,
  INSTANCE_STORE,
  noGpuFactsOptions,
} from "../support/fake-host.js";
import {
  coldstart,
  type DaemonProcess,
  finish,
  jsonLines,
  killDaemons,
  NO_GPU_FLAGS,
  startDaemonProcess,
} from "../support/processes.js";
import { waitFor } from "../support/wait.js";

const NO_S3 = { endpoint: "http://127.0.0.1:1", accessKeyId: "x", secretAccessKey: "x", region: "us-east-1" };
const cleanups: (() => Promise<void>)[] = [];
const daemons: DaemonProcess[] = [];
let work: string;
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "cs-placement-policy-"));
  await writeFile(join(work, "tokens"), "placement-policy-token\n");
});
afterEach(async () => {
  await killDaemons(daemons);
  for (const c of cleanups.splice(0)) await c();
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

/**
 * An EC2 node (root on EBS nvme0n1p1) with two instance-store disks as md127 RAID0, xfs at
 * <host>/mnt/k8s-disks/0 as the EKS AMI mounts it; the staging root `stagingRel` inside the tree.
 */
async function eksNode(stagingRel: string): Promise<FakeScenario> {
  return (await eksHost(stagingRel)).scenario;
}

/** eksNode, with a way to mount the RAID0 at the staging root later (an operator fixing the node). */
async function eksHost(stagingRel: string) {
  const h = await FakeHost.create();
  const base = await ec2Node(h);
  await h.nvme({ ctrl: 1, minor: 3, model: INSTANCE_STORE, pci: "0000:00:1f.0" });
  await h.nvme({ ctrl: 2, minor: 4, model: INSTANCE_STORE, pci: "0000:00:1e.0" });
  await h.md("md127", 127, "raid0", ["nvme1n1", "nvme2n1"]);
  const raid = (mountPoint: string): FakeMount => ({
    mountPoint,
    fsType: "xfs",
    source: "/dev/md127",
    device: "9:127",
  });
  await h.mountinfo([...base, raid(h.path("mnt/k8s-disks/0"))]);
  await h.dir(stagingRel);
  const scenario: FakeScenario = {
    hostRoot: h.root,
    stagingRoot: h.path(stagingRel),
    cleanup: () => h.cleanup(),
  };
  return {
    scenario,
    mountRaidAtStagingRoot: () =>
      h.mountinfo([...base, raid(h.path("mnt/k8s-disks/0")), raid(h.path(stagingRel))]),
  };
}
const rootVolumeBesideInstanceStore = () => eksNode("var/lib/coldstart");
const onInstanceStore = () => eksNode("mnt/k8s-disks/0/coldstart");

async function scenario(make: () => Promise<FakeScenario>): Promise<FakeScenario> {
  const s = await make();
  cleanups.push(s.cleanup);
  return s;
}

/** Node facts as far as the placement policy reads them. */
async function placementFacts(make: () => Promise<FakeScenario>): Promise<NodeFacts> {
  return { placement: await probePlacement(await scenario(make)) } as NodeFacts;
}

function daemonArgs(s: FakeScenario, name: string): string[] {
  return [
    "--root",
    s.stagingRoot,
    "--socket",
    join(work, `${name}.sock`),
    "--token-file",
    join(work, "tokens"),
    ...NO_GPU_FLAGS,
  ];
}

describe("placement.require auto", () => {
  it("parses alone, keeps every placement list working, and refuses auto mixed with placements", () => {
    const require = (v: string) => loadConfig({ env: { COLDSTART_PLACEMENT_REQUIRE: v } }).placement.require;
    expect(require("auto")).toEqual(["auto"]);
    expect(require("nvme-instance-store, nvme-local")).toEqual(["nvme-instance-store", "nvme-local"]);
    expect(loadConfig({ env: {} }).placement.require).toEqual([]);
    expect(
      expectColdstartError(
        thrownBy(() => require("auto,nvme-ebs")),
        "CS_CONFIG_INVALID",
      ).message,
    ).toBe(
      'placement.require (from env COLDSTART_PLACEMENT_REQUIRE) must be auto alone or a list of placements, not both, got "auto,nvme-ebs"',
    );
  });

  it("refuses the root volume of a node with instance storage, naming the device, the disks and the fix", async () => {
    const f = await placementFacts(hosts.daemonSetOnRootVolumeBesideInstanceStore);
    const [v, ...rest] = policyViolations(f, { gdsMode: "auto", placementRequire: ["auto"] });
    expect(rest).toEqual([]);
    expect(v?.code).toBe("CS_PLACEMENT_REFUSED");
    expect(v?.message).toBe(
      "staging root /var/lib/coldstart is on root-volume (ext4 on nvme0n1p1 (nvme0n1)), and placement.require " +
        "auto refuses the root volume on a node with instance storage: nvme1n1, nvme2n1 " +
        `("${INSTANCE_STORE}") mounted at /mnt/k8s-disks/0 (xfs on md127). Point the staging root at the ` +
        "instance-store mount: the DaemonSet's staging hostPath /mnt/k8s-disks/0/coldstart (kustomize " +
        "component deploy/components/instance-store)",
    );
    expect(v?.details).toEqual({ field: "placement.require", value: "root-volume" });
    // Without auto the same node only warns (empty), or refuses as the list says.
    expect(policyViolations(f, { gdsMode: "auto", placementRequire: [] })).toEqual([]);
    expect(
      policyViolations(f, { gdsMode: "auto", placementRequire: ["root-volume"] }).map((e) => e.code),
    ).toEqual([]);
  });

  it("allows the root volume of a node without instance storage (warned), and instance store", async () => {
    for (const make of [hosts.daemonSetOnRootVolume, hosts.onRootVolume]) {
      const f = await placementFacts(make);
      expect(f.placement.placement).toBe("root-volume");
      expect(f.placement.warnings.map((w) => w.code)).toContain("staging_on_root_volume");
      expect(policyViolations(f, { gdsMode: "auto", placementRequire: ["auto"] })).toEqual([]);
    }
    for (const make of [hosts.daemonSetOnEksInstanceStore, hosts.daemonSetOnInstanceStore, hosts.gdsReady]) {
      const f = await placementFacts(make);
      expect(f.placement.placement).toBe("nvme-instance-store");
      expect(policyViolations(f, { gdsMode: "auto", placementRequire: ["auto"] })).toEqual([]);
    }
  });

  it("coldstart_placement_warnings carries the reason where the daemon runs (placement.require not auto)", async () => {
    const f = await placementFacts(hosts.daemonSetOnRootVolumeBesideInstanceStore);
    const m = new Metrics(new Registry(), { defaultMetrics: false });
    publishNodeFacts(m, {
      ...f,
      gds: { mode: "auto", verdict: "unavailable", loadFormat: "safetensors", reasons: [] },
      gpus: { gpus: [] },
      native: { available: false, path: null, reason: "x" },
    } as unknown as NodeFacts);
    const text = await m.registry.metrics();
    expect(text).toContain('coldstart_placement_warnings{code="instance_store_unused"} 1');
    expect(text).toContain('coldstart_placement_warnings{code="staging_on_root_volume"} 1');
    // Re-set, not added to: a later collection on instance store clears them.
    publishNodeFacts(m, {
      placement: (await placementFacts(hosts.daemonSetOnEksInstanceStore)).placement,
      gds: { mode: "auto", verdict: "unavailable", loadFormat: "safetensors", reasons: [] },
      gpus: { gpus: [] },
      native: { available: false, path: null, reason: "x" },
    } as unknown as NodeFacts);
    expect(await m.registry.metrics()).not.toContain("coldstart_placement_warnings{");
  });
});

// Real daemons (tsx start-up, node probes) on a loaded two-core machine: generous.
describe("the daemon under placement.require auto", { timeout: 120_000 }, () => {
  it("refuses to start on the root volume beside instance storage: exit 1, CS_PLACEMENT_REFUSED with the reason", async () => {
    const s = await scenario(rootVolumeBesideInstanceStore);
    const out = await finish(
      coldstart(["daemon", ...daemonArgs(s, "refused")], NO_S3, {
        COLDSTART_HOST_ROOT: s.hostRoot,
        COLDSTART_PLACEMENT_REQUIRE: "auto",
      }),
    );
    expect(out.code).toBe(1);
    expect(out.stderr).toBe(
      `coldstart: CS_PLACEMENT_REFUSED: staging root ${s.stagingRoot} is on root-volume (ext4 on nvme0n1p1 ` +
        "(nvme0n1)), and placement.require auto refuses the root volume on a node with instance storage: " +
        `nvme1n1, nvme2n1 ("${INSTANCE_STORE}") mounted at ${s.hostRoot}/mnt/k8s-disks/0 (xfs on md127). ` +
        "Point the staging root at the instance-store mount: the DaemonSet's staging hostPath " +
        `${s.hostRoot}/mnt/k8s-disks/0/coldstart (as the kustomize component deploy/components/instance-store ` +
        "does for /mnt/k8s-disks/0)\n",
    );
  });

  it("starts on the root volume of a node without instance storage, and exports the warning", async () => {
    const s = await scenario(hosts.onRootVolume);
    const d = await startDaemonProcess(daemonArgs(s, "root"), NO_S3, {
      COLDSTART_HOST_ROOT: s.hostRoot,
      COLDSTART_PLACEMENT_REQUIRE: "auto",
    });
    daemons.push(d);
    expect(d.logs.find((l) => l.msg === "node facts")).toMatchObject({ placement: "root-volume" });
    const metrics = await (await fetch(`${d.metrics}/metrics`)).text();
    expect(metrics).toContain('coldstart_placement_warnings{code="staging_on_root_volume"} 1');
    expect(metrics).not.toContain(`code="instance_store_unused"`);
  });

  it("starts on instance store", async () => {
    const s = await scenario(onInstanceStore);
    const d = await startDaemonProcess(daemonArgs(s, "is"), NO_S3, {
      COLDSTART_HOST_ROOT: s.hostRoot,
      COLDSTART_PLACEMENT_REQUIRE: "auto",
    });
    daemons.push(d);
    expect(d.logs.find((l) => l.msg === "node facts")).toMatchObject({ placement: "nvme-instance-store" });
    const metrics = await (await fetch(`${d.metrics}/metrics`)).text();
    expect(metrics).toContain(
      'coldstart_placement_info{placement="nvme-instance-store",fstype="xfs",device="md127"} 1',
    );
    expect(metrics).not.toContain("coldstart_placement_warnings{");
  });
});

/**
 * daemon.onRefusal serve (the deploy's setting): the refused daemon stays up where Prometheus and the
 * kubelet see it, with the reason on /readyz, in coldstart_policy_refused and in every API answer, and
 * stages nothing; a re-probe that finds the node fixed starts it.
 */
describe("a refused daemon under daemon.onRefusal serve", { timeout: 120_000 }, () => {
  it("stays up not ready, says why on every surface, touches nothing, and exits 0 on SIGTERM", async () => {
    const s = await scenario(rootVolumeBesideInstanceStore);
    const socket = join(work, "serve.sock");
    const child = coldstart(
      [
        "daemon",
        ...daemonArgs(s, "serve"),
        "--socket",
        socket,
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
      ],
      NO_S3,
      { COLDSTART_HOST_ROOT: s.hostRoot, COLDSTART_PLACEMENT_REQUIRE: "auto", COLDSTART_ON_REFUSAL: "serve" },
    );
    const exited = finish(child);
    const lines = jsonLines(child);
    cleanups.push(async () => {
      child.kill("SIGKILL");
      await exited;
    });
    const refusing = await waitFor(
      () => lines().find((l) => String(l.msg).startsWith("coldstart daemon refusing the node")),
      { what: "the refusing log line", timeoutMs: 90_000 },
    );
    const api = String(refusing.api);
    const metricsUrl = String(refusing.metrics);
    expect(refusing.codes).toEqual(["CS_PLACEMENT_REFUSED"]);

    const reason = expect.stringMatching(
      new RegExp(`^staging root ${s.stagingRoot} is on root-volume .*placement.require auto refuses`),
    );
    expect((await fetch(`${metricsUrl}/livez`)).status).toBe(200);
    const ready = await fetch(`${metricsUrl}/readyz`);
    expect(ready.status).toBe(503);
    expect(await ready.json()).toEqual({
      ready: false,
      refused: [
        {
          code: "CS_PLACEMENT_REFUSED",
          message: reason,
          details: { field: "placement.require", value: "root-volume" },
        },
      ],
    });
    const text = await (await fetch(`${metricsUrl}/metrics`)).text();
    expect(text).toContain(
      'coldstart_policy_refused{code="CS_PLACEMENT_REFUSED",field="placement.require",value="root-volume"} 1',
    );
    expect(text).toContain('coldstart_placement_warnings{code="instance_store_unused"} 1');
    expect(text).toMatch(/^coldstart_build_info\{version="[^"]+",node_version="v\d+/m);

    // The API refuses every call, with or without a token, and says why.
    for (const headers of [{}, { authorization: "Bearer placement-policy-token" }] as Record<
      string,
      string
    >[]) {
      const put = await fetch(`${api}/v1/models/org%2Fm`, {
        method: "PUT",
        headers: { ...headers, "content-type": "application/json" },
        body: JSON.stringify({ source: "s3://b/m/" }),
      });
      expect(put.status).toBe(503);
      expect(put.headers.get("retry-after")).toBe("60");
      expect(await put.json()).toMatchObject({ error: { code: "CS_PLACEMENT_REFUSED", message: reason } });
    }
    // A pod's handshake keeps waiting and says why, once. The 3 s only ends its retries: the first
    // call is answered (and printed) whatever the machine's speed, the deadline checked after it.
    const wait = await finish(
      coldstart(["wait", "org/m", "--socket", socket, "--source", "s3://b/m/", "--timeout", "3s"], NO_S3),
    );
    expect(wait.code).toBe(3);
    const told = wait.stderr.split("\n").filter((l) => l.startsWith("coldstart: waiting:"));
    expect(told).toEqual([
      expect.stringMatching(
        /^coldstart: waiting: the daemon answered 503: CS_PLACEMENT_REFUSED: staging root .* is on root-volume/,
      ),
    ]);
    expect(wait.stderr).toMatch(/coldstart: CS_NOT_READY: .*last: daemon answered 503: CS_PLACEMENT_REFUSED/);

    // Logged once, and nothing under the staging root: the registry was never opened.
    expect(lines().filter((l) => String(l.msg).startsWith("refusing to stage: "))).toHaveLength(1);
    expect(await readdir(s.stagingRoot)).toEqual([]);

    child.kill("SIGTERM");
    const out = await exited;
    expect(out.code).toBe(0);
  });

  it("starts once a re-probe finds the node fixed, its listeners handed back", async () => {
    const host = await eksHost("var/lib/coldstart");
    cleanups.push(host.scenario.cleanup);
    const s = host.scenario;
    const config = loadConfig({
      env: {
        COLDSTART_ROOT: s.stagingRoot,
        COLDSTART_HOST_ROOT: s.hostRoot,
        COLDSTART_SOCKET: join(work, "recover.sock"),
        COLDSTART_LISTEN: "127.0.0.1:0",
        COLDSTART_METRICS_LISTEN: "127.0.0.1:0",
        COLDSTART_PLACEMENT_REQUIRE: "auto",
        COLDSTART_ON_REFUSAL: "serve",
        COLDSTART_GDS_MODE: "off",
        COLDSTART_NVML_LIBRARY: "/nonexistent",
        COLDSTART_NVIDIA_SMI: "/nonexistent",
      },
    });
    const options = noGpuFactsOptions(s);
    const logs: Record<string, unknown>[] = [];
    const logger = (await import("pino")).pino(
      { level: "info" },
      { write: (l: string) => logs.push(JSON.parse(l)) },
    );
    const policy = { gdsMode: "off" as const, placementRequire: ["auto" as const] };
    let probes = 0;
    const stop = new AbortController();
    const held = holdWhileRefused(await collectNodeFacts(options), {
      config,
      logger,
      version: "test",
      probe: (previous, signal) => {
        probes++;
        return collectNodeFacts(options, { previous, signal });
      },
      violations: (f) => policyViolations(f, policy),
      signal: stop.signal,
      intervalMs: 20,
    });
    cleanups.push(async () => {
      stop.abort();
      await held.catch(() => {});
    });
    const refusing = await waitFor(() =>
      logs.find((l) => String(l.msg).startsWith("coldstart daemon refusing the node")),
    );
    const metricsUrl = `http://${String(refusing.metrics).replace(/^http:\/\//, "")}`;
    // Still refused after several re-probes: the same reason, logged once.
    await waitFor(() => probes >= 3);
    expect((await fetch(`${metricsUrl}/readyz`)).status).toBe(503);
    expect(logs.filter((l) => String(l.msg).startsWith("refusing to stage: "))).toHaveLength(1);

    await host.mountRaidAtStagingRoot();
    const facts = await held;
    expect(facts?.placement.placement).toBe("nvme-instance-store");
    expect(logs.map((l) => l.msg)).toContain("the node now passes the policy: starting");
    // Closed, so the real daemon can take the same ports and socket.
    await expect(fetch(`${metricsUrl}/livez`)).rejects.toThrow();
  });

  it("under daemon.onRefusal exit (the default) throws the reason, serving nothing", async () => {
    const s = await scenario(rootVolumeBesideInstanceStore);
    const facts = await collectNodeFacts(noGpuFactsOptions(s));
    const config = loadConfig({ env: { COLDSTART_ROOT: s.stagingRoot } });
    expect(config.daemon.onRefusal).toBe("exit");
    const err = await holdWhileRefused(facts, {
      config,
      logger: (await import("pino")).pino({ level: "silent" }),
      version: "test",
      probe: () => Promise.reject(new Error("must not probe")),
      violations: (f) => policyViolations(f, { gdsMode: "off", placementRequire: ["auto"] }),
      signal: new AbortController().signal,
    }).catch((e: unknown) => e);
    expectColdstartError(err, "CS_PLACEMENT_REFUSED");
  });
});
