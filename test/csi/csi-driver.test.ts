/**
 * The CSI driver end to end: a real daemon (child process) serving the CSI node service on a unix
 * socket, a real gRPC client playing the kubelet (test/support/kubelet.ts), real bind mounts into
 * temporary target directories (the tests run as root, as CI does), RGW behind the fault proxy.
 */

import { execFile } from "node:child_process";
import { access, mkdir, readdir, readFile, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { status } from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import { callDaemon } from "../../src/api/client.js";
import { isMounted, Kubelet, type Pod, unmountUnder } from "../support/kubelet.js";
import { builtAddon, fakeLibraries } from "../support/native-doubles.js";
import { type DaemonProcess, killDaemons, NO_GPU_FLAGS, startDaemonProcess } from "../support/processes.js";
import { freshBucket, putFiles } from "../support/s3.js";
import { useS3Fixture } from "../support/s3-fixture.js";
import { digests, expectedDigests } from "../support/stage.js";
import { type SyntheticFile, syntheticModel } from "../support/synthetic-model.js";
import { gate, waitFor } from "../support/wait.js";

const fx = useS3Fixture("cs-csi-");
const TOKEN = "csi-test-token";
const daemons: DaemonProcess[] = [];
const kubelets: Kubelet[] = [];

afterEach(async () => {
  for (const k of kubelets.splice(0)) k.close();
  await killDaemons(daemons);
  // Before the fixture removes the work directory: nothing may stay mounted below it.
  await unmountUnder(fx.work);
});

interface Node {
  root: string;
  csiSocket: string;
  pods: string;
  tokens: string;
}

async function node(): Promise<Node> {
  const tokens = join(fx.work, "tokens");
  await writeFile(tokens, `${TOKEN}\n`);
  const pods = join(fx.work, "kubelet", "pods");
  await mkdir(pods, { recursive: true });
  return {
    root: join(fx.work, "root"),
    csiSocket: join(fx.work, "kubelet", "plugins", "models.coldstart.io", "csi.sock"),
    pods,
    tokens,
  };
}

async function daemon(
  n: Node,
  extra: string[] = [],
  env: Record<string, string> = {},
): Promise<{ d: DaemonProcess; kubelet: Kubelet }> {
  const d = await startDaemonProcess(
    [
      "--root",
      n.root,
      "--socket",
      join(fx.work, "run", "coldstart.sock"),
      "--token-file",
      n.tokens,
      "--allow-source",
      "s3://cs-csi-*/**",
      "--csi-socket",
      n.csiSocket,
      "--csi-kubelet-dir",
      join(fx.work, "kubelet"),
      "--csi-allow",
      "ml-*=s3://cs-csi-*/**",
      "--csi-allow",
      "ml-*=compile-cache",
      "--endpoint",
      fx.proxy.url,
      "--path-style",
      "--part-size",
      "1MiB",
      "--concurrency",
      "4",
      ...extra,
    ],
    fx.s3,
    env,
  );
  daemons.push(d);
  const kubelet = new Kubelet(n.csiSocket);
  kubelets.push(kubelet);
  return { d, kubelet };
}

async function model(shards = 2): Promise<{ bucket: string; files: SyntheticFile[]; source: string }> {
  const bucket = await freshBucket(fx.client, "cs-csi");
  const files = syntheticModel({ shards, shardBytes: 2 * 1024 * 1024 });
  await putFiles(fx.client, bucket, "m/", files);
  return { bucket, files, source: `s3://${bucket}/m/` };
}

let pods = 0;
function pod(namespace = "ml-serving"): Pod {
  pods++;
  return { namespace, name: `vllm-${pods}`, uid: `0000-${process.pid}-${pods}` };
}

function api(d: DaemonProcess, method: string, path: string, body?: unknown) {
  return callDaemon({ url: d.api, token: TOKEN }, method, path, body);
}

/** Holds every ranged GET (the model's bytes) until the gate opens: staging that waits on the test. */
function holdRangedGets(): ReturnType<typeof gate> {
  const g = gate();
  fx.proxy.addRule({
    match: { method: "GET", hasRange: true },
    action: { kind: "hook", fn: () => g.opened },
  });
  return g;
}

/** Resolves once the first of the model's bytes were asked for: the publish is in, holding. */
function firstRangedGet(): Promise<unknown> {
  return waitFor(() => fx.proxy.requests.some((r) => r.method === "GET" && r.headers.range !== undefined));
}

async function expectReadOnly(path: string): Promise<void> {
  await expect(writeFile(path, "x")).rejects.toMatchObject({ code: "EROFS" });
}

describe("the CSI driver", () => {
  it("answers the identity and node-info calls the kubelet makes at registration", async () => {
    const n = await node();
    const { kubelet } = await daemon(n);
    const info = await kubelet.identity("GetPluginInfo");
    expect(info.body).toMatchObject({ name: "models.coldstart.io" });
    expect(await kubelet.identity("Probe")).toMatchObject({ ok: true, body: { ready: { value: true } } });
    expect((await kubelet.node("NodeGetInfo")).body).toMatchObject({ nodeId: expect.any(String) });
    const caps = (await kubelet.node("NodeGetCapabilities")).body as { capabilities: unknown[] };
    expect(caps.capabilities).toEqual([expect.objectContaining({ rpc: { type: "GET_VOLUME_STATS" } })]);
  });

  it("publishes the verified model read-only with the loader advice beside it, and nothing else", async () => {
    const n = await node();
    const { d, kubelet } = await daemon(n);
    const a = await model();
    const b = await model(1);
    // Another model on the node: the pod must not see it.
    expect((await api(d, "PUT", "/v1/models/other", { source: b.source })).status).toBe(202);
    const p = pod();
    const target = await Kubelet.targetFor(n.pods, p);
    const res = await kubelet.publish("csi-a1", target, { model: "llama", source: a.source }, p);
    expect(res).toMatchObject({ ok: true });

    expect(await isMounted(target)).toBe(true);
    expect((await readdir(target)).sort()).toEqual(["coldstart.env", "coldstart.json", "model"]);
    expect(await digests(join(target, "model"), a.files)).toEqual(expectedDigests(a.files));
    const advice = JSON.parse(await readFile(join(target, "coldstart.json"), "utf8"));
    expect(advice).toMatchObject({
      modelId: "llama",
      source: a.source,
      modelDir: "model",
      loadFormat: "safetensors",
    });
    expect(await readFile(join(target, "coldstart.env"), "utf8")).toContain(
      "COLDSTART_LOAD_FORMAT='safetensors'",
    );
    // Read-only, the model and the volume's own files alike.
    await expectReadOnly(join(target, "model", "config.json"));
    await expectReadOnly(join(target, "model", "planted"));
    await expectReadOnly(join(target, "planted"));
    // Nothing of the other model, nor of the staging root, is reachable.
    const tree = await readdir(target, { recursive: true });
    expect(tree.some((f) => f.includes("other"))).toBe(false);
    expect(((await api(d, "GET", "/v1/models/llama")).body as { mounts: number }).mounts).toBe(1);
    // Read into the page cache before the publish returned: every byte of the model, once.
    const metrics = await (await fetch(`${d.metrics}/metrics`)).text();
    const size = a.files.reduce((n, f) => n + f.body.length, 0);
    expect(metrics).toContain(`coldstart_page_cache_warm_bytes_total ${size}`);
    expect(metrics).toContain('coldstart_page_cache_warms_total{outcome="warmed"} 1');
    // The staged model itself was not written into.
    await expect(access(join(n.root, "models", "llama", "coldstart.json"))).rejects.toThrow();
  });

  it("keeps a mounted model from eviction and DELETE; unpublish unmounts and releases it", async () => {
    const n = await node();
    const a = await model();
    const b = await model(1);
    const sizeOf = (m: { files: SyntheticFile[] }) => m.files.reduce((s, f) => s + f.body.length, 0);
    // A budget one byte short of both models, and no grace: staging the second needs the first gone.
    const budget = sizeOf(a) + sizeOf(b) - 1;
    const { d, kubelet } = await daemon(n, ["--max-bytes", String(budget), "--in-use-grace", "0"]);
    const p = pod();
    const target = await Kubelet.targetFor(n.pods, p);
    expect(await kubelet.publish("csi-ev", target, { model: "held", source: a.source }, p)).toMatchObject({
      ok: true,
    });
    const del = await api(d, "DELETE", "/v1/models/held");
    expect(del.status).toBe(409);
    expect(del.body).toMatchObject({ error: { code: "CS_MODEL_IN_USE" } });
    // Eviction pressure: the second model waits for room the mounted one holds.
    await api(d, "PUT", "/v1/models/second", { source: b.source });
    await waitFor(
      async () => ((await api(d, "GET", "/v1/models/second")).body as { waiting?: unknown }).waiting,
    );
    expect(((await api(d, "GET", "/v1/models/held")).body as { state: string }).state).toBe("ready");
    expect(await digests(join(target, "model"), a.files)).toEqual(expectedDigests(a.files));

    expect(await kubelet.unpublish("csi-ev", target)).toMatchObject({ ok: true });
    expect(await isMounted(target)).toBe(false);
    await expect(access(target)).rejects.toMatchObject({ code: "ENOENT" });
    expect(await readdir(join(n.root, "csi"))).toEqual([]);
    // Released: eviction takes it for the model that waited.
    await waitFor(
      async () => ((await api(d, "GET", "/v1/models/second")).body as { state: string }).state === "ready",
    );
    expect((await api(d, "GET", "/v1/models/held")).status).toBe(404);
  });

  it("is idempotent: publish and unpublish twice, and refuses another volume at a used target", async () => {
    const n = await node();
    const { kubelet } = await daemon(n);
    const a = await model(1);
    const p = pod();
    const target = await Kubelet.targetFor(n.pods, p);
    const attrs = { model: "twice", source: a.source };
    expect(await kubelet.publish("csi-tw", target, attrs, p)).toMatchObject({ ok: true });
    expect(await kubelet.publish("csi-tw", target, attrs, p)).toMatchObject({ ok: true });
    const other = await kubelet.publish("csi-other", target, attrs, p);
    expect(other).toMatchObject({ ok: false, code: status.ALREADY_EXISTS });
    expect(other.details).toContain("CS_CSI_TARGET_BUSY");
    expect(await kubelet.unpublish("csi-tw", target)).toMatchObject({ ok: true });
    expect(await kubelet.unpublish("csi-tw", target)).toMatchObject({ ok: true });
    expect(await isMounted(target)).toBe(false);
  });

  it("stages a model once for ten pods publishing it at the same moment", async () => {
    const n = await node();
    const { kubelet } = await daemon(n);
    const a = await model();
    const g = holdRangedGets();
    const volumes = await Promise.all(
      Array.from({ length: 10 }, async (_, i) => {
        const p = pod();
        return { id: `csi-ten-${i}`, p, target: await Kubelet.targetFor(n.pods, p) };
      }),
    );
    const calls = volumes.map((v) =>
      kubelet.publish(v.id, v.target, { model: "shared", source: a.source }, v.p),
    );
    // Every call is in (held) before a byte comes: they all join one staging.
    await firstRangedGet();
    g.open();
    const results = await Promise.all(calls);
    expect(results.every((r) => r.ok)).toBe(true);
    // Every byte of every file crossed the wire once (listings aside).
    const served = fx.proxy.bytesServed().byPath;
    for (const f of a.files) expect(served.get(`/${a.bucket}/m/${f.relPath}`)).toBe(f.body.length);
    for (const v of volumes)
      expect(await digests(join(v.target, "model"), a.files)).toEqual(expectedDigests(a.files));
  });

  it("answers a failed staging with its cause, and refuses bad attributes naming the field", async () => {
    const n = await node();
    const { kubelet } = await daemon(n);
    const bucket = await freshBucket(fx.client, "cs-csi");
    const p = pod();
    const target = await Kubelet.targetFor(n.pods, p);
    const failed = await kubelet.publish(
      "csi-f",
      target,
      { model: "empty", source: `s3://${bucket}/none/` },
      p,
    );
    expect(failed).toMatchObject({ ok: false, code: status.FAILED_PRECONDITION });
    expect(failed.details).toMatch(/^CS_MODEL_FAILED: model empty failed to stage: CS_NO_OBJECTS: /);
    expect(await isMounted(target)).toBe(false);

    const typo = await kubelet.publish(
      "csi-t",
      target,
      { modle: "x", model: "x", source: `s3://${bucket}/m/` },
      p,
    );
    expect(typo).toMatchObject({ ok: false, code: status.INVALID_ARGUMENT });
    expect(typo.details).toContain("volumeAttributes.modle");
    const noCap = await kubelet.publishRaw({ volumeId: "csi-r", targetPath: target, volumeContext: {} });
    expect(noCap).toMatchObject({ ok: false, code: status.INVALID_ARGUMENT });
    expect(noCap.details).toContain("volume_capability");
  });

  it("refuses a namespace no rule allows with PermissionDenied, and mounts and stages nothing", async () => {
    const n = await node();
    const { d, kubelet } = await daemon(n);
    const a = await model(1);
    const p = pod("team-b");
    const target = await Kubelet.targetFor(n.pods, p);
    const res = await kubelet.publish("csi-d", target, { model: "denied", source: a.source }, p);
    expect(res).toMatchObject({ ok: false, code: status.PERMISSION_DENIED });
    expect(res.details).toBe(
      `CS_CSI_NAMESPACE_DENIED: namespace team-b may not mount ${a.source}: no csi.allow rule matches both`,
    );
    expect(await isMounted(target)).toBe(false);
    expect((await api(d, "GET", "/v1/models/denied")).status).toBe(404);
    expect(fx.proxy.requests).toEqual([]);
  });

  it("holds a publish while its model stages, so the call in flight at readiness mounts it", async () => {
    const n = await node();
    const { kubelet } = await daemon(n);
    const a = await model();
    const g = holdRangedGets();
    const p = pod();
    const target = await Kubelet.targetFor(n.pods, p);
    // One kubelet call, started before any byte of the model has come.
    let answered = false;
    const call = kubelet
      .publish("csi-hold", target, { model: "held-call", source: a.source }, p)
      .finally(() => {
        answered = true;
      });
    await firstRangedGet();
    // Staging is held by the gate: the call is still waiting, not refused (a refusal would put the
    // pod behind the kubelet's backoff, bench:csi-gate measures what that costs).
    expect(answered).toBe(false);
    g.open();
    // The call that was in flight when the model became ready is the one that mounts it.
    expect(await call).toMatchObject({ ok: true });
    expect(await isMounted(target)).toBe(true);
  });

  it("answers a publish still staging at its bound with UNAVAILABLE and the progress", async () => {
    const n = await node();
    const { kubelet } = await daemon(n, ["--csi-publish-wait", "0"]);
    const a = await model();
    const g = holdRangedGets();
    const p = pod();
    const target = await Kubelet.targetFor(n.pods, p);
    const res = await kubelet.publish("csi-u", target, { model: "slow", source: a.source }, p);
    g.open();
    expect(res).toMatchObject({ ok: false, code: status.UNAVAILABLE });
    expect(res.details).toMatch(
      /^CS_NOT_READY: model slow is (pending|staging): .* GiB of .* GiB \(\d+%\).*; the kubelet retries$/,
    );
    expect(await isMounted(target)).toBe(false);
  });

  it("mounts the keyed compile cache read-write for the pod's identity, held while mounted", async () => {
    const n = await node();
    builtAddon();
    // Two H100s through the NVML test double (a C library standing in for libnvidia-ml.so.1).
    const gpu = { COLDSTART_NVML_LIBRARY: fakeLibraries().nvml, FAKE_NVML: "h100x2" };
    const { d, kubelet } = await daemon(n, ["--gds", "off", "--nvidia-smi", "/nonexistent"], gpu);
    const identity = {
      kind: "compile-cache",
      vllm: "0.11.0",
      torch: "2.8.0",
      torchCuda: "12.8",
      triton: "3.4.0",
    };
    const [p1, p2] = [pod(), pod()];
    const [t1, t2] = [
      await Kubelet.targetFor(n.pods, p1, "cache"),
      await Kubelet.targetFor(n.pods, p2, "cache"),
    ];
    expect(await kubelet.publish("csi-c1", t1, identity, p1)).toMatchObject({ ok: true });
    const caches = (await api(d, "GET", "/v1/compile-caches")).body as {
      caches: { key: string; path: string }[];
    };
    expect(caches.caches).toHaveLength(1);
    const keyed = caches.caches[0] as { key: string; path: string };
    // Exactly the keyed directory, writable: what one pod compiles, the next of its kind finds.
    await writeFile(join(t1, "compiled.bin"), "artifact");
    expect(await readFile(join(keyed.path, "compiled.bin"), "utf8")).toBe("artifact");
    expect(await kubelet.publish("csi-c2", t2, identity, p2)).toMatchObject({ ok: true });
    expect(await readFile(join(t2, "compiled.bin"), "utf8")).toBe("artifact");
    const busy = await api(d, "DELETE", `/v1/compile-caches/${keyed.key}`);
    expect(busy.body).toMatchObject({ error: { code: "CS_CACHE_BUSY" } });
    // Another identity is another key: nothing of this one is visible there.
    const p3 = pod();
    const t3 = await Kubelet.targetFor(n.pods, p3, "cache");
    expect(await kubelet.publish("csi-c3", t3, { ...identity, vllm: "0.10.2" }, p3)).toMatchObject({
      ok: true,
    });
    expect(await readdir(t3)).toEqual([]);
    for (const [id, t] of [
      ["csi-c1", t1],
      ["csi-c2", t2],
      ["csi-c3", t3],
    ] as const) {
      expect(await kubelet.unpublish(id, t)).toMatchObject({ ok: true });
      expect(await isMounted(t)).toBe(false);
    }
    // The keyed directory stays on the node for the next pod (and the publisher).
    expect(await readFile(join(keyed.path, "compiled.bin"), "utf8")).toBe("artifact");

    // Another namespace is another tenant: it never sees, nor writes, this namespace's compiled code.
    const other = pod("ml-other");
    const t4 = await Kubelet.targetFor(n.pods, other, "cache");
    expect(await kubelet.publish("csi-c4", t4, identity, other)).toMatchObject({ ok: true });
    expect(await readdir(t4)).toEqual([]);
    // Mounted read-only when the pod asks (csi.readOnly): it reads what others compiled.
    const ro = pod();
    const t5 = await Kubelet.targetFor(n.pods, ro, "cache");
    expect(await kubelet.publish("csi-c5", t5, identity, ro, { readonly: true })).toMatchObject({ ok: true });
    expect(await readFile(join(t5, "compiled.bin"), "utf8")).toBe("artifact");
    await expectReadOnly(join(t5, "planted"));
    const tenant = await kubelet.publish("csi-c6", t5, { ...identity, tenant: "ml-serving" }, ro);
    expect(tenant).toMatchObject({ ok: false, code: status.INVALID_ARGUMENT });
    expect(tenant.details).toContain("volumeAttributes.tenant");
  });

  it("gives a pod a scratch compile-cache directory on a node without a key, removed with the volume", async () => {
    const n = await node();
    const { kubelet } = await daemon(n, NO_GPU_FLAGS);
    const p = pod();
    const target = await Kubelet.targetFor(n.pods, p, "cache");
    expect(
      await kubelet.publish("csi-s", target, { kind: "compile-cache", vllm: "0.11.0" }, p),
    ).toMatchObject({
      ok: true,
    });
    await writeFile(join(target, "compiled.bin"), "artifact");
    expect(await kubelet.unpublish("csi-s", target)).toMatchObject({ ok: true });
    expect(await readdir(join(n.root, "csi"))).toEqual([]);
    const typo = await kubelet.publish("csi-s2", target, { kind: "compile-cache", vlm: "0.11.0" }, p);
    expect(typo).toMatchObject({ ok: false, code: status.INVALID_ARGUMENT });
    expect(typo.details).toContain("volumeAttributes.vlm is not an attribute of a compile-cache volume");
  });

  it("mounts only at a target the kubelet could have sent, and unmounts only what it mounted", async () => {
    const n = await node();
    const { d, kubelet } = await daemon(n);
    const a = await model(1);
    const p = pod();
    const attrs = { model: "guarded", source: a.source };
    // Outside the kubelet's pods directory, relative, or inside the staging root: refused, naming it.
    for (const target of [
      join(fx.work, "elsewhere", "mount"),
      "kubelet/pods/x/mount",
      join(n.root, "models", "x"),
    ]) {
      const r = await kubelet.publish("csi-g", target, attrs, p);
      expect(r, target).toMatchObject({ ok: false, code: status.INVALID_ARGUMENT });
      expect(r.details).toContain("target_path");
    }
    // A symlink on the way would send the mount elsewhere: refused, and nothing lands there.
    const decoy = join(fx.work, "decoy");
    await mkdir(decoy);
    await mkdir(join(n.pods, "linked"), { recursive: true });
    await symlink(decoy, join(n.pods, "linked", "volumes"));
    const linked = join(n.pods, "linked", "volumes", "mount");
    const r = await kubelet.publish("csi-g", linked, attrs, p);
    expect(r).toMatchObject({ ok: false, code: status.INVALID_ARGUMENT });
    expect(r.details).toContain("resolves to");
    expect(await readdir(decoy)).toEqual([]);
    expect((await api(d, "GET", "/v1/models/guarded")).status).toBe(404);
    // A mount below the pods directory that the driver did not make: an unpublish leaves it alone.
    const foreign = await Kubelet.targetFor(n.pods, pod(), "foreign");
    await mkdir(foreign);
    await promisify(execFile)("mount", ["-t", "tmpfs", "tmpfs", foreign]);
    expect(await kubelet.unpublish("csi-foreign", foreign)).toMatchObject({ ok: true });
    expect(await isMounted(foreign)).toBe(true);
  });

  it("unpublishes whatever a publish left half-made, and ends a publish still waiting", async () => {
    const n = await node();
    const { d, kubelet } = await daemon(n);
    const a = await model(1);
    const p = pod();
    const target = await Kubelet.targetFor(n.pods, p);
    expect(await kubelet.publish("csi-h", target, { model: "half", source: a.source }, p)).toMatchObject({
      ok: true,
    });
    // A write that crashed mid-way leaves its temp file in the volume's directory.
    const [volumeDir] = await readdir(join(n.root, "csi"));
    await writeFile(join(n.root, "csi", volumeDir as string, "coldstart.json.1a2b3c4d.tmp"), "{");
    expect(await kubelet.unpublish("csi-h", target)).toMatchObject({ ok: true });
    expect(await readdir(join(n.root, "csi"))).toEqual([]);
    expect(((await api(d, "GET", "/v1/models/half")).body as { mounts: number }).mounts).toBe(0);

    // The pod is deleted while its publish waits for staging: the unpublish ends the wait.
    const b = await model();
    const g = holdRangedGets();
    const p2 = pod();
    const t2 = await Kubelet.targetFor(n.pods, p2);
    const waiting = kubelet.publish("csi-w", t2, { model: "waiting", source: b.source }, p2);
    await firstRangedGet();
    expect(await kubelet.unpublish("csi-w", t2)).toMatchObject({ ok: true });
    const ended = await waiting;
    g.open();
    expect(ended).toMatchObject({ ok: false, code: status.CANCELLED });
    expect(ended.details).toContain("unpublished");
    expect(await isMounted(t2)).toBe(false);
  });

  it("keeps the mounts and their holds across a SIGKILL and restart of the daemon", async () => {
    const n = await node();
    const first = await daemon(n, ["--in-use-grace", "0"]);
    const a = await model();
    const p = pod();
    const target = await Kubelet.targetFor(n.pods, p);
    expect(
      await first.kubelet.publish("csi-k", target, { model: "survivor", source: a.source }, p),
    ).toMatchObject({
      ok: true,
    });
    first.d.child.kill("SIGKILL");
    await first.d.exited;
    // The pod reads on while no daemon runs.
    expect(await digests(join(target, "model"), a.files)).toEqual(expectedDigests(a.files));

    const second = await daemon(n, ["--in-use-grace", "0"]);
    const status1 = (await api(second.d, "GET", "/v1/models/survivor")).body as {
      state: string;
      mounts: number;
    };
    expect(status1).toMatchObject({ state: "ready", mounts: 1 });
    expect((await api(second.d, "DELETE", "/v1/models/survivor")).status).toBe(409);
    const stats = await second.kubelet.stats("csi-k", target);
    expect(stats).toMatchObject({ ok: true });
    expect((await second.kubelet.stats("csi-nope", target)).code).toBe(status.NOT_FOUND);

    expect(await second.kubelet.unpublish("csi-k", target)).toMatchObject({ ok: true });
    expect(await isMounted(target)).toBe(false);
    expect(((await api(second.d, "GET", "/v1/models/survivor")).body as { mounts: number }).mounts).toBe(0);
    expect((await api(second.d, "DELETE", "/v1/models/survivor")).status).toBe(204);
  });
});
