#!/usr/bin/env python3
"""The per-call cost of a change: (c) of bench.py (sequential MCP
tools/call to the echo cell, signed cells, security log on disk) with a
base binary (say, the previous commit's release build), with this
checkout's, and with this checkout's and `--metrics-file`; interleaved
round by round. Reports latency percentiles and the supervisor's own CPU
time per call (all its threads, from /proc/PID/task/*/schedstat, ns
resolution), which a loaded machine disturbs less than latency.

  python3 tools/bench/compare_cost.py --base /path/to/old/mcp-supervisor [--rounds 8] [--calls 300]

Needs `make pin` and a release build (`swift build -c release --product mcp-supervisor`).
A benchmark, not a test: nothing asserts a time.
"""
import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

import bench


def cpu_us(pid):
    total = 0
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((t / "schedstat").read_text().split()[0])
        except OSError:
            pass  # a thread that just ended
    return total / 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="the mcp-supervisor binary to compare against")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--calls", type=int, default=300)
    a = ap.parse_args()
    bench.bench_policies()
    variants = {"base": ([], a.base), "this": ([], None)}
    prom = Path(tempfile.mkdtemp(prefix="mcps-bench-metrics-")) / "metrics.prom"
    variants["this + --metrics-file"] = (["--metrics-file", str(prom)], None)
    states = {k: Path(tempfile.mkdtemp(prefix="mcps-bench-state-", dir="/var/tmp")) for k in variants}
    for st in states.values():
        bench.register(bench.PINNED, st)
    lat = {k: [] for k in variants}
    cpu = {k: [] for k in variants}
    for r in range(a.rounds):
        for k, (extra, binary) in variants.items():
            s = bench.Server(bench.supervisor_argv(bench.PINNED, states[k], *extra, binary=binary))
            s.initialize()
            s.call_times(20)
            c0 = cpu_us(s.p.pid)
            lat[k] += s.call_times(a.calls)
            cpu[k].append((cpu_us(s.p.pid) - c0) / a.calls)
            s.close()
        print(f"round {r + 1}/{a.rounds}", flush=True)
    for d in [*states.values(), prom.parent, bench.BENCH_POLICIES]:
        shutil.rmtree(d, ignore_errors=True)
    base50, basecpu = statistics.median(lat["base"]), statistics.median(cpu["base"])
    print("| variant | p50 µs | p90 µs | p99 µs | p50 / base | supervisor CPU µs per call | CPU / base |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for k in variants:
        p50, c = statistics.median(lat[k]), statistics.median(cpu[k])
        print(f"| {k} | {p50:.0f} | {bench.pct(lat[k], 90):.0f} | {bench.pct(lat[k], 99):.0f} | {p50 / base50:.3f} "
              f"| {c:.0f} | {c / basecpu:.3f} |")


if __name__ == "__main__":
    main()
