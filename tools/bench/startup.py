#!/usr/bin/env python3
"""Start-up time of mcp-supervisor binaries: `--version` (process start to
exit) and `run` (process start to the `initialize` response on stdout).

    python3 tools/bench/startup.py NAME=BINARY ... [--runs N] [--manifests DIR]

`run` serves `--manifests` unsigned (default: .build/manifests, the pinned
bundled cells) with a private state directory per binary."""
import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time


def version_ms(binary):
    t = time.perf_counter_ns()
    subprocess.run([binary, "--version"], check=True, stdout=subprocess.DEVNULL)
    return (time.perf_counter_ns() - t) / 1e6


def initialize_ms(binary, manifests, work):
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "startup", "version": "1"}}}
    t = time.perf_counter_ns()
    p = subprocess.Popen([binary, "run", "--allow-unsigned", "--manifests", manifests, "--policies", "policies",
                          "--state-dir",
                          f"{work}/state", "--scratch-dir", f"{work}/scratch", "--log-level", "error"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    p.stdin.write(json.dumps(init).encode() + b"\n")
    p.stdin.flush()
    line = p.stdout.readline()
    elapsed = (time.perf_counter_ns() - t) / 1e6
    assert json.loads(line)["id"] == 1, line
    p.stdin.close()
    p.wait(timeout=30)
    return elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binaries", nargs="+", help="NAME=PATH")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--manifests", default=".build/manifests")
    a = ap.parse_args()
    print(f"| binary | size (MiB) | `--version` median / p90 (ms) | `run` to `initialize` answered, median / p90 (ms) |")
    print("| --- | --- | --- | --- |")
    for spec in a.binaries:
        name, path = spec.split("=", 1)
        with tempfile.TemporaryDirectory() as work:
            version_ms(path)
            initialize_ms(path, a.manifests, work)
            v = sorted(version_ms(path) for _ in range(a.runs))
            i = sorted(initialize_ms(path, a.manifests, work) for _ in range(max(5, a.runs // 3)))
        p90 = lambda xs: xs[int(len(xs) * 0.9) - 1]
        size = os.path.getsize(path) / (1 << 20)
        print(f"| {name} | {size:.0f} | {statistics.median(v):.1f} / {p90(v):.1f} | "
              f"{statistics.median(i):.1f} / {p90(i):.1f} |")


if __name__ == "__main__":
    main()
