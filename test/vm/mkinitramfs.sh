#!/usr/bin/env bash
# mkinitramfs.sh KEY...
#
# Builds the base initramfs of each kernel KEY (fetched by fetch-kernels.sh) at
# $VM_CACHE/initramfs/KEY.cpio.gz: static busybox, /init (init.sh) and the kernel modules the tests
# need, with their dependencies resolved on the host by `modprobe -d ROOT -S RELEASE --show-depends`.
# The test binaries are NOT in it: run.sh appends a second cpio archive with them, so the base is
# reused across test runs. Rebuilt only when its inputs (init.sh, module list, kernel) change.
#
# VM_MODULES overrides the module list (space separated names). VM_HOST_TOOLS (default "ip") names
# host programs copied into /usr/local/bin of the guest, which comes first in its PATH, with the shared
# libraries ldd reports: busybox's ip has no `ip netns`, which privileged tests use. Libraries a
# program loads with dlopen (e.g. iptables' xtables plugins) are not found this way.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

# Modules a node running meshlet relies on: veth/dummy for test topologies and the IPVS fallback,
# IPVS with its schedulers, conntrack and NAT (SO_ORIGINAL_DST), iptables filter for conntrack rules,
# sch_ingress/cls_bpf for tc programs.
VM_MODULES="${VM_MODULES:-veth dummy ip_vs ip_vs_rr ip_vs_wrr ip_vs_sh nf_conntrack nf_nat xt_conntrack iptable_filter iptable_nat sch_ingress cls_bpf}"

VM_HOST_TOOLS="${VM_HOST_TOOLS:-ip}"

[ "$#" -gt 0 ] || die "usage: $0 KEY..."
ensure_tools

build_one() {
	local key="$1" kd="$VM_CACHE/kernels/$1"
	[ -f "$kd/complete" ] || die "kernel $key not fetched (run fetch-kernels.sh $key)"
	local release out stamp
	release="$(cat "$kd/release")"
	out="$VM_CACHE/initramfs/$key.cpio.gz"
	mkdir -p "$VM_CACHE/initramfs"
	stamp="$( {
		cat "$VM_DIR/init.sh" "$kd/package" "$0"
		echo "$VM_MODULES $VM_HOST_TOOLS"
		md5sum /bin/busybox
		for t in $VM_HOST_TOOLS; do md5sum "$(command -v "$t")"; done
	} | md5sum | cut -d' ' -f1)"
	if [ -f "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$stamp" ]; then
		log "initramfs $key: up to date"
		return 0
	fi
	local stage
	stage="$(mktemp -d "$VM_CACHE/initramfs/stage.XXXXXX")"
	# shellcheck disable=SC2064 # expand now: the trap must remove this stage directory
	trap "rm -rf '$stage'" RETURN
	mkdir -p "$stage"/{bin,sbin,dev,proc,sys,tmp,run,etc/vmtest,tests,lib/modules}
	cp /bin/busybox "$stage/bin/busybox"
	ln -s busybox "$stage/bin/sh"
	install -m 0755 "$VM_DIR/init.sh" "$stage/init"
	# The console must exist before devtmpfs is mounted, for init's first output.
	cp -a /dev/console /dev/null "$stage/dev/" 2>/dev/null || {
		mknod -m 600 "$stage/dev/console" c 5 1
		mknod -m 666 "$stage/dev/null" c 1 3
	}

	# Host tools with their shared libraries and the dynamic loader.
	local tool bin lib
	for tool in $VM_HOST_TOOLS; do
		bin="$(command -v "$tool")" || die "host tool $tool not found (install it or change VM_HOST_TOOLS)"
		mkdir -p "$stage/usr/local/bin"
		cp -L "$bin" "$stage/usr/local/bin/$tool"
		while read -r lib; do
			[ -n "$lib" ] || continue
			mkdir -p "$stage$(dirname "$lib")"
			cp -L "$lib" "$stage$lib"
		done < <(ldd "$bin" 2>/dev/null | grep -oE '/[^ ]+' || true)
	done

	# Resolve module dependencies (ordered, without duplicates). "builtin X" lines need nothing.
	local line path params dst n=0
	# shellcheck disable=SC2086 # VM_MODULES is a list of words
	while read -r line; do
		case "$line" in
		insmod\ *) ;;
		*) continue ;;
		esac
		read -r _ path params <<<"$line"
		dst="/lib/modules/${path#*/lib/modules/"$release"/}"
		grep -qxF -- "$dst${params:+ $params}" "$stage/etc/vmtest/modules" 2>/dev/null && continue
		grep -q -- "^$dst\( \|\$\)" "$stage/etc/vmtest/modules" 2>/dev/null && continue
		mkdir -p "$stage$(dirname "$dst")"
		cp "$path" "$stage$dst"
		printf '%s\n' "$dst${params:+ $params}" >>"$stage/etc/vmtest/modules"
		n=$((n + 1))
	done < <(modprobe -a -d "$kd/root" -S "$release" --show-depends $VM_MODULES 2>/dev/null || true)
	[ "$n" -gt 0 ] || log "initramfs $key: warning: no module resolved (all built in?)"

	(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -1) >"$out.tmp"
	mv "$out.tmp" "$out"
	printf '%s\n' "$stamp" >"$out.stamp"
	log "initramfs $key: $n modules, $(du -h "$out" | cut -f1)"
}

for k in "$@"; do
	build_one "$k"
done
