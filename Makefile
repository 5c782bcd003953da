# hb — process-liveness shim. `make help` lists the targets.
SHELL        := /bin/bash
GO           ?= go
BIN          := bin
CC           ?= gcc
CFLAGS       ?= -std=c11 -O2 -Wall -Wextra -Werror
TEST_TIMEOUT ?= 240s
CONFIG       ?= contrib/examples/hb.toml
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.5.1
GOLANGCI_LINT_VERSION      := v2.15.0
GOLANGCI_LINT              := $(BIN)/golangci-lint

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z_-]+:.*## /{printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## build hbd, hbctl, hbbench and the C tools into bin/
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/...
	$(GO) build -o $(BIN)/peer-go ./contrib/examples/peer-go
	$(CC) $(CFLAGS) -Icontrib/c -o $(BIN)/hbpeek contrib/c/hbpeek.c
	$(CC) $(CFLAGS) -o $(BIN)/hbclient contrib/c/hbclient.c
	$(CC) $(CFLAGS) -Icontrib/c -o $(BIN)/peer-c contrib/examples/peer-c/peer.c
	$(MAKE) --no-print-directory chain

.PHONY: chain
chain: ## the example chain's stages (contrib/examples/chain) into bin/
	@mkdir -p $(BIN)
	for s in rx work tx; do $(CC) $(CFLAGS) -Icontrib/c -o $(BIN)/chain-$$s contrib/examples/chain/$$s.c || exit 1; done

.PHONY: test
test: build ctest ## go vet, the C reader, then go test -race on every package (fault suite included)
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...

.PHONY: faults
faults: build ## the fault-injection suite alone, verbose (hbd/plugin killed, bad input, floods)
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) -run TestFault -v ./cmd/hbd/

.PHONY: ctest
ctest: ## compile the C reader warning-free (the cross-language test runs in go test ./shm)
	@mkdir -p $(BIN)
	$(CC) $(CFLAGS) -Icontrib/c -fsyntax-only -x c contrib/c/hb_shm.h
	$(CC) $(CFLAGS) -Icontrib/c -o $(BIN)/hbpeek contrib/c/hbpeek.c
	$(CC) $(CFLAGS) -Icontrib/c -o $(BIN)/readcheck shm/testdata/readcheck.c
	$(CC) $(CFLAGS) -Icontrib/c -o $(BIN)/waitcheck shm/testdata/waitcheck.c

.PHONY: bench
bench: build ## run the benchmark (hbbench) and the Go micro-benchmarks
	$(GO) test -run '^$$' -bench . -benchtime 200000x ./shm/
	@mkdir -p run
	$(BIN)/hbbench --json $(BENCHFLAGS) > run/bench.json
	$(BIN)/hbbench --from run/bench.json --plot docs/bench > run/bench.md
	@echo "report: run/bench.md (copy its tables into docs/benchmark.md); plots: docs/bench/*.svg"

.PHONY: bench-deps
bench-deps: ## install the supervisors hbbench compares hb with (runit, s6, supervisord; Debian, root)
	apt-get install -y runit s6 supervisor

.PHONY: run
run: build ## run hbd on the bundled example (state in ./run)
	$(BIN)/hbd -c $(CONFIG)

.PHONY: lint
lint: $(GOLANGCI_LINT) ## gofmt, go vet and golangci-lint (.golangci.yml)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt: $$out"; exit 1; fi
	$(GO) vet ./...
	$(GOLANGCI_LINT) run ./...

$(GOLANGCI_LINT): # golangci-lint at the pinned version, built into bin/
	@mkdir -p $(BIN)
	GOBIN=$(CURDIR)/$(BIN) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	@$(GOLANGCI_LINT) version | grep -q ' $(GOLANGCI_LINT_VERSION:v%=%) ' || { echo "bin/golangci-lint is not $(GOLANGCI_LINT_VERSION): rm it and run make lint"; exit 1; }

PROTOC_OPTS := --go_opt=paths=source_relative --go-grpc_opt=paths=source_relative

.PHONY: proto-tools
proto-tools: # the pinned protoc plugins, built into bin/
	GOBIN=$(CURDIR)/$(BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(CURDIR)/$(BIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

.PHONY: proto
proto: proto-tools ## regenerate plugin/proto from hb.proto (needs protoc)
	PATH=$(CURDIR)/$(BIN):$$PATH protoc -I plugin/proto --go_out=plugin/proto --go-grpc_out=plugin/proto \
	  $(PROTOC_OPTS) plugin/proto/hb.proto

.PHONY: check-protos
check-protos: proto-tools ## regenerate plugin/proto into a scratch directory and fail if it differs from the committed code
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && cp plugin/proto/hb.proto "$$tmp"/ && \
	  PATH=$(CURDIR)/$(BIN):$$PATH protoc -I "$$tmp" --go_out="$$tmp" --go-grpc_out="$$tmp" $(PROTOC_OPTS) "$$tmp"/hb.proto && \
	  diff -u plugin/proto/hb.pb.go "$$tmp"/hb.pb.go && diff -u plugin/proto/hb_grpc.pb.go "$$tmp"/hb_grpc.pb.go && \
	  echo "plugin/proto matches hb.proto"

.PHONY: clean
clean: ## remove build outputs
	rm -rf $(BIN) run
