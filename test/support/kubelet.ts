/**
 * Plays the kubelet against a CSI driver: a real gRPC client on the driver's unix socket, sending
 * what the kubelet sends for a CSI ephemeral inline volume (pkg/volume/csi/csi_mounter.go: a
 * SINGLE_NODE_WRITER mount capability, the pod's volumeAttributes merged with the pod info of
 * podInfoOnMount), with the kubelet's deadline for the call. Also unmounts what a test left.
 */
import { execFile } from "node:child_process";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import * as grpc from "@grpc/grpc-js";
import { mountTable } from "../../src/csi/mounts.js";
import { csiServices } from "../../src/csi/protos.js";

/** The kubelet's deadline for NodePublishVolume (csiTimeout, pkg/volume/csi/csi_plugin.go). */
export const KUBELET_CALL_TIMEOUT_MS = 120_000;

/**
 * The kubelet's wait after each consecutive failure of an operation (exponential_backoff.go:
 * 500 ms doubling up to 2 min 2 s), before its 100 ms reconciler tick picks the retry up.
 */
export function kubeletBackoffMs(failures: number): number {
  return Math.min(500 * 2 ** Math.max(failures - 1, 0), 122_000);
}

export interface CallResult {
  ok: boolean;
  code: grpc.status;
  details: string;
}

export interface Pod {
  namespace: string;
  name: string;
  uid: string;
}

type Client = grpc.Client & Record<string, (...a: unknown[]) => void>;

export class Kubelet {
  readonly #node: Client;
  readonly #identity: Client;

  constructor(socket: string) {
    const { clients } = csiServices();
    const creds = grpc.credentials.createInsecure();
    this.#node = new clients.Node(`unix://${socket}`, creds) as unknown as Client;
    this.#identity = new clients.Identity(`unix://${socket}`, creds) as unknown as Client;
  }

  /** Where the kubelet asks an inline volume to be mounted; the parent made, as the kubelet does. */
  static async targetFor(podsDir: string, pod: Pod, volume = "model"): Promise<string> {
    const dir = join(podsDir, pod.uid, "volumes", "kubernetes.io~csi", volume);
    await mkdir(dir, { recursive: true });
    return join(dir, "mount");
  }

  publish(
    volumeId: string,
    targetPath: string,
    attributes: Record<string, string>,
    pod: Pod,
    o: { timeoutMs?: number; readonly?: boolean } = {},
  ): Promise<CallResult> {
    return this.#call(
      this.#node,
      "NodePublishVolume",
      {
        volumeId,
        targetPath,
        volumeCapability: {
          mount: { fsType: "", mountFlags: [] },
          accessMode: { mode: "SINGLE_NODE_WRITER" },
        },
        readonly: o.readonly ?? false,
        volumeContext: {
          ...attributes,
          "csi.storage.k8s.io/pod.name": pod.name,
          "csi.storage.k8s.io/pod.namespace": pod.namespace,
          "csi.storage.k8s.io/pod.uid": pod.uid,
          "csi.storage.k8s.io/serviceAccount.name": "default",
          "csi.storage.k8s.io/ephemeral": "true",
        },
      },
      o.timeoutMs ?? KUBELET_CALL_TIMEOUT_MS,
    );
  }

  /** A raw NodePublishVolume request (to send what the kubelet never would). */
  publishRaw(request: Record<string, unknown>): Promise<CallResult> {
    return this.#call(this.#node, "NodePublishVolume", request, 30_000);
  }

  unpublish(volumeId: string, targetPath: string): Promise<CallResult> {
    return this.#call(this.#node, "NodeUnpublishVolume", { volumeId, targetPath }, KUBELET_CALL_TIMEOUT_MS);
  }

  async stats(volumeId: string, volumePath: string): Promise<CallResult & { body?: unknown }> {
    return this.#call(this.#node, "NodeGetVolumeStats", { volumeId, volumePath }, 30_000);
  }

  async identity(method: string): Promise<CallResult & { body?: unknown }> {
    return this.#call(this.#identity, method, {}, 30_000);
  }

  async node(method: string): Promise<CallResult & { body?: unknown }> {
    return this.#call(this.#node, method, {}, 30_000);
  }

  close(): void {
    this.#node.close();
    this.#identity.close();
  }

  #call(
    client: Client,
    method: string,
    req: unknown,
    timeoutMs: number,
  ): Promise<CallResult & { body?: unknown }> {
    return new Promise((resolve) => {
      (client[method] as (...a: unknown[]) => void).call(
        client,
        req,
        { deadline: Date.now() + timeoutMs },
        (err: grpc.ServiceError | null, body: unknown) =>
          resolve(
            err
              ? { ok: false, code: err.code, details: err.details }
              : { ok: true, code: grpc.status.OK, details: "", body },
          ),
      );
    });
  }
}

/** Whether something is mounted exactly at `path`. */
export async function isMounted(path: string): Promise<boolean> {
  return (await mountTable()).some((e) => e.mountPoint === path);
}

/** Unmounts everything mounted below `dir`, deepest first (a test's leftovers). */
export async function unmountUnder(dir: string): Promise<void> {
  const points = (await mountTable())
    .map((e) => e.mountPoint)
    .filter((p) => p.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
  for (const p of points) await promisify(execFile)("umount", ["-l", p]).catch(() => {});
}
