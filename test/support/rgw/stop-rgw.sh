#!/usr/bin/env bash
# stop-rgw.sh DIR
#
# Kills every process started by start-rgw.sh DIR (DIR/run/*.pid: the daemons
# and the watchdog; plus any ceph-mon/ceph-osd/radosgw whose command line names
# DIR/ceph.conf, in case a start was interrupted before a pid file was
# written), waits for them to exit, then removes DIR (kept if RGW_KEEP_DIR=1).
# Only processes whose argv contains DIR/ceph.conf are ever signalled.
# Safe to run twice / on a missing DIR.
# The cluster is throw-away, so they get SIGKILL straight away (a clean
# shutdown only costs time; a memstore OSD would even dump all of its content
# to disk on SIGTERM).
set -uo pipefail

if [ $# -ne 1 ] || [ -z "$1" ]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi
[ -d "$1" ] || exit 0
DIR="$(cd "$1" && pwd -P)"
CONF="$DIR/ceph.conf"

ours() { # pid -> true if one of its argv entries is exactly this DIR's ceph.conf
  [ -r "/proc/$1/cmdline" ] && tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | grep -qxF -- "$CONF"
}

declare -A seen=()
pids=()
add() { if [ -z "${seen[$1]:-}" ] && ours "$1"; then seen[$1]=1; pids+=("$1"); fi; }

for f in "$DIR"/run/*.pid; do
  [ -f "$f" ] || continue
  p="$(tr -dc '0-9' <"$f")"
  [ -n "$p" ] && add "$p"
done
for d in /proc/[0-9]*; do
  p="${d#/proc/}"
  case "$(cat "$d/comm" 2>/dev/null)" in
    ceph-mon|ceph-osd|radosgw) add "$p" ;;
  esac
done

# a killed process counts as gone once it is a zombie (its reaper may be slow)
running() {
  local st
  st="$(sed -n 's/^[0-9]* (.*) \([A-Za-z]\) .*/\1/p' "/proc/$1/stat" 2>/dev/null)"
  [ -n "$st" ] && [ "$st" != "Z" ] && [ "$st" != "X" ]
}
alive() { local p n=0; for p in "${pids[@]}"; do running "$p" && n=$((n + 1)); done; echo "$n"; }

if [ "${#pids[@]}" -gt 0 ]; then
  kill -KILL "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 1 150); do   # up to 15 s for the kernel to tear them down
    [ "$(alive)" = "0" ] && break
    sleep 0.1
  done
  if [ "$(alive)" != "0" ]; then
    echo "stop-rgw: WARNING: some processes from $DIR did not exit: ${pids[*]}" >&2
  fi
fi

[ "${RGW_KEEP_DIR:-0}" = "1" ] || rm -rf -- "$DIR"
exit 0
