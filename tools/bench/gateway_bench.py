#!/usr/bin/env python3
"""The gateway benchmark (docs/gateway.md): `tools/call get_current_time`
to mcp-server-time from PyPI, through the gateway and directly, with one
driver (bench.py's `Server`: raw JSON-RPC lines over pipes) in one run,
variants interleaved round by round.

  (G-d)    direct: mcp-server-time started once, long-lived, unsandboxed
  (G-pc)   through the gateway, lifecycle perCall, calls spaced so that a
           prespawned, pre-initialized server is ready for each
  (G-pc0)  through the gateway, perCall, `--prespawn 0`: a cold server per call
  (G-pcb)  perCall, calls back to back: what sustained calls cost
  (G-s)    through the gateway, lifecycle session
  memory   the supervisor's VmRSS after initialize with 10 server cells registered

All gateway variants serve a signed server cell registered with `cell
register` (which runs the server once in its sandbox and pins its tools).
Run alone (`tools/bench/gateway_bench.py`) it prints its markdown section;
`tools/bench/bench.py` includes it in docs/benchmarks.md.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "e2e"))
import bench as b  # noqa: E402
import gateway as g  # noqa: E402

ARGS = {"timezone": "Europe/Paris"}


def time_cells(d, n, lifecycle="perCall"):
    """n mcp-server-time server cells under distinct names and prefixes."""
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        name = "time" if n == 1 else f"time-{i:02d}"
        prefix = "time" if n == 1 else f"time{i:02d}"
        g.time_manifest(d, name=name, prefix=prefix, lifecycle=lifecycle)
    return d / "manifests"


def gateway_server(manifests, state, *extra):
    s = b.Server(b.supervisor_argv(manifests, state, *extra))
    s.initialize()
    return s


def section(rounds=3, calls=200, spaced=12):
    b.bench_policies()
    tmp = Path(tempfile.mkdtemp(prefix="mcps-gwbench-"))
    tmp.chmod(0o755)
    states = {}
    dirs = {}
    for key, n, lifecycle in [("pc", 1, "perCall"), ("s", 1, "session"), ("ten", 10, "perCall")]:
        dirs[key] = time_cells(tmp / key, n, lifecycle)
        states[key] = Path(tempfile.mkdtemp(prefix="mcps-gwbench-state-", dir="/var/tmp"))
        b.register(dirs[key], states[key])
    direct_argv = [str(g.VENV / "bin" / "python"), "-m", "mcp_server_time", "--local-timezone", "UTC"]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    res = {k: [] for k in ["d", "d1", "pc", "pc0", "pcb", "s", "startup"]}
    pcb_rate, pc_prespawned = [], []
    for r in range(rounds):
        print(f"gateway round {r + 1}/{rounds}", flush=True)
        d = b.Server(direct_argv, env=env)
        t0 = time.perf_counter()
        d.initialize()
        res["startup"].append((time.perf_counter() - t0) * 1e3)
        d.call_times(10, tool="get_current_time", args=ARGS)
        res["d"] += d.call_times(calls, tool="get_current_time", args=ARGS)
        d.close()
        # What any fresh server pays: the first call after its start (lazy
        # imports, first-use paths), direct and unsandboxed.
        for _ in range(3):
            d = b.Server(direct_argv, env=env)
            d.initialize()
            d.request("tools/list")
            res["d1"] += d.call_times(1, tool="get_current_time", args=ARGS)
            d.close()
        # Spaced by the measured start-up and then some: each call finds a
        # server that is started, initialized and checked.
        gap = max(1.0, 2.0 * statistics.median(res["startup"]) / 1e3)
        s = gateway_server(dirs["pc"], states["pc"])
        s.call_times(2, tool="time_get_current_time", args=ARGS, gap=gap)
        res["pc"] += s.call_times(spaced, tool="time_get_current_time", args=ARGS, gap=gap)
        t0 = time.perf_counter()
        res["pcb"] += s.call_times(spaced, tool="time_get_current_time", args=ARGS)
        pcb_rate.append(spaced / (time.perf_counter() - t0))
        s.close()
        s = gateway_server(dirs["pc"], states["pc"], "--prespawn", "0")
        res["pc0"] += s.call_times(max(3, spaced // 3), tool="time_get_current_time", args=ARGS)
        s.close()
        s = gateway_server(dirs["s"], states["s"])
        s.call_times(10, tool="time_get_current_time", args=ARGS)
        res["s"] += s.call_times(calls, tool="time_get_current_time", args=ARGS)
        s.close()
    # Which of the spaced calls a prespawned server took (call.end records).
    import json
    recs = [json.loads(line) for line in subprocess.run(
        [str(b.BIN), "audit", "query", "--json", "--type", "call.end", "--state-dir", str(states["pc"])],
        capture_output=True, text=True, check=True).stdout.splitlines()]
    pc_prespawned = sum(1 for x in recs if x.get("prespawned"))
    s = gateway_server(dirs["ten"], states["ten"])
    time.sleep(0.5)
    rss_ten = s.rss_kib() / 1024
    s.close()

    direct = statistics.median(res["d"])
    lines = ["## Gateway: mcp-server-time through the supervisor (µs)\n",
             f"`tools/call get_current_time` to mcp-server-time {g.VENV.name} (PyPI, MCP SDK 2.x) with one driver, "
             f"{rounds} rounds interleaved; ratios are to the direct long-lived server (G-d) measured in the same run. "
             f"Server start-up to `initialize` answered (direct): median {statistics.median(res['startup']):.0f} ms.\n",
             "| variant | p50 | p90 | p99 | p50 / (G-d) | samples |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for label, key in [("(G-d) direct: one long-lived unsandboxed server", "d"),
                       ("(G-d1) direct: the first call of a freshly started server", "d1"),
                       ("(G-pc) gateway, perCall, prespawned and pre-initialized (calls spaced)", "pc"),
                       ("(G-pcb) gateway, perCall, calls back to back", "pcb"),
                       ("(G-pc0) gateway, perCall, `--prespawn 0` (cold server per call)", "pc0"),
                       ("(G-s) gateway, lifecycle session", "s")]:
        xs = res[key]
        lines.append(f"| {label} | {statistics.median(xs):.0f} | {b.pct(xs, 90):.0f} | {b.pct(xs, 99):.0f} | "
                     f"{statistics.median(xs) / direct:.2f}× | {len(xs)} |")
    lines += ["",
              f"- Per call through the gateway with a ready server, (G-pc) p50 is **{statistics.median(res['pc']) / direct:.2f}×** "
              f"the direct long-lived server (target ≤ 2×); {pc_prespawned} of the perCall calls recorded were served by "
              "a prespawned server.",
              f"- A per-call server is always a fresh one: its first call costs (G-d1) "
              f"{statistics.median(res['d1']):.0f} µs even unsandboxed ({statistics.median(res['d1']) / direct:.1f}× (G-d)). "
              f"Against that, the gateway's own part of (G-pc) is {statistics.median(res['pc']) - statistics.median(res['d1']):.0f} µs "
              f"at p50 ((G-pc) / (G-d1) = {statistics.median(res['pc']) / statistics.median(res['d1']):.2f}×): the supervisor's "
              "admission, security log (data sync) and relaying, and the sandbox's cost on the server's first-call paths.",
              f"- Calls/s: direct {1e6 / direct:.0f}; session {1e6 / statistics.median(res['s']):.0f}; perCall back to back "
              f"{statistics.median(pcb_rate):.1f} (each call costs a whole interpreter start in CPU, so sustained perCall "
              "throughput is bounded by how fast servers start; that is what lifecycle `session` is for).",
              f"- Supervisor memory with 10 server cells registered (no server running until called): "
              f"**{rss_ten:.1f} MiB** VmRSS after initialize.\n"]
    for st in states.values():
        shutil.rmtree(st, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--spaced", type=int, default=12)
    a = ap.parse_args()
    print("\n".join(section(a.rounds, a.calls, a.spaced)))


if __name__ == "__main__":
    main()
