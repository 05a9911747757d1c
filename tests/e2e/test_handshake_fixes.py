"""Raw bytes the handshake era used to get wrong: invalid params of methods
the MCP SDK decodes, initialize without a protocolVersion, two initialize
requests in one write, and unbounded client strings in the security log."""
import json
import subprocess

from conftest import BIN, RawServer


def serve(workspace, state):
    # stderr is not read here: it goes nowhere, so a long diagnostic cannot block the server.
    return RawServer(workspace, state=state, stderr=subprocess.DEVNULL)


def events(state, kind):
    p = subprocess.run([str(BIN), "audit", "query", "--json", "--type", kind, "--state-dir", str(state)],
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return [json.loads(l) for l in p.stdout.splitlines()]


def assert_plain_invalid_params(r, what):
    assert r["error"]["code"] == -32602, (what, r)
    assert "data" not in r["error"], (what, r)
    text = r["error"]["message"]
    # No Foundation decoding text (DecodingError, typeMismatch, codingPath...).
    for word in ("Decoding", "typeMismatch", "codingPath", "dataCorrupted", "keyNotFound", "Swift."):
        assert word not in text, (what, r)


def test_invalid_params_of_sdk_decoded_methods_are_plain_32602(raw):
    cases = [
        (b'{"jsonrpc":"2.0","id":1,"method":"initialize"}\n', "initialize without params"),
        (b'{"jsonrpc":"2.0","id":2,"method":"initialize","params":{"protocolVersion":12,"capabilities":{},'
         b'"clientInfo":{"name":"x","version":"1"}}}\n', "initialize with a numeric protocolVersion"),
        (b'{"jsonrpc":"2.0","id":3,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
         b'"capabilities":{},"clientInfo":{"name":5,"version":"1"}}}\n', "initialize with a numeric client name"),
    ]
    for data, what in cases:
        raw.send_raw(data)
        assert_plain_invalid_params(raw.recv(), what)
    raw.initialize()
    cases = [
        (b'{"jsonrpc":"2.0","id":10,"method":"logging/setLevel","params":{"level":"bogus"}}\n', "bogus level"),
        (b'{"jsonrpc":"2.0","id":11,"method":"logging/setLevel"}\n', "setLevel without params"),
        (b'{"jsonrpc":"2.0","id":12,"method":"logging/setLevel","params":{"level":5}}\n', "numeric level"),
        (b'{"jsonrpc":"2.0","id":13,"method":"logging/setLevel","params":{}}\n', "setLevel without level"),
        (b'{"jsonrpc":"2.0","id":14,"method":"tools/list","params":{"cursor":5}}\n', "numeric cursor"),
    ]
    for data, what in cases:
        raw.send_raw(data)
        assert_plain_invalid_params(raw.recv(), what)
    # Valid forms still work.
    assert raw.request(20, "logging/setLevel", {"level": "debug"})["result"] == {}
    assert "tools" in raw.request(21, "tools/list", {})["result"]


def test_initialize_without_protocol_version_is_refused_and_the_session_is_not_stuck(raw):
    r = raw.request(1, "initialize", {"capabilities": {}, "clientInfo": {"name": "x", "version": "1"}})
    assert_plain_invalid_params(r, "initialize without protocolVersion")
    assert "protocolVersion" in r["error"]["message"]
    # The refused initialize did not count: a correct one is served and so is tools/list.
    assert raw.initialize()["result"]["protocolVersion"] == "2025-11-25"
    assert "tools" in raw.request(2, "tools/list")["result"]


def test_two_initialize_in_one_write_exactly_one_wins(workspace, tmp_path):
    for _ in range(5):
        state = tmp_path / f"state{_}"
        s = serve(workspace, state)
        try:
            first = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                     "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                                "clientInfo": {"name": "first", "version": "1"}}}
            second = {"jsonrpc": "2.0", "id": 2, "method": "initialize",
                      "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                                 "clientInfo": {"name": "second", "version": "1"}}}
            s.send_raw(json.dumps(first).encode() + b"\n" + json.dumps(second).encode() + b"\n")
            r1, r2 = s.recv_id(1), s.recv_id(2)
            assert r1["result"]["protocolVersion"] == "2025-06-18", r1
            assert r2["error"]["code"] == -32600 and "already initialized" in r2["error"]["message"], r2
            s.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
            assert "tools" in s.request(3, "tools/list")["result"]
        finally:
            s.close()
        inits = events(state, "client.initialize")
        assert len(inits) == 1 and inits[0]["clientName"] == "first", inits


def test_client_strings_in_the_security_log_are_bounded(workspace, tmp_path):
    state = tmp_path / "state"
    s = serve(workspace, state)
    huge_name = "n" * (1 << 20)
    huge_version = "é" * 200000
    try:
        r = s.request(0, "initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                        "clientInfo": {"name": huge_name, "version": huge_version}})
        assert "result" in r, r
        s.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        for i in range(3):
            r = s.request(10 + i, "tools/call", {"name": "echo", "arguments": {"text": "hi"}})
            assert r["result"]["isError"] is False, r
        r = s.request(20, "tools/call", {"name": "t" * 100000, "arguments": {}})
        assert r["error"]["code"] == -32602
        r = s.request(21, "tools/call", {"name": "echo", "arguments": {"text": "hi", "k" * 100000: 1}})
        assert r["result"]["isError"] is True
    finally:
        s.close()
    init = events(state, "client.initialize")[0]
    assert init["clientName"].startswith("n" * 200) and len(init["clientName"].encode()) <= 256, init["clientName"]
    assert init["clientName"].endswith("…[truncated, 1048576 bytes]")
    assert len(init["clientVersion"].encode()) <= 256 and "truncated, 400000 bytes" in init["clientVersion"]
    assert init["protocolEra"] == "handshake"
    starts = events(state, "call.start")
    assert len(starts) == 3
    for e in starts:
        assert e["client"] == init["clientName"]
    for e in events(state, "call.refused"):
        assert len(e["tool"].encode()) <= 1024 and len(e["detail"].encode()) <= 1024, e
    # The whole log stays small: nothing client-supplied was copied unbounded.
    total = sum(p.stat().st_size for p in state.rglob("*") if p.is_file())
    assert total < 200_000, total
