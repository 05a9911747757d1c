"""Traces and security events exported as they happen (docs/operations.md,
"Traces and security events"): an OTLP/HTTP receiver in the test gets one
span per call with its stage children (a child of the client's span when
`_meta.traceparent` was sent) and every security log record as a log
record; the JSON-lines sink holds the same records; an endpoint that never
answers costs no call any time, and its drops are counted."""
import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import BIN, ROOT
from test_observability import MODERN_META, Signed, call, log_lines, parent

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
SECRET_ARG = "argument-text-that-must-not-leave"


class Receiver:
    """A minimal OTLP/HTTP collector: records each JSON body POSTed to
    /v1/traces and /v1/logs and answers 200 with an empty response."""

    def __init__(self):
        self.posts = {"/v1/traces": [], "/v1/logs": []}
        self.headers = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.headers.append(dict(self.headers))
                receiver.posts.setdefault(self.path, []).append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def spans(self):
        out = []
        for req in self.posts["/v1/traces"]:
            for rs in req["resourceSpans"]:
                res = attrs(rs["resource"]["attributes"])
                assert res["service.name"] == "mcp-supervisor", res
                for ss in rs["scopeSpans"]:
                    out += ss["spans"]
        return out

    def log_records(self):
        out = []
        for req in self.posts["/v1/logs"]:
            for rl in req["resourceLogs"]:
                for sl in rl["scopeLogs"]:
                    out += sl["logRecords"]
        return out

    def close(self):
        self.server.shutdown()


def attrs(a):
    def value(v):
        if "stringValue" in v:
            return v["stringValue"]
        if "intValue" in v:
            return int(v["intValue"])
        return v["boolValue"]
    return {x["key"]: value(x["value"]) for x in a}


