/**
 * The CSI node service against csi-sanity (kubernetes-csi/csi-test, the conformance suite CSI
 * drivers are held to; built pinned by scripts/go-tools.mjs): a real daemon serving its CSI socket,
 * a real model in RGW, real bind mounts under the test's work directory (root, as CI runs).
 *
 * csi-sanity has no ephemeral mode: its node specs get volumes only through a controller's
 * CreateVolume. The daemon has no controller (inline volumes need none), so the test runs a test
 * double of one on a second socket whose CreateVolume answers with the volume_context the kubelet
 * sends for an inline volume (the pod's volumeAttributes and the pod info of podInfoOnMount).
 *
 * Tier: integration
 */
import { execFile } from "node:child_process";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import { callDaemon } from "../../src/api/client.js";
import { mountTable } from "../../src/csi/mounts.js";
import { csiServices } from "../../src/csi/protos.js";
import { requireGoTool } from "../support/go-tools.js";
import { unmountUnder } from "../support/kubelet.js";
import { type DaemonProcess, killDaemons, startDaemonProcess } from "../support/processes.js";
import { freshBucket, putFiles } from "../support/s3.js";
import { useS3Fixture } from "../support/s3-fixture.js";
import { syntheticModel } from "../support/synthetic-model.js";
import { waitFor } from "../support/wait.js";

const fx = useS3Fixture("cs-sanity-");
const TOKEN = "csi-sanity-token";
const NAMESPACE = "ml-sanity";
const daemons: DaemonProcess[] = [];
const servers: grpc.Server[] = [];

afterEach(async () => {
  for (const s of servers.splice(0)) s.forceShutdown();
  await killDaemons(daemons);
  // Before the fixture removes the work directory: nothing may stay mounted below it.
  await unmountUnder(fx.work);
});

type Unary = (call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => void;
const answer =
  (fn: (req: Record<string, unknown>) => unknown): Unary =>
  (call, cb) =>
    cb(null, fn(call.request as Record<string, unknown>));

/**
 * TEST DOUBLE: a CSI controller for csi-sanity only (the driver ships none). Identity (csi-sanity's
 * identity specs query the controller's connection too) and Controller with CREATE_DELETE_VOLUME:
 * CreateVolume hands out a volume whose volume_context is what the kubelet would send the node
 * plugin for an inline volume of `model` from `source` in a pod of an allowed namespace.
 */
async function startControllerDouble(socket: string, model: string, source: string): Promise<grpc.Server> {
  const services = csiServices();
  const server = new grpc.Server();
  let volumes = 0;
  server.addService(services.Identity, {
    GetPluginInfo: answer(() => ({ name: "controller-double.coldstart.test", vendorVersion: "0.0.0" })),
    GetPluginCapabilities: answer(() => ({ capabilities: [{ service: { type: "CONTROLLER_SERVICE" } }] })),
    Probe: answer(() => ({ ready: { value: true } })),
  });
  server.addService(services.Controller, {
    ControllerGetCapabilities: answer(() => ({ capabilities: [{ rpc: { type: "CREATE_DELETE_VOLUME" } }] })),
    CreateVolume: answer((req) => {
      volumes++;
      return {
        volume: {
          volumeId: `csi-sanity-${volumes}-${String(req.name)}`,
          capacityBytes: 0,
          volumeContext: {
            model,
            source,
            "csi.storage.k8s.io/ephemeral": "true",
            "csi.storage.k8s.io/pod.namespace": NAMESPACE,
            "csi.storage.k8s.io/pod.name": `sanity-pod-${volumes}`,
            "csi.storage.k8s.io/pod.uid": `0000-sanity-${process.pid}-${volumes}`,
            "csi.storage.k8s.io/serviceAccount.name": "default",
          },
        },
      };
    }),
    DeleteVolume: answer(() => ({})),
  });
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix://${socket}`, grpc.ServerCredentials.createInsecure(), (err) =>
      err ? reject(err) : resolve(),
    ),
  );
  servers.push(server);
  return server;
}

/**
 * Specs skipped, each with its reason:
 *  - `[Controller Server]`: the controller is the test double above, not code under test.
 *  - `[GroupController`: the driver has no group controller service (volume group snapshots).
 * Specs that skip themselves: NodeStage/Unstage, NodeExpandVolume, volume and storage health (the
 * node does not advertise those capabilities), and Node Service "should work" / "should be
 * idempotent" (they run only when the node's own socket advertises CONTROLLER_SERVICE, which it
 * rightly does not; csi-driver.test.ts covers publish, stats and unpublish twice over).
 */
const SKIP = String.raw`\[Controller Server\]|\[GroupController`;

/** The node specs that must have run and passed: the ones that exercise the node service for real. */
const MUST_PASS = [
  /NodeGetCapabilities should return appropriate capabilities/,
  /NodeGetInfo should return appropriate values/,
  /NodePublishVolume should fail when no volume id is provided/,
  /NodePublishVolume should fail when no target path is provided/,
  /NodePublishVolume should fail when no volume capability is provided/,
  /NodeUnpublishVolume should fail when no volume id is provided/,
  /NodeUnpublishVolume should fail when no target path is provided/,
  /NodeUnpublishVolume should remove target path/,
  /NodeGetVolumeStats should fail when no volume id is provided/,
  /NodeGetVolumeStats should fail when no volume path is provided/,
  /NodeGetVolumeStats should fail when volume is not found/,
  /NodeGetVolumeStats should fail when volume does not exist on the specified path/,
  /GetPluginCapabilities should return appropriate capabilities/,
  /GetPluginInfo should return appropriate information/,
  /Probe should return appropriate information/,
];

