# hb — process-liveness shim. `make help` lists the targets.
SHELL        := /bin/bash
GO           ?= go
BIN          := bin
CC           ?= gcc
CFLAGS       ?= -std=c11 -O2 -Wall -Wextra -Werror
TEST_TIMEOUT ?= 240s
CONFIG       ?= contrib/examples/hb.toml
BENCHFLAGS   ?= --load ordinary,rt
VERSION      ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo unknown)
REVISION     ?= $(shell git rev-parse HEAD 2>/dev/null)
GO_LDFLAGS   := -X github.com/hbshim/hb/host/api.Version=$(VERSION) -X github.com/hbshim/hb/host/api.Revision=$(REVISION)
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.5.1
GOLANGCI_LINT_VERSION      := v2.15.0
GOLANGCI_LINT              := $(BIN)/golangci-lint

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z_-]+:.*## /{printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# make install: PREFIX and DESTDIR as usual; the configuration and the
# unit files go under SYSCONFDIR and SYSTEMDUNITDIR.
PREFIX         ?= /usr/local
DESTDIR        ?=
BINDIR         ?= $(PREFIX)/bin
INCLUDEDIR     ?= $(PREFIX)/include
DATADIR        ?= $(PREFIX)/share
MANDIR         ?= $(DATADIR)/man
PKGCONFIGDIR   ?= $(DATADIR)/pkgconfig
SYSCONFDIR     ?= /etc
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
BASHCOMPDIR    ?= $(DATADIR)/bash-completion/completions
ZSHCOMPDIR     ?= $(DATADIR)/zsh/site-functions
FISHCOMPDIR    ?= $(DATADIR)/fish/vendor_completions.d
MANPAGES       := $(BIN)/man/hbd.8 $(BIN)/man/hbctl.8 $(BIN)/man/hb.toml.5
# The installed paths, filled into the unit files and the pkg-config file.
FILL_PATHS     := sed -e 's|/usr/local/bin/hbd|$(BINDIR)/hbd|g' -e 's|/usr/local/bin/hbctl|$(BINDIR)/hbctl|g' -e 's|/etc/hb/hb.toml|$(SYSCONFDIR)/hb/hb.toml|g' \
                      -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' -e 's|@VERSION@|$(VERSION)|g'

.PHONY: build
build: ## build hbd, hbctl, hbbench, the C tools and the man pages into bin/
	@mkdir -p $(BIN)
	$(GO) build -ldflags '$(GO_LDFLAGS)' -o $(BIN)/ ./cmd/...
	$(GO) build -o $(BIN)/peer-go ./contrib/examples/peer-go
	$(CC) $(CFLAGS) -Icontrib/c -o $(BIN)/hbpeek contrib/c/hbpeek.c
	$(CC) $(CFLAGS) -o $(BIN)/hbclient contrib/c/hbclient.c
	$(CC) $(CFLAGS) -Icontrib/c -o $(BIN)/peer-c contrib/examples/peer-c/peer.c
	$(MAKE) --no-print-directory chain man

.PHONY: chain
chain: ## the example chain's stages (contrib/examples/chain) into bin/
	@mkdir -p $(BIN)
	for s in rx work tx; do $(CC) $(CFLAGS) -Icontrib/c -o $(BIN)/chain-$$s contrib/examples/chain/$$s.c || exit 1; done

.PHONY: man
man: $(MANPAGES) ## the man pages hbd(8), hbctl(8), hb.toml(5) from docs/hbd.md, docs/hbctl.md, host/config/reference.md

$(BIN)/man/hbd.8: docs/hbd.md tools/manpage/main.go
	@mkdir -p $(@D)
	$(GO) run ./tools/manpage -name hbd -section 8 -summary "the hb process-liveness shim" -in $< -out $@
$(BIN)/man/hbctl.8: docs/hbctl.md tools/manpage/main.go
	@mkdir -p $(@D)
	$(GO) run ./tools/manpage -name hbctl -section 8 -summary "control and inspect hbd, the hb process-liveness shim" -in $< -out $@
$(BIN)/man/hb.toml.5: host/config/reference.md tools/manpage/main.go
	@mkdir -p $(@D)
	$(GO) run ./tools/manpage -name hb.toml -section 5 -summary "the configuration of hbd, the hb process-liveness shim" -in $< -out $@

