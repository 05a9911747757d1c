"""Raw JSON-RPC: every kind of bad input is answered per JSON-RPC 2.0 and
MCP 2025-11-25, and the server keeps serving."""
import json
import os
import signal
import subprocess
import time

from conftest import wait_for_workers, wait_gone, BIN, RawServer, server_args, worker_pids


def alive(raw, id):
    r = raw.request(id, "ping")
    assert r.get("result") == {}, r


def test_requests_before_initialize_are_refused(raw):
    r = raw.request(1, "tools/list")
    assert r["error"]["code"] == -32600
    alive(raw, 2)  # ping is allowed before initialize
    assert raw.initialize()["result"]["protocolVersion"] == "2025-11-25"


def test_version_negotiation(workspace):
    for asked, expected in [("2025-11-25", "2025-11-25"), ("2025-03-26", "2025-03-26"),
                            ("2024-11-05", "2024-11-05"), ("1999-01-01", "2025-11-25")]:
        s = RawServer(workspace)
        try:
            assert s.initialize(asked)["result"]["protocolVersion"] == expected
        finally:
            s.close()


def test_second_initialize_is_an_error(raw):
    raw.initialize()
    r = raw.request(7, "initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                      "clientInfo": {"name": "x", "version": "1"}})
    assert r["error"]["code"] == -32600
    alive(raw, 8)


def test_malformed_messages(raw):
    raw.initialize()
    cases = [
        (b"{not json\n", -32700),
        (b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]\n', -32600),
        (b'"just a string"\n', -32600),
        (b'{"jsonrpc":"2.0","id":null,"method":"ping"}\n', -32600),
        (b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}\n', -32600),
        (b'{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}\n', -32600),
        (b'{"jsonrpc":"1.0","id":1,"method":"ping"}\n', -32600),
        (b'{"jsonrpc":"2.0","id":1,"method":5}\n', -32600),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping","method":"x"}\n', -32700),
        (b'\xff\xfe\n', -32700),
    ]
    for data, code in cases:
        raw.send_raw(data)
        r = raw.recv()
        assert r["error"]["code"] == code, (data, r)
        assert r["id"] is None or isinstance(r["id"], int), (data, r)
        if code == -32700:
            assert r["id"] is None
        alive(raw, 99)


def test_unknown_methods_and_notifications(raw):
    raw.initialize()
    assert raw.request(3, "no/such/method")["error"]["code"] == -32601
    raw.send({"jsonrpc": "2.0", "method": "notifications/unknown"})
    assert raw.request(4, "tools/call", {})["error"]["code"] == -32602
    assert raw.request(5, "tools/call", {"name": "echo", "arguments": [1]})["error"]["code"] == -32602
    assert raw.request(6, "tools/call", {"name": "nope"})["error"]["code"] == -32602
    assert raw.request(7, "tools/list", {"cursor": "bogus"})["error"]["code"] == -32602
    alive(raw, 8)


def test_overlong_line_is_refused_and_serving_continues(workspace):
    s = RawServer(workspace, "--max-message-bytes", "4096")
    try:
        s.initialize()
        s.send_raw(b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"' + b"a" * 100000 + b'"}}\n')
        r = s.recv()
        assert r["error"]["code"] == -32600 and "exceeds" in r["error"]["message"]
        alive(s, 2)
    finally:
        s.close()


def test_cancellation_kills_the_worker_and_sends_no_response(raw):
    raw.initialize()
    raw.send({"jsonrpc": "2.0", "id": 10, "method": "tools/call",
              "params": {"name": "probe", "arguments": {"action": "sleep", "ms": 10000}}})
    pids = wait_for_workers(1)
    assert pids, "the worker never started"
    raw.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 10, "reason": "test"}})
    # (The next worker of the cell may already wait for its call: only the
    # cancelled one must be gone.)
    assert wait_gone(pids), "the cancelled worker is still running"
    # Cancelling an unknown or finished request is ignored.
    raw.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 12345}})
    alive(raw, 11)
    assert all(m.get("id") != 10 for m in raw.pending), "a cancelled request got a response"


def test_eof_kills_workers_and_exits_zero(raw):
    raw.initialize()
    raw.send({"jsonrpc": "2.0", "id": 20, "method": "tools/call",
              "params": {"name": "probe", "arguments": {"action": "sleep", "ms": 10000}}})
    wait_for_workers(1)
    assert raw.close() == 0
    assert not worker_pids()


def test_sigterm_exits_zero_and_kills_workers(raw):
    raw.initialize()
    raw.send({"jsonrpc": "2.0", "id": 21, "method": "tools/call",
              "params": {"name": "probe", "arguments": {"action": "sleep", "ms": 10000}}})
    wait_for_workers(1)
    raw.proc.send_signal(signal.SIGTERM)
    assert raw.proc.wait(timeout=10) == 0
    time.sleep(0.1)
    assert not worker_pids()


def test_sigkill_of_the_supervisor_takes_its_workers(raw):
    raw.initialize()
    for i in range(2):
        raw.send({"jsonrpc": "2.0", "id": 30 + i, "method": "tools/call",
                  "params": {"name": "probe", "arguments": {"action": "sleep", "ms": 10000}}})
    wait_for_workers(2)
    assert len(worker_pids()) == 2
    raw.proc.kill()
    raw.proc.wait(timeout=10)
    wait_for_workers(at_most=0)
    assert not worker_pids(), "workers outlived a SIGKILLed supervisor"


def test_stdout_carries_only_mcp(workspace):
    p = subprocess.run([str(BIN), *server_args(workspace)], input=b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n',
                       capture_output=True, timeout=30)
    assert p.returncode == 0
    for line in p.stdout.splitlines():
        assert json.loads(line)["jsonrpc"] == "2.0"
    assert b"serving" in p.stderr
