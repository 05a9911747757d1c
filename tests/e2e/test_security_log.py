"""The security event log as users meet it: every call and refusal leaves
its events, `audit verify` passes on an untouched log, and a SIGKILL under
load loses at most the record being written."""
import json
import signal
import subprocess
import tempfile
import threading
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
        # Killed while calls are being answered and recorded: once a few
        # answers are out (a loaded machine may take longer to start than
        # any fixed sleep), after a little more time.
        for _ in range(6):
            assert p.stdout.readline(), "the supervisor answered"
        time.sleep(0.05 * round)
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


# The log fails closed: a full filesystem, a lost key, missing checkpoints,
# a crash in the middle of a call.

import errno
import os

import pytest


def serve(workspace, state, stderr=subprocess.PIPE):
    """An initialized unsigned server with its state in `state`."""
    s = RawServer(workspace, state=state, stderr=stderr)
    s.initialize()
    return s


def echo(s, id, text="hi"):
    r = s.request(id, "tools/call", {"name": "echo", "arguments": {"text": text}})
    assert "result" in r, r
    return r["result"]


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs: a filesystem the test can really fill."""
    assert os.geteuid() == 0, "this test mounts a tmpfs and must run as root (as `make test` does)"
    mnt = tmp_path / "fs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(fs):
    """Writes a file until the filesystem is full (ENOSPC); returns it."""
    path = fs / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 16, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
    finally:
        os.close(fd)
    return path


def until_log_fails(s, first_id):
    """Echo calls until one fails for the security log (a log file may
    still have room in its last page); returns the failing result."""
    for i in range(first_id, first_id + 60):
        r = echo(s, i)
        if r.get("isError"):
            return r
    raise AssertionError("the calls kept succeeding on a full filesystem")


def test_full_disk_refuses_calls_then_recovers_and_verifies(workspace, small_fs):
    state = small_fs / "state"
    s = serve(workspace, state)
    assert echo(s, 1)["content"][0]["text"] == "hi"
    filler = fill(small_fs)
    failed = until_log_fails(s, 100)
    text = failed["content"][0]["text"]
    assert "security log cannot be written" in text and "ENOSPC" in text, text
    assert str(small_fs) not in text, "no path in the answer to the client"
    # While the log cannot write, every call is refused with the reason.
    for i in range(200, 205):
        r = echo(s, i)
        assert r["isError"] and r["content"][0]["text"].startswith("Refused: the security log cannot be written"), r
    # Space returns: the server recovers by itself, without a restart.
    filler.unlink()
    deadline = time.time() + 10
    ok = None
    for i in range(300, 400):
        r = echo(s, i)
        if not r.get("isError"):
            ok = r
            break
        assert time.time() < deadline, "no recovery within 10 s of space returning"
        time.sleep(0.2)
    assert ok and ok["content"][0]["text"] == "hi"
    assert s.close() == 0
    v = audit(state, "verify")
    assert v.returncode == 0, v.stderr
    assert b"every record covered" in v.stdout
    recovered = events(state, "--type", "log.recovered")
    assert len(recovered) >= 1 and "ENOSPC" in recovered[0]["error"]
    seqs = [e["seq"] for e in events(state)]
    assert seqs == list(range(1, len(seqs) + 1)), "one unbroken sequence"


def test_full_disk_failure_and_recovery_are_said_once_on_stderr(workspace, small_fs):
    state = small_fs / "state"
    s = serve(workspace, state)
    assert echo(s, 1)["content"][0]["text"] == "hi"
    filler = fill(small_fs)
    until_log_fails(s, 100)
    for i in range(200, 210):
        echo(s, i)
    filler.unlink()
    deadline = time.time() + 10
    while echo(s, 300).get("isError"):
        assert time.time() < deadline
        time.sleep(0.2)
    s.proc.stdin.close()
    s.proc.wait(timeout=10)
    err = s.proc.stderr.read().decode()
    s.proc.stdout.close()
    s.proc.stderr.close()
    assert err.count("SECURITY LOG FAILED") == 1, err
    assert err.count("the security log is writable again") == 1, err


def test_server_started_on_a_full_disk_serves_no_call(workspace, small_fs):
    # A new state directory on a full filesystem: the server refuses to start.
    fill(small_fs)
    args = server_args(workspace)
    args[args.index("--state-dir") + 1] = str(small_fs / "state")
    init = json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}).encode() + b"\n"
    p = subprocess.run([str(BIN), *args], input=init, capture_output=True, timeout=30)
    assert p.returncode == 2, p
    assert b"ENOSPC" in p.stderr, p.stderr
    assert p.stdout == b"", "nothing served"


def test_existing_log_on_a_full_disk_serves_no_call(workspace, small_fs):
    state = small_fs / "state"
    subprocess.run([str(BIN), *[a if a != str(workspace / "state") else str(state) for a in server_args(workspace)]],
                   input=b"", capture_output=True, timeout=30, check=True)
    fill(small_fs)
    args = server_args(workspace)
    args[args.index("--state-dir") + 1] = str(state)
    p = subprocess.Popen([str(BIN), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    s = RawServer.__new__(RawServer)
    s.proc, s.pending = p, []
    try:
        s.initialize()
    except (EOFError, BrokenPipeError, TimeoutError):
        # Refused to start: the reason is on stderr.
        assert p.wait(timeout=10) == 2
        assert b"ENOSPC" in p.stderr.read()
        return
    # Started (its first records fit in a page the log file already had):
    # every call is refused with the reason.
    r = until_log_fails(s, 1)
    assert "security log cannot be written" in r["content"][0]["text"]
    s.close()


def test_closed_stderr_and_a_failing_log_do_not_kill_the_supervisor(workspace, small_fs):
    r, w = os.pipe()
    os.close(r)  # every write to stderr now fails with EPIPE
    s = serve(workspace, small_fs / "state", stderr=w)
    os.close(w)
    assert echo(s, 1)["content"][0]["text"] == "hi"
    fill(small_fs)
    until_log_fails(s, 100)
    assert s.proc.poll() is None, f"the supervisor died: {s.proc.returncode}"
    assert s.request(500, "ping")["result"] == {}
    assert echo(s, 501)["isError"]
    assert s.proc.poll() is None
    s.proc.stdin.close()
    assert s.proc.wait(timeout=10) == 0


def test_interrupted_call_is_recorded_at_the_next_start(workspace, tmp_path):
    state = tmp_path / "state"
    args = server_args(workspace)
    args[args.index("--state-dir") + 1] = str(state)
    s = serve(workspace, state)
    s.send({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "probe", "arguments": {"action": "sleep", "ms": 1800}}})
    deadline = time.time() + 5
    while not events(state, "--type", "call.start"):
        assert time.time() < deadline, "call.start was not written"
        time.sleep(0.05)
    time.sleep(0.2)  # the worker sleeps 1.8 s: the call is in flight
    s.proc.kill()
    s.proc.wait()
    started = events(state, "--type", "call.start")
    assert len(started) == 1 and started[0]["tool"] == "probe"
    assert events(state, "--type", "call.end") == []
    subprocess.run([str(BIN), *args], input=b"", capture_output=True, timeout=30, check=True)
    interrupted = events(state, "--type", "call.interrupted")
    assert len(interrupted) == 1, interrupted
    assert interrupted[0]["callId"] == started[0]["callId"] and interrupted[0]["startSeq"] == started[0]["seq"]
    assert interrupted[0]["tool"] == "probe"
    v = audit(state, "verify")
    assert v.returncode == 0, v.stderr
    # Recorded once: a third start finds nothing more.
    subprocess.run([str(BIN), *args], input=b"", capture_output=True, timeout=30, check=True)
    assert len(events(state, "--type", "call.interrupted")) == 1


def test_verify_requires_checkpoint_coverage(workspace, tmp_path):
    state = tmp_path / "state"
    s = serve(workspace, state)
    echo(s, 1)
    s.close()
    assert audit(state, "verify").returncode == 0
    cp = state / "security" / "checkpoints.jsonl"
    saved = cp.read_bytes()
    copy = tmp_path / "checkpoints-copy.jsonl"
    copy.write_bytes(saved)
    cp.write_bytes(b"")
    v = audit(state, "verify")
    assert v.returncode == 1 and b"uncovered" in v.stderr and b"records 1..." in v.stderr, v.stderr
    assert audit(state, "verify", "--checkpoints", str(copy)).returncode == 0
    v = audit(state, "verify", "--checkpoints", str(tmp_path / "no-such-file.jsonl"))
    assert v.returncode == 1 and b"cannot read the checkpoints" in v.stderr, v.stderr


def test_lost_log_key_is_not_replaced_until_an_operator_rotates_it(workspace, tmp_path):
    state = tmp_path / "state"
    args = server_args(workspace)
    args[args.index("--state-dir") + 1] = str(state)
    subprocess.run([str(BIN), *args], input=b"", capture_output=True, timeout=30, check=True)
    priv, pub = state / "keys" / "log-signing.key", state / "keys" / "log-signing.pub"
    old_pub = pub.read_bytes()
    priv.unlink()
    p = subprocess.run([str(BIN), *args], input=b"", capture_output=True, timeout=30)
    assert p.returncode == 2 and b"audit rotate-key" in p.stderr, p.stderr
    assert not priv.exists() and pub.read_bytes() == old_pub, "start-up created no key"
    r = audit(state, "rotate-key", "--reason", "key lost")
    assert r.returncode == 0, r.stderr
    assert pub.read_bytes() != old_pub
    subprocess.run([str(BIN), *args], input=b"", capture_output=True, timeout=30, check=True)
    v = audit(state, "verify")
    assert v.returncode == 0, v.stderr
    assert b"keys " in v.stdout, v.stdout
    rotated = events(state, "--type", "log.key_rotated")
    assert len(rotated) == 1 and rotated[0]["reason"] == "key lost" and rotated[0]["previousKeyAvailable"] is False


def test_audit_tail_follow_prints_new_records_and_ends_when_the_log_goes(workspace):
    """`audit tail --follow` blocks on inotify: a call's records appear as
    they are written, and removing the log directory ends it with an error
    instead of leaving it blocked (or looping) forever."""
    state = workspace / "state"
    s = RawServer.serving(workspace, workspace / "manifests", "--allow-unsigned")
    tail = subprocess.Popen([str(BIN), "audit", "tail", "--follow", "-n", "1", "--state-dir", str(state)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # A tail that never prints is killed, so that readline returns instead of hanging the test.
    watchdog = threading.Timer(60, tail.kill)
    watchdog.start()
    try:
        assert tail.stdout.readline(), "no record printed at start"
        r = s.request(7, "tools/call", {"name": "probe", "arguments": {"action": "echo", "text": "followed"}})
        assert not r["result"].get("isError"), r
        seen = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(" call.end " in l for l in seen):
            line = tail.stdout.readline()
            assert line, f"audit tail --follow ended early: {tail.stderr.read()}"
            seen.append(line)
        assert any(" call.end " in l for l in seen), seen
    finally:
        s.close()
    subprocess.run(["rm", "-rf", str(state / "security")], check=True)
    try:
        rc = tail.wait(timeout=10)
    except subprocess.TimeoutExpired:
        tail.kill()
        raise AssertionError("audit tail --follow kept running after its log directory was removed")
    finally:
        watchdog.cancel()
    assert rc == 1 and "can no longer be watched" in tail.stderr.read(), rc


def test_verify_a_set_of_instance_logs_names_the_one_tampered(workspace, tmp_path):
    """`audit verify --instance DIR …`: each instance's chain and checkpoints
    against that instance's own key, one line each; a record changed in one
    log fails the command, naming that instance and the record."""
    states = [tmp_path / f"i{k}" / "state" for k in range(3)]
    for k, state in enumerate(states):
        s = serve(workspace, state)
        echo(s, k + 1)
        s.close()
    args = [str(BIN), "audit", "verify", *(a for st in states for a in ("--instance", str(st)))]
    ok = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    lines = ok.stdout.splitlines()
    assert len(lines) == 3 and all(f"{st}: OK:" in l for st, l in zip(states, lines)), ok.stdout
    # Keys differ per instance: no log is checked against another's key.
    keys = {(st / "keys" / "log-signing.pub").read_text() for st in states}
    assert len(keys) == 3
    logs = sorted(p for p in (states[1] / "security").glob("*.jsonl") if p.name != "checkpoints.jsonl")
    records = logs[0].read_text().splitlines()
    rec = json.loads(records[1])
    rec["type"] = "call.end" if rec.get("type") != "call.end" else "call.start"
    records[1] = json.dumps(rec, separators=(",", ":"))
    logs[0].write_text("\n".join(records) + "\n")
    bad = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"{states[0]}: OK:" in bad.stdout and f"{states[2]}: OK:" in bad.stdout, bad.stdout
    failed = [l for l in bad.stderr.splitlines() if f"{states[1]}: FAILED:" in l]
    assert failed and f"{logs[0]}:2:" in failed[0] and "record 2 " in failed[0], bad.stderr
    assert f"1 of 3 instance log(s): {states[1]}" in bad.stderr, bad.stderr
