# vcsnap. `make demo` shows the main job on an embedded etcd; `make test` runs everything.
SHELL   := /bin/bash
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
GO      ?= go
# Test timeout per package; the whole run stays well under CI's limit.
TEST_TIMEOUT ?= 30m

.PHONY: build demo test test-short test-race setup tools vet fmt fuzz clean bench reliability

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/vcsnap ./cmd/vcsnap

# Snapshot an embedded etcd full of Kubernetes-shaped objects to a file store, restore it
# into a fresh embedded etcd, and compare. Needs no cluster and no tools.
demo: build
	$(GO) run ./test/demo -vcsnap bin/vcsnap

# Installs missing Debian packages and builds the pinned tools into the cache.
setup:
	bash test/setup.sh

tools:
	bash test/tools/build.sh

vet:
	@$(GO) mod tidy -diff >/dev/null || { $(GO) mod tidy -diff; echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }

test: setup vet
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...
	$(MAKE) test-race
	bash test/fuzz.sh 100000

# The packages with concurrent code under the race detector, with their embedded etcd and
# in-process S3: the S3 part uploader (storage), the zstd frame workers (snapshot/bundle),
# the watcher (snapshot), the etcd writers and revision raisers (datastore/etcdv3, restore,
# migrate). The others run without it above: those that drive external servers, a node or the
# CLI as processes (datastore/kinesql, volumes, cmd/vcsnap, test/...) would take several times
# as long under -race on two cores, and hold no shared state of their own.
RACE_PKGS ?= ./storage/... ./snapshot/... ./restore/ ./migrate/ ./datastore/etcdv3/
test-race:
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(RACE_PKGS)

# Unit tests only: no servers started.
test-short:
	$(GO) test -short ./...

# Longer fuzzing of the bundle decoder and the URL parsers (FUZZ_EXECS per target).
FUZZ_EXECS ?= 5000000
fuzz:
	bash test/fuzz.sh $(FUZZ_EXECS)

clean:
	rm -rf bin out

# The reliability suites (test/reliability) at the counts published in RELIABILITY.md:
# 50 SIGKILL trials per kind, 1,000 corrupt bundles, 20 fault trials per link, 3 load runs.
# `make test` runs the same suites with reduced counts. The table lands in
# out/reliability.md; VCSNAP_RELIABILITY_SEED replays another seed.
reliability: setup
	@mkdir -p out && rm -f out/reliability-rows.txt
	set -o pipefail; VCSNAP_RELIABILITY=1 VCSNAP_RELIABILITY_OUT=$(CURDIR)/out/reliability-rows.txt \
		$(GO) test -count=1 -timeout 90m -v -run 'TestNoLeaks|TestEtcdTLSVerified|TestFaults|TestCrash|TestCorruptBundles|TestConsistencyUnderLoad' ./test/reliability/ \
		| grep -E '^(=== RUN|--- |RELIABILITY|PASS|FAIL|ok|\s+\S+_test\.go)' | grep -v '^=== RUN.*/'
	@{ echo "| suite | test | trials | result |"; echo "|---|---|---|---|"; cat out/reliability-rows.txt; } > out/reliability.md
	@cat out/reliability.md

# Benchmarks against the peers' methods on the same data; results in test/bench/results/.
BENCH_KEYS ?= 10000,100000
bench: setup
	VCSNAP_BENCH=1 VCSNAP_BENCH_KEYS=$(BENCH_KEYS) VCSNAP_BENCH_KEEP=$(BENCH_KEEP) VCSNAP_BENCH_REPEATS=$(BENCH_REPEATS) $(GO) test -count=1 -timeout 120m -run TestBenchmarks -v ./test/bench/ | grep -v '^=== '

# vcsnap's container image as a docker-archive/OCI tarball, built without a registry or an
# engine (test/image): `ctr -n k8s.io images import bin/vcsnap-image.tar` or `docker load -i`.
.PHONY: image test-node
image:
	$(GO) run ./test/image -o bin/vcsnap-image.tar -version $(VERSION) vcsnap

# Only the tests that run a real node (root: containerd, kubelet, a network namespace).
test-node:
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v -run 'TestNode|TestVClusterOnNode|TestVClusterByName|TestRealVCluster' ./test/rig/ ./test/e2e/

# The point-in-time recovery proof (snapshot watch under load, kill -9, restores to recorded
# points) with a longer load than make test's 30 s; prints the RPO it measured.
WATCH_SECONDS ?= 180
WATCH_RATE ?= 200
WATCH_KINDS ?= etcd,sqlite,kine-api
.PHONY: test-watch
test-watch:
	VCSNAP_WATCH_SECONDS=$(WATCH_SECONDS) VCSNAP_WATCH_RATE=$(WATCH_RATE) VCSNAP_WATCH_KINDS=$(WATCH_KINDS) \
		$(GO) test -count=1 -timeout 60m -run TestWatchPointInTime -v ./test/e2e/ | grep -E 'RPO|load:|point|chain|restart|bridge|^(---|ok|FAIL|PASS)'
