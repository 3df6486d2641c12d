#!/usr/bin/env bash
# start-rgw.sh DIR
#
# Brings up a throw-away single-node Ceph cluster (1 mon + 1 osd, no mgr) and a
# RADOS Gateway (S3) on loopback, with ALL state, logs, sockets and pid files
# inside DIR. No systemd, nothing under /etc/ceph or /var/lib/ceph is touched.
#
# On success prints exactly one line of JSON on stdout:
#   {"endpoint":"http://127.0.0.1:PORT","accessKeyId":"...","secretAccessKey":"...","region":"us-east-1"}
# Everything else goes to stderr or to DIR/log/*.log.
#
# Environment (all optional):
#   RGW_PORT           port for the S3 endpoint (default: a free loopback port)
#   RGW_BIND           address the S3 endpoint listens on (default 127.0.0.1; the
#                      benchmark lab binds its namespace's veth address). The mon
#                      and osd stay on loopback either way.
#   RGW_OBJECTSTORE    bluestore (default): OSD data in a sparse 20 GiB file
#                      DIR/osd/block; RAM stays ~130 MB, disk use = data written.
#                      memstore: everything in the OSD's RAM (about 2x the live
#                      data); starts ~0.7 s faster, small PUTs ~30% faster.
#   RGW_MEMSTORE_BYTES capacity reported by memstore (default 8 GiB; only what
#                      is actually stored uses RAM)
#   RGW_START_TIMEOUT  seconds to wait for everything (default 120)
#   RGW_ACCESS_KEY / RGW_SECRET_KEY  S3 credentials (fixed test defaults)
#   RGW_WATCH_PID      if set, a watchdog runs stop-rgw.sh DIR once that pid exits
#
# Stop with: stop-rgw.sh DIR
set -euo pipefail

log() { echo "start-rgw: $*" >&2; }

if [ $# -ne 1 ] || [ -z "$1" ]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi

for b in ceph-mon ceph-osd radosgw radosgw-admin ceph monmaptool; do
  if ! command -v "$b" >/dev/null 2>&1; then
    echo "start-rgw: '$b' not found: run \`bash scripts/install-test-deps.sh\` (as root) to install Ceph RGW" >&2
    exit 3
  fi
done

mkdir -p "$1"
DIR="$(cd "$1" && pwd -P)"
if [ -e "$DIR/ceph.conf" ]; then
  echo "start-rgw: $DIR already contains a cluster (ceph.conf exists); run stop-rgw.sh $DIR first" >&2
  exit 2
fi

TIMEOUT="${RGW_START_TIMEOUT:-120}"
OBJECTSTORE="${RGW_OBJECTSTORE:-bluestore}"
MEMSTORE_BYTES="${RGW_MEMSTORE_BYTES:-8589934592}"
BIND="${RGW_BIND:-127.0.0.1}"
ACCESS_KEY="${RGW_ACCESS_KEY:-COLDSTARTTESTACCESSKEY}"
SECRET_KEY="${RGW_SECRET_KEY:-coldstartTestSecretKey0123456789abcdefgh}"
REGION="us-east-1"
START_TS=$(date +%s)
DEADLINE=$((START_TS + TIMEOUT))

PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

free_port() {
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

MON_PORT="$(free_port)"
RGW_PORT="${RGW_PORT:-$(free_port)}"
FSID="$("$PY" -c 'import uuid; print(uuid.uuid4())')"
OSD_UUID="$("$PY" -c 'import uuid; print(uuid.uuid4())')"

mkdir -p "$DIR"/{run,log,mon,osd,rgw,crash,tmp}
CONF="$DIR/ceph.conf"
export CEPH_CONF="$CONF"
# keep the python CLI / librados clients from looking anywhere else
export CEPH_ARGS="--conf $CONF"

MON_PID="" OSD_PID="" RGW_PID=""
fail() {
  local msg="$1"; shift
  # kill what we started, keep DIR (logs) for inspection; stop-rgw.sh removes it
  local p
  for p in $RGW_PID $OSD_PID $MON_PID; do kill -KILL "$p" 2>/dev/null || true; done
  echo "start-rgw: ERROR: $msg (after $(( $(date +%s) - START_TS ))s; state in $DIR)" >&2
  local f
  for f in "$@"; do
    if [ -f "$f" ]; then
      echo "----- tail of $f -----" >&2
      case "$f" in
        # daemon logs: skip rocksdb's multi-line option dumps
        */mon.a.log|*/osd.0.log|*/client.rgw.a.log)
          grep -E '^[0-9]{4}-[0-9]{2}-[0-9]{2}T' "$f" | grep -v ' rocksdb: ' | tail -n 30 >&2 || true ;;
        *) tail -n 30 "$f" >&2 || true ;;
      esac
    fi
  done
  exit 1
}

