#!/bin/sh
# /init of the test/vm initramfs (busybox sh). Prepares a kernel environment like a node's, runs every
# test binary under /tests in name order and prints one marker line per binary and one overall:
#   VMTEST-RESULT name=NAME rc=N seconds=S
#   VMTEST-RESULT overall rc=N
# The host reads these from the serial console; a missing overall marker (panic, hang) is a failure.
# Kernel command-line words KEY=VALUE that the kernel does not know reach this script's environment.
# /usr/local/bin holds host tools copied with their libraries (e.g. iproute2's ip, for `ip netns`).
export PATH=/usr/local/bin:/bin:/sbin
/bin/busybox --install -s /bin

mark() { echo "VMTEST-$*"; }
fail_early() {
	mark "SETUP-ERROR $*"
	mark "RESULT overall rc=125"
	sync
	poweroff -f
}

mount -t proc proc /proc || fail_early "mount proc"
mount -t sysfs sysfs /sys || fail_early "mount sysfs"
mount -t devtmpfs devtmpfs /dev || fail_early "mount devtmpfs"
mkdir -p /dev/pts /dev/shm /tmp /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t cgroup2 -o nosuid,nodev,noexec,nsdelegate cgroup2 /sys/fs/cgroup || fail_early "mount cgroup2"
mount -t bpf -o mode=700 bpffs /sys/fs/bpf || fail_early "mount bpffs"
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
mkdir -p /var/run/netns

mark "BOOTED uptime=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r)"

# Modules, in dependency order as resolved on the host (modprobe --show-depends). Failures are
# reported, not fatal: the tests decide whether a missing facility matters.
loaded=0
failed=""
if [ -f /etc/vmtest/modules ]; then
	while read -r path params; do
		[ -n "$path" ] || continue
		name=$(basename "$path")
		name=${name%%.ko*}
		grep -q "^$(echo "$name" | tr - _) " /proc/modules && continue
		# shellcheck disable=SC2086 # params are separate words by design
		if insmod "$path" $params 2>/tmp/insmod.err; then
			loaded=$((loaded + 1))
		else
			failed="$failed $name($(tr '\n' ' ' </tmp/insmod.err))"
		fi
	done </etc/vmtest/modules
fi
mark "MODULES loaded=$loaded failed=[${failed# }]"

ip link set lo up || fail_early "lo up"
# Unprivileged BPF is irrelevant here; make failures visible instead of rate-limited.
sysctl -qw kernel.printk_ratelimit=0 2>/dev/null || true
dmesg -c >/dev/null 2>&1 || true

export CI=true MESHLET_REQUIRE_PRIV=1 MESHLET_VM=1 HOME=/tmp TMPDIR=/tmp GOTRACEBACK=all
args=""
[ -f /tests/args ] && args=$(cat /tests/args)
timeout="${VMTEST_TIMEOUT:-240s}"

overall=0
count=0
for t in /tests/*.test; do
	[ -x "$t" ] || continue
	count=$((count + 1))
	name=$(basename "$t" .test)
	mark "START name=$name uptime=$(cut -d' ' -f1 /proc/uptime)"
	start=$(cut -d' ' -f1 /proc/uptime)
	# Each binary runs in its own directory, as `go test` would run it in the package directory.
	mkdir -p "/work/$name"
	[ -d "/tests/$name.testdata" ] && ln -sfn "/tests/$name.testdata" "/work/$name/testdata"
	# shellcheck disable=SC2086 # args are separate words by design
	(
		cd "/work/$name" && "$t" -test.v -test.count=1 -test.timeout="$timeout" $args
		echo $? >/tmp/rc
	) 2>&1 | tee "/tmp/$name.out"
	rc=$(cat /tmp/rc 2>/dev/null || echo 126)
	rm -f /tmp/rc
	# A binary that ran no test at all (e.g. a -test.run pattern matching nothing) has proved nothing.
	if [ "$rc" = 0 ] && grep -q '^testing: warning: no tests to run' "/tmp/$name.out"; then
		mark "NO-TESTS name=$name"
		rc=3
	fi
	end=$(cut -d' ' -f1 /proc/uptime)
	mark "RESULT name=$name rc=$rc seconds=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')"
	[ "$rc" = 0 ] || overall=1
done
[ "$count" -gt 0 ] || { mark "SETUP-ERROR no test binaries under /tests"; overall=125; }

# Kernel warnings during the run (WARN_ON, BUG, lockdep, KASAN...) are reported to the host.
warn=$(dmesg 2>/dev/null | grep -cE 'WARNING:|BUG:|Oops|general protection|Call Trace:' || true)
if [ "${warn:-0}" -gt 0 ]; then
	dmesg | grep -E -A12 'WARNING:|BUG:|Oops|general protection' | sed 's/^/VMTEST-DMESG /' | head -n 200
fi
mark "KERNEL-WARNINGS count=${warn:-0}"
mark "RESULT overall rc=$overall"
sync
poweroff -f
