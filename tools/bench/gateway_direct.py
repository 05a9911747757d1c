#!/usr/bin/env python3
"""Round trips of `tools/call` to one stdio MCP server, timed by a raw
JSON-RPC driver (standard library only: json and a pipe in the measured
path). The gateway benchmark compares, in the same run and with this same
driver:

- direct: mcp-server-time started ONCE as a long-lived unsandboxed process
  (the default command: `python -m mcp_server_time` from the venv of `make
  gateway-servers`);
- through the gateway: any other stdio MCP server command line given after
  `--`, e.g. `mcp-supervisor run ...` fronting mcp-server-time as a server
  cell (the tool is then exposed under its prefix: `--tool
  time_get_current_time`).

The driver starts the command, times `initialize` (spawn to answer) and
`tools/list`, makes `--warmup` untimed calls, then times `--calls`
sequential `tools/call` round trips (send to response, one at a time) and
prints one JSON object: start-up, p50/p90/p99/mean/min/max in µs, calls/s
over the timed loop, and the count of error results. With `--starts N` it
also measures N cold starts: a fresh process each time, spawn →
initialize → tools/list → one tools/call → stdin closed and the process
waited for (what a per-call gateway pays when nothing is prespawned).

Usage:
  make gateway-servers
  tools/bench/gateway_direct.py --calls 1000                       # direct
  tools/bench/gateway_direct.py --calls 1000 --starts 10           # + cold starts
  tools/bench/gateway_direct.py --tool time_get_current_time --calls 1000 -- \\
      .build/release/mcp-supervisor run --manifests DIR --state-dir S --scratch-dir T
Server-to-client requests are answered: `ping` with {}, anything else with
a -32601 error. stderr of the server goes to this process's stderr unless
--quiet. Nothing here asserts a time: this is a benchmark, not a test.
"""
import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from gateway import VENV  # noqa: E402  (where `make gateway-servers` put the servers)

VENV_PYTHON = VENV / "bin" / "python"
DIRECT = [str(VENV_PYTHON), "-m", "mcp_server_time", "--local-timezone", "UTC"]
PROTOCOL_VERSION = "2025-11-25"


def pct(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


class Peer:
    """One server process spoken to in raw newline-delimited JSON-RPC."""

    def __init__(self, argv, quiet, timeout):
        self.t0 = time.perf_counter()
        # No .pyc written into a package tree that manifests pin by digest.
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL if quiet else None, bufsize=0,
                                  env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
        self.id = 0
        self.buf = b""
        self.timeout = timeout

    def send(self, obj):
        self.p.stdin.write(json.dumps(obj).encode() + b"\n")

    def readline(self):
        end = time.monotonic() + self.timeout
        while b"\n" not in self.buf:
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.p.stdout], [], [], left)[0]:
                raise TimeoutError(f"no message from the server within {self.timeout} s")
            chunk = os.read(self.p.stdout.fileno(), 1 << 16)
            if not chunk:
                raise EOFError(f"the server closed its stdout (exit status {self.p.poll()})")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def request(self, method, params=None):
        """The response to a new request; the server's own requests are
        answered meanwhile and its notifications skipped."""
        self.id += 1
        msg = {"jsonrpc": "2.0", "id": self.id, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        while True:
            m = self.readline()
            if "method" in m:
                if "id" in m:
                    answer = {"result": {}} if m["method"] == "ping" else {
                        "error": {"code": -32601, "message": f"{m['method']} is not supported by this client"}}
                    self.send({"jsonrpc": "2.0", "id": m["id"], **answer})
                continue
            if m.get("id") == self.id:
                return m

    def initialize(self):
        r = self.request("initialize", {"protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                                        "clientInfo": {"name": "gateway-bench", "version": "1"}})
        if "result" not in r:
            raise RuntimeError(f"initialize failed: {r}")
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return r

    def call(self, tool, args):
        return self.request("tools/call", {"name": tool, "arguments": args})

    def close(self):
        try:
            self.p.stdin.close()
        except OSError:
            pass
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.p.stdout.close()


def failed(r):
    return "error" in r or r.get("result", {}).get("isError") is True


def summary(us):
    return {"p50Us": round(statistics.median(us)), "p90Us": round(pct(us, 90)), "p99Us": round(pct(us, 99)),
            "meanUs": round(statistics.fmean(us)), "minUs": round(min(us)), "maxUs": round(max(us))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=500, help="timed sequential tools/call round trips (500)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed calls first (20)")
    ap.add_argument("--tool", default="get_current_time", help="tool name (get_current_time)")
    ap.add_argument("--args", default='{"timezone": "UTC"}', help="tool arguments, JSON ({\"timezone\": \"UTC\"})")
    ap.add_argument("--starts", type=int, default=0, help="also measure N cold starts (0)")
    ap.add_argument("--timeout", type=float, default=60, help="seconds to wait for any one message (60)")
    ap.add_argument("--quiet", action="store_true", help="discard the server's stderr")
    ap.add_argument("command", nargs="*", help="the server command line after `--` (default: mcp-server-time, direct)")
    a = ap.parse_args()
    argv = a.command or DIRECT
    if not a.command and not VENV_PYTHON.exists():
        sys.exit(f"{VENV_PYTHON} missing: run `make gateway-servers`")
    args = json.loads(a.args)
    out = {"command": argv, "tool": a.tool, "calls": a.calls, "warmup": a.warmup}

    peer = Peer(argv, a.quiet, a.timeout)
    peer.initialize()
    out["initializeMs"] = round((time.perf_counter() - peer.t0) * 1000, 1)
    t = time.perf_counter()
    tools = peer.request("tools/list").get("result", {}).get("tools", [])
    out["toolsListMs"] = round((time.perf_counter() - t) * 1000, 1)
    out["toolsListed"] = [x.get("name") for x in tools]
    errors = 0
    for _ in range(a.warmup):
        errors += failed(peer.call(a.tool, args))
    times = []
    loop = time.perf_counter()
    for _ in range(a.calls):
        t = time.perf_counter()
        r = peer.call(a.tool, args)
        times.append((time.perf_counter() - t) * 1e6)
        errors += failed(r)
    elapsed = time.perf_counter() - loop
    peer.close()
    if times:
        out.update(summary(times))
        out["callsPerSecond"] = round(a.calls / elapsed, 1)
    out["errors"] = errors
    if errors:
        out["lastResult"] = r

    if a.starts:
        init, first, whole = [], [], []
        for _ in range(a.starts):
            peer = Peer(argv, a.quiet, a.timeout)
            peer.initialize()
            init.append((time.perf_counter() - peer.t0) * 1e6)
            peer.request("tools/list")
            r = peer.call(a.tool, args)
            first.append((time.perf_counter() - peer.t0) * 1e6)
            errors += failed(r)
            peer.close()
            whole.append((time.perf_counter() - peer.t0) * 1e6)
        out["coldStarts"] = {"starts": a.starts, "initialize": summary(init), "firstCallAnswered": summary(first),
                             "untilExited": summary(whole), "errors": errors - out["errors"]}
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
