#!/usr/bin/env bash
# make bench: builds what the benchmark needs, then runs tools/bench/bench.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v bwrap >/dev/null || { if [ "$(id -u)" = 0 ]; then apt-get install -y -qq bubblewrap >/dev/null; else echo "install bubblewrap: sudo apt-get install -y bubblewrap"; exit 1; fi; }
mkdir -p .build/bench
gcc -O2 -static -o .build/bench/noop tools/bench/noop.c
gcc -O2 -Wall -Werror -o .build/bench/spawn_floor tools/bench/spawn_floor.c
# The flags of every release build (Makefile, RELEASE_FLAGS): others would
# rebuild everything.
swift build -c release --product sdk-echo-server ${SWIFT_RELEASE_FLAGS:-}
swift build -c release --product mcp-supervisor ${SWIFT_RELEASE_FLAGS:-}
swift build -c release --product resilience-bench ${SWIFT_RELEASE_FLAGS:-}
exec python3 tools/bench/bench.py "$@"
