#!/usr/bin/env python3
"""tools/call over HTTP/1.1 keep-alive (serve --http, 2026-07-28, static
token) against stdio (run), in the same run, interleaved round by round;
then calls/s over HTTP at concurrency 4, 16 and 64 (one keep-alive
connection per client thread) for one instance, and for one and three
instances behind HAProxy (the Debian package), in the same run. Nothing
here asserts a time.

Usage: python3 tools/bench/http_bench.py [--rounds N] [--calls N] [--bin PATH]
"""
import argparse
import hashlib
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "bench-" + "0" * 40
MODERN = "2026-07-28"


def pct(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def manifests(work):
    d = work / "manifests"
    d.mkdir()
    src = json.loads((ROOT / ".build/manifests/echo.json").read_text())
    base = ROOT / ".build/manifests"
    if not src["executable"]["path"].startswith("/"):
        src["executable"]["path"] = str((base / src["executable"]["path"]).resolve())
    (d / "echo.json").write_text(json.dumps(src))
    return d


def policies(work):
    """One rule for both transports: every principal (uid:N over stdio,
    token:bench over HTTP) may call echo."""
    d = work / "policies"
    d.mkdir()
    (d / "policy.json").write_text(json.dumps({"principals": [{"name": "all", "principal": "*", "allow": ["*"]}]}))
    shutil.copy(ROOT / "policies" / "syscall-groups.json", d / "syscall-groups.json")


def common(work, name):
    return ["--manifests", str(work / "manifests"), "--policies", str(work / "policies"),
            "--state-dir", str(work / f"state-{name}"), "--scratch-dir", str(work / f"scratch-{name}"),
            "--allow-unsigned", "--log-level", "error", "--max-queued-calls", "256"]


class Stdio:
    def __init__(self, binary, work):
        self.p = subprocess.Popen([binary, "run", *common(work, "stdio")], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.id = 0
        self.req("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                "clientInfo": {"name": "bench", "version": "1"}})
        self.p.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        self.p.stdin.flush()

    def req(self, method, params):
        self.id += 1
        self.p.stdin.write(json.dumps({"jsonrpc": "2.0", "id": self.id, "method": method,
                                       "params": params}).encode() + b"\n")
        self.p.stdin.flush()
        while True:
            m = json.loads(self.p.stdout.readline())
            if m.get("id") == self.id:
                return m

    def call(self):
        t = time.perf_counter()
        m = self.req("tools/call", {"name": "echo", "arguments": {"text": "hi"}})
        assert "result" in m and not m["result"].get("isError"), m
        return (time.perf_counter() - t) * 1e3

    def stop(self):
        self.p.stdin.close()
        self.p.wait(30)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class HTTP:
    def __init__(self, binary, work, name="http", allowed_hosts=()):
        cfg = {"staticTokens": [{"name": "bench", "sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}],
               "limits": {"maxStreams": 256, "maxStreamsPerClient": 256}, "allowedHosts": list(allowed_hosts)}
        (work / f"{name}.json").write_text(json.dumps(cfg))
        self.p = subprocess.Popen([binary, "serve", "--http", "127.0.0.1:0", "--http-config", str(work / f"{name}.json"),
                                   *common(work, name)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while True:
            line = self.p.stderr.readline()
            assert line, "serve did not start"
            if "serving MCP on" in line:
                self.port = int(line.rsplit(":", 1)[1].split("/")[0])
                break
        threading.Thread(target=lambda: [None for _ in self.p.stderr], daemon=True).start()
        self.body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "echo", "arguments": {"text": "hi"},
            "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN,
                      "io.modelcontextprotocol/clientCapabilities": {}}}}).encode()
        self.headers = {"Content-Type": "application/json", "Accept": "application/json",
                        "MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "echo",
                        "Authorization": f"Bearer {TOKEN}"}

    def conn(self):
        return http.client.HTTPConnection("127.0.0.1", self.port)

    def call(self, c):
        t = time.perf_counter()
        c.request("POST", "/mcp", body=self.body, headers=self.headers)
        r = c.getresponse()
        data = r.read()
        assert r.status == 200 and b'"isError":true' not in data, (r.status, data[:200])
        return (time.perf_counter() - t) * 1e3

    def stop(self):
        self.p.terminate()
        self.p.wait(30)


class Balanced:
    """HAProxy on loopback in front of instances (the configuration of
    docs/deployment.md: round robin, health checks, retries only of
    connections that never reached an instance)."""

    def __init__(self, work, front, instances, name):
        self.front, self.instances = front, instances
        servers = "\n".join(f"    server i{i} 127.0.0.1:{h.port} check inter 1s" for i, h in enumerate(instances))
        cfg = work / f"{name}.cfg"
        cfg.write_text(f"""
global
    maxconn 1024
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    retry-on conn-failure
frontend mcp
    bind 127.0.0.1:{front}
    default_backend supervisors
backend supervisors
    balance roundrobin
    http-reuse safe
{servers}
""")
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        assert Path(haproxy).exists(), "haproxy missing: apt-get install haproxy"
        self.p = subprocess.Popen([haproxy, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        end = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", front), timeout=1).close()
                break
            except OSError:
                assert time.time() < end, "haproxy did not start"
                time.sleep(0.1)
        self.call = instances[0].call

    def conn(self):
        return http.client.HTTPConnection("127.0.0.1", self.front)

    def stop(self):
        self.p.terminate()
        self.p.wait(30)


def throughput(h, concurrency, total):
    per = total // concurrency
    errors = []

    def worker():
        c = h.conn()
        try:
            for _ in range(per):
                h.call(c)
        except Exception as e:  # noqa: BLE001 (counted and shown)
            errors.append(repr(e))
        finally:
            c.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t
    return per * concurrency / elapsed, errors


def section(rounds=5, calls=200, binary=str(ROOT / ".build/release/mcp-supervisor"), throughput_calls=1024):
    """The HTTP section of docs/benchmarks.md, as markdown lines."""
    work = Path(tempfile.mkdtemp(prefix="mcps-http-bench-"))
    os.chmod(work, 0o755)
    manifests(work)
    policies(work)
    s, h = Stdio(binary, work), HTTP(binary, work)
    lines = ["", "## HTTP: tools/call over `serve --http` against stdio (ms)", "",
             f"`tools/bench/http_bench.py`: the echo cell, sequential calls, {rounds} rounds × {calls} calls per "
             "transport, interleaved; stdio is `run` driven with raw JSON-RPC lines, HTTP is `serve --http` with a "
             "static token, 2026-07-28 POSTs with `Accept: application/json` on one HTTP/1.1 keep-alive connection "
             "(Python `http.client`). Both serve the same unsigned manifests under the same one-rule policy.", ""]
    try:
        c = h.conn()
        for _ in range(50):  # warm-up: prespawned workers, first-use paths
            s.call()
            h.call(c)
        stdio, over_http = [], []
        for _ in range(rounds):
            stdio += [s.call() for _ in range(calls)]
            over_http += [h.call(c) for _ in range(calls)]
        c.close()
        lines += ["| transport | p50 | p90 | p99 | mean | samples |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for name, xs in (("stdio (`run`)", stdio), ("HTTP/1.1 keep-alive (`serve --http`)", over_http)):
            lines.append(f"| {name} | {pct(xs, 50):.3f} | {pct(xs, 90):.3f} | {pct(xs, 99):.3f} | "
                         f"{statistics.mean(xs):.3f} | {len(xs)} |")
        lines += ["", f"HTTP adds {pct(over_http, 50) - pct(stdio, 50):+.3f} ms at p50 (target: ≤ 0.3 ms).", "",
                  f"Calls/s over HTTP, {throughput_calls} calls spread over N client threads, each with its own "
                  "keep-alive connection (the pool runs 4 calls at once; the rest queue):", "",
                  "| concurrency | calls/s | errors |", "| ---: | ---: | ---: |"]
        for n in (4, 16, 64):
            rate, errors = throughput(h, n, throughput_calls)
            lines.append(f"| {n} | {rate:.0f} | {len(errors)} |")
    finally:
        s.stop()
        h.stop()
    try:
        lines += scale_out(binary, work, throughput_calls)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return lines


def scale_out(binary, work, total, rounds=3):
    """Calls/s at concurrency 4, 16, 64: one instance asked directly, one
    behind HAProxy, three behind HAProxy; the three set-ups up at once and
    measured in turn, round by round, so load from elsewhere falls on all."""
    front1, front3 = free_port(), free_port()
    hosts = [f"127.0.0.1:{front1}", f"127.0.0.1:{front3}"]
    nodes = [HTTP(binary, work, f"node{i}", hosts) for i in range(4)]
    one, behind1, behind3 = nodes[0], None, None
    try:
        behind1 = Balanced(work, front1, [nodes[0]], "one")
        behind3 = Balanced(work, front3, nodes[1:], "three")
        setups = [("one instance, direct", one), ("one instance behind HAProxy", behind1),
                  ("three instances behind HAProxy", behind3)]
        for _, h in setups:  # warm-up: prespawned workers in every instance
            throughput(h, 8, 96)
        rates = {(name, n): [] for name, _ in setups for n in (4, 16, 64)}
        errors = {(name, n): 0 for name, _ in setups for n in (4, 16, 64)}
        for _ in range(rounds):
            for n in (4, 16, 64):
                for name, h in setups:
                    rate, errs = throughput(h, n, total)
                    rates[(name, n)].append(rate)
                    errors[(name, n)] += len(errs)
    finally:
        for b in (behind1, behind3):
            if b:
                b.stop()
        for h in nodes:
            h.stop()
    lines = ["", f"Scale-out: calls/s, {total} calls over N client threads with their own keep-alive connections, "
             f"median of {rounds} rounds (set-ups interleaved); every instance runs 4 calls at once "
             "(`maxConcurrentCalls`), HAProxy balances round robin:", "",
             "| concurrency | " + " | ".join(name for name, _ in setups) + " |",
             "| ---: |" + " ---: |" * len(setups)]
    for n in (4, 16, 64):
        cells = [f"{statistics.median(rates[(name, n)]):.0f}"
                 + (f" ({errors[(name, n)]} errors)" if errors[(name, n)] else "") for name, _ in setups]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"CPUs: {os.cpu_count()}, load average (1 min) at the end: {os.getloadavg()[0]:.1f}.")
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--bin", default=str(ROOT / ".build/release/mcp-supervisor"))
    ap.add_argument("--throughput-calls", type=int, default=1024)
    a = ap.parse_args()
    print("\n".join(section(a.rounds, a.calls, a.bin, a.throughput_calls)))


if __name__ == "__main__":
    main()