.PHONY: install
install: build ## install into DESTDIR/PREFIX (/usr/local): binaries, C header, pkg-config, man pages, completions, units, /etc/hb/hb.toml if none
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(PKGCONFIGDIR) $(DESTDIR)$(MANDIR)/man8 \
	  $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(FISHCOMPDIR) \
	  $(DESTDIR)$(SYSTEMDUNITDIR) $(DESTDIR)$(DATADIR)/hb/runit/hbd $(DESTDIR)$(DATADIR)/hb/s6/hbd \
	  $(DESTDIR)$(DATADIR)/hb/supervisord $(DESTDIR)$(DATADIR)/hb/prometheus $(DESTDIR)$(SYSCONFDIR)/hb
	install -m 0755 $(BIN)/hbd $(BIN)/hbctl $(BIN)/hbpeek $(DESTDIR)$(BINDIR)/
	install -m 0644 contrib/c/hb_shm.h $(DESTDIR)$(INCLUDEDIR)/
	$(FILL_PATHS) contrib/c/hb.pc.in > $(DESTDIR)$(PKGCONFIGDIR)/hb.pc
	install -m 0644 $(BIN)/man/hbd.8 $(BIN)/man/hbctl.8 $(DESTDIR)$(MANDIR)/man8/
	install -m 0644 $(BIN)/man/hb.toml.5 $(DESTDIR)$(MANDIR)/man5/
	$(BIN)/hbctl completion bash > $(DESTDIR)$(BASHCOMPDIR)/hbctl
	$(BIN)/hbctl completion zsh > $(DESTDIR)$(ZSHCOMPDIR)/_hbctl
	$(BIN)/hbctl completion fish > $(DESTDIR)$(FISHCOMPDIR)/hbctl.fish
	$(FILL_PATHS) contrib/systemd/hbd.service > $(DESTDIR)$(SYSTEMDUNITDIR)/hbd.service
	$(FILL_PATHS) contrib/runit/hbd/run > $(DESTDIR)$(DATADIR)/hb/runit/hbd/run
	chmod 0755 $(DESTDIR)$(DATADIR)/hb/runit/hbd/run
	$(FILL_PATHS) contrib/s6/hbd/run > $(DESTDIR)$(DATADIR)/hb/s6/hbd/run
	chmod 0755 $(DESTDIR)$(DATADIR)/hb/s6/hbd/run
	$(FILL_PATHS) contrib/supervisord/hbd.conf > $(DESTDIR)$(DATADIR)/hb/supervisord/hbd.conf
	$(FILL_PATHS) contrib/supervisord/hb-listener.conf > $(DESTDIR)$(DATADIR)/hb/supervisord/hb-listener.conf
	install -m 0644 contrib/prometheus/prometheus.yml contrib/prometheus/hb.rules.yml $(DESTDIR)$(DATADIR)/hb/prometheus/
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/hb/hb.toml ]; then \
	  echo "kept $(DESTDIR)$(SYSCONFDIR)/hb/hb.toml (the example is $(DESTDIR)$(DATADIR)/hb/hb.toml)"; \
	else install -m 0644 contrib/examples/etc-hb.toml $(DESTDIR)$(SYSCONFDIR)/hb/hb.toml; \
	  echo "wrote $(DESTDIR)$(SYSCONFDIR)/hb/hb.toml"; fi
	install -m 0644 contrib/examples/etc-hb.toml $(DESTDIR)$(DATADIR)/hb/hb.toml
	@echo "installed under $(DESTDIR)$(PREFIX); systemd: systemctl daemon-reload && systemctl enable --now hbd"

.PHONY: uninstall
uninstall: ## remove what make install installed (the same PREFIX and DESTDIR); keeps /etc/hb/hb.toml
	rm -f $(DESTDIR)$(BINDIR)/hbd $(DESTDIR)$(BINDIR)/hbctl $(DESTDIR)$(BINDIR)/hbpeek \
	  $(DESTDIR)$(INCLUDEDIR)/hb_shm.h $(DESTDIR)$(PKGCONFIGDIR)/hb.pc \
	  $(DESTDIR)$(MANDIR)/man8/hbd.8 $(DESTDIR)$(MANDIR)/man8/hbctl.8 $(DESTDIR)$(MANDIR)/man5/hb.toml.5 \
	  $(DESTDIR)$(BASHCOMPDIR)/hbctl $(DESTDIR)$(ZSHCOMPDIR)/_hbctl $(DESTDIR)$(FISHCOMPDIR)/hbctl.fish \
	  $(DESTDIR)$(SYSTEMDUNITDIR)/hbd.service
	rm -rf $(DESTDIR)$(DATADIR)/hb
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/hb/hb.toml ]; then echo "kept $(DESTDIR)$(SYSCONFDIR)/hb/hb.toml"; fi

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
	$(GO) test -run '^$$' -bench . -skip BeatC -benchtime 200000x ./shm/
	$(GO) test -run '^$$' -bench BeatC -benchtime 3x ./shm/ # each round runs a C client for 10^8 beats
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
