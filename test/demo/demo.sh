#!/usr/bin/env bash
# make demo: run the node agent on its embedded default config and show
# unmodified programs reaching service addresses through it, accelerated.
#
# Everything happens in a network namespace, a cgroup and a bpffs mount that
# this script creates and removes on every exit path; nothing touches the
# machine's own traffic.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$ROOT/bin
[ "$(id -u)" = 0 ] || { echo "demo: needs root (BPF, cgroups, netns)" >&2; exit 1; }
for t in ip mount nsenter; do command -v $t >/dev/null || { echo "demo: $t missing (apt-get install iproute2)" >&2; exit 1; }; done

CG2=$(awk '$0 ~ / - cgroup2 / {print $5; exit}' /proc/self/mountinfo)
[ -n "$CG2" ] || { echo "demo: no cgroup2 hierarchy mounted" >&2; exit 1; }
ID=$$
NS=meshlet-demo-$ID
CG=$CG2/meshlet-demo-$ID
BPFFS=$(mktemp -d /tmp/meshlet-demo-bpffs.XXXXXX)
LOG=$(mktemp /tmp/meshlet-demo-agent.XXXXXX.log)
PIDS=()

cleanup() {
	set +e
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
	for d in "$CG/apps" "$CG/agent" "$CG"; do
		[ -d "$d" ] || continue
		for p in $(cat "$d/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
		for _ in $(seq 50); do rmdir "$d" 2>/dev/null && break; sleep 0.1; done
	done
	mountpoint -q "$BPFFS" && umount "$BPFFS"
	rmdir "$BPFFS" 2>/dev/null
	ip netns del "$NS" 2>/dev/null
	echo "demo: cleaned up (netns $NS, cgroup $CG, bpffs $BPFFS; agent log kept at $LOG)"
}
trap cleanup EXIT INT TERM

ip netns add "$NS"
ip -n "$NS" link set lo up
mkdir -p "$CG/agent" "$CG/apps"
mount -t bpf bpf "$BPFFS"

# in_cgroup CG CMD...: run CMD inside the demo netns, in cgroup CG.
in_cgroup() { local cg=$1; shift; nsenter --net="/run/netns/$NS" sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$cg" "$@"; }

echo "== sample servers (plain programs on loopback ports of the demo netns)"
in_cgroup "$CG/apps" "$BIN/sample" server --listen 127.0.0.1:17001 --name echo-a & PIDS+=($!)
in_cgroup "$CG/apps" "$BIN/sample" server --listen 127.0.0.1:17002 --name echo-b & PIDS+=($!)
in_cgroup "$CG/apps" "$BIN/sample" server --listen 127.0.0.1:19080 --name web & PIDS+=($!)

echo "== node agent on its embedded default config, meshing cgroup $CG"
in_cgroup "$CG/agent" "$BIN/node-agent" run --cgroup "$CG" --bpffs "$BPFFS/meshlet" >"$LOG" 2>&1 & PIDS+=($!)
if ! nsenter --net="/run/netns/$NS" "$BIN/node-agent" ready --timeout 20s; then
	echo "demo: agent not ready:"; cat "$LOG"; exit 1
fi

echo "== an unmodified client in the meshed cgroup dials service addresses that exist on no interface"
in_cgroup "$CG/apps" "$BIN/sample" client --addr 10.96.0.10:7000 --count 4 --size 1048576
in_cgroup "$CG/apps" "$BIN/sample" client --addr 10.200.3.4:9080 --count 2 --size 65536

echo "== the same client outside the mesh cannot reach them (no such address)"
if nsenter --net="/run/netns/$NS" "$BIN/sample" client --addr 10.96.0.10:7000 --count 1 --size 16 2>&1; then
	echo "demo: unexpected: reached the service without the mesh"; exit 1
fi

echo "== node-agent status (mode, services, counters)"
nsenter --net="/run/netns/$NS" "$BIN/node-agent" status | tee /tmp/meshlet-demo-status.json
python3 - /tmp/meshlet-demo-status.json <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
b, p = s.get("bpf_counters") or {}, s["proxy_counters"]
print("\nevidence:")
print(f"  captured connects      {b.get('captured', 0)}")
print(f"  proxy accepted         {p['accepted']} (bytes up {p['bytes_up']}, down {p['bytes_down']})")
print(f"  sockets paired         app {b.get('paired_app', 0)}, proxy {b.get('paired_proxy', 0)}, upstream {b.get('paired_upstream', 0)}, server {b.get('paired_server', 0)}")
print(f"  redirected by sk_msg   {b.get('redirect_msgs', 0)} messages, {b.get('redirect_bytes', 0)} bytes (skipped the loopback TCP stack)")
print(f"  misses (sent via TCP)  {b.get('miss_msgs', 0)}")
if not b.get('captured') or not b.get('redirect_bytes'):
    sys.exit("demo: no captured or accelerated traffic seen")
PY
