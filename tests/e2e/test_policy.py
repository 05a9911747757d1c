"""Policy rules deciding real calls through the MCP front end."""
import json
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import wait_for_workers, BIN, ROOT, RawServer, probe_manifest, worker_pids


class Setup:
    def __init__(self, workspace):
        self.d = Path(tempfile.mkdtemp(prefix="mcps-policy-"))
        self.d.chmod(0o755)
        self.policies = self.d / "policies"
        self.policies.mkdir()
        shutil.copy(ROOT / "policies" / "syscall-groups.json", self.policies)
        self.manifests = self.d / "manifests"
        shutil.copytree(workspace / "manifests", self.manifests)
        writer = probe_manifest("writer", limits={"timeoutMilliseconds": 10000})
        writer.update({"sideEffects": "writes", "phases": ["act"], "resources": ["file:{path}"]})
        (self.manifests / "writer.json").write_text(json.dumps(writer))
        verifier = probe_manifest("verify_plan")
        (self.manifests / "verify.json").write_text(json.dumps(verifier))

    def policy(self, **kw):
        doc = {
            "phases": {"states": ["observe", "plan", "act"], "initial": "observe",
                       "transitions": [{"from": "observe", "to": "plan"},
                                       {"from": "plan", "to": "act", "requires": "verify_plan"},
                                       {"from": "*", "to": "observe"}]},
            "principals": [{"name": "local", "principal": "uid:*", "allow": ["*"]}],
        }
        doc.update(kw)
        (self.policies / "policy.json").write_text(json.dumps(doc))

    def server(self, *extra):
        s = RawServer.__new__(RawServer)
        s.proc = subprocess.Popen(
            [str(BIN), "run", "--allow-unsigned", "--manifests", str(self.manifests), "--policies", str(self.policies),
             "--state-dir", str(self.d / "state"), "--scratch-dir", str(self.d / "scratch"), *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        s.pending = []
        s.initialize()
        return s

    def explain(self, *args):
        return subprocess.run([str(BIN), "policy", "explain", "--policy", str(self.policies / "policy.json"),
                               "--manifests", str(self.manifests), *args], capture_output=True, text=True)


@pytest.fixture
def env(workspace):
    s = Setup(workspace)
    yield s
    shutil.rmtree(s.d, ignore_errors=True)


def text(r):
    return r["result"]["content"][0]["text"]


def test_allow_and_deny_patterns_and_explain(env):
    env.policy(principals=[{"name": "local", "principal": "uid:*", "allow": ["echo", "probe*"], "deny": ["probe_fast"]}])
    s = env.server()
    assert not s.request(1, "tools/call", {"name": "echo", "arguments": {"text": "a"}})["result"]["isError"]
    r = s.request(2, "tools/call", {"name": "probe_fast", "arguments": {"action": "echo"}})
    assert r["result"]["isError"] and "denies" in text(r)
    r = s.request(3, "tools/call", {"name": "word_count", "arguments": {"text": "a"}})
    assert r["result"]["isError"] and "does not allow" in text(r)
    s.close()
    # policy explain says the same, with the rule.
    assert env.explain("--tool", "echo").returncode == 0
    p = env.explain("--tool", "probe_fast")
    assert p.returncode == 1 and 'deny[0] "probe_fast"' in p.stdout
    assert env.explain("--tool", "word_count").returncode == 1
    # A principal no rule covers is refused.
    env.policy(principals=[{"name": "someone else", "principal": "uid:99999", "allow": ["*"]}])
    s = env.server()
    r = s.request(4, "tools/call", {"name": "echo", "arguments": {"text": "a"}})
    assert r["result"]["isError"] and "No policy rule covers" in text(r)
    s.close()


def test_rate_limit_with_a_parallel_burst(env):
    env.policy(principals=[{"name": "local", "principal": "uid:*", "allow": ["*"],
                            "ratePerTool": {"perSecond": 0.5, "burst": 3}}])
    s = env.server("--max-concurrent-calls", "8")
    for i in range(8):
        s.send({"jsonrpc": "2.0", "id": 100 + i, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}})
    results = [s.recv_id(100 + i) for i in range(8)]
    ok = [r for r in results if not r["result"]["isError"]]
    limited = [r for r in results if r["result"]["isError"]]
    assert len(ok) == 3 and len(limited) == 5
    assert all("rate limit" in text(r) and "retry in" in text(r) for r in limited)
    # Another tool has its own bucket.
    assert not s.request(200, "tools/call", {"name": "probe", "arguments": {"action": "echo"}})["result"]["isError"]
    s.close()


def test_concurrency_cap(env):
    env.policy(principals=[{"name": "local", "principal": "uid:*", "allow": ["*"], "maxConcurrent": 2}])
    s = env.server("--max-concurrent-calls", "8")
    for i in range(2):
        s.send({"jsonrpc": "2.0", "id": 10 + i, "method": "tools/call",
                "params": {"name": "probe", "arguments": {"action": "sleep", "ms": 800}}})
    wait_for_workers(2)
    r = s.request(12, "tools/call", {"name": "echo", "arguments": {"text": "x"}})
    assert r["result"]["isError"] and "concurrency cap" in text(r)
    assert not s.recv_id(10)["result"]["isError"] and not s.recv_id(11)["result"]["isError"]
    assert not s.request(13, "tools/call", {"name": "echo", "arguments": {"text": "x"}})["result"]["isError"]
    s.close()


def test_phase_gating_with_and_without_verification(env):
    env.policy()
    s = env.server()
    write = {"name": "writer", "arguments": {"action": "echo", "text": "w", "path": "a"}}
    r = s.request(1, "tools/call", write)
    assert r["result"]["isError"]
    assert "runs only in phase act" in text(r) and "phase observe" in text(r) and "set_phase" in text(r)
    r = s.request(20, "tools/call", {"name": "set_phase", "arguments": {"phase": "plan", "extra": 1}})
    assert r["result"]["isError"] and "arguments.extra: unknown property" in text(r)
    assert s.request(21, "tools/call", {"name": "set_phase", "arguments": {"phase": "nowhere"}})["result"]["isError"]
    assert not s.request(2, "tools/call", {"name": "set_phase", "arguments": {"phase": "plan"}})["result"]["isError"]
    r = s.request(3, "tools/call", {"name": "set_phase", "arguments": {"phase": "act"}})
    assert r["result"]["isError"] and "verify_plan" in text(r)
    assert not s.request(4, "tools/call", {"name": "verify_plan", "arguments": {"action": "echo"}})["result"]["isError"]
    assert not s.request(5, "tools/call", {"name": "set_phase", "arguments": {"phase": "act"}})["result"]["isError"]
    assert text(s.request(6, "tools/call", write)) == "w"
    assert not s.request(7, "tools/call", {"name": "set_phase", "arguments": {"phase": "observe"}})["result"]["isError"]
    assert s.request(8, "tools/call", write)["result"]["isError"]
    s.close()
    events = [json.loads(l) for l in subprocess.run(
        [str(BIN), "audit", "query", "--json", "--state-dir", str(env.d / "state")], capture_output=True, text=True).stdout.splitlines()]
    phases = [(e["from"], e["to"]) for e in events if e["type"] == "session.phase"]
    assert phases == [("observe", "plan"), ("plan", "act"), ("act", "observe")]
    refusals = [e for e in events if e["type"] == "call.refused" and e["reason"] == "phase"]
    assert refusals and all(len(e["policySha256"]) == 64 for e in refusals)
    starts = [e for e in events if e["type"] == "call.start"]
    assert all("principals[0] (local)" in e["decision"] for e in starts)


def test_arbitration_of_actuators_on_one_resource(env):
    env.policy(phases={"states": ["act"], "initial": "act", "transitions": []},
               arbitration={"onConflict": "refuse", "waitMilliseconds": 0})
    s = env.server("--max-concurrent-calls", "8")
    same = {"name": "writer", "arguments": {"action": "sleep", "ms": 600, "path": "/data/x"}}
    other = {"name": "writer", "arguments": {"action": "sleep", "ms": 10, "path": "/data/y"}}
    s.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": same})
    time.sleep(0.2)
    s.send({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": same})
    s.send({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": other})
    r2, r3, r1 = s.recv_id(2), s.recv_id(3), s.recv_id(1)
    assert r2["result"]["isError"] and "another call is changing writer:file:/data/x" in text(r2)
    assert not r3["result"]["isError"] and not r1["result"]["isError"]
    s.close()
    # With "wait", the second call runs after the first, never alongside it.
    env.policy(phases={"states": ["act"], "initial": "act", "transitions": []},
               arbitration={"onConflict": "wait", "waitMilliseconds": 5000})
    s = env.server("--max-concurrent-calls", "8")
    t0 = time.time()
    for i in range(3):
        s.send({"jsonrpc": "2.0", "id": 10 + i, "method": "tools/call",
                "params": {"name": "writer", "arguments": {"action": "sleep", "ms": 300, "path": "/data/x"}}})
    rs = [s.recv_id(10 + i) for i in range(3)]
    assert all(not r["result"]["isError"] for r in rs)
    assert time.time() - t0 >= 0.85, "the three calls on one resource overlapped"
    s.close()


def test_reload_of_a_good_and_a_broken_policy(env):
    env.policy(principals=[{"name": "local", "principal": "uid:*", "allow": ["echo"]}])
    s = env.server()
    assert s.request(1, "tools/call", {"name": "probe", "arguments": {"action": "echo"}})["result"]["isError"]
    env.policy(principals=[{"name": "local", "principal": "uid:*", "allow": ["echo", "probe"]}])
    s.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert not s.request(2, "tools/call", {"name": "probe", "arguments": {"action": "echo"}})["result"]["isError"]
    (env.policies / "policy.json").write_text('{"principals": [{"name": "x", "allow": 5}]}')
    s.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    # The previous policy stays in force.
    assert not s.request(3, "tools/call", {"name": "probe", "arguments": {"action": "echo"}})["result"]["isError"]
    s.proc.stdin.close()
    s.proc.wait(timeout=10)
    err = s.proc.stderr.read().decode()
    assert "previous policy stays in force" in err and "principals[0].allow" in err
    check = subprocess.run([str(BIN), "policy", "check", str(env.policies / "policy.json")], capture_output=True, text=True)
    assert check.returncode == 1 and "principals[0].allow: expected an array of strings" in check.stderr


def test_missing_policy_refuses_everything(env):
    s = env.server()
    r = s.request(1, "tools/call", {"name": "echo", "arguments": {"text": "x"}})
    assert r["result"]["isError"] and "deny by default" in text(r)
    s.close()


def test_default_policy_never_refuses_a_back_to_back_client(workspace):
    """The shipped policy's limits are out of reach of a single local user:
    1,000 echo calls, each sent when the previous one is answered, are all
    served (docs/policy.md, "The default policy")."""
    # Quiet: nobody reads this server's stderr.
    raw = RawServer(workspace, "--log-level", "error")
    raw.initialize()
    start = time.monotonic()
    refused = []
    for i in range(1000):
        r = raw.request(10 + i, "tools/call", {"name": "echo", "arguments": {"text": "x"}})
        if r["result"].get("isError"):
            refused.append(text(r))
    elapsed = time.monotonic() - start
    raw.close()
    assert not refused, f"{len(refused)} of 1000 refused in {elapsed:.1f} s, first: {refused[0]}"
