# meshlet: see README.md. Targets run from a clean checkout on Debian 12.
GO      ?= go
BIN     := bin
GOFLAGS ?=
export CGO_ENABLED ?= 0

.PHONY: all build demo test bench generate fuzz vet vm-test vm-kernels clean deps

all: build

build:
	$(GO) build -o $(BIN)/node-agent ./cmd/node-agent
	$(GO) build -o $(BIN)/sample ./test/demo/sample

# The README's first command: agent on its embedded default, meshed and
# accelerated traffic, then clean up. Needs root.
demo: build
	bash test/demo/demo.sh

# The README's second command: every test. Privileged tests fail (not skip)
# when CI=true or MESHLET_REQUIRE_PRIV=1.
test: build vet
	$(GO) test -count=1 -timeout 30m ./...
	$(MAKE) vm-test

vet:
	$(GO) vet ./...
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi

# Rebuild the BPF object with clang (committed so `go build` needs no clang).
generate:
	$(GO) generate ./pkg/sockmap

# Benchmarks (not timed tests): same-node TCP paths, xDS at scale and the L7 proxies side by side. Each rewrites
# its report in docs/ above the "written by hand below" marker and keeps the analysis after it.
bench: build
	MESHLET_BENCH=1 MESHLET_BENCH_OUT=$(CURDIR)/docs/bench-tcp.md $(GO) test -count=1 -timeout 30m -run 'TestBenchTCP' -v ./test/e2e
	MESHLET_BENCH=1 MESHLET_BENCH_XDS_OUT=$(CURDIR)/docs/bench-xds.md $(GO) test -count=1 -timeout 20m -run 'TestBenchXDS' -v ./test/e2e
	MESHLET_BENCH=1 MESHLET_BENCH_OUT=$(CURDIR)/docs/bench-l7.md $(GO) test -count=1 -timeout 15m -run 'TestBenchL7' -v ./test/e2e

# Every fuzz target of the tree (pkg, internal, cmd, deploy, test), each for FUZZTIME (go test runs one -fuzz
# target at a time).
FUZZTIME ?= 10s
fuzz:
	@set -e; for f in $$(grep -rl --include='*_test.go' '^func Fuzz' pkg internal cmd deploy test); do \
	  for n in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$f); do \
	    echo "== ./$$(dirname $$f) $$n"; \
	    $(GO) test ./$$(dirname $$f) -run '^$$' -fuzz "^$$n$$" -fuzztime $(FUZZTIME); \
	  done; \
	done

clean:
	rm -rf $(BIN)

# Debian packages the tests and benchmarks use.
deps:
	bash .ci/deps.sh

# Kernel matrix in qemu (test/vm): boots each Debian kernel and runs the
# privileged test binaries inside as root. Summary: test/vm/.cache/results.json
VM_KERNELS   ?= 5.10,6.1,6.12
VM_PKGS      ?= ./test/vm/smoke ./pkg/sockmap

vm-kernels:
	test/vm/fetch-kernels.sh $(VM_KERNELS)

vm-test:
	test/vm/run.sh --kernels $(VM_KERNELS) $(addprefix --pkg ,$(VM_PKGS))
