/**
 * The CSI driver on the wire: the Identity and Node services on a unix socket for the kubelet and,
 * when a registration directory is configured, the kubelet's plugin registration service beside
 * them (the daemon registers itself; no node-driver-registrar sidecar: docs/deploy.md says why).
 */
import { chmod, lstat, mkdir, rm } from "node:fs/promises";
import { connect } from "node:net";
import { dirname, join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import type { Logger } from "pino";
import { ColdstartError } from "../errors.js";
import { grpcError } from "./grpc-status.js";
import type { CsiNode, PublishRequest } from "./node-service.js";
import { csiServices } from "./protos.js";

/** The driver name pods and the CSIDriver object use. */
export const CSI_DRIVER_NAME = "models.coldstart.io";

export interface CsiServerOptions {
  socketPath: string;
  /** The kubelet's plugins_registry directory; absent: the daemon does not register itself. */
  registrationDir?: string | undefined;
  version: string;
  /** Probe's answer: false until the daemon has recovered its volumes and started its models. */
  ready: () => boolean;
  logger: Logger;
}

export interface CsiServer {
  close(): Promise<void>;
}

type Handler<Req, Res> = (call: grpc.ServerUnaryCall<Req, Res>, cb: grpc.sendUnaryData<Res>) => void;

/** An async handler as a gRPC one: errors answered through the one status mapping. */
function unary<Req, Res>(
  fn: (req: Req, call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res> | Res,
): Handler<Req, Res> {
  return (call, cb) => {
    Promise.resolve()
      .then(() => fn(call.request, call))
      .then(
        (res) => cb(null, res),
        (err) => cb(grpcError(err)),
      );
  };
}

/** The call's deadline (epoch ms), and a signal that aborts when the caller cancels or gives up. */
function callContext(call: grpc.ServerUnaryCall<unknown, unknown>): {
  signal: AbortSignal;
  deadline: number;
} {
  const ac = new AbortController();
  call.on("cancelled", () =>
    ac.abort(new ColdstartError("CS_ABORTED", "the caller cancelled the call (or its deadline passed)")),
  );
  const d = call.getDeadline();
  const deadline = d instanceof Date ? d.getTime() : Number(d);
  return { signal: ac.signal, deadline: Number.isFinite(deadline) ? deadline : Number.POSITIVE_INFINITY };
}

export async function startCsiServer(node: CsiNode, o: CsiServerOptions): Promise<CsiServer> {
  const services = csiServices();
  const server = new grpc.Server();
  server.addService(services.Identity, {
    GetPluginInfo: unary(() => ({ name: CSI_DRIVER_NAME, vendorVersion: o.version, manifest: {} })),
    GetPluginCapabilities: unary(() => ({ capabilities: [] })),
    Probe: unary(() => ({ ready: { value: o.ready() } })),
  });
  server.addService(services.Node, {
    NodeGetCapabilities: unary(() => ({ capabilities: [{ rpc: { type: "GET_VOLUME_STATS" } }] })),
    NodeGetInfo: unary(() => ({ nodeId: node.nodeId, maxVolumesPerNode: 0 })),
    NodePublishVolume: unary(async (req: PublishRequest, call) => {
      const { signal, deadline } = callContext(call);
      await node.publish(req, signal, deadline);
      return {};
    }),
    NodeUnpublishVolume: unary(async (req: { volumeId: string; targetPath: string }) => {
      await node.unpublish(req);
      return {};
    }),
    NodeGetVolumeStats: unary(async (req: { volumeId: string; volumePath: string }) => {
      const s = await node.stats(req);
      return {
        usage: [
          { unit: "BYTES", ...s.bytes },
          { unit: "INODES", ...s.inodes },
        ],
      };
    }),
  });
  const servers = [server];
  /** Each socket this daemon made, by its inode: closing removes only those, never a successor's. */
  const sockets: { path: string; ino: number }[] = [];
  try {
    sockets.push(await bindUnix(server, o.socketPath));
    if (o.registrationDir) {
      const reg = new grpc.Server();
      reg.addService(services.Registration, {
        GetInfo: unary(() => ({
          type: "CSIPlugin",
          name: CSI_DRIVER_NAME,
          // The kubelet dials this path on the host: the DaemonSet mounts it at the same path.
          endpoint: o.socketPath,
          supportedVersions: ["1.0.0"],
        })),
        NotifyRegistrationStatus: unary((s: { pluginRegistered: boolean; error: string }) => {
          if (s.pluginRegistered) o.logger.info({ driver: CSI_DRIVER_NAME }, "registered with the kubelet");
          else
            o.logger.error({ driver: CSI_DRIVER_NAME, error: s.error }, "the kubelet refused the CSI driver");
          return {};
        }),
      });
      const regSocket = join(o.registrationDir, `${CSI_DRIVER_NAME}-reg.sock`);
      servers.push(reg);
      sockets.push(await bindUnix(reg, regSocket));
    }
  } catch (err) {
    for (const s of servers) s.forceShutdown();
    throw err;
  }
  o.logger.info({ socket: o.socketPath, registration: o.registrationDir ?? null }, "CSI driver listening");
  return {
    async close() {
      // The registration socket goes first: the kubelet stops sending new calls to this daemon.
      for (const s of [...servers].reverse()) {
        await new Promise<void>((resolve) => {
          const t = setTimeout(() => {
            s.forceShutdown();
            resolve();
          }, 5_000);
          s.tryShutdown(() => {
            clearTimeout(t);
            resolve();
          });
        });
      }
      for (const { path, ino } of sockets) {
        if ((await lstat(path).catch(() => undefined))?.ino === ino) await rm(path, { force: true });
      }
    },
  };
}

/**
 * Binds to a unix socket (mode 0600: the kubelet connects as root), replacing a stale socket file a
 * killed predecessor left, never a live one (another daemon answering there) nor anything else.
 */
async function bindUnix(server: grpc.Server, path: string): Promise<{ path: string; ino: number }> {
  await mkdir(dirname(path), { recursive: true, mode: 0o750 });
  const st = await lstat(path).catch(() => undefined);
  if (st) {
    if (!st.isSocket()) {
      throw new ColdstartError(
        "CS_CONFIG_INVALID",
        `${path} exists and is not a socket; refusing to replace it`,
        {
          details: { field: "csi.socketPath", value: path },
        },
      );
    }
    if (await answers(path)) {
      throw new ColdstartError(
        "CS_CONFIG_INVALID",
        `another process is serving ${path}; refusing to replace it`,
        {
          details: { field: "csi.socketPath", value: path },
        },
      );
    }
    await rm(path);
  }
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix://${path}`, grpc.ServerCredentials.createInsecure(), (err) =>
      err ? reject(err) : resolve(),
    ),
  );
  await chmod(path, 0o600);
  return { path, ino: (await lstat(path)).ino };
}

/** Whether something accepts connections on the unix socket at `path` (within a second). */
function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = connect(path);
    const done = (live: boolean) => {
      c.destroy();
      resolve(live);
    };
    c.setTimeout(1_000, () => done(false));
    c.once("connect", () => done(true));
    c.once("error", () => done(false));
  });
}
