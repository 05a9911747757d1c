#!/usr/bin/env python3
"""The egress benchmark (docs/egress.md): what a network namespace per
worker costs, and a fetch through the egress proxy against the same fetch
made directly. One driver (bench.py's `Server`: raw JSON-RPC lines over
pipes), variants interleaved round by round, ratios within the same run.

  (E-0)   the echo cell, no network: `--prespawn 0`, a fresh worker per call
  (E-ns)  the same cell with `network.egress: "proxy"`: a fresh worker per
          call in a network namespace of its own (lo up, the listener sent
          to the proxy); spawn time from `call.end` (spawnMicroseconds)
  (E-0p), (E-nsp) the same two, prespawned (calls spaced): the namespace
          is made before the call arrives
  (F-d)   mcp-server-fetch run directly (long-lived, unsandboxed, its own
          connections) fetching a page from a loopback server
  (F-s)   the same server as a server cell (lifecycle session) behind the
          egress proxy, in its network namespace

Run alone (`tools/bench/egress_bench.py`, after `make cells gateway-servers`
and a release build) it prints its markdown section; `tools/bench/bench.py`
includes it in docs/benchmarks.md.
"""
import argparse
import hashlib
import http.server
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "e2e"))
import bench as b  # noqa: E402
import gateway as g  # noqa: E402

PAGE = (b"<html><head><title>Bench</title></head><body><article><h1>Egress</h1>"
        + b"<p>A page fetched through the supervisor's egress proxy for the benchmark. </p>" * 8
        + b"</article></body></html>")


def echo_cells(d):
    """The echo cell twice: without network, and behind the egress proxy."""
    d.mkdir(parents=True, exist_ok=True)
    src = json.loads((b.ROOT / "manifests" / "echo.json").read_text())
    exe = b.ROOT / ".build" / "release" / "echo-cell"
    src["executable"] = {"path": str(exe), "sha256": hashlib.sha256(exe.read_bytes()).hexdigest()}
    (d / "echo.json").write_text(json.dumps(src))
    ns = json.loads(json.dumps(src))
    ns["name"] = "echo-egress"
    ns["tools"][0]["name"] = "echo_egress"
    ns["network"] = {"connect": ["127.0.0.1:9"], "egress": "proxy"}
    (d / "echo-egress.json").write_text(json.dumps(ns))
    return d


