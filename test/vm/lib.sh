# shellcheck shell=bash
# Shared helpers for the test/vm scripts. Sourced, not executed.

VM_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC2034 # used by the scripts that source this file
REPO_ROOT="$(cd "$VM_DIR/../.." && pwd)"
# VM_CACHE holds everything downloaded or built; override to share a cache between work trees.
VM_CACHE="${VM_CACHE:-$VM_DIR/.cache}"
KERNELS_CONF="$VM_DIR/kernels.conf"

log() { printf '[vm %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ensure_tools installs the host tools the harness needs when any is missing. Only the machine's
# configured apt sources are used here; kernel downloads use a private configuration (fetch-kernels.sh).
ensure_tools() {
	local missing=()
	# busybox-static ships /bin/busybox; the dynamically linked "busybox" package replaces it.
	dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' ||
		missing+=(busybox-static)
	command -v cpio >/dev/null || missing+=(cpio)
	command -v depmod >/dev/null || missing+=(kmod)
	command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
	command -v xz >/dev/null || missing+=(xz-utils)
	command -v zstd >/dev/null || missing+=(zstd)
	command -v dpkg-deb >/dev/null || missing+=(dpkg)
	command -v gzip >/dev/null || missing+=(gzip)
	command -v ip >/dev/null || missing+=(iproute2)
	if [ "${#missing[@]}" -gt 0 ]; then
		log "installing host tools: ${missing[*]}"
		[ "$(id -u)" = 0 ] || die "need root to apt-get install ${missing[*]}"
		DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null ||
			die "apt-get update failed"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
			die "apt-get install ${missing[*]} failed"
	fi
}

# kernel_field KEY N prints column N (1-based) of KEY's line in kernels.conf.
kernel_field() {
	awk -v k="$1" -v n="$2" '!/^#/ && NF >= 5 && $1 == k { print $n; found=1 } END { exit !found }' "$KERNELS_CONF"
}

# default_kernels prints the comma-separated keys marked default in kernels.conf.
default_kernels() {
	awk '!/^#/ && NF >= 5 && $5 == "yes" { printf "%s%s", sep, $1; sep="," } END { print "" }' "$KERNELS_CONF"
}

# known_kernel KEY fails unless KEY is listed in kernels.conf.
known_kernel() {
	kernel_field "$1" 1 >/dev/null
}