def wait_for_prespawned(server_pid, timeout=5):
    """Waits until the server has a child process (the worker prespawned
    for the next call)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for d in Path("/proc").iterdir():
            if d.name.isdigit() and parent(int(d.name)) == server_pid:
                return
        time.sleep(0.02)
    raise AssertionError("no prespawned worker appeared")


def server_argv(signed):
    return [str(BIN), "run", "--manifests", str(signed.d / "manifests"), "--policies", str(ROOT / "policies"),
            "--state-dir", str(signed.state), "--scratch-dir", str(signed.d / "scratch")]


@pytest.fixture
def signed():
    s = Signed()
    yield s
    shutil.rmtree(s.d, ignore_errors=True)


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_one_span_per_call_with_stage_children_and_the_clients_trace(signed, receiver):
    s = signed.server("--otlp-endpoint", receiver.endpoint)
    try:
        s.initialize()
        # 1: with the client's trace context; 2: without (a trace of its
        # own, served by the worker prespawned after call 1); 3: stopped by
        # the sandbox; 4: refused at admission (unknown tool).
        r = s.request(1, "tools/call", {"name": "probe", "arguments": {"action": "echo", "text": SECRET_ARG},
                                        "_meta": {"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01",
                                                  "tracestate": "vendor=opaque"}})
        assert not r["result"]["isError"], r
        # Echo calls until one is served by a prespawned worker (started
        # after the previous call's reap: ready a moment later).
        for i in range(2, 12):
            wait_for_prespawned(s.proc.pid)
            second = call(s, i, "probe", {"action": "echo", "text": "two"}, "handshake")
            assert not second["isError"]
            if second["_meta"]["io.github.mcp-supervisor/receipt"]["prespawned"]:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("no call was served by a prespawned worker")
        prespawned_id = second["_meta"]["io.github.mcp-supervisor/receipt"]["securityLog"]["callId"]
        assert call(s, 20, "probe", {"action": "syscall", "nr": 101}, "handshake")["isError"]
        assert "error" in s.request(21, "tools/call", {"name": "no_such_tool", "arguments": {}})
    finally:
        assert s.close() == 0
    spans = receiver.spans()
    roots = [x for x in spans if x["name"].startswith("tools/call ")]
    by_call = {attrs(x["attributes"]).get("mcp_supervisor.call.id"): x for x in roots}
    ends = {o["callId"]: o for _, o in log_lines(signed.state) if o["type"] == "call.end"}
    # One span per call: each admitted call (its call.end) and the refusal.
    assert len(roots) == len(ends) + 1 and set(by_call) == set(ends) | {None}, [x["name"] for x in spans]
    for cid, end in ends.items():
        root = by_call[cid]
        a = attrs(root["attributes"])
        assert a["gen_ai.tool.name"] == "probe" and a["mcp.method.name"] == "tools/call"
        assert a["mcp_supervisor.cell.name"] == "probe" and a["mcp_supervisor.cell.version"] == "1"
        assert a["mcp_supervisor.cell.version_id"] == hashlib.sha256(signed.manifest.read_bytes()).hexdigest()
        assert a["mcp_supervisor.outcome"] == end["outcome"]
        assert root["kind"] == 2
        children = [x for x in spans if x.get("parentSpanId") == root["spanId"]]
        names = [c["name"] for c in children]
        expected = ["admit", "prespawn.take" if a["mcp_supervisor.prespawned"] else "spawn", "run", "record"]
        assert sorted(names) == sorted(expected), (cid, names)
        start, stop = int(root["startTimeUnixNano"]), int(root["endTimeUnixNano"])
        assert 0 < stop - start < 5e9
        previous_end = start
        for name in expected:
            c = next(c for c in children if c["name"] == name)
            assert c["traceId"] == root["traceId"] and c["kind"] == 1
            cs, ce = int(c["startTimeUnixNano"]), int(c["endTimeUnixNano"])
            # In order, inside the call's span (1 ms of clock rounding).
            assert start - 1e6 <= cs <= ce <= stop + 1e6, (name, cs, ce, start, stop)
            assert cs >= previous_end - 1e6, (name, cs, previous_end)
            previous_end = ce
    # The client's trace: the call's span is a child of the client's span.
    c1 = by_call["c1"]
    assert c1["traceId"] == TRACE_ID and c1["parentSpanId"] == CLIENT_SPAN
    assert c1["traceState"] == "vendor=opaque"
    assert "status" not in c1 or c1["status"].get("code", 0) != 2
    # Without one: a trace of its own, no parent.
    c2 = by_call[prespawned_id]
    assert c2["traceId"] != TRACE_ID and re.fullmatch(r"[0-9a-f]{32}", c2["traceId"])
    assert "parentSpanId" not in c2
    assert attrs(c2["attributes"])["mcp_supervisor.prespawned"] is True
    assert "spawn" not in [x["name"] for x in spans if x.get("parentSpanId") == c2["spanId"]]
    assert attrs(c1["attributes"])["mcp_supervisor.prespawned"] is False
    c3 = by_call[max(ends, key=lambda c: int(c[1:]))]
    assert c3["status"]["code"] == 2 and attrs(c3["attributes"])["mcp_supervisor.outcome"] == "sandbox_violation"
    # The refused call: its span and the admit child that refused it.
    refused = by_call[None]
    a = attrs(refused["attributes"])
    assert a["mcp_supervisor.outcome"] == "refused" and a["mcp_supervisor.refusal.reason"] == "unknown_tool"
    assert [x["name"] for x in spans if x.get("parentSpanId") == refused["spanId"]] == ["admit"]
    # No argument, no result, no path of the host in any span.
    text = json.dumps(receiver.posts["/v1/traces"])
    for secret in (SECRET_ARG, "two", str(signed.d), "/tmp", "/root"):
        assert secret not in text, secret
    assert receiver.headers[0]["Content-Type"] == "application/json"


def test_security_records_arrive_as_otlp_logs_and_json_lines_one_for_one(signed, receiver):
    sink = signed.d / "events.jsonl"
    s = signed.server("--otlp-endpoint", receiver.endpoint, "--events-jsonl", sink)
    try:
        s.initialize()
        assert not call(s, 1, "probe", {"action": "echo", "text": "hi"}, "handshake")["isError"]
        assert call(s, 2, "probe", {"action": "syscall", "nr": 101}, "handshake")["isError"]
        assert call(s, 3, "probe", {"action": "nope"}, "handshake")  # whatever the probe says: recorded
    finally:
        assert s.close() == 0
    lines = log_lines(signed.state)
    # This run's records: from its supervisor.start to its supervisor.stop
    # (records before it, of the registration, were not this server's).
    first = max(i for i, (_, o) in enumerate(lines) if o["type"] == "supervisor.start")
    ours = lines[first:]
    assert ours[-1][1]["type"] == "supervisor.stop"
    types = {o["type"] for _, o in ours}
    assert {"call.start", "call.end", "sandbox.violation"} <= types, types

    # The JSON-lines sink: the same bytes, line for line.
    exported = sink.read_bytes().split(b"\n")
    assert exported[-1] == b""
    assert exported[:-1] == [raw for raw, _ in ours]

    # OTLP logs: one log record per record, its body the line unchanged
    # (so the chain can be checked by the receiver), seq and type beside.
    records = receiver.log_records()
    assert [r["body"]["stringValue"].encode() for r in records] == [raw for raw, _ in ours]
    for r, (_, o) in zip(records, ours):
        a = attrs(r["attributes"])
        assert a["mcp_supervisor.security_log.seq"] == o["seq"]
        assert a["mcp_supervisor.security_log.type"] == o["type"] == r["eventName"]
        assert r["severityText"] == ("WARN" if o["type"] == "sandbox.violation" else r["severityText"])
        assert int(r["timeUnixNano"]) > 0
    for a, b in zip(records, records[1:]):
        assert json.loads(b["body"]["stringValue"])["prev"] == hashlib.sha256(
            a["body"]["stringValue"].encode()).hexdigest()


def echo_latencies(signed, extra, n=40):
    s = signed.server(*extra)
    times = []
    try:
        s.initialize()
        call(s, 0, "probe", {"action": "echo", "text": "warm"}, "handshake")
        for i in range(1, n + 1):
            t = time.monotonic()
            assert not call(s, i, "probe", {"action": "echo", "text": "x"}, "handshake")["isError"]
            times.append(time.monotonic() - t)
    finally:
        t = time.monotonic()
        rc = s.close()
        closing = time.monotonic() - t
    assert rc == 0
    return times, closing


def test_an_endpoint_that_never_answers_costs_calls_nothing_and_drops_are_counted(signed):
    # A listening socket that never accepts: connections complete in the
    # kernel's backlog, requests are written, no answer ever comes (the
    # exporter's 2 s read timeout each time): the worst a collector can do.
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)
    port = hole.getsockname()[1]
    metrics = signed.d / "m.prom"
    try:
        baseline, _ = echo_latencies(signed, [])
        stalled, closing = echo_latencies(
            signed, ["--otlp-endpoint", f"http://127.0.0.1:{port}", "--metrics-file", metrics])
    finally:
        hole.close()
    b, w = statistics.median(baseline), statistics.median(stalled)
    print(f"echo call median: {b * 1e3:.2f} ms without export, {w * 1e3:.2f} ms with a silent endpoint; "
          f"max {max(stalled) * 1e3:.2f} ms; exit took {closing:.2f} s")
    assert w < b * 1.5 + 0.002, (b, w)
    assert max(stalled) < 0.5, max(stalled)
    # The exit waits for the exporter at most ~2 s.
    assert closing < 6, closing
    text = metrics.read_text()
    dropped = {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^mcp_supervisor_export_dropped_total\{sink="(\w+)"\} (\S+)$', text, re.M)}
    sent = {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^mcp_supervisor_export_sent_total\{sink="(\w+)"\} (\S+)$', text, re.M)}
    # 41 calls, 5 spans each; every one dropped (none could be sent).
    assert dropped["otlp_traces"] == 41 * 5, text
    assert sent["otlp_traces"] == 0 and sent["otlp_logs"] == 0
    assert dropped["otlp_logs"] >= 41 * 2


def test_drops_are_said_on_stderr_and_a_bad_endpoint_is_refused_at_start(signed):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens: connection refused
    p = subprocess.run([*server_argv(signed), "--otlp-endpoint", f"http://127.0.0.1:{port}", "--log-level", "error"],
                       input=b"", capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert re.search(rb"export to http://127\.0\.0\.1:\d+/v1/logs: \d+ item\(s\) dropped", p.stderr), p.stderr
    for bad, why in (("https://collector:4318", b"https is not supported"), ("127.0.0.1:4318", b"expected http://"),
                     ("http://127.0.0.1:99999", b"bad port")):
        p = subprocess.run([*server_argv(signed), "--otlp-endpoint", bad], input=b"", capture_output=True, timeout=30)
        assert p.returncode != 0 and why in p.stderr, (bad, p.stderr)
    p = subprocess.run([*server_argv(signed), "--events-jsonl", signed.d / "no" / "such" / "dir" / "f.jsonl"],
                       input=b"", capture_output=True, timeout=30)
    assert p.returncode == 2 and b"--events-jsonl" in p.stderr and b"ENOENT" in p.stderr, p.stderr
    # A FIFO would block the start (no reader) or split lines: refused.
    fifo = signed.d / "events.fifo"
    os.mkfifo(fifo)
    p = subprocess.run([*server_argv(signed), "--events-jsonl", fifo], input=b"", capture_output=True, timeout=30)
    assert p.returncode == 2 and b"No such device or address" in p.stderr, p.stderr  # no reader: the open fails, never waits
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        p = subprocess.run([*server_argv(signed), "--events-jsonl", fifo], input=b"", capture_output=True,
                           timeout=30)
    finally:
        os.close(reader)
    assert p.returncode == 2 and b"not a regular file" in p.stderr, p.stderr


def test_the_2026_era_carries_the_trace_context_in_the_same_meta(signed, receiver):
    s = signed.server("--otlp-endpoint", receiver.endpoint)
    try:
        meta = {**MODERN_META, "traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"}
        r = s.request(1, "tools/call", {"name": "probe", "arguments": {"action": "echo", "text": "m"}, "_meta": meta})
        assert not r["result"]["isError"], r
        # Not sampled by the client: no span from the supervisor either.
        meta = {**MODERN_META, "traceparent": f"00-{'1' * 32}-{CLIENT_SPAN}-00"}
        r = s.request(2, "tools/call", {"name": "probe", "arguments": {"action": "echo", "text": "m"}, "_meta": meta})
        assert not r["result"]["isError"], r
    finally:
        assert s.close() == 0
    roots = [x for x in receiver.spans() if x["name"] == "tools/call probe"]
    assert len(roots) == 1, roots
    assert roots[0]["traceId"] == TRACE_ID and roots[0]["parentSpanId"] == CLIENT_SPAN
    assert all(x["traceId"] == TRACE_ID for x in receiver.spans())
