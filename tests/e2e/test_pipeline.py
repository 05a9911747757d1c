"""The call pipeline as a client sees it: pipelined calls then end of input,
a client that never reads its responses, and the call pool's bounds."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from conftest import BIN, ROOT, server_args

INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


def line(obj):
    return (json.dumps(obj) + "\n").encode()


def echo(i, text="hi"):
    return line({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                 "params": {"name": "echo", "arguments": {"text": text}}})


def start(ws, *extra, state=None, policies=None):
    args = server_args(ws, *extra)
    if state is not None:
        args[args.index("--state-dir") + 1] = str(state)
    if policies is not None:
        args[args.index("--policies") + 1] = str(policies)
    return subprocess.Popen([str(BIN), *args, "--log-level", "error"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def responses(out):
    msgs = [json.loads(l) for l in out.splitlines() if l.strip()]
    return {m["id"]: m for m in msgs if "id" in m and "method" not in m}


def status(pid, key):
    for l in Path(f"/proc/{pid}/status").read_text().splitlines():
        if l.startswith(key + ":"):
            return int(l.split()[1])
    raise KeyError(key)


def test_pipelined_calls_then_end_of_input_are_all_answered(workspace):
    """Everything received before EOF is finished, not refused as
    'shutting down' (docs/configuration.md)."""
    p = start(workspace)
    payload = line(INIT) + line({"jsonrpc": "2.0", "method": "notifications/initialized"})
    payload += b"".join(echo(i, f"m{i}") for i in range(1, 31))
    out, err = p.communicate(payload, timeout=60)
    assert p.returncode == 0, err.decode()
    got = responses(out)
    for i in range(1, 31):
        r = got[i]["result"]
        assert not r["isError"], r
        assert r["content"][0]["text"] == f"m{i}"


def test_a_client_that_never_reads_cannot_grow_the_supervisor_or_hold_its_shutdown(workspace, tmp_path):
    """12,000 requests from a client that never reads stdout: the supervisor
    stops reading input (its memory and descriptors stay bounded), the
    security log keeps working, and SIGTERM ends it promptly."""
    state = tmp_path / "state"
    # No rate limit: every call runs and answers ~4 KiB the client never
    # reads. A response counts as outstanding until it is written to stdout,
    # so reading stops at the outstanding bound (running + queued + 64),
    # whether the calls ran or were refused as busy.
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", policies)
    doc = json.loads((policies / "policy.json").read_text())
    for rule in doc["principals"]:
        rule.pop("ratePerTool", None)
        rule.pop("rateOverall", None)
        rule.pop("maxConcurrent", None)
    (policies / "policy.json").write_text(json.dumps(doc))
    p = start(workspace, state=state, policies=policies)
    n = 12_000
    sent = {"bytes": 0}

    def writer():
        try:
            p.stdin.write(line(INIT) + line({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            for i in range(1, n + 1):
                p.stdin.write(echo(i, "x" * 2000))
                sent["bytes"] += 1
            p.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    time.sleep(12)
    rss_mib = status(p.pid, "VmRSS") / 1024
    fds = len(os.listdir(f"/proc/{p.pid}/fd"))
    threads = status(p.pid, "Threads")
    assert p.poll() is None, "still serving"
    assert rss_mib < 120, f"supervisor RSS {rss_mib:.0f} MiB with a client that does not read"
    assert fds < 120, f"{fds} descriptors open"
    assert threads < 64, f"{threads} threads"
    assert sent["bytes"] < 1000, f"the supervisor kept reading ({sent['bytes']} requests) from a client that does not read"
    t0 = time.time()
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        p.kill()
        raise AssertionError("SIGTERM did not end a supervisor whose client does not read")
    assert time.time() - t0 < 5
    p.stdout.close()
    p.stderr.close()
    try:
        p.stdin.close()
    except OSError:
        pass
    v = subprocess.run([str(BIN), "audit", "verify", "--state-dir", str(state)], capture_output=True, timeout=60)
    assert v.returncode == 0, v.stdout + v.stderr
    events = (state / "security").glob("events-*.jsonl")
    types = [json.loads(l)["type"] for f in events for l in f.read_text().splitlines()]
    assert "call.end" in types and types[-1] == "supervisor.stop"


def test_the_queue_bound_refuses_beyond_running_plus_queued(workspace, tmp_path):
    """--max-concurrent-calls 1 --max-queued-calls 0: while one slow call runs,
    the others are refused as busy, recorded, and the server keeps serving."""
    state = tmp_path / "state"
    p = start(workspace, "--max-concurrent-calls", "1", "--max-queued-calls", "0", "--prespawn", "0", state=state)
    slow = line({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                 "params": {"name": "probe", "arguments": {"action": "sleep"}}})
    payload = line(INIT) + line({"jsonrpc": "2.0", "method": "notifications/initialized"}) + slow
    payload += b"".join(echo(i) for i in range(2, 14))
    out, err = p.communicate(payload, timeout=60)
    got = responses(out)
    # Calls race for the one slot: whichever takes it runs, the others
    # (at least 11 of the 13, since the slow one holds the slot 1 s) are busy.
    texts = [got[i]["result"]["content"][0]["text"] for i in range(1, 14)]
    busy = [t for t in texts if "busy" in t]
    assert len(busy) >= 11, texts
    # Every refusal is recorded as such; only calls that ran have call.start,
    # each with its call.end (no start is left open to look interrupted).
    events = [json.loads(l) for f in sorted((state / "security").glob("events-*.jsonl")) for l in f.read_text().splitlines()]
    refused = [e for e in events if e["type"] == "call.refused" and e["reason"] == "busy"]
    assert len(refused) == len(busy)
    starts = {e["callId"] for e in events if e["type"] == "call.start"}
    ends = {e["callId"] for e in events if e["type"] == "call.end"}
    assert starts == ends and len(starts) == 13 - len(busy)


def test_scratch_left_by_a_killed_supervisor_is_removed_at_start(workspace, tmp_path):
    """Nothing persists: a supervisor killed with SIGKILL leaves its (empty)
    scratch directories; the next start removes them, and keeps those of a
    supervisor that still runs on the same root."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    dead = 4_000_000
    while Path(f"/proc/{dead}").exists():
        dead += 1
    stale = scratch / f"{dead}-7-c3"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "left.txt").write_text("x")
    os.symlink("/etc", stale / "link")
    live = scratch / f"{os.getpid()}-1-c1"
    live.mkdir()
    args = server_args(workspace)
    args[args.index("--scratch-dir") + 1] = str(scratch)
    p = subprocess.Popen([str(BIN), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(line(INIT), timeout=30)
    assert p.returncode == 0, err.decode()
    assert not stale.exists(), "the dead supervisor's scratch is gone"
    assert live.exists(), "a running supervisor's scratch is kept"
    assert Path("/etc/passwd").exists(), "links were not followed"