remaining() { local r=$((DEADLINE - $(date +%s))); [ "$r" -lt 1 ] && r=1; echo "$r"; }

cat >"$CONF" <<EOF
[global]
fsid = $FSID
mon initial members = a
mon host = [v2:127.0.0.1:$MON_PORT]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
ms bind msgr1 = false

# no cephx; mon clients then need crc/secure explicitly
auth cluster required = none
auth service required = none
auth client required = none
auth supported = none
ms mon client mode = crc secure
keyring = $DIR/keyring

# everything lives under DIR
run dir = $DIR/run
crash dir = $DIR/crash
tmp dir = $DIR/tmp
mon data = $DIR/mon/\$cluster-\$id
osd data = $DIR/osd/\$cluster-\$id
rgw data = $DIR/rgw/\$cluster-\$id
mon cluster log file = $DIR/log/\$cluster.log
log to syslog = false
err to syslog = false
clog to syslog = false

# single OSD, no redundancy, few PGs, no mgr
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
osd crush chooseleaf type = 0
mon data avail warn = 1
mon data avail crit = 0
mon warn on insecure global id reclaim allowed = false
# commit mon map changes quickly (default 1 s batching makes each pool
# creation / osd boot step take ~1-2 s)
paxos propose interval = 0.05
paxos min wait = 0.01

[mon]
log file = $DIR/log/\$name.log
pid file = $DIR/run/\$name.pid
admin socket = $DIR/run/\$name.asok

[osd]
log file = $DIR/log/\$name.log
pid file = $DIR/run/\$name.pid
admin socket = $DIR/run/\$name.asok
osd objectstore = $OBJECTSTORE
memstore device bytes = $MEMSTORE_BYTES
bluestore block path = $DIR/osd/block
bluestore block create = true
bluestore block size = 21474836480
bluestore fsck on mkfs = false
# the backing file usually sits on a "rotational" virtual disk; HDD tuning
# (deferred small writes, heavy per-io throttle cost) only slows tests down
bluestore debug enforce settings = ssd
# the aio reaper polls every 250 ms by default and every bdev close (about
# ten during mkfs + mount) waits for it: 2-3 s of startup
bdev aio poll ms = 10
bluestore fsck on mount = false
bluestore cache autotune = false
bluestore cache size = 134217728
osd op num shards = 2
osd op num threads per shard = 2

[client.rgw.a]
log file = $DIR/log/\$name.log
pid file = $DIR/run/\$name.pid
admin socket = $DIR/run/\$name.asok
rgw frontends = beast endpoint=$BIND:$RGW_PORT tcp_nodelay=1
rgw enable usage log = false
rgw enable ops log = false
rgw thread pool size = 64
# deleted/overwritten tail data (>4 MiB objects) is garbage-collected after
# 30 s instead of 2 h, so a memstore OSD gives the RAM back during a test run
rgw gc obj min wait = 30
rgw gc processor period = 30
EOF

# Daemons run in the foreground (-f) as background jobs of this script, so we
# know their pids without racing the daemon's own fork/pid file. stdout/stderr
# go to DIR/log/NAME.out so that nobody holds our stdout pipe open.
spawn() {
  local name="$1"; shift
  "$@" -f </dev/null >"$DIR/log/$name.out" 2>&1 &
  echo $! >"$DIR/run/$name.spawn.pid"
  echo $!
}
dead() { ! kill -0 "$1" 2>/dev/null; }

# --- mon ---------------------------------------------------------------------
log "dir=$DIR fsid=$FSID mon=127.0.0.1:$MON_PORT rgw=$BIND:$RGW_PORT objectstore=$OBJECTSTORE"
monmaptool --create --fsid "$FSID" --addv a "[v2:127.0.0.1:$MON_PORT]" "$DIR/monmap" \
  >"$DIR/log/monmaptool.log" 2>&1 || fail "monmaptool failed" "$DIR/log/monmaptool.log"
ceph-mon --conf "$CONF" --cluster ceph -i a --mkfs --monmap "$DIR/monmap" \
  >"$DIR/log/mon-mkfs.log" 2>&1 || fail "ceph-mon --mkfs failed" "$DIR/log/mon-mkfs.log"
MON_PID="$(spawn mon.a ceph-mon --conf "$CONF" -i a)"

cceph() { timeout "$(remaining)" ceph --conf "$CONF" --connect-timeout "$(remaining)" "$@"; }

