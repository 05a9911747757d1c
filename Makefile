# mcp-supervisor — the two commands a newcomer needs:
#   make run    build everything and serve MCP over stdio
#   make test   install what is missing, build, and run every test
#
# Cells are always built in release mode, statically linked: their start-up
# time is part of every call.
#
# Every release build takes the same flags (SwiftPM rebuilds everything when
# they change): the Swift runtime and Foundation linked in
# (--static-swift-stdlib), so an installed supervisor needs no toolchain.
# The static Foundation names -lcurl (FoundationNetworking); Debian's
# runtime package has only libcurl.so.4, so a link in .build stands for the
# -dev package's libcurl.so.
STATIC_LINK = $(CURDIR)/.build/static-link
RELEASE_FLAGS = --static-swift-stdlib -Xlinker -L$(STATIC_LINK)

SWIFT      ?= swift
CONFIG     ?= debug
BIN         = .build/$(CONFIG)/mcp-supervisor
CELLS       = echo-cell fs-cell probe-cell
VENV        = .venv
PY          = $(VENV)/bin/python
PYDEPS      = $(VENV)/.installed
# The official MCP Python SDK 2.x (protocol 2026-07-28) cannot share a venv
# with 1.x: its client tests (tests/e2e_mcp2) run from a venv of their own.
VENV2       = .venv-mcp2
PYDEPS2     = $(VENV2)/.installed
# The uid the unprivileged test pass runs as (when `make test` runs as root).
TEST_UID   ?= 4242
SYSTEM_PACKAGES = libseccomp-dev libcap-dev git jq python3-venv
# Needed by the tests only (the dashboard is rendered in headless Chromium;
# openssl verifies the egress CA's certificates; three `serve --http` instances run behind
# HAProxy): installed with the others when root; otherwise the test that needs one says so.
TEST_PACKAGES = chromium openssl haproxy
# Real MCP servers from PyPI for the gateway tests, in venvs the tests own
# (not the user's environment). Made with the system interpreter, the one
# server cells exec: a venv of another Python (pyenv, /usr/local) would hold
# extension modules built for it, under paths a sandboxed worker cannot read.
GATEWAY_PYTHON ?= /usr/bin/python3.11
GATEWAY_REQS = tests/requirements-gateway.txt tests/requirements-gateway-sqlite.txt
# Outside the checkout and world-readable: workers run as another uid
# (nobody under a root supervisor, or the unprivileged tests' user), and a
# checkout may sit in a private directory (a CI clone in `mktemp -d`). Named
# by the user and the requirement files' digest: other requirements make
# another tree; the same ones reuse it across clones (tests/e2e/gateway.py
# computes the same name).
GATEWAY    ?= /var/tmp/mcp-supervisor-gateway-$(shell id -u)-$(shell cat $(GATEWAY_REQS) | sha256sum | cut -c1-16)
export MCPS_GATEWAY_DIR := $(GATEWAY)
GATEWAYDEPS = $(GATEWAY)/.installed

.PHONY: all deps build cells pin register install register-installed mcp2-venv gateway-servers test unit-tests system-tests unprivileged-tests e2e-tests run bench check fmt docs dashboard-screenshot clean

all: build cells

# System packages: installed when root, otherwise the exact command is shown.
deps:
	@missing=""; for p in $(SYSTEM_PACKAGES) $(if $(filter 0,$(shell id -u)),$(TEST_PACKAGES)); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null || exit 1; \
	  else \
	    echo "missing system packages:$$missing"; \
	    echo "install them with: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

$(STATIC_LINK)/libcurl.so:
	@mkdir -p $(STATIC_LINK)
	@curl=$$( (ldconfig -p 2>/dev/null || /sbin/ldconfig -p) | awk '$$1 == "libcurl.so.4" { print $$NF; exit }'); \
	test -n "$$curl" || { echo "libcurl.so.4 not found (apt-get install libcurl4)"; exit 1; }; \
	ln -sf "$$curl" $@

build: deps $(STATIC_LINK)/libcurl.so
	$(SWIFT) build -c $(CONFIG) --product mcp-supervisor $(if $(filter release,$(CONFIG)),$(RELEASE_FLAGS))

