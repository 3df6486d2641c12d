#!/usr/bin/env bash
# Installs the test-only system dependencies: Ceph's RADOS Gateway (radosgw)
# plus a single-node mon + osd, from Debian's own packages (Debian 12 /
# bookworm ships Ceph 16.2), and the native addon's toolchain (cmake, a C++
# compiler, make, python3 for node-gyp, libasan for the sanitizer run), and
# iproute2 (ip, tc) for the benchmark lab's network test, and containerd
# (containerd, ctr; 1.6 on bookworm) for the image-pull harness, and
# Prometheus (prometheus, promtool; 2.42 on bookworm) for the alert rules'
# unit tests and the dashboard's queries against a real server. Needs
# root and apt. Idempotent: does nothing if the binaries are already installed.
set -euo pipefail

PKGS=(radosgw ceph-mon ceph-osd ceph-common cmake g++ make python3 libasan8 iproute2 procps containerd prometheus)
BINS=(radosgw radosgw-admin ceph-mon ceph-osd ceph monmaptool ceph-authtool cmake g++ cc make python3 ip tc pgrep containerd ctr prometheus promtool)

missing() {
  local b out=()
  for b in "${BINS[@]}"; do command -v "$b" >/dev/null 2>&1 || out+=("$b"); done
  if [ "$(uname -m)" = x86_64 ] && [ ! -e /usr/lib/x86_64-linux-gnu/libasan.so.8 ]; then out+=(libasan.so.8); fi
  echo "${out[*]}"
}

if [ -z "$(missing)" ]; then
  echo "install-test-deps: Ceph RGW and the build tools already installed ($(radosgw --version 2>/dev/null | head -n1 || echo radosgw))" >&2
  exit 0
fi
# --check: only say whether anything is missing (exit 1 naming it), install nothing.
if [ "${1:-}" = --check ]; then
  echo "install-test-deps: missing: $(missing)" >&2
  exit 1
fi

die() { echo "install-test-deps: ERROR: $*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
  die "must run as root (apt-get install of ${PKGS[*]})"
fi
command -v apt-get >/dev/null 2>&1 || die "apt-get not found; this script supports Debian/Ubuntu only"

export DEBIAN_FRONTEND=noninteractive
echo "install-test-deps: apt-get update" >&2
apt-get update -q >&2 || die "apt-get update failed"
echo "install-test-deps: apt-get install ${PKGS[*]}" >&2
apt-get install -y -q --no-install-recommends "${PKGS[@]}" >&2 \
  || die "apt-get install -y --no-install-recommends ${PKGS[*]} failed"

still=$(missing)
[ -z "$still" ] || die "packages installed but some are still missing: $still"
echo "install-test-deps: OK ($(radosgw --version 2>/dev/null | head -n1))" >&2