class Site:
    def __init__(self):
        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body leave in two writes: without TCP_NODELAY the
            # second waits for the peer's delayed ACK (40 ms).
            disable_nagle_algorithm = True

            def do_GET(self):
                body = b"User-agent: *\nAllow: /\n" if self.path == "/robots.txt" else PAGE
                self.send_response(200)
                self.send_header("Content-Type", "text/plain" if self.path == "/robots.txt" else "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def spawn_micros(state, tool):
    recs = [json.loads(line) for line in subprocess.run(
        [str(b.BIN), "audit", "query", "--json", "--type", "call.end", "--tool", tool, "--state-dir", str(state)],
        capture_output=True, text=True, check=True).stdout.splitlines()]
    return [r["spawnMicroseconds"] for r in recs if not r.get("prespawned") and r.get("spawnMicroseconds")]


def section(rounds=3, calls=100, spaced=30, fetches=30):
    b.bench_policies()
    tmp = Path(tempfile.mkdtemp(prefix="mcps-egbench-"))
    tmp.chmod(0o755)
    cells = echo_cells(tmp / "echo")
    state = Path(tempfile.mkdtemp(prefix="mcps-egbench-state-", dir="/var/tmp"))
    b.register(cells, state)
    site = Site()
    url = f"http://127.0.0.1:{site.port}/page"
    fetch_dir = tmp / "fetch"
    g.fetch_manifest(fetch_dir, [f"127.0.0.1:{site.port}"], lifecycle="session")
    fetch_state = Path(tempfile.mkdtemp(prefix="mcps-egbench-fstate-", dir="/var/tmp"))
    b.register(fetch_dir / "manifests", fetch_state)
    direct_argv = [str(g.VENV / "bin" / "python"), "-m", "mcp_server_fetch", "--allow-private-ips"]
    # As in the cell's manifest (tests/e2e/gateway.py, fetch_manifest): no
    # `node` on PATH, so readabilipy takes its pure-Python path in both.
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", NO_PROXY="*", PATH="/nonexistent")
    res = {k: [] for k in ["0", "ns", "0p", "nsp", "fd", "fdp", "fs"]}
    # The same, with the proxy variables the cell gets (httpx builds a
    # transport, with its TLS context, for each) but NO_PROXY covering the
    # site: what the server's HTTP client costs with a proxy configured,
    # without the proxy's hop.
    env_p = dict(env, HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9",
                 ALL_PROXY="http://127.0.0.1:9", NO_PROXY="127.0.0.1")
    args = {"url": url, **({"raw": True} if os.environ.get("EGRESS_BENCH_RAW") else {})}
    for r in range(rounds):
        print(f"egress round {r + 1}/{rounds}", flush=True)
        s = b.Server(b.supervisor_argv(cells, state, "--prespawn", "0"))
        s.initialize()
        s.call_times(5, tool="echo")
        s.call_times(5, tool="echo_egress")
        for _ in range(calls // 10):
            res["0"] += s.call_times(10, tool="echo")
            res["ns"] += s.call_times(10, tool="echo_egress")
        s.close()
        s = b.Server(b.supervisor_argv(cells, state))
        s.initialize()
        s.call_times(2, tool="echo", gap=0.05)
        s.call_times(2, tool="echo_egress", gap=0.05)
        for _ in range(spaced // 5):
            res["0p"] += s.call_times(5, tool="echo", gap=0.05)
            res["nsp"] += s.call_times(5, tool="echo_egress", gap=0.05)
        s.close()
        d = b.Server(direct_argv, env=env)
        d.initialize()
        d.call_times(3, tool="fetch", args=args)
        res["fd"] += d.call_times(fetches, tool="fetch", args=args)
        d.close()
        d = b.Server(direct_argv, env=env_p)
        d.initialize()
        d.call_times(3, tool="fetch", args=args)
        res["fdp"] += d.call_times(fetches, tool="fetch", args=args)
        d.close()
        s = b.Server(b.supervisor_argv(fetch_dir / "manifests", fetch_state))
        s.initialize()
        s.call_times(3, tool="fetch_fetch", args=args)
        res["fs"] += s.call_times(fetches, tool="fetch_fetch", args=args)
        s.close()
    spawn0, spawnns = spawn_micros(state, "echo"), spawn_micros(state, "echo_egress")
    med = {k: statistics.median(v) for k, v in res.items()}
    lines = ["## Egress: network namespace and proxy (µs)\n",
             f"{rounds} rounds interleaved in one run (`tools/bench/egress_bench.py`, part of `make bench`); "
             "ratios are between variants measured in the same run. A worker behind the egress proxy is cloned "
             "with CLONE_NEWNET (with a user namespace when the supervisor is not root) and, in its setup, brings "
             "`lo` up and sends a listener to the proxy (docs/egress.md).\n",
             "| variant | p50 | p90 | p50 ratio | samples |", "| --- | ---: | ---: | ---: | ---: |",
             f"| spawn, no network (`call.end` spawnMicroseconds, `--prespawn 0`) | {statistics.median(spawn0):.0f} | "
             f"{b.pct(spawn0, 90):.0f} | 1.00× | {len(spawn0)} |",
             f"| spawn, egress proxy (network namespace + listener) | {statistics.median(spawnns):.0f} | "
             f"{b.pct(spawnns, 90):.0f} | {statistics.median(spawnns) / statistics.median(spawn0):.2f}× | {len(spawnns)} |"]
    for label, key, base in [("(E-0) echo call, no network, `--prespawn 0`", "0", "0"),
                             ("(E-ns) echo call, egress proxy, `--prespawn 0`", "ns", "0"),
                             ("(E-0p) echo call, no network, prespawned (spaced)", "0p", "0p"),
                             ("(E-nsp) echo call, egress proxy, prespawned (spaced)", "nsp", "0p"),
                             ("(F-d) mcp-server-fetch direct, long-lived, unsandboxed", "fd", "fd"),
                             ("(F-dp) the same, proxy variables set, NO_PROXY covering the site", "fdp", "fd"),
                             ("(F-s) mcp-server-fetch, session server behind the egress proxy", "fs", "fd")]:
        xs = res[key]
        lines.append(f"| {label} | {med[key]:.0f} | {b.pct(xs, 90):.0f} | {med[key] / med[base]:.2f}× | {len(xs)} |")
    lines += ["",
              f"- The namespace costs **{statistics.median(spawnns) - statistics.median(spawn0):.0f} µs** per spawn at "
              f"p50 ({statistics.median(spawnns) / statistics.median(spawn0):.2f}× the spawn without it) and "
              f"{med['ns'] - med['0']:.0f} µs per unprespawned call; prespawned, the difference is "
              f"{med['nsp'] - med['0p']:.0f} µs ({med['nsp'] / med['0p']:.2f}×): the namespace is made before the "
              "call arrives.",
              f"- A fetch (robots.txt, then the page: two connections, each through the proxy) costs "
              f"{med['fs'] / med['fd']:.2f}× the direct long-lived server's and {med['fs'] / med['fdp']:.2f}× the "
              "same server with the proxy variables set but not used (F-dp): httpx builds a transport with its own "
              "TLS context for each proxy variable, in every new client (mcp-server-fetch makes two per fetch), "
              "which is CPU in the server, not the proxy's hop. (F-s) also includes the gateway's per-call part "
              "(compare (G-s) / (G-d) above).\n"]
    site.server.shutdown()
    for d in (state, fetch_state, tmp):
        shutil.rmtree(d, ignore_errors=True)
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=100)
    a = ap.parse_args()
    print("\n".join(section(a.rounds, a.calls)))


if __name__ == "__main__":
    main()
