# Ballast: build, test, demo.
GO      ?= go
BIN     := bin/ballast
GOBIN   := $(shell $(GO) env GOPATH)/bin
FUZZTIME ?= 60s

.PHONY: all build test deps demo proto fuzz soak vet clean chaos

all: build

build:
	$(GO) build -o $(BIN) ./cmd/ballast

# Installs what the tests need (Debian packages of the real clients we test
# against), then runs every test with the race detector.
# The unit tests run two packages at a time, the benchmark's own test (a
# quick suite whose numbers it does not check) among them. The end-to-end
# racks run alone, after the rest: beside another rack or the race
# detector's load their raft groups starve into timeouts. The exception is
# the chaos harness's regression schedules, whose checks are of safety
# alone: their three racks run side by side (-parallel 3), each in its own
# network namespaces, which keeps the whole run within its 20 minutes.
test: deps
	$(GO) vet ./...
	$(GO) test -race -p 2 -timeout 18m $$($(GO) list ./... | grep -v -e '/e2e$$')
	$(GO) test -race -p 1 -parallel 3 -timeout 18m ./e2e/

deps:
	@scripts/install-deps.sh

demo: build
	./$(BIN) demo

# Regenerates the committed protobuf code.
proto:
	@command -v protoc >/dev/null || { echo "protoc missing: apt-get install protobuf-compiler"; exit 1; }
	$(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
	$(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
	PATH="$(GOBIN):$$PATH" protoc --go_out=. --go_opt=paths=source_relative \
		--go-grpc_out=. --go-grpc_opt=paths=source_relative \
		proto/ballastpb/ballast.proto proto/raftpb/raft.proto proto/sledpb/sled.proto \
		proto/txnpb/txn.proto

# Runs every fuzz target for FUZZTIME each; new crashers land in the
# package's testdata/fuzz, where they stay as regression seeds.
FUZZ_TARGETS := \
	./attach/nbd/:FuzzHandshake \
	./attach/nbd/:FuzzRequestParser \
	./attach/nbd/:FuzzAllocationEncoding \
	./consensus/transport/:FuzzDecodeRequest \
	./consensus/logstore/:FuzzDecodeLogValue \
	./headnode/journal/:FuzzDecodeHeader \
	./headnode/journal/:FuzzDecodeSuperblock \
	./headnode/blockstore/:FuzzJournaledEntry \
	./consensus/:FuzzDecodeKVCommand \
	./txn/:FuzzUnmarshalCommand \
	./txn/:FuzzUnmarshalResult \
	./txn/:FuzzUnmarshalReads \
	./txn/:FuzzRestoreParticipant \
	./sled/:FuzzDecodeShard \
	./sled/:FuzzGetShardRanges \
	./attach/nvmetcp/:FuzzPDUParser \
	./attach/nvmetcp/:FuzzConnection \
	./internal/blockwire/:FuzzDecodeHeader \
	./internal/blockwire/:FuzzReader \
	./internal/blockwire/:FuzzParsePreamble \
	./internal/blockwire/:FuzzParseExtents \
	./internal/replwire/:FuzzReader \
	./internal/sledwire/:FuzzReader

fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$name in $$pkg for $(FUZZTIME)"; \
		$(GO) test -run='^$$' -fuzz="^$$name\$$" -fuzztime=$(FUZZTIME) $$pkg; \
	done

# Runs the transaction tests far longer than make test: the
# linearizability check over many seeds (TXN_SOAK_SEEDS, each a new run
# with faults) and the exhaustive interleavings at their deep bounds.
TXN_SOAK_SEEDS ?= 50
soak:
	TXN_SOAK_SEEDS=$(TXN_SOAK_SEEDS) $(GO) test -count=1 -timeout 0 -run 'TestLinearizableUnderFaults' ./txn/driver/
	TXN_EXHAUSTIVE_DEEP=1 $(GO) test -count=1 -timeout 0 -run 'Exhaustive' ./txn/
	MIGRATE_DEEP=1 $(GO) test -count=1 -timeout 0 -run 'TestEveryInterleaving' ./migrate/

# Runs the nemesis harness (e2e/chaos_test.go) long: SCHEDULES schedules
# of DURATION each, seeds SEED, SEED+1, ... on a fresh rack in network
# namespaces (root needed). Every run prints its seed; `make chaos SEED=n
# DURATION=d` replays that schedule alone. The JSON summary and a failed
# schedule's history land in CHAOS_OUT (default: a printed temporary
# directory); CHAOS_ACTIONS / CHAOS_SKIP (comma lists) choose fault kinds.
SEED      ?=
DURATION  ?= 2m
SCHEDULES ?= $(if $(SEED),1,10)
chaos: deps
	CHAOS_SEED=$(SEED) CHAOS_DURATION=$(DURATION) CHAOS_SCHEDULES=$(SCHEDULES) \
		$(GO) test -count=1 -timeout 0 -run '^TestChaos$$' -v ./e2e/

vet:
	$(GO) vet ./...

clean:
	rm -rf bin

# Measures Ballast against the qemu-nbd baselines in one run (the standard
# suite: about a quarter of an hour on two cores). The table, the goals,
# results.json, plots and CPU profiles land in BENCH_OUT;
# `./bin/ballast bench --help` lists the options (--suite quick or sustain,
# --target URI, --rack processes, --journal-size, ...).
BENCH_OUT   ?= bench-out
BENCH_FLAGS ?= --profile
.PHONY: bench
bench: build
	./$(BIN) bench --suite standard --out $(BENCH_OUT) $(BENCH_FLAGS)
