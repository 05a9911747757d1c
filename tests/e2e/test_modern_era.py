"""MCP 2026-07-28 beside the handshake era on one stdio connection, in raw
bytes: the first request chooses the era; every envelope rule and error
code; resultType; tools/list's ttlMs, cacheScope and order; per-request
logging; subscriptions/listen; and the era in the security log."""
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import BIN, RawServer, probe_manifest

V = "2026-07-28"
PV = "io.modelcontextprotocol/protocolVersion"
CAPS = "io.modelcontextprotocol/clientCapabilities"
INFO = "io.modelcontextprotocol/clientInfo"
LEVEL = "io.modelcontextprotocol/logLevel"
SUB = "io.modelcontextprotocol/subscriptionId"


def meta(**extra):
    m = {PV: V, CAPS: {}, INFO: {"name": "modern-raw", "version": "7"}}
    m.update(extra)
    return m


def req(s, id, method, params=None, **m):
    p = dict(params or {})
    p["_meta"] = meta(**m)
    return s.request(id, method, p)


def serve(workspace, state=None):
    return RawServer(workspace, "--log-level", "error", state=state, stderr=subprocess.DEVNULL)


@pytest.fixture
def srv(workspace):
    s = serve(workspace)
    yield s
    if s.proc.poll() is None:
        s.close()


