#!/usr/bin/env bash
# run.sh [--kernels 5.10,6.1,6.12] [--pkg ./pkg/x]... [--timeout 300] [--test-timeout 240]
#        [--test-args '-test.run X'] [--append 'K=V ...'] [--cpu MODEL] [-v] [-- BIN...]
#
# Kernel matrix: boots each Debian kernel under qemu (TCG software emulation; KVM is never used) with
# a busybox initramfs, runs every test binary BIN inside as root with CI=true MESHLET_REQUIRE_PRIV=1,
# and prints a table (kernel, result, boot and wall seconds). Writes $VM_CACHE/results.json and the
# serial logs under $VM_CACHE/logs/. Exit status 0 only when every kernel passed.
#
# BINs are static Go test binaries (see build-tests.sh); each --pkg PKG is built with build-tests.sh
# and added. Without either, the smoke tests (test/vm/smoke) are built and run. Kernels and images
# are fetched and built on demand and cached.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

kernels=""
timeout=300
test_timeout=240
test_args=""
append=""
cpu=()
verbose=()
bins=()
pkgs=()
while [ "$#" -gt 0 ]; do
	case "$1" in
	--kernels) kernels="$2"; shift 2 ;;
	--kernels=*) kernels="${1#*=}"; shift ;;
	--timeout) timeout="$2"; shift 2 ;;
	--test-timeout) test_timeout="$2"; shift 2 ;;
	--test-args) test_args="$2"; shift 2 ;;
	--append) append="$2"; shift 2 ;;
	--pkg) pkgs+=("$2"); shift 2 ;;
	--cpu) cpu=(-cpu "$2"); shift 2 ;;
	-v | --verbose) verbose=(-v); shift ;;
	-h | --help) sed -n '2,12p' "$0"; exit 0 ;;
	--) shift; bins=("$@"); break ;;
	*) die "unknown argument $1 (binaries go after --)" ;;
	esac
done
[ -n "$kernels" ] || kernels="$(default_kernels)"
IFS=',' read -r -a keys <<<"$kernels"
for k in "${keys[@]}"; do known_kernel "$k" || die "unknown kernel $k (see $KERNELS_CONF)"; done

t0=$SECONDS
ensure_tools
"$VM_DIR/fetch-kernels.sh" "${keys[@]}"
"$VM_DIR/mkinitramfs.sh" "${keys[@]}"
t_prep=$((SECONDS - t0))

if [ "${#bins[@]}" -eq 0 ] && [ "${#pkgs[@]}" -eq 0 ]; then
	log "no binaries or packages given: building the smoke tests"
	pkgs=(./test/vm/smoke)
fi
if [ "${#pkgs[@]}" -gt 0 ]; then
	built="$("$VM_DIR/build-tests.sh" -o "$VM_CACHE/bin-run" "${pkgs[@]}")" || die "building ${pkgs[*]} failed"
	mapfile -t more <<<"$built"
	bins+=("${more[@]}")
fi

# Second cpio archive with the test binaries, appended to each kernel's base initramfs.
stage="$(mktemp -d "$VM_CACHE/tests-stage.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/tests"
names=()
for b in "${bins[@]}"; do
	[ -f "$b" ] || die "test binary $b not found"
	# The initramfs has no libc: a Go binary built with cgo cannot start there.
	if go version -m "$b" 2>/dev/null | grep -q 'CGO_ENABLED=1'; then
		die "$b was built with cgo; build it with CGO_ENABLED=0 (build-tests.sh does)"
	fi
	n="$(basename "$b")"
	n="${n%.test}.test"
	[ ! -e "$stage/tests/$n" ] || die "two binaries named $n"
	install -m 0755 "$b" "$stage/tests/$n"
	if [ -d "${b%.test}.testdata" ]; then
		cp -a "${b%.test}.testdata" "$stage/tests/${n%.test}.testdata"
	fi
	names+=("${n%.test}")
done
printf '%s\n' "$test_args" >"$stage/tests/args"
tests_cpio="$VM_CACHE/tests.cpio.gz"
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -1) >"$tests_cpio"
printf '%s\n' "${names[@]}" >"$tests_cpio.list"

mkdir -p "$VM_CACHE/tools"
(cd "$REPO_ROOT" && go build -o "$VM_CACHE/tools/vmrun" ./test/vm/cmd/vmrun) || die "build vmrun failed"
log "prepared in ${t_prep}s; booting ${keys[*]} with ${names[*]}"
rc=0
"$VM_CACHE/tools/vmrun" -cache "$VM_CACHE" -kernels "$kernels" -tests "$tests_cpio" \
	-timeout "${timeout}s" -test-timeout "${test_timeout}s" -append "$append" "${cpu[@]}" "${verbose[@]}" || rc=$?
log "matrix finished in $((SECONDS - t0))s (rc=$rc)"
exit "$rc"
