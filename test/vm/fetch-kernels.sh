#!/usr/bin/env bash
# fetch-kernels.sh [--refresh] [KEY...]
#
# Downloads and unpacks the Debian kernels of the test matrix (kernels.conf; default: the keys marked
# "yes") into $VM_CACHE/kernels/KEY/. Uses a private apt configuration per suite under $VM_CACHE/apt/:
# the machine's own sources, lists and package cache are never read or written. apt itself verifies
# every download: the suite's InRelease signature against the Debian archive keyring, then each .deb's
# SHA256 against the signed index.
#
# Idempotent: a kernel whose unpacked tree is complete (stamp file present) is skipped unless --refresh
# is given, in which case the suite's index is updated and a newer ABI is fetched when there is one.
#
# Output per kernel: $VM_CACHE/kernels/KEY/{vmlinuz,release,package,root/}, with modules.dep generated
# by depmod -b so that `modprobe -d root -S RELEASE --show-depends` resolves module dependencies.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

refresh=0
keys=()
for a in "$@"; do
	case "$a" in
	--refresh) refresh=1 ;;
	-h | --help) sed -n '2,15p' "$0"; exit 0 ;;
	-*) die "unknown flag $a" ;;
	*) IFS=',' read -r -a more <<<"$a"; keys+=("${more[@]}") ;;
	esac
done
[ "${#keys[@]}" -gt 0 ] || IFS=',' read -r -a keys <<<"$(default_kernels)"

ensure_tools

KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$KEYRING" ] || die "missing $KEYRING (apt-get install debian-archive-keyring)"

# apt_opts KEY prints the apt options (one a line) of KEY's private configuration.
apt_opts() {
	local d="$VM_CACHE/apt/$1"
	printf '%s\n' \
		-o "Dir::Etc::SourceList=$d/sources.list" \
		-o "Dir::Etc::SourceParts=$d/sources.list.d" \
		-o "Dir::State::Lists=$d/lists" \
		-o "Dir::Cache=$d/cache" \
		-o "Dir::State::status=$d/status" \
		-o "Dir::Etc::Preferences=$d/preferences" \
		-o "Dir::Etc::PreferencesParts=$d/preferences.d" \
		-o "APT::Architecture=amd64" \
		-o "APT::Architectures::=amd64" \
		-o "Acquire::Languages=none" \
		-o "Acquire::Check-Valid-Until=false" \
		-o "APT::Sandbox::User=root"
}

# prepare_suite NAME SUITES URI writes NAME's private sources (SUITES is comma-separated; a suite
# ending in -security is served from URI-security) and updates its index when needed.
prepare_suite() {
	local name="$1" suites="$2" uri="$3" d="$VM_CACHE/apt/$1"
	mkdir -p "$d/lists/partial" "$d/cache/archives/partial" "$d/sources.list.d" "$d/preferences.d"
	: >"$d/status"
	: >"$d/preferences"
	local want="" s
	IFS=',' read -r -a ss <<<"$suites"
	for s in "${ss[@]}"; do
		case "$s" in
		*-security) want+="deb [signed-by=$KEYRING] $uri-security $s main"$'\n' ;;
		*) want+="deb [signed-by=$KEYRING] $uri $s main"$'\n' ;;
		esac
	done
	if [ ! -f "$d/sources.list" ] || [ "$(cat "$d/sources.list")"$'\n' != "$want" ]; then
		printf '%s' "$want" >"$d/sources.list"
		rm -f "$d/updated"
	fi
	if [ "$refresh" = 1 ] || [ ! -f "$d/updated" ]; then
		log "apt update (private) for $suites"
		mapfile -t o < <(apt_opts "$name")
		apt-get "${o[@]}" -qq update || die "apt-get update for $suites failed"
		touch "$d/updated"
	fi
}

# depends_matching KEY PKG REGEX prints PKG's Depends that match REGEX (versioned kernel packages).
depends_matching() {
	local o
	mapfile -t o < <(apt_opts "$1")
	apt-cache "${o[@]}" depends --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
		--no-enhances "$2" 2>/dev/null | awk '$1 ~ /Depends:/ { print $2 }' | grep -E "$3" || true
}

fetch_one() {
	local key="$1" suite uri meta
	suite="$(kernel_field "$key" 2)" || die "unknown kernel key $key (see $KERNELS_CONF)"
	uri="$(kernel_field "$key" 3)"
	meta="$(kernel_field "$key" 4)"
	local kd="$VM_CACHE/kernels/$key"
	if [ "$refresh" = 0 ] && [ -f "$kd/complete" ]; then
		log "kernel $key: cached ($(cat "$kd/release"))"
		return 0
	fi
	local t0=$SECONDS
	prepare_suite "$key" "$suite" "$uri"

	local image
	image="$(depends_matching "$key" "$meta" '^linux-image-[0-9]' | head -n1)"
	[ -n "$image" ] || die "kernel $key: $meta in $suite depends on no linux-image-<version> package"
	# 2026+ packaging: the image package is itself a meta over linux-binary-* and linux-modules-*.
	local pkgs=("$image")
	mapfile -t -O 1 pkgs < <(depends_matching "$key" "$image" '^linux-(binary|modules)-[0-9]')

	if [ -f "$kd/complete" ] && [ "$(cat "$kd/package")" = "${pkgs[*]}" ]; then
		log "kernel $key: already newest (${pkgs[*]})"
		return 0
	fi

	local debs="$VM_CACHE/debs/$key"
	rm -rf "$debs" && mkdir -p "$debs"
	log "kernel $key: downloading ${pkgs[*]} from $suite"
	mapfile -t o < <(apt_opts "$key")
	(cd "$debs" && apt-get "${o[@]}" -qq download "${pkgs[@]}") ||
		die "kernel $key: apt-get download ${pkgs[*]} failed"

	rm -rf "$kd" && mkdir -p "$kd/root"
	local deb
	for deb in "$debs"/*.deb; do
		dpkg-deb -x "$deb" "$kd/root" || die "kernel $key: dpkg-deb -x $deb failed"
	done
	# Locate the kernel image: /boot/vmlinuz-REL (classic) or /usr/lib/modules/REL/vmlinuz (split).
	local vmlinuz release
	vmlinuz="$(find "$kd/root/boot" "$kd/root/usr/lib/modules" -maxdepth 2 \
		\( -name 'vmlinuz-*' -o -name vmlinuz \) -type f 2>/dev/null | head -n1 || true)"
	[ -n "$vmlinuz" ] || die "kernel $key: no vmlinuz in ${pkgs[*]}"
	if [ -d "$kd/root/lib/modules" ]; then
		release="$(find "$kd/root/lib/modules" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | head -n1)"
	else
		release="$(find "$kd/root/usr/lib/modules" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | head -n1)"
		# depmod and modprobe -d look under BASE/lib/modules.
		ln -s usr/lib "$kd/root/lib"
	fi
	[ -n "$release" ] || die "kernel $key: no modules directory"
	depmod -b "$kd/root" "$release" || die "kernel $key: depmod -b failed"
	ln -sf "${vmlinuz#"$kd/"}" "$kd/vmlinuz"
	printf '%s\n' "$release" >"$kd/release"
	printf '%s\n' "${pkgs[*]}" >"$kd/package"
	dpkg-deb -f "$debs/${image}"_*.deb Version >"$kd/version"
	printf '%s\n' "$suite" >"$kd/suite"
	touch "$kd/complete"
	log "kernel $key: $release ready in $((SECONDS - t0)) s ($(du -sh "$debs" | cut -f1) of .debs)"
}

for k in "${keys[@]}"; do
	fetch_one "$k"
done
