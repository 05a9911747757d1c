"""Cost of --otlp-endpoint and --events-jsonl on a call (docs/operations.md,
"Traces and security events"): sequential echo calls to the signed probe
cell, three variants interleaved round by round: no export; OTLP and JSON
lines to a receiver that answers (its own process); OTLP to an endpoint
that accepts connections and never answers. Prints latency percentiles
and the supervisor's CPU per call (all threads, /proc/PID/task/*/schedstat).

    [MCPS_BIN=.build/release/mcp-supervisor] .venv/bin/python tools/bench/telemetry_cost.py ROUNDS CALLS
"""
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "e2e"))
import conftest  # noqa: E402
from test_observability import Signed, call  # noqa: E402

# The binary that serves (the release build when given): cells are signed and
# registered with the debug one, which the tests build.
if os.environ.get("MCPS_BIN"):
    conftest.BIN = Path(os.environ["MCPS_BIN"])

RECEIVER = r'''
import sys, http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"{}")
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
'''


def cpu_ns(pid):
    return sum(int(Path(f"/proc/{pid}/task/{t}/schedstat").read_text().split()[0])
               for t in os.listdir(f"/proc/{pid}/task"))


def main(rounds, calls):
    signed = Signed()
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
    port = int(receiver.stdout.readline())
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)
    variants = {
        "no export": [],
        "otlp + jsonl, receiver up": ["--otlp-endpoint", f"http://127.0.0.1:{port}",
                                      "--events-jsonl", str(signed.d / "events.jsonl")],
        "otlp, silent endpoint": ["--otlp-endpoint", f"http://127.0.0.1:{hole.getsockname()[1]}"],
    }
    latency = {k: [] for k in variants}
    cpu = {k: [] for k in variants}
    try:
        for _ in range(rounds):
            for name, extra in variants.items():
                s = signed.server(*extra)
                s.initialize()
                call(s, 0, "probe", {"action": "echo", "text": "warm"}, "handshake")
                c0 = cpu_ns(s.proc.pid)
                for i in range(1, calls + 1):
                    t = time.monotonic()
                    call(s, i, "probe", {"action": "echo", "text": "x"}, "handshake")
                    latency[name].append(time.monotonic() - t)
                cpu[name].append((cpu_ns(s.proc.pid) - c0) / calls / 1000)
                s.close()
    finally:
        receiver.kill()
        hole.close()
        shutil.rmtree(signed.d, ignore_errors=True)
    base = statistics.median(latency["no export"])
    base_cpu = statistics.median(cpu["no export"])
    print("| variant | p50 µs | p90 µs | p99 µs | p50 / base | supervisor CPU µs per call | CPU / base |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, v in latency.items():
        v.sort()
        p = lambda q: v[int(q * (len(v) - 1))] * 1e6  # noqa: E731
        c = statistics.median(cpu[name])
        print(f"| {name} | {p(.5):.0f} | {p(.9):.0f} | {p(.99):.0f} | {statistics.median(v) / base:.3f} "
              f"| {c:.0f} | {c / base_cpu:.3f} |")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