def events(state, kind):
    p = subprocess.run([str(BIN), "audit", "query", "--json", "--type", kind, "--state-dir", str(state)],
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return [json.loads(l) for l in p.stdout.splitlines()]


def no_message(s, timeout=0.5):
    try:
        m = s.recv(timeout)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected message {m}")


def test_discover_before_anything_and_without_an_envelope(srv):
    r = srv.request(1, "server/discover")["result"]
    assert r["resultType"] == "complete"
    assert V in r["supportedVersions"] and "2025-11-25" in r["supportedVersions"]
    assert "2024-11-05" in r["supportedVersions"]
    assert r["capabilities"]["tools"] == {"listChanged": True}
    assert r["instructions"] and isinstance(r["ttlMs"], int) and r["ttlMs"] >= 0
    assert r["cacheScope"] in ("public", "private")
    info = r["_meta"]["io.modelcontextprotocol/serverInfo"]
    assert info["name"] == "mcp-supervisor" and info["version"]
    # An unenveloped discover does not choose the era: initialize still works.
    assert srv.initialize()["result"]["protocolVersion"] == "2025-11-25"
    # And discover is still answered in the handshake era.
    assert srv.request(2, "server/discover")["result"]["resultType"] == "complete"


def test_first_enveloped_request_chooses_the_modern_era(srv):
    r = req(srv, 1, "server/discover")["result"]
    assert r["resultType"] == "complete"
    # Once modern: initialize gets -32022 naming what this connection speaks.
    r = srv.request(2, "initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                      "clientInfo": {"name": "x", "version": "1"}})
    assert r["error"]["code"] == -32022, r
    assert r["error"]["data"] == {"supported": [V], "requested": "2025-11-25"}
    # Removed methods are method-not-found.
    for i, m in enumerate(["ping", "logging/setLevel", "resources/list"]):
        r = req(srv, 10 + i, m, {"level": "info"} if m == "logging/setLevel" else None)
        assert r["error"]["code"] == -32601, (m, r)
    # notifications/initialized is dropped unanswered and the connection goes on.
    srv.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert req(srv, 20, "tools/list")["result"]["resultType"] == "complete"


def test_modern_envelope_rules(srv):
    cases = [
        ({"_meta": {PV: V}}, -32602, "no clientCapabilities"),
        ({"_meta": {PV: V, CAPS: []}}, -32602, "clientCapabilities not an object"),
        ({"_meta": {PV: 20260728, CAPS: {}}}, -32602, "numeric protocolVersion"),
        ({"_meta": {PV: V, CAPS: {}, INFO: "me"}}, -32602, "clientInfo not an object"),
        ({"_meta": {PV: V, CAPS: {}, LEVEL: "loud"}}, -32602, "unknown logLevel"),
    ]
    for i, (params, code, what) in enumerate(cases):
        r = srv.request(i + 1, "tools/list", params)
        assert r["error"]["code"] == code, (what, r)
    # Unsupported version before the era is chosen: every version spoken is named.
    r = srv.request(50, "tools/list", {"_meta": {PV: "2099-01-01", CAPS: {}}})
    assert r["error"]["code"] == -32022
    assert r["error"]["data"]["requested"] == "2099-01-01"
    assert V in r["error"]["data"]["supported"] and "2025-11-25" in r["error"]["data"]["supported"]
    # None of these chose the era: a valid one does, then a request without an envelope is -32602.
    assert req(srv, 60, "tools/list")["result"]["resultType"] == "complete"
    r = srv.request(61, "tools/list")
    assert r["error"]["code"] == -32602 and PV in r["error"]["message"], r
    r = srv.request(66, "tools/list", {"_meta": {CAPS: {}}})
    assert r["error"]["code"] == -32602 and PV in r["error"]["message"], r
    r = srv.request(62, "tools/list", {"_meta": {PV: "2025-11-25", CAPS: {}}})
    assert r["error"]["code"] == -32022 and r["error"]["data"] == {"supported": [V], "requested": "2025-11-25"}
    # tools/call params are still checked.
    r = req(srv, 63, "tools/call", {"arguments": {}})
    assert r["error"]["code"] == -32602
    r = req(srv, 64, "tools/call", {"name": "echo", "arguments": []})
    assert r["error"]["code"] == -32602
    r = req(srv, 65, "tools/call", {"name": "no_such_tool", "arguments": {}})
    assert r["error"]["code"] == -32602


def test_handshake_era_refuses_enveloped_requests(srv):
    srv.initialize()
    r = req(srv, 1, "tools/list")
    assert r["error"]["code"] == -32600, r
    # The handshake era's methods keep working.
    assert srv.request(2, "ping")["result"] == {}
    assert srv.request(3, "logging/setLevel", {"level": "info"})["result"] == {}
    r = srv.request(4, "tools/list")["result"]
    assert "resultType" not in r and "ttlMs" not in r


def test_modern_results_carry_result_type_and_a_stable_cached_list(srv):
    a = req(srv, 1, "tools/list")["result"]
    b = req(srv, 2, "tools/list")["result"]
    assert a == b
    assert a["resultType"] == "complete" and a["ttlMs"] == 0 and a["cacheScope"] == "private"
    names = [t["name"] for t in a["tools"]]
    # By name; set_phase (present under a policy with phases) comes last.
    if names[-1] == "set_phase":
        names = names[:-1]
    assert names == sorted(names) and "echo" in names and "probe" in names
    r = req(srv, 3, "tools/call", {"name": "echo", "arguments": {"text": "hi"}})["result"]
    assert r["resultType"] == "complete" and r["isError"] is False and r["content"][0]["text"] == "hi"
    r = req(srv, 4, "tools/call", {"name": "echo", "arguments": {"text": 5}})["result"]
    assert r["resultType"] == "complete" and r["isError"] is True
    r = req(srv, 5, "tools/call", {"name": "probe", "arguments": {"action": "syscall", "nr": 101}})["result"]
    assert r["resultType"] == "complete" and r["isError"] is True


def test_tools_list_pages_in_the_modern_era(workspace):
    s = RawServer(workspace, "--tools-page-size", "1", "--log-level", "error", stderr=subprocess.DEVNULL)
    try:
        seen, cursor, i = [], None, 1
        while True:
            r = req(s, i, "tools/list", {"cursor": cursor} if cursor else None)["result"]
            assert len(r["tools"]) == 1 and r["resultType"] == "complete"
            seen += [t["name"] for t in r["tools"]]
            cursor = r.get("nextCursor")
            i += 1
            if not cursor:
                break
        if seen[-1] == "set_phase":
            seen = seen[:-1]
        assert seen == sorted(seen) and len(seen) == len(set(seen)) >= 3
        assert req(s, 99, "tools/list", {"cursor": "bogus"})["error"]["code"] == -32602
    finally:
        s.close()


def test_logging_only_when_the_request_asks_at_or_above_its_level(srv):
    call = {"name": "probe", "arguments": {"action": "progress", "steps": 2}}
    for id, extra, expect in [(1, {}, 0), (2, {LEVEL: "warning"}, 0), (3, {LEVEL: "info"}, 2),
                              (4, {LEVEL: "debug"}, 2)]:
        p = dict(call)
        p["_meta"] = dict(meta(**extra), progressToken=f"t{id}")
        r = srv.request(id, "tools/call", p)
        assert r["result"]["isError"] is False, r
        logs = [m for m in srv.pending if m.get("method") == "notifications/message"]
        progress = [m for m in srv.pending if m.get("method") == "notifications/progress"]
        assert len(logs) == expect, (extra, srv.pending)
        assert [m["params"]["progressToken"] for m in progress] == [f"t{id}"] * 2
        srv.pending.clear()


def test_cancellation_in_the_modern_era(srv):
    p = {"name": "probe", "arguments": {"action": "sleep", "ms": 5000}, "_meta": meta()}
    srv.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": p})
    time.sleep(0.5)
    srv.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}})
    # No answer to the cancelled request; the connection goes on.
    r = req(srv, 2, "tools/call", {"name": "echo", "arguments": {"text": "after"}})
    assert r["result"]["content"][0]["text"] == "after"
    assert not any(m.get("id") == 1 for m in srv.pending)


