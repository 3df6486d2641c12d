/**
 * The CSI v1 and kubelet plugin-registration services, loaded from the vendored .proto files
 * (src/csi/proto/README.md says which versions). The path resolves from src/csi (tests, tsx) and
 * from dist/csi (the build and the image, which ships src/csi/proto beside dist).
 */
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const PROTO_DIR = fileURLToPath(new URL("../../src/csi/proto/", import.meta.url));

/** Options for both files: field names in camelCase, enums as their names, absent messages null. */
const LOAD_OPTIONS: protoLoader.Options = { defaults: true, oneofs: true, longs: Number, enums: String };

export interface CsiServices {
  Identity: grpc.ServiceDefinition;
  Node: grpc.ServiceDefinition;
  /** Only the tests use it (csi-sanity needs a controller to hand it volumes). */
  Controller: grpc.ServiceDefinition;
  /** The kubelet's plugin registration service (package `pluginregistration`, no version). */
  Registration: grpc.ServiceDefinition;
  /** Client constructors, for tests that play the kubelet. */
  clients: {
    Identity: grpc.ServiceClientConstructor;
    Node: grpc.ServiceClientConstructor;
    Registration: grpc.ServiceClientConstructor;
  };
}

let loaded: CsiServices | undefined;

export function csiServices(): CsiServices {
  if (loaded) return loaded;
  const csi = grpc.loadPackageDefinition(
    protoLoader.loadSync(`${PROTO_DIR}csi.proto`, LOAD_OPTIONS),
  ) as unknown as {
    csi: { v1: Record<"Identity" | "Node" | "Controller", grpc.ServiceClientConstructor> };
  };
  const reg = grpc.loadPackageDefinition(
    protoLoader.loadSync(`${PROTO_DIR}pluginregistration.proto`, LOAD_OPTIONS),
  ) as unknown as { pluginregistration: { Registration: grpc.ServiceClientConstructor } };
  const v1 = csi.csi.v1;
  loaded = {
    Identity: v1.Identity.service,
    Node: v1.Node.service,
    Controller: v1.Controller.service,
    Registration: reg.pluginregistration.Registration.service,
    clients: { Identity: v1.Identity, Node: v1.Node, Registration: reg.pluginregistration.Registration },
  };
  return loaded;
}
