"""Workers started ahead of the call: hardened exactly like fresh ones, used
by one call each, ended on reload, when idle, and at shutdown."""
import json
import signal
import subprocess
import time
from pathlib import Path

from conftest import RawServer, wait_for_workers, wait_gone, worker_pids


def status(pid):
    return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)


def echo(raw, id):
    r = raw.request(id, "tools/call", {"name": "probe", "arguments": {"action": "echo", "text": "x"}})
    assert r["result"]["content"][0]["text"] == "x", r
    return r


def idle_workers(expect, timeout=5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        pids = worker_pids()
        if len(pids) == expect:
            return pids
        time.sleep(0.01)
    return worker_pids()


def test_prespawned_worker_is_hardened_and_serves_one_call(workspace):
    s = RawServer(workspace)
    try:
        s.initialize()
        assert not worker_pids()
        echo(s, 1)
        (warm,) = idle_workers(1)
        st = status(warm)
        # The same protections as a fresh worker, before any input arrived.
        assert st["Seccomp"].strip() == "2" and st["NoNewPrivs"].strip() == "1", st
        assert int(st["CapEff"], 16) == 0 and int(st["CapBnd"], 16) == 0
        if Path("/proc/self").stat().st_uid == 0:
            assert st["Uid"].split()[0] == "65534"
        # (It becomes visible at its exec, a moment before the supervisor
        # files it as ready.)
        time.sleep(0.3)
        echo(s, 2)
        # The ready worker served that call and is gone; its successor waits.
        assert wait_gone([warm])
        (nxt,) = idle_workers(1)
        assert nxt != warm
        time.sleep(0.3)
        # A reload ends the ready worker (the next call starts afresh).
        s.proc.send_signal(signal.SIGHUP)
        assert wait_gone([nxt])
        echo(s, 3)
    finally:
        s.close()
    assert not worker_pids(), "a ready worker outlived the supervisor"
    ends = [json.loads(l) for l in subprocess.run(
        [str(Path(__file__).resolve().parents[2] / ".build/debug/mcp-supervisor"), "audit", "query", "--json",
         "--type", "call.end", "--tool", "probe", "--state-dir", str(workspace / "state")],
        capture_output=True, check=True).stdout.splitlines()]
    assert ends[-2].get("prespawned") is True and ends[-2]["spawnMicroseconds"] == 0
    assert "prespawned" not in ends[-1] and ends[-1]["spawnMicroseconds"] > 0


def test_idle_workers_expire_and_prespawn_can_be_off(workspace):
    s = RawServer(workspace, "--prespawn-idle-seconds", "1")
    try:
        s.initialize()
        echo(s, 1)
        pids = idle_workers(1)
        assert len(pids) == 1
        assert wait_gone(pids, timeout=5), "an idle ready worker was not ended"
    finally:
        s.close()
    s = RawServer(workspace, "--prespawn", "0")
    try:
        s.initialize()
        echo(s, 1)
        time.sleep(0.3)
        assert not worker_pids()
    finally:
        s.close()


def test_back_to_back_calls_keep_exactly_n_ready(workspace):
    """--prespawn 1: a call ending while the next worker is still being started
    does not ask for another; one ready worker per cell, not two."""
    s = RawServer(workspace, "--prespawn", "1")
    try:
        s.initialize()
        # Calls in flight together end while the next worker is being started.
        for batch in range(6):
            ids = range(100 * batch + 1, 100 * batch + 9)
            for i in ids:
                s.send({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                        "params": {"name": "probe", "arguments": {"action": "echo", "text": "x"}}})
            for i in ids:
                assert s.recv_id(i)["result"]["content"][0]["text"] == "x"
        time.sleep(0.5)
        mine = [p for p in worker_pids() if int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1]) == s.proc.pid]
        assert len(mine) == 1, f"ready workers of one cell with --prespawn 1: {mine}"
    finally:
        s.close()