def test_tool_list_changes_reach_subscribers_only(workspace, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(workspace / "manifests", ws / "manifests")
    a, b = serve_at(ws), serve_at(ws)
    try:
        # a subscribes, b does not.
        assert req(a, 1, "tools/list")["result"]["resultType"] == "complete"
        assert req(b, 1, "tools/list")["result"]["resultType"] == "complete"
        a.send({"jsonrpc": "2.0", "id": "sub-1", "method": "subscriptions/listen",
                "params": {"_meta": meta(), "notifications": {"toolsListChanged": True}}})
        ack = a.recv()
        assert ack["method"] == "notifications/subscriptions/acknowledged", ack
        assert ack["params"]["notifications"] == {"toolsListChanged": True}
        assert ack["params"]["_meta"][SUB] == "sub-1"
        (ws / "manifests" / "probe2.json").write_text(json.dumps(probe_manifest("probe_two")))
        a.proc.send_signal(signal.SIGHUP)
        b.proc.send_signal(signal.SIGHUP)
        m = a.recv(10)
        assert m["method"] == "notifications/tools/list_changed" and m["params"]["_meta"][SUB] == "sub-1", m
        assert "probe_two" in [t["name"] for t in req(a, 2, "tools/list")["result"]["tools"]]
        # Never unsolicited in the modern era.
        no_message(b, 1.5)
        # A cancelled subscription hears no more (and gets no answer).
        a.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "sub-1"}})
        (ws / "manifests" / "probe2.json").unlink()
        a.proc.send_signal(signal.SIGHUP)
        no_message(a, 1.5)
    finally:
        a.close()
        b.close()


def serve_at(ws):
    return RawServer(ws, "--log-level", "error", stderr=subprocess.DEVNULL)


def test_security_events_record_the_era_and_the_per_request_client(workspace, tmp_path):
    state = tmp_path / "state"
    s = serve(workspace, state)
    try:
        p = {"name": "echo", "arguments": {"text": "a"}}
        p["_meta"] = meta(**{INFO: {"name": "first-client", "version": "1.0"}})
        assert s.request(1, "tools/call", p)["result"]["isError"] is False
        p["_meta"] = meta(**{INFO: {"name": "x" * 5000, "version": "2.0"}})
        assert s.request(2, "tools/call", p)["result"]["isError"] is False
    finally:
        s.close()
    starts = events(state, "call.start")
    assert [e["protocolEra"] for e in starts] == ["modern", "modern"]
    assert all(e["protocolVersion"] == V for e in starts)
    assert starts[0]["client"] == "first-client" and starts[0]["clientVersion"] == "1.0"
    assert len(starts[1]["client"].encode()) <= 256 and "truncated, 5000 bytes" in starts[1]["client"]
    assert events(state, "client.initialize") == []

    state = tmp_path / "state2"
    s = serve(workspace, state)
    try:
        s.initialize("2025-06-18")
        assert s.request(1, "tools/call", {"name": "echo", "arguments": {"text": "a"}})["result"]["isError"] is False
    finally:
        s.close()
    (start,) = events(state, "call.start")
    assert start["protocolEra"] == "handshake" and start["protocolVersion"] == "2025-06-18"
    assert start["client"] == "raw-test"
    assert events(state, "client.initialize")[0]["protocolEra"] == "handshake"
