#!/usr/bin/env bash
# Install what the build, tests and benchmarks need on Debian 12.
set -euo pipefail
pkgs=(clang llvm libbpf-dev bpftool iproute2 util-linux curl python3
      nginx-light redis-server redis-tools iperf3 wrk haproxy nghttp2-client
      qemu-system-x86 busybox-static kmod cpio)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian starts packaged daemons on install; the tests run their own
# instances on their own ports, so stop the system copies.
for svc in nginx redis-server haproxy; do
	if command -v service >/dev/null; then service "$svc" stop >/dev/null 2>&1 || true; fi
done
