# syntax=docker/dockerfile:1
# coldstart's image: `docker build -t coldstart .` (docs/deploy.md, "Image").
# Node 24 LTS is the runtime (Node 20 is past end of life and the AWS SDK is leaving it); the native
# addon is Node-API, so `--build-arg NODE_VERSION=20` builds a Node 20 image from the same sources.
ARG NODE_VERSION=24

# --- build: the native addon (cmake-js) and the TypeScript, then production dependencies only ---
FROM node:${NODE_VERSION}-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake g++ make python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
COPY native/ native/
COPY scripts/build-native.mjs scripts/
# Scripts off for the dependencies; the addon is built explicitly, warnings as errors, so a broken
# addon fails the image build instead of shipping "native: unavailable".
RUN npm ci --ignore-scripts \
 && COLDSTART_NATIVE_BUILD=required npm run build:native
COPY tsconfig.json tsconfig.build.json ./
COPY src/ src/
COPY bin/ bin/
RUN npm run build && npm prune --omit=dev

# --- runtime ---
FROM node:${NODE_VERSION}-bookworm-slim
# NVIDIA's cuFile user-space library, for the GDS probe (from NVIDIA's CUDA apt repository; set
# CUFILE_PACKAGE= to leave it out: the GDS verdict then says cufile_library_missing). NVML and libcuda
# come from the host driver through the NVIDIA container runtime, not from the image.
ARG CUFILE_PACKAGE=libcufile-12-8
ARG TARGETARCH
RUN if [ -n "$CUFILE_PACKAGE" ]; then \
      case "${TARGETARCH:-amd64}" in amd64) repo=x86_64 ;; arm64) repo=sbsa ;; \
        *) echo "no CUDA repository for $TARGETARCH" >&2; exit 1 ;; esac \
   && apt-get update \
   && apt-get install -y --no-install-recommends ca-certificates curl \
   && curl -fsSL -o /tmp/cuda-keyring.deb \
        "https://developer.download.nvidia.com/compute/cuda/repos/debian12/$repo/cuda-keyring_1.1-1_all.deb" \
   && dpkg -i /tmp/cuda-keyring.deb && rm /tmp/cuda-keyring.deb \
   && apt-get update \
   && apt-get install -y --no-install-recommends "$CUFILE_PACKAGE" \
   && lib="$(find /usr/local -name 'libcufile.so.0' | head -n1)" \
   && { [ -n "$lib" ] || { echo "$CUFILE_PACKAGE installed no libcufile.so.0" >&2; exit 1; }; } \
   && dirname "$lib" > /etc/ld.so.conf.d/coldstart-cufile.conf \
   && ldconfig && ldconfig -p | grep -q 'libcufile.so.0 ' \
   && apt-get purge -y curl && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /app
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules/ node_modules/
COPY --from=build /src/dist/ dist/
COPY --from=build /src/bin/ bin/
# The CSI driver's vendored .proto files, loaded at run time (src/csi/protos.ts resolves them here).
COPY --from=build /src/src/csi/proto/ src/csi/proto/
COPY --from=build /src/build/Release/coldstart_native.node build/Release/
RUN ln -s /app/bin/coldstart.js /usr/local/bin/coldstart
# Non-root by default. The DaemonSet and the init container run as uid 0 without capabilities, for
# the root-owned hostPath directories (docs/deploy.md, "Why root").
USER 65532:65532
ENTRYPOINT ["coldstart"]
CMD ["--help"]