interface Spec {
  name: string;
  status: string;
}

/** The testcases of a Ginkgo JUnit report (name and status attributes). */
function junitSpecs(xml: string): Spec[] {
  const decode = (s: string) =>
    s
      .replaceAll("&quot;", '"')
      .replaceAll("&apos;", "'")
      .replaceAll("&lt;", "<")
      .replaceAll("&gt;", ">")
      .replaceAll("&amp;", "&");
  return [...xml.matchAll(/<testcase\b([^>]*)>/g)].map((m) => {
    const attrs = m[1] ?? "";
    const attr = (k: string) => decode(new RegExp(`\\b${k}="([^"]*)"`).exec(attrs)?.[1] ?? "");
    return { name: attr("name"), status: attr("status") };
  });
}

describe("csi-sanity", () => {
  it("passes the node and identity specs against the daemon's CSI socket", async (ctx) => {
    const sanity = requireGoTool("csi-sanity", ctx.skip);
    const tokens = join(fx.work, "tokens");
    await writeFile(tokens, `${TOKEN}\n`);
    const csiSocket = join(fx.work, "plugins", "models.coldstart.io", "csi.sock");
    const d = await startDaemonProcess(
      [
        "--root",
        join(fx.work, "root"),
        "--socket",
        join(fx.work, "run", "coldstart.sock"),
        "--token-file",
        tokens,
        "--allow-source",
        "s3://cs-sanity-*/**",
        "--csi-socket",
        csiSocket,
        "--csi-kubelet-dir",
        join(fx.work, "kubelet"),
        "--csi-allow",
        "ml-*=s3://cs-sanity-*/**",
        "--endpoint",
        fx.proxy.url,
        "--path-style",
      ],
      fx.s3,
    );
    daemons.push(d);

    // The model is staged before the suite runs: sanity's publishes must mount, not wait.
    const bucket = await freshBucket(fx.client, "cs-sanity");
    await putFiles(fx.client, bucket, "m/", syntheticModel({ shards: 1, shardBytes: 256 * 1024 }));
    const source = `s3://${bucket}/m/`;
    const api = (method: string, path: string, body?: unknown) =>
      callDaemon({ url: d.api, token: TOKEN }, method, path, body);
    expect((await api("PUT", "/v1/models/sanity", { source })).status).toBe(202);
    await waitFor(
      async () => ((await api("GET", "/v1/models/sanity")).body as { state: string }).state === "ready",
    );

    const controllerSocket = join(fx.work, "controller-double.sock");
    await startControllerDouble(controllerSocket, "sanity", source);
    // csi-sanity makes mountdir and stagingdir itself (and fails if they exist); target = mountdir/target.
    const sanityDir = join(fx.work, "sanity");
    await mkdir(sanityDir);
    // Where the kubelet would mount: the driver mounts nowhere else.
    await mkdir(join(fx.work, "kubelet", "pods"), { recursive: true });
    const mountDir = join(fx.work, "kubelet", "pods", "sanity-pod");
    const junit = join(sanityDir, "junit.xml");
    const run = await new Promise<{ code: number | null; output: string }>((resolve) => {
      execFile(
        sanity,
        [
          `--csi.endpoint=${csiSocket}`,
          `--csi.controllerendpoint=${controllerSocket}`,
          `--csi.mountdir=${mountDir}`,
          `--csi.stagingdir=${join(sanityDir, "staging")}`,
          `--ginkgo.skip=${SKIP}`,
          `--ginkgo.junit-report=${junit}`,
          "--ginkgo.no-color",
          "--ginkgo.timeout=90s",
        ],
        { timeout: 100_000, maxBuffer: 16 * 1024 * 1024 },
        (err, stdout, stderr) => {
          const code = err ? (typeof err.code === "number" ? err.code : null) : 0;
          resolve({ code, output: `${stdout}${stderr}` });
        },
      );
    });
    const summary = /^.*\d+ Passed \| \d+ Failed \| \d+ Pending \| \d+ Skipped.*$/m.exec(run.output)?.[0];
    await ctx.annotate(`csi-sanity: ${summary ?? "no summary line"}`);
    expect(run.code, run.output).toBe(0);
    expect(summary).toMatch(/ 0 Failed /);

    const specs = junitSpecs(await readFile(junit, "utf8"));
    const failed = specs.filter(
      (s) => s.status !== "passed" && s.status !== "skipped" && s.status !== "pending",
    );
    expect(failed).toEqual([]);
    const passed = specs.filter((s) => s.status === "passed").map((s) => s.name);
    for (const want of MUST_PASS) {
      expect(
        passed.some((name) => want.test(name)),
        `${want} passed; passed: ${passed.join("; ")}`,
      ).toBe(true);
    }
    // Sanity unpublished everything it published: nothing stays mounted under the work directory
    // (its target, nor the daemon's per-volume model mounts under its root).
    const left = (await mountTable()).filter((e) => e.mountPoint.startsWith(`${fx.work}/`));
    expect(left.map((e) => e.mountPoint)).toEqual([]);
    expect(((await api("GET", "/v1/models/sanity")).body as { mounts: number }).mounts).toBe(0);
  }, 180_000);
});
