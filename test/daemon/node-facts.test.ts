/**
 * Node facts inside the running daemon: GET /v1/node, the metrics, the node labels and the
 * `coldstart wait --env-file` handshake, over a fake host tree and the ABI doubles; and the daemon's
 * refusal to start where gds.mode on or placement.require say no.
 */
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { callDaemon } from "../../src/api/client.js";
import type { NodeFacts } from "../../src/node/node-facts.js";
import * as hosts from "../support/fake-host.js";
import { KubeApiServerDouble, writeKubeconfig } from "../support/kube-api-double.js";
import { builtAddon, type FakeLibraries, fakeLibraries } from "../support/native-doubles.js";
import {
  coldstart,
  type DaemonProcess,
  finish,
  jsonLines,
  killDaemons,
  startDaemonProcess,
} from "../support/processes.js";
import { freshBucket, putFiles } from "../support/s3.js";
import { useS3Fixture } from "../support/s3-fixture.js";
import { waitFor } from "../support/wait.js";

type NodeBody = NodeFacts & { disk: { freeBytes: number } };
const fx = useS3Fixture("cs-nodefacts-");
const TOKEN = "node-facts-token";
let libs: FakeLibraries;
const daemons: DaemonProcess[] = [];
const cleanups: (() => Promise<void>)[] = [];
beforeAll(() => {
  libs = fakeLibraries();
  builtAddon();
});
afterEach(async () => {
  await killDaemons(daemons);
  for (const c of cleanups.splice(0)) await c();
});

async function setup(host: () => Promise<hosts.FakeScenario>, env: Record<string, string> = {}) {
  const s = await host();
  cleanups.push(s.cleanup);
  const tokens = join(fx.work, "tokens");
  await writeFile(tokens, `${TOKEN}\n`);
  const socket = join(fx.work, "run", "coldstart.sock");
  const args = [
    "--root",
    s.stagingRoot,
    "--socket",
    socket,
    "--token-file",
    tokens,
    "--allow-source",
    "s3://nf-*/**",
  ];
  args.push("--endpoint", fx.proxy.url, "--path-style");
  const fullEnv = {
    COLDSTART_HOST_ROOT: s.hostRoot,
    COLDSTART_NVML_LIBRARY: libs.nvml,
    COLDSTART_CUFILE_LIBRARY: libs.cufile,
    COLDSTART_NVIDIA_SMI: "/nonexistent/nvidia-smi",
    ...env,
  };
  return { s, socket, args, env: fullEnv };
}

async function seed(): Promise<string> {
  const bucket = await freshBucket(fx.client, "nf");
  const body = Buffer.from('{"a":1}');
  await putFiles(fx.client, bucket, "m/", [{ relPath: "config.json", body, sha256: "" }]);
  return `s3://${bucket}/m/`;
}

