#!/usr/bin/env bash
# build-tests.sh [-o DIR] PKG...
#
# Compiles the test binary of each Go package PKG (e.g. ./pkg/sockmap) statically
# (CGO_ENABLED=0 go test -c), so that it runs in the libc-less initramfs. Binaries land in DIR
# (default $VM_CACHE/bin, emptied first) as NAME.test, NAME being the package path with '/' -> '_';
# their paths are printed one a line, ready for `run.sh -- $(build-tests.sh ...)`. A package's
# testdata/ folder is copied to NAME.testdata and appears as ./testdata in the guest's working directory.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

out="$VM_CACHE/bin"
if [ "${1:-}" = "-o" ]; then
	out="$2"
	shift 2
fi
[ "$#" -gt 0 ] || die "usage: $0 [-o DIR] PKG..."
command -v go >/dev/null || die "go not found in PATH"

rm -rf "$out" && mkdir -p "$out"
cd "$REPO_ROOT"
for pkg in "$@"; do
	name="$(go list -f '{{.ImportPath}}' "$pkg")" || die "go list $pkg failed"
	name="${name#"$(go list -m)"/}"
	name="${name//\//_}"
	CGO_ENABLED=0 go test -c -trimpath -o "$out/$name.test" "$pkg" >&2 || die "go test -c $pkg failed"
	# A package without test files produces no binary; say so instead of silently running nothing.
	[ -f "$out/$name.test" ] || die "package $pkg has no tests"
	# Tests read testdata/ relative to their package directory; ship it next to the binary.
	dir="$(go list -f '{{.Dir}}' "$pkg")"
	if [ -d "$dir/testdata" ]; then
		cp -a "$dir/testdata" "$out/$name.testdata"
	fi
	printf '%s\n' "$out/$name.test"
done
