"""Breakers, fallbacks, retries, behaviour profiles and their responses,
and the improvement report, through the built binary with the probe cell
failing, sleeping or allocating on demand (docs/resilience.md)."""
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import BIN, ROOT, RawServer, probe_manifest


class Setup:
    def __init__(self, workspace):
        self.d = Path(tempfile.mkdtemp(prefix="mcps-resilience-"))
        self.d.chmod(0o755)
        self.policies = self.d / "policies"
        self.policies.mkdir()
        shutil.copy(ROOT / "policies" / "syscall-groups.json", self.policies)
        self.manifests = self.d / "manifests"
        self.manifests.mkdir()
        self.state = self.d / "state"
        self.ids = iter(range(1, 100000))

    def cell(self, name, timeout=2000, idempotent=None, memory=512):
        m = probe_manifest(name, limits={"timeoutMilliseconds": timeout, "memoryMiB": memory})
        if idempotent is not None:
            m["tools"][0]["annotations"] = {"idempotentHint": idempotent}
        (self.manifests / f"{name}.json").write_text(json.dumps(m))

    def policy(self, resilience, **kw):
        doc = {"principals": [{"name": "local", "principal": "uid:*", "allow": ["*"]}], "resilience": resilience}
        doc.update(kw)
        (self.policies / "policy.json").write_text(json.dumps(doc))

    def server(self, capabilities=None):
        s = RawServer.__new__(RawServer)
        s.proc = subprocess.Popen(
            [str(BIN), "run", "--allow-unsigned", "--manifests", str(self.manifests), "--policies", str(self.policies),
             "--state-dir", str(self.state), "--scratch-dir", str(self.d / "scratch"), "--log-level", "error"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        s.pending = []
        if capabilities is None:
            s.initialize()
        else:
            s.request(0, "initialize", {"protocolVersion": "2025-11-25", "capabilities": capabilities,
                                        "clientInfo": {"name": "raw-test", "version": "1"}})
            s.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return s

    def call(self, s, tool, **args):
        r = s.request(next(self.ids), "tools/call", {"name": tool, "arguments": args})
        assert "result" in r, r
        return r["result"]

    def cli(self, *args):
        return subprocess.run([str(BIN), *args, "--state-dir", str(self.state)], capture_output=True, text=True,
                              timeout=60)

    def events(self, *types):
        p = self.cli("audit", "query", "--json", *[a for t in types for a in ("--type", t)])
        assert p.returncode == 0, p.stderr
        return [json.loads(l) for l in p.stdout.splitlines()]

    def verify(self):
        p = self.cli("audit", "verify")
        assert p.returncode == 0, p.stdout + p.stderr


@pytest.fixture
def env(workspace):
    s = Setup(workspace)
    yield s
    shutil.rmtree(s.d, ignore_errors=True)


def text(result):
    return "\n".join(c.get("text", "") for c in result["content"])


def test_breaker_opens_refuses_half_opens_and_closes(env):
    env.cell("flaky", timeout=300)
    env.policy({"breaker": {"failures": 3, "windowSeconds": 60, "openSeconds": 2}})
    s = env.server()
    # Three timeouts in a row open the breaker.
    for _ in range(3):
        r = env.call(s, "flaky", action="sleep", ms=2000)
        assert r["isError"] and "timed out" in text(r)
    t0 = time.time()
    r = env.call(s, "flaky", action="echo", text="x")
    assert r["isError"] and "paused" in text(r) and "tried again in" in text(r), text(r)
    assert time.time() - t0 < 0.25, "an open breaker refuses at once, without a worker"
    # After openSeconds: one probe call. A failing probe opens it again.
    time.sleep(2.1)
    r = env.call(s, "flaky", action="sleep", ms=2000)
    assert r["isError"] and "timed out" in text(r)
    assert "paused" in text(env.call(s, "flaky", action="echo", text="x"))
    # The next probe succeeds: closed, calls flow again.
    time.sleep(2.1)
    r = env.call(s, "flaky", action="echo", text="ok")
    assert r["content"] == [{"type": "text", "text": "ok"}] and r["isError"] is False, r
    assert not env.call(s, "flaky", action="echo", text="again")["isError"]
    s.close()
    states = [e["state"] for e in env.events("cell.breaker")]
    assert states == ["open", "half_open", "open", "half_open", "closed"], states
    opened = env.events("cell.breaker")[0]
    assert opened["cause"] == "timeout" and opened["failures"] == 3 and "retryAt" in opened
    refused = [e for e in env.events("call.refused") if e["reason"] == "breaker_open"]
    assert len(refused) == 2 and refused[0]["cell"] == "flaky"
    # audit stats shows the last state.
    p = env.cli("audit", "stats", "--json")
    assert json.loads(p.stdout)["breakers"][0]["state"] == "closed"
    env.verify()


def test_breaker_off_without_a_resilience_section(env):
    env.cell("flaky", timeout=300)
    (env.policies / "policy.json").write_text(json.dumps(
        {"principals": [{"name": "local", "principal": "uid:*", "allow": ["*"]}]}))
    s = env.server()
    for _ in range(4):
        assert "timed out" in text(env.call(s, "flaky", action="sleep", ms=2000))
    s.close()
    assert env.events("cell.breaker") == []


def test_fallback_chain_skips_an_alternative_the_policy_refuses(env):
    env.cell("primary", timeout=300)
    env.cell("alt_denied")
    env.cell("alt_ok")
    env.policy({"fallback": [{"tool": "primary", "alternatives": ["alt_denied", "alt_ok"]}]},
               principals=[{"name": "local", "principal": "uid:*", "allow": ["*"], "deny": ["alt_denied"]}])
    s = env.server()
    r = env.call(s, "primary", action="sleep", ms=800)
    assert not r["isError"], r
    assert r["content"][0]["text"] == "slept"
    assert "Answered by alt_ok, a fallback for primary (timeout)" in text(r)
    # A failure the rule does not name is answered as it is.
    r = env.call(s, "primary", action="nope")
    assert r["isError"] and "Answered by" not in text(r)
    # None answers: the primary's answer, and what was tried.
    r = env.call(s, "primary", action="sleep", ms=2500)
    assert r["isError"] and r["content"][0]["text"] == "The tool call timed out."
    assert "Fallbacks tried, none answered: primary (timeout), alt_denied (policy), alt_ok (timeout)." in text(r)
    s.close()
    ends = [(e["tool"], e["outcome"]) for e in env.events("call.end")]
    assert ends == [("primary", "timeout"), ("alt_ok", "success"), ("primary", "tool_error"),
                    ("primary", "timeout"), ("alt_ok", "timeout")], ends
    refused = env.events("call.refused")
    assert [(e["tool"], e["reason"]) for e in refused] == [("alt_denied", "policy")] * 2
    env.verify()


def test_retries_only_for_idempotent_tools_and_within_the_deadline(env):
    env.cell("idem", idempotent=True)
    env.cell("plain")
    env.cell("idem_slow", timeout=300, idempotent=True)
    env.cell("idem_far", idempotent=True)
    env.policy({"retry": [
        {"tool": "idem", "attempts": 3, "backoffMilliseconds": 20, "on": ["tool_error"]},
        {"tool": "plain", "attempts": 3, "on": ["tool_error"]},
        {"tool": "idem_slow", "attempts": 3, "on": ["timeout"]},
        # The first backoff alone is longer than the 2 s deadline.
        {"tool": "idem_far", "attempts": 3, "backoffMilliseconds": 5000, "on": ["tool_error"]},
    ]})
    s = env.server()
    for tool in ("idem", "plain", "idem_slow", "idem_far"):
        args = {"action": "sleep", "ms": 1000} if tool == "idem_slow" else {"action": "nope"}
        assert env.call(s, tool, **args)["isError"]
    s.close()
    starts = {}
    for e in env.events("call.start"):
        starts[e["tool"]] = starts.get(e["tool"], 0) + 1
    # idem: three attempts; plain: not idempotent; idem_slow: its timeout
    # used the deadline; idem_far: the backoff does not fit in it.
    assert starts == {"idem": 3, "plain": 1, "idem_slow": 1, "idem_far": 1}, starts
    env.verify()


# The anomalous call: ~60 times the warm-up's peak memory, and the CPU and
# time it takes to touch it. Peak memory is read from /proc while the worker
# lives, and a worker that exits at once after its answer is sometimes gone
# by then: the CPU and duration deviations flag the call either way.
BIG = 300 << 20
SCORED = {"peakMemoryKiB", "cpuMicroseconds", "durationMicroseconds"}


def warm_up(env, s, tool, n):
    for _ in range(n):
        r = env.call(s, tool, action="alloc", bytes=1 << 20, keep=True)
        assert not r["isError"], r


def test_anomaly_quarantine_survives_a_restart_and_cell_release_ends_it(env):
    env.cell("hog", memory=1024)
    env.policy({"anomaly": {"response": "quarantine", "warmupCalls": 8}})
    s = env.server()
    warm_up(env, s, "hog", 8)
    assert env.events("cell.anomaly") == []
    # Far more memory and CPU: answered (it ran), then quarantined.
    r = env.call(s, "hog", action="alloc", bytes=BIG, keep=True)
    assert not r["isError"]
    r = env.call(s, "hog", action="echo", text="x")
    assert r["isError"] and "quarantined" in text(r) and "behaved unlike its history" in text(r)
    s.close()
    anomaly = env.events("cell.anomaly")
    assert len(anomaly) == 1 and anomaly[0]["response"] == "quarantine" and anomaly[0]["quarantined"] is True
    assert SCORED & {d["measure"] for d in anomaly[0]["deviations"]}, anomaly
    # A new process still refuses it.
    s = env.server()
    assert "quarantined" in text(env.call(s, "hog", action="echo", text="x"))
    s.close()
    listed = env.cli("cell", "quarantined")
    assert "[anomaly]" in listed.stdout, listed.stdout
    p = env.cli("cell", "release", "hog")
    assert p.returncode == 0 and "released: hog" in p.stdout, p.stdout + p.stderr
    s = env.server()
    assert not env.call(s, "hog", action="echo", text="x")["isError"]
    s.close()
    refused = [e["reason"] for e in env.events("call.refused")]
    assert refused == ["anomaly_quarantine", "anomaly_quarantine"], refused
    released = env.events("cell.released")
    assert released[0]["reason"] == "anomaly"
    # The profile is on disk, without arguments or results.
    profiles = list((env.state / "profiles").glob("hog@*.json"))
    assert len(profiles) == 1
    doc = json.loads(profiles[0].read_text())
    assert doc["calls"] >= 8 and "alloc" not in profiles[0].read_text()
    env.verify()


def test_anomaly_record_and_approve_responses(env):
    env.cell("rec", memory=1024)
    env.cell("appr", memory=1024)
    env.policy({"anomaly": {"response": "record", "warmupCalls": 6},
                "cells": {"appr": {"anomaly": {"response": "approve", "approvalCalls": 2}}}})
    s = env.server()
    warm_up(env, s, "rec", 6)
    warm_up(env, s, "appr", 6)
    assert not env.call(s, "rec", action="alloc", bytes=BIG, keep=True)["isError"]
    assert not env.call(s, "rec", action="echo", text="still served")["isError"]
    assert not env.call(s, "appr", action="alloc", bytes=BIG, keep=True)["isError"]
    # The next two calls need a person; this client offers no way to ask.
    for _ in range(2):
        r = env.call(s, "appr", action="echo", text="x")
        assert r["isError"] and "approval" in text(r), text(r)
    assert not env.call(s, "appr", action="echo", text="x")["isError"]
    s.close()
    responses = [(e["cell"], e["response"]) for e in env.events("cell.anomaly")]
    assert responses == [("rec", "record"), ("appr", "approve")], responses
    refused = [e for e in env.events("call.refused") if e["tool"] == "appr"]
    assert [e["reason"] for e in refused] == ["approval_unavailable"] * 2
    assert "anomaly(appr)" in refused[0]["detail"]
    env.verify()


def test_after_an_anomaly_a_person_approves_the_next_call(env):
    env.cell("appr", memory=1024)
    env.policy({"anomaly": {"response": "approve", "warmupCalls": 6, "approvalCalls": 1}})
    s = env.server({"elicitation": {}})
    warm_up(env, s, "appr", 6)
    assert not env.call(s, "appr", action="alloc", bytes=BIG, keep=True)["isError"]
    s.send({"jsonrpc": "2.0", "id": 500, "method": "tools/call",
            "params": {"name": "appr", "arguments": {"action": "echo", "text": "approved"}}})
    ask = s.recv()
    assert ask.get("method") == "elicitation/create", ask
    s.send({"jsonrpc": "2.0", "id": ask["id"], "result": {"action": "accept", "content": {}}})
    r = s.recv_id(500)["result"]
    assert not r["isError"] and text(r) == "approved"
    # approvalCalls 1: the call after it runs without asking.
    assert text(env.call(s, "appr", action="echo", text="free")) == "free"
    assert s.pending == []
    s.close()
    approved = env.events("call.approved")
    assert [e["rule"] for e in approved] == ["anomaly(appr)"]
    env.verify()


def test_a_violation_is_anomalous_even_before_warm_up(env):
    env.cell("bad")
    env.policy({"anomaly": {"response": "quarantine"}})
    s = env.server()
    r = env.call(s, "bad", action="syscall", nr=101)   # ptrace: not in any group
    assert r["isError"]
    assert "quarantined" in text(env.call(s, "bad", action="echo", text="x"))
    s.close()
    a = env.events("cell.anomaly")
    assert [d["measure"] for d in a[0]["deviations"]] == ["violation"]
    env.verify()


def test_insights_reports_breakers_anomalies_and_never_called_cells(env):
    env.cell("flaky", timeout=300)
    env.cell("unused")
    env.policy({"breaker": {"failures": 2, "openSeconds": 60}})
    s = env.server()
    for _ in range(2):
        env.call(s, "flaky", action="sleep", ms=2000)
    for _ in range(3):
        env.call(s, "flaky", action="echo", text="x")
    s.close()
    p = subprocess.run([str(BIN), "insights", "--json", "--min-calls", "2", "--state-dir", str(env.state),
                        "--manifests", str(env.manifests), "--policies", str(env.policies)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    found = {(i["kind"], i["subject"]) for i in json.loads(p.stdout)["insights"]}
    assert ("breaker_opened", "flaky") in found, found
    assert ("never_called", "unused") in found, found
    t = subprocess.run([str(BIN), "insights", "--min-calls", "2", "--state-dir", str(env.state),
                        "--manifests", str(env.manifests), "--policies", str(env.policies)],
                       capture_output=True, text=True, timeout=60)
    assert "[breaker_opened] flaky" in t.stdout and "apply:" in t.stdout
    # doctor shows the breaker that is still open (it then fails on the
    # empty trust ledger of this unsigned setup, after printing it).
    d = subprocess.run([str(BIN), "doctor", "--state-dir", str(env.state), "--manifests", str(env.manifests),
                        "--policies", str(env.policies)], capture_output=True, text=True, timeout=60)
    assert "breakers not closed (last recorded state): \n  flaky 1: open since" in d.stdout, d.stdout


def test_a_new_network_host_is_anomalous(env):
    """The http_fetch cell learns one host, then is steered to another that
    its allowlist also holds: the call is answered, and quarantines it."""
    import http.server
    import threading
    from conftest import bundled_manifest

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "6")
            self.end_headers()
            self.wfile.write(b"hello\n")

        def log_message(self, *a):
            pass

    servers = [http.server.ThreadingHTTPServer((ip, 0), Hello) for ip in ("127.0.0.1", "127.0.0.2")]
    for h in servers:
        threading.Thread(target=h.serve_forever, daemon=True).start()
    usual, other = (f"{h.server_address[0]}:{h.server_address[1]}" for h in servers)
    try:
        fetch = bundled_manifest("http-fetch")
        fetch["network"]["connect"] = [usual, other]
        (env.manifests / "http-fetch.json").write_text(json.dumps(fetch))
        env.policy({"anomaly": {"response": "quarantine", "warmupCalls": 5}})
        s = env.server()
        for _ in range(5):
            r = env.call(s, "http_fetch", url=f"http://{usual}/")
            assert not r["isError"], r
        assert not env.call(s, "http_fetch", url=f"http://{usual}/")["isError"]
        assert env.events("cell.anomaly") == []
        assert not env.call(s, "http_fetch", url=f"http://{other}/")["isError"]
        assert "quarantined" in text(env.call(s, "http_fetch", url=f"http://{usual}/"))
        s.close()
        a = env.events("cell.anomaly")
        assert len(a) == 1 and a[0]["cell"] == "http-fetch", a
        hosts = [d for d in a[0]["deviations"] if d["measure"] == "networkHost"]
        assert hosts and "127.0.0.2" in hosts[0]["detail"], a
        env.verify()
    finally:
        for h in servers:
            h.shutdown()