cells: deps $(STATIC_LINK)/libcurl.so
	@for c in $(CELLS); do $(SWIFT) build -c release --product $$c $(RELEASE_FLAGS) || exit 1; done

# The bundled manifests pinned to the freshly built cells: copies in
# $(PINNED) with the cells' SHA-256 and absolute paths. The checkout's
# manifests/ is never rewritten (building leaves `git status` clean); the
# .sig files of `make register` are written beside the copies.
PINNED      = .build/manifests

pin: build cells
	$(BIN) manifest pin --out $(PINNED) manifests/*.json

# Development flow: a local key (created once), the freshly built bundled
# cells signed with it and registered in the local trust ledger. A real
# deployment signs on a separate machine (docs/trust.md).
STATE      ?= $${XDG_STATE_HOME:-$$HOME/.local/state}/mcp-supervisor
DEVKEY      = $(STATE)/keys/dev-signing

# $(call sign_and_register,BINARY,MANIFEST-DIRECTORY): `cell register`
# prints each permission change it approves (a rebuilt cell with new rights
# is never approved silently).
define sign_and_register
	@mkdir -p -m 1777 /tmp/mcp-supervisor-files
	@test -f "$(DEVKEY).key" || $(1) keys generate --out "$(DEVKEY)" --state-dir "$(STATE)"
	$(1) cell sign --key "$(DEVKEY).key" $(2)/*.json --state-dir "$(STATE)"
	$(1) cell register --key "$(DEVKEY).key" --approve-widening $(2)/*.json --state-dir "$(STATE)"
endef

register: pin
	$(call sign_and_register,$(BIN),$(PINNED))

# Installing: the release-built supervisor (Swift runtime linked in), the
# bundled cells, their manifests pinned to the installed cells, and the
# policies, in the layout the binary finds from any working directory (its
# share directory sits beside its own bin/):
#   $(PREFIX)/bin/mcp-supervisor
#   $(PREFIX)/share/mcp-supervisor/{manifests,policies,cells}
# PREFIX defaults to /usr/local for root, ~/.local otherwise; DESTDIR is
# put before every installed path (staging for a package). Without DESTDIR
# the installed cells are then signed and registered in $(STATE) as
# `make register` does; with it, the command that does so is printed.
# git-read is not installed: it reads the repository of this checkout.
PREFIX     ?= $(if $(filter 0,$(shell id -u)),/usr/local,$(HOME)/.local)
SHARE       = $(PREFIX)/share/mcp-supervisor
INSTALL_CONFIG ?= release
INSTALLED_BIN = $(DESTDIR)$(PREFIX)/bin/mcp-supervisor
INSTALL_MANIFESTS = $(filter-out manifests/git-read.json,$(wildcard manifests/*.json))

install: cells
	$(SWIFT) build -c $(INSTALL_CONFIG) --product mcp-supervisor $(if $(filter release,$(INSTALL_CONFIG)),$(RELEASE_FLAGS))
	install -d "$(DESTDIR)$(PREFIX)/bin" "$(DESTDIR)$(SHARE)/manifests" "$(DESTDIR)$(SHARE)/policies" \
	  "$(DESTDIR)$(SHARE)/cells/python"
	install -m 755 -s .build/$(INSTALL_CONFIG)/mcp-supervisor "$(INSTALLED_BIN)"
	install -m 755 .build/release/echo-cell .build/release/fs-cell "$(DESTDIR)$(SHARE)/cells/"
	install -m 644 cells/python/*.py "$(DESTDIR)$(SHARE)/cells/python/"
	install -m 644 policies/*.json "$(DESTDIR)$(SHARE)/policies/"
	@# The manifests name the built cells as ../.build/release/X; installed,
	@# they sit in ../cells/X. Relative paths stay relative, so the staged
	@# tree works once moved from DESTDIR to PREFIX.
	for m in $(INSTALL_MANIFESTS); do \
	  sed 's#"\.\./\.build/release/#"../cells/#' $$m > "$(DESTDIR)$(SHARE)/manifests/$$(basename $$m)" || exit 1; \
	done
	"$(INSTALLED_BIN)" manifest pin "$(DESTDIR)$(SHARE)"/manifests/*.json
	@if [ -z "$(DESTDIR)" ]; then \
	  $(MAKE) --no-print-directory register-installed; \
	else \
	  echo "installed into $(DESTDIR)$(PREFIX); once in $(PREFIX), sign and register the cells:" >&2; \
	  echo "  make register-installed PREFIX=$(PREFIX)" >&2; \
	fi

register-installed:
	$(call sign_and_register,"$(PREFIX)/bin/mcp-supervisor",$(SHARE)/manifests)

# An MCP client reads `make run`'s stdout: the build, pin, sign and register
# output goes to stderr, and the server replaces make (exec).
# Build, pin, sign and register only when something they depend on changed
# since the last `make run` (a source, a manifest, a policy, the package
# manifest) or the binary or the state's ledger is missing: an unchanged
# checkout goes straight to the server. Their output goes to stderr.
RUNSTAMP    = .build/run.stamp
run: CONFIG = release
run:
	@if [ ! -x $(BIN) ] || [ ! -e $(RUNSTAMP) ] || [ ! -s "$(STATE)/trust/ledger.jsonl" ] || \
	    [ -n "$$(find Sources manifests policies cells Package.swift Makefile -newer $(RUNSTAMP) 2>/dev/null | head -1)" ]; then \
	  $(MAKE) --no-print-directory register CONFIG=$(CONFIG) >&2 && touch $(RUNSTAMP) || exit 1; \
	fi
	@exec $(BIN) run --state-dir "$(STATE)"

# The Python client tests' packages (official MCP SDK, mcp-fuzzer), from PyPI.
$(PYDEPS): tests/requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
	touch $@

$(PYDEPS2): tests/requirements-mcp2.txt
	test -x $(VENV2)/bin/python || python3 -m venv $(VENV2)
	$(VENV2)/bin/pip install -q --disable-pip-version-check -r tests/requirements-mcp2.txt
	touch $@

mcp2-venv: $(PYDEPS2)

# mcp-server-time and mcp-server-git need the MCP SDK 2.x, mcp-server-sqlite
# the 1.x: two venvs. Made afresh when a requirement file changes, so that a
# package tree (pinned by digest in server-cell manifests) holds exactly the
# pinned packages. World-readable: workers run as another uid (nobody under
# root, or the unprivileged tests' user). Quick when already done: the stamp
# is newer than both requirement files.
$(GATEWAYDEPS): | deps
	@test -x $(GATEWAY_PYTHON) || { echo "$(GATEWAY_PYTHON) is missing: the gateway tests run servers with the system Python 3.11 (apt-get install python3.11 python3-venv)"; exit 1; }
	@if [ -e $(GATEWAY) ] && [ ! -O $(GATEWAY) ]; then echo "$(GATEWAY) exists and is not yours: remove it or set GATEWAY=<dir>"; exit 1; fi
	rm -rf $(GATEWAY)
	mkdir -p $(GATEWAY)
	$(GATEWAY_PYTHON) -m venv $(GATEWAY)/venv
	$(GATEWAY)/venv/bin/pip install -q --disable-pip-version-check -r tests/requirements-gateway.txt
	$(GATEWAY_PYTHON) -m venv $(GATEWAY)/venv-sqlite
	$(GATEWAY)/venv-sqlite/bin/pip install -q --disable-pip-version-check -r tests/requirements-gateway-sqlite.txt
	chmod -R a+rX,go-w $(GATEWAY)
	touch $@

gateway-servers: $(GATEWAYDEPS)

test: pin $(PYDEPS) $(PYDEPS2)
	$(SWIFT) build --build-tests
	$(MAKE) --no-print-directory unit-tests system-tests unprivileged-tests e2e-tests

unit-tests:
	$(SWIFT) test --skip-build --filter 'StrictJSONTests|SupervisorCoreTests|CommandLineTests|EgressTests'

system-tests:
	$(SWIFT) test --skip-build --filter SystemTests

# The same sandbox tests as a normal user: workers keep that uid, confined by
# Landlock and seccomp; forking cells get a user + PID namespace. They run
# from a world-readable copy, since the checkout may sit in a private
# directory the test user cannot enter.
unprivileged-tests:
	@if [ "$$(id -u)" = 0 ]; then \
	  echo "system tests as uid $(TEST_UID) (unprivileged)"; \
	  u=$$(mktemp -d /tmp/mcps-unpriv-XXXXXX) && chmod 755 $$u && \
	  mkdir -p $$u/.build/release && \
	  cp -r .build/debug/mcp-supervisorPackageTests.xctest $$u/ && \
	  cp .build/release/probe-cell .build/release/echo-cell $$u/.build/release/ && cp -r policies $$u/ && \
	  mkdir -p $$u/cells/python && cp cells/python/mcpcell.py $$u/cells/python/ && \
	  chmod -R a+rX $$u && \
	  env HOME=/nonexistent XDG_STATE_HOME= XDG_RUNTIME_DIR= MCPS_TEST_ROOT=$$u \
	    setpriv --reuid=$(TEST_UID) --regid=$(TEST_UID) --clear-groups \
	    $$u/mcp-supervisorPackageTests.xctest SystemTests.SandboxTests,SystemTests.ConfinementSystemTests,SystemTests.WorkerProtocolTests,SystemTests.NetworkTests,SystemTests.CommandCellTests,SystemTests.OutcomeTests,SystemTests.SpawnErrorTests,SystemTests.OutputCapTests,SystemTests.AnswerTests,SystemTests.EgressNamespaceTests,SystemTests.EgressInterceptionTests 2>&1 \
	    | tee .build/unprivileged-tests.log | tail -3; \
	  rm -rf $$u; \
	  grep -E "Executed [0-9]+ tests?, with" .build/unprivileged-tests.log | tail -n 1 \
	    | grep -Eq "Executed [1-9][0-9]* tests, with 0 failures" || { echo "unprivileged system tests FAILED"; exit 1; }; \
	else \
	  echo "already unprivileged: system-tests ran in this mode"; \
	fi

e2e-tests: $(PYDEPS) $(PYDEPS2) $(GATEWAYDEPS)
	$(PY) -m pytest -q tests/e2e
	$(VENV2)/bin/python -m pytest -q tests/e2e_mcp2

bench: CONFIG = release
bench: pin $(GATEWAYDEPS)
	SWIFT_RELEASE_FLAGS="$(RELEASE_FLAGS)" tools/bench/run.sh

# The screenshot of docs/operations.md ("Dashboard"): the dashboard's e2e
# test, keeping a copy of the screenshot it takes (the test alone writes it
# to a temporary file only, so `make test` leaves the checkout as it was).
dashboard-screenshot: pin $(PYDEPS)
	MCPS_DASHBOARD_SCREENSHOT=$(CURDIR)/docs/images/dashboard.png \
	  $(PY) -m pytest -q tests/e2e/test_dashboard.py -k shows_a_call

# The settings table of docs/configuration.md, generated from Setting.all
# (a unit test fails when it is out of date).
docs: build
	$(BIN) config doc --update docs/configuration.md

# Swift sources that `make fmt` formats and `make check` lints.
FORMATTED   = Sources Tests tools/bench Package.swift

# Before a commit: `make fmt check`. Warnings are errors (Package.swift
# builds our own targets with -warnings-as-errors, so this is the same build
# as `make test`'s), the code is formatted as .swift-format says (4 spaces, 120
# columns), and only SupervisorPlatform imports Glibc or the C shim
# (tools/check-imports.sh). Lint rules switched off in .swift-format, and
# why: NoBlockComments (an inline /* CAP_SETPCAP */ naming the C constant
# behind a number reads better than a line comment), ReplaceForEachWithForLoop
# (a short `.forEach` is as clear as a loop).
check: deps
	$(SWIFT) build --build-tests
	$(SWIFT) format lint --strict --parallel -r $(FORMATTED)
	tools/check-imports.sh

fmt:
	$(SWIFT) format format --in-place --parallel -r $(FORMATTED)

clean:
	rm -rf .build $(VENV) $(VENV2)