// A daemon, its probes and `coldstart wait` as child processes beside the S3 server: generous.
describe("node facts in the daemon", { timeout: 120_000 }, () => {
  it("serves them on /v1/node, exports metrics, labels the node and hands the loader to wait --env-file", async () => {
    const apiServer = new KubeApiServerDouble();
    const server = await apiServer.start();
    try {
      apiServer.addNode("gpu-node-1");
      const kubeconfig = await writeKubeconfig(join(fx.work, "kubeconfig"), server);
      const { args, env, socket } = await setup(hosts.gdsReady);
      const d = await startDaemonProcess(
        [...args, "--node-name", "gpu-node-1", "--kubeconfig", kubeconfig, "--node-labels", "on"],
        fx.s3,
        env,
      );
      daemons.push(d);
      expect(d.logs.find((l) => l.msg === "node facts")).toMatchObject({
        gds: "enabled",
        loadFormat: "fastsafetensors",
        placement: "nvme-instance-store",
        gpus: 2,
      });

      const node = await callDaemon({ url: d.api, token: TOKEN }, "GET", "/v1/node");
      expect(node.status).toBe(200);
      const body = node.body as NodeBody;
      expect(body.gds).toEqual({
        mode: "auto",
        verdict: "enabled",
        loadFormat: "fastsafetensors",
        reasons: [],
      });
      expect(body.gpus.gpus.map((g) => g.uuid)).toEqual([
        "GPU-11111111-2222-3333-4444-555555555555",
        "GPU-66666666-7777-8888-9999-000000000000",
      ]);
      expect(body.placement.placement).toBe("nvme-instance-store");
      expect(body.disk.freeBytes).toBeGreaterThan(0);
      // The handshake socket may read it without a token; the TCP API may not.
      expect((await callDaemon({ socketPath: socket }, "GET", "/v1/node")).status).toBe(200);
      expect((await callDaemon({ url: d.api }, "GET", "/v1/node")).status).toBe(401);

      const metrics = await (await fetch(`${d.metrics}/metrics`)).text();
      expect(metrics).toContain(
        'coldstart_gds_info{verdict="enabled",mode="auto",load_format="fastsafetensors"} 1',
      );
      expect(metrics).toContain(
        'coldstart_placement_info{placement="nvme-instance-store",fstype="ext4",device="md0"} 1',
      );
      expect(metrics).toContain(
        'coldstart_gpu_info{index="1",uuid="GPU-66666666-7777-8888-9999-000000000000",name="NVIDIA H100 80GB HBM3",compute_capability="9.0",driver_version="570.86.15"} 1',
      );
      expect(metrics).toContain("coldstart_native_addon_available 1");

      await waitFor(() => apiServer.labelsOf("gpu-node-1")["coldstart.io/gds"] === "enabled", {
        what: "the coldstart.io/gds label on the node",
      });
      expect(apiServer.labelsOf("gpu-node-1")["coldstart.io/gpu-product"]).toBe("NVIDIA-H100-80GB-HBM3");

      const lines = (await handshake(socket, "org/m")).trim().split("\n");
      expect(lines.slice(2)).toEqual([
        "COLDSTART_LOAD_FORMAT='fastsafetensors'",
        "COLDSTART_GDS='enabled'",
        "COLDSTART_GPU_PRODUCT='NVIDIA-H100-80GB-HBM3'",
      ]);
    } finally {
      await apiServer.stop();
    }
  });

  it("starts without the addon and tells pods to use the default loader", async () => {
    const { args, env, socket } = await setup(hosts.gdsReady, {
      COLDSTART_NATIVE_ADDON: "/nonexistent/addon.node",
    });
    const d = await startDaemonProcess(args, fx.s3, env);
    daemons.push(d);
    expect(d.logs.find((l) => l.msg === "native addon unavailable")?.reason).toMatch(/addon\.node: ENOENT/);
    const body = (await callDaemon({ socketPath: socket }, "GET", "/v1/node")).body as NodeBody;
    expect(body.native.available).toBe(false);
    expect(body.gds.verdict).toBe("unavailable");
    const metrics = await (await fetch(`${d.metrics}/metrics`)).text();
    expect(metrics).toContain("coldstart_native_addon_available 0");
    expect(metrics).toContain('coldstart_gds_reasons{code="native_unavailable"} 1');

    expect(await handshake(socket, "org/n")).toContain(
      "COLDSTART_LOAD_FORMAT='safetensors'\nCOLDSTART_GDS='unavailable'\nCOLDSTART_GPU_PRODUCT=''\n",
    );
  });

  it("refuses to start under gds.mode on without GDS, and under placement.require on the root volume", async () => {
    const compat = await setup(hosts.compatOnly, { COLDSTART_GDS_MODE: "on", FAKE_CUFILE_NVFS: "0.0" });
    const gds = await finish(coldstart(["daemon", ...compat.args], fx.s3, compat.env));
    expect(gds.code).toBe(1);
    expect(gds.stderr).toBe(
      "coldstart: CS_GDS_UNAVAILABLE: gds.mode is on but GDS is compat here: compat_mode_only, nvfs_version_zero, nvidia_fs_not_loaded\n",
    );
    const root = await setup(hosts.onRootVolume);
    const placement = await finish(
      coldstart(["daemon", ...root.args, "--require-placement", "nvme-instance-store"], fx.s3, root.env),
    );
    expect(placement.code).toBe(1);
    expect(placement.stderr).toMatch(/^coldstart: CS_PLACEMENT_REFUSED: staging root .* is on root-volume/);
  });
});

describe("gds.mode on under daemon.onRefusal serve", () => {
  it("serves the refusal with the verdict's reasons, and the metric names gds.mode", async () => {
    const compat = await setup(hosts.compatOnly, {
      COLDSTART_GDS_MODE: "on",
      FAKE_CUFILE_NVFS: "0.0",
      COLDSTART_ON_REFUSAL: "serve",
    });
    const child = coldstart(
      ["daemon", ...compat.args, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"],
      fx.s3,
      compat.env,
    );
    const lines = jsonLines(child);
    const exited = finish(child);
    try {
      const refusing = await waitFor(
        () => lines().find((l) => String(l.msg).startsWith("coldstart daemon refusing the node")),
        { what: "the refusing log line", timeoutMs: 90_000 },
      );
      const metrics = String(refusing.metrics);
      const ready = await fetch(`${metrics}/readyz`);
      expect(ready.status).toBe(503);
      expect(await ready.json()).toEqual({
        ready: false,
        refused: [
          {
            code: "CS_GDS_UNAVAILABLE",
            message:
              "gds.mode is on but GDS is compat here: compat_mode_only, nvfs_version_zero, nvidia_fs_not_loaded",
            details: { field: "gds.mode", value: "on" },
          },
        ],
      });
      const text = await (await fetch(`${metrics}/metrics`)).text();
      expect(text).toContain(
        'coldstart_policy_refused{code="CS_GDS_UNAVAILABLE",field="gds.mode",value="on"} 1',
      );
      expect(text).toContain('coldstart_gds_info{verdict="compat",mode="on",load_format="safetensors"} 1');
      child.kill("SIGTERM");
      expect((await exited).code).toBe(0);
    } finally {
      child.kill("SIGKILL");
      await exited;
    }
  });
});

/** `coldstart wait --source … --env-file` for a freshly seeded model; the env file it wrote. */
async function handshake(socket: string, id: string): Promise<string> {
  const envFile = join(fx.work, `env-${id.replaceAll("/", "_")}`);
  const out = await finish(
    coldstart(["wait", id, "--socket", socket, "--source", await seed(), "--env-file", envFile], fx.s3),
  );
  expect(out.code, out.stderr).toBe(0);
  return readFile(envFile, "utf8");
}
