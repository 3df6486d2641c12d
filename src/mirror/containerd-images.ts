/**
 * What a tag points at in this node's containerd: one call of containerd's gRPC Images API
 * (`containerd.services.images.v1.Images/Get`) on its socket. Tags live only in containerd's metadata
 * database, not in the content store the mirror reads blobs from, so resolving one needs the API.
 *
 * Only the fields read here are declared (their numbers are containerd's, from
 * api/services/images/v1/images.proto and api/types/descriptor.proto); protobuf skips the rest.
 */
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import { ColdstartError } from "../errors.js";

/** What a tag points at: the root manifest (or index) descriptor, and when the tag last moved. */
export interface ResolvedTag {
  digest: string;
  mediaType: string;
  size: number;
  /** containerd's updated_at, in ms since the epoch (0 if unset). */
  updatedAt: number;
}

export interface ImageResolver {
  /** `ref` is containerd's image name: `<registry>/<repository>:<tag>`. Undefined: no such image. */
  resolve(ref: string): Promise<ResolvedTag | undefined>;
  close(): void;
}

const DESCRIPTOR = {
  nested: {
    google: {
      nested: {
        protobuf: {
          nested: {
            Timestamp: { fields: { seconds: { type: "int64", id: 1 }, nanos: { type: "int32", id: 2 } } },
          },
        },
      },
    },
    containerd: {
      nested: {
        types: {
          nested: {
            Descriptor: {
              fields: {
                media_type: { type: "string", id: 1 },
                digest: { type: "string", id: 2 },
                size: { type: "int64", id: 3 },
              },
            },
          },
        },
        services: {
          nested: {
            images: {
              nested: {
                v1: {
                  nested: {
                    Images: {
                      methods: { Get: { requestType: "GetImageRequest", responseType: "GetImageResponse" } },
                    },
                    Image: {
                      fields: {
                        name: { type: "string", id: 1 },
                        target: { type: "containerd.types.Descriptor", id: 3 },
                        updated_at: { type: "google.protobuf.Timestamp", id: 8 },
                      },
                    },
                    GetImageRequest: { fields: { name: { type: "string", id: 1 } } },
                    GetImageResponse: { fields: { image: { type: "Image", id: 1 } } },
                  },
                },
              },
            },
          },
        },
      },
    },
  },
};

interface GetImageResponse {
  image?: {
    name: string;
    target?: { media_type: string; digest: string; size: string };
    updated_at?: { seconds: string; nanos: number };
  };
}

type ImagesClient = grpc.Client & {
  Get(
    req: { name: string },
    md: grpc.Metadata,
    opts: grpc.CallOptions,
    cb: (err: grpc.ServiceError | null, res?: GetImageResponse) => void,
  ): void;
};

/** containerd's Images API on `socket`, in containerd namespace `namespace` (kubelet's: k8s.io). */
export function containerdImages(socket: string, namespace: string, timeoutMs = 2_000): ImageResolver {
  const json = DESCRIPTOR as Parameters<typeof protoLoader.fromJSON>[0];
  const definition = protoLoader.fromJSON(json, { keepCase: true, longs: String });
  const loaded = grpc.loadPackageDefinition(definition) as unknown as {
    containerd: { services: { images: { v1: { Images: new (...a: unknown[]) => ImagesClient } } } };
  };
  const client = new loaded.containerd.services.images.v1.Images(
    `unix:${socket}`,
    grpc.credentials.createInsecure(),
  );
  return {
    resolve(ref) {
      const md = new grpc.Metadata();
      md.set("containerd-namespace", namespace);
      return new Promise((resolve, reject) => {
        client.Get({ name: ref }, md, { deadline: Date.now() + timeoutMs }, (err, res) => {
          if (err?.code === grpc.status.NOT_FOUND) return resolve(undefined);
          if (err) {
            return reject(
              new ColdstartError(
                "CS_CONTAINERD_UNAVAILABLE",
                `containerd Images.Get ${ref} on ${socket}: ${err.details || err.message}`,
                { cause: err, details: { value: ref } },
              ),
            );
          }
          const target = res?.image?.target;
          if (!target?.digest) return resolve(undefined);
          const at = res?.image?.updated_at;
          resolve({
            digest: target.digest,
            mediaType: target.media_type,
            size: Number(target.size),
            updatedAt: at ? Number(at.seconds) * 1000 + Math.floor((at.nanos ?? 0) / 1e6) : 0,
          });
        });
      });
    },
    close() {
      client.close();
    },
  };
}
