"""The security event log as users meet it: every call and refusal leaves
its events, `audit verify` passes on an untouched log, and a SIGKILL under
load loses at most the record being written."""
import json
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from conftest import BIN, RawServer, server_args


def audit(state, *args):
    return subprocess.run([str(BIN), "audit", *args, "--state-dir", str(state)], capture_output=True, timeout=60)


def events(state, *filters):
    p = audit(state, "query", "--json", *filters)
    assert p.returncode == 0, p.stderr
    return [json.loads(l) for l in p.stdout.splitlines()]


def test_calls_and_refusals_leave_their_events(workspace, tmp_path):
    state = tmp_path / "state"

    async def main():
        args = server_args(workspace)
        args[args.index("--state-dir") + 1] = str(state)
        async with stdio_client(StdioServerParameters(command=str(BIN), args=args)) as (r, w):
            async with ClientSession(r, w) as s:
                await s.initialize()
                await s.call_tool("echo", {"text": "hi"})
                await s.call_tool("echo", {"text": 1})
                try:
                    await s.call_tool("nope", {})
                except Exception:
                    pass
                await s.call_tool("probe", {"action": "syscall", "nr": 101})
                await s.call_tool("probe_fast", {"action": "sleep", "ms": 3000})
    anyio.run(main)

    v = audit(state, "verify")
    assert v.returncode == 0, v.stderr
    assert b"audit verify: OK" in v.stdout
    types = [e["type"] for e in events(state)]
    assert types[0] == "supervisor.start" and types[-1] == "supervisor.stop"
    init = events(state, "--type", "client.initialize")[0]
    assert init["clientName"] == "mcp" and init["protocolVersion"] == "2025-11-25"

    ends = {e["tool"]: e for e in events(state, "--type", "call.end")}
    assert ends["echo"]["outcome"] == "success" and ends["echo"]["bytesReturned"] == 2
    assert ends["probe"]["outcome"] == "sandbox_violation"
    assert ends["probe_fast"]["outcome"] == "timeout"
    for e in ends.values():
        assert {"callId", "principal", "cell", "cellVersion", "durationMicroseconds", "cpuMicroseconds"} <= e.keys()
    starts = events(state, "--type", "call.start")
    assert len(starts) == 3 and all(len(e["argumentsSha256"]) == 64 and "arguments" not in e for e in starts)
    assert {e["callId"] for e in starts} == {e["callId"] for e in ends.values()}

    refused = {e["reason"]: e for e in events(state, "--type", "call.refused")}
    assert "arguments.text" in refused["invalid_arguments"]["detail"]
    assert refused["unknown_tool"]["tool"] == "nope"

    violations = {e["kind"]: e for e in events(state, "--type", "sandbox.violation")}
    assert violations["seccomp"]["syscall"] == "ptrace" and violations["seccomp"]["architecture"] == "x86_64"
    assert violations["limit"]["limit"] == "deadline"

    stats = json.loads(audit(state, "stats", "--json").stdout)
    assert stats["byOutcome"] == {"success": 1, "sandbox_violation": 1, "timeout": 1}
    assert b"call.end" in audit(state, "tail", "-n", "3").stdout


def test_sigkill_under_load_loses_at_most_the_record_being_written(workspace, tmp_path):
    state = tmp_path / "state"
    for round in range(3):
        s = RawServer(workspace, "--max-concurrent-calls", "4", "--max-queued-calls", "1000")
        s.proc.kill()
        s.proc.wait()
        args = server_args(workspace)
        args[args.index("--state-dir") + 1] = str(state)
        p = subprocess.Popen([str(BIN), *args, "--max-queued-calls", "1000"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        p.stdin.write(json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "load", "version": "1"}}}).encode() + b"\n")
        for i in range(1, 200):
            p.stdin.write(json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                                      "params": {"name": "echo", "arguments": {"text": "x" * i}}}).encode() + b"\n")
        p.stdin.flush()
        time.sleep(0.3 + 0.1 * round)
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdin.close()
        p.stdout.close()
    # The next start recovers (cutting a torn line, if any, into its own event).
    args = server_args(workspace)
    args[args.index("--state-dir") + 1] = str(state)
    subprocess.run([str(BIN), *args], input=b"", capture_output=True, timeout=30)
    v = audit(state, "verify")
    assert v.returncode == 0, v.stderr
    ends = events(state, "--type", "call.end")
    assert len(ends) > 10, "calls were recorded before each kill"
    starts = events(state, "--type", "supervisor.start")
    assert len(starts) == 4