until cceph mon stat >/dev/null 2>>"$DIR/log/ceph-cli.log"; do
  dead "$MON_PID" && fail "ceph-mon exited" "$DIR/log/mon.a.out" "$DIR/log/mon.a.log"
  [ "$(date +%s)" -ge "$DEADLINE" ] && fail "mon did not come up within ${TIMEOUT}s" "$DIR/log/mon.a.log" "$DIR/log/ceph-cli.log"
  sleep 0.3
done
log "mon up ($(( $(date +%s) - START_TS ))s)"

# --- osd ---------------------------------------------------------------------
OSD_ID="$(cceph osd new "$OSD_UUID" 2>>"$DIR/log/ceph-cli.log")" \
  || fail "ceph osd new failed" "$DIR/log/ceph-cli.log" "$DIR/log/mon.a.log"
[ "$OSD_ID" = "0" ] || fail "unexpected osd id '$OSD_ID'" "$DIR/log/ceph-cli.log"
mkdir -p "$DIR/osd/ceph-0"
ceph-osd --conf "$CONF" -i 0 --mkfs --osd-uuid "$OSD_UUID" >"$DIR/log/osd-mkfs.log" 2>&1 \
  || fail "ceph-osd --mkfs failed" "$DIR/log/osd-mkfs.log" "$DIR/log/osd.0.log"
OSD_PID="$(spawn osd.0 ceph-osd --conf "$CONF" -i 0)"

until [ "$(cceph osd stat -f json 2>>"$DIR/log/ceph-cli.log" \
  | "$PY" -c 'import json,sys; print(json.load(sys.stdin).get("num_up_osds",0))' 2>/dev/null)" = "1" ]; do
  dead "$OSD_PID" && fail "ceph-osd exited" "$DIR/log/osd.0.out" "$DIR/log/osd.0.log"
  [ "$(date +%s)" -ge "$DEADLINE" ] && fail "osd.0 did not come up within ${TIMEOUT}s" "$DIR/log/osd.0.log" "$DIR/log/ceph-cli.log"
  sleep 0.3
done
log "osd up ($(( $(date +%s) - START_TS ))s)"

# --- rgw ---------------------------------------------------------------------
RGW_PID="$(spawn client.rgw.a radosgw --conf "$CONF" -n client.rgw.a)"

probe() {
  # an anonymous GET / answered with RGW's x-amz-request-id header means our
  # radosgw is serving (and not some other server that owns the port)
  timeout 3 bash -c '
    exec 3<>/dev/tcp/'"$BIND"'/'"$RGW_PORT"' || exit 1
    printf "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" >&3
    while IFS= read -r line <&3; do
      line="${line%$'"'"'\r'"'"'}"
      [ -z "$line" ] && break
      case "${line,,}" in x-amz-request-id:*) exit 0;; esac
    done
    exit 1
  ' 2>/dev/null
}
until probe; do
  dead "$RGW_PID" && fail "radosgw exited" "$DIR/log/client.rgw.a.out" "$DIR/log/client.rgw.a.log"
  [ "$(date +%s)" -ge "$DEADLINE" ] && fail "radosgw did not answer on $BIND:$RGW_PORT within ${TIMEOUT}s" "$DIR/log/client.rgw.a.log" "$DIR/log/osd.0.log"
  sleep 0.2
done
log "rgw answering ($(( $(date +%s) - START_TS ))s)"

# --- S3 user -----------------------------------------------------------------
timeout "$(remaining)" radosgw-admin --conf "$CONF" user create \
  --uid=test --display-name=test --access-key="$ACCESS_KEY" --secret="$SECRET_KEY" \
  >"$DIR/log/user-create.log" 2>&1 || fail "radosgw-admin user create failed" "$DIR/log/user-create.log"

# --- optional watchdog ------------------------------------------------------
# If RGW_WATCH_PID is set (rgw.ts passes its own pid), tear everything down
# once that process is gone, so a crashed/killed test run leaks no daemons.
if [ -n "${RGW_WATCH_PID:-}" ]; then
  STOP_SCRIPT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/stop-rgw.sh"
  # "$CONF" is passed as an argument so that stop-rgw.sh recognises (and kills)
  # the watchdog as part of this cluster
  bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; exec bash "$2" "$3"' \
    rgw-watchdog "$RGW_WATCH_PID" "$STOP_SCRIPT" "$DIR" "$CONF" \
    </dev/null >>"$DIR/log/watchdog.log" 2>&1 &
  echo $! >"$DIR/run/watchdog.spawn.pid"
fi

log "ready in $(( $(date +%s) - START_TS ))s"
printf '{"endpoint":"http://%s:%s","accessKeyId":"%s","secretAccessKey":"%s","region":"%s"}\n' \
  "$BIND" "$RGW_PORT" "$ACCESS_KEY" "$SECRET_KEY" "$REGION"
