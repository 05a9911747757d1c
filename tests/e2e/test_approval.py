"""Human approval for calls the policy marks (docs/policy.md, "Approval"),
in raw bytes, in both eras: elicitation/create in the handshake era, an
InputRequiredResult with an authenticated requestState in 2026-07-28.
Every refusal happens before any worker starts (no call.start)."""
import base64
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import BIN, ROOT, RawServer

V = "2026-07-28"
PV = "io.modelcontextprotocol/protocolVersion"
CAPS = "io.modelcontextprotocol/clientCapabilities"
INFO = "io.modelcontextprotocol/clientInfo"


class Setup:
    def __init__(self, workspace):
        self.d = Path(tempfile.mkdtemp(prefix="mcps-approval-"))
        self.d.chmod(0o755)
        self.policies = self.d / "policies"
        self.policies.mkdir()
        shutil.copy(ROOT / "policies" / "syscall-groups.json", self.policies)
        self.manifests = workspace / "manifests"
        self.state = self.d / "state"

    def policy(self, approval, **kw):
        doc = {
            "phases": {"states": ["observe", "plan"], "initial": "observe",
                       "transitions": [{"from": "*", "to": "plan"}, {"from": "*", "to": "observe"}]},
            "principals": [{"name": "local", "principal": "uid:*", "allow": ["*"]}],
            "approval": approval,
        }
        doc.update(kw)
        (self.policies / "policy.json").write_text(json.dumps(doc))

    def server(self, capabilities=None):
        """A raw server; initialized (handshake era) when `capabilities` is given."""
        s = RawServer.with_args(
            "run", "--allow-unsigned", "--manifests", self.manifests, "--policies", self.policies,
            "--state-dir", self.state, "--scratch-dir", self.d / "scratch", "--log-level", "error")
        if capabilities is not None:
            r = s.request(0, "initialize", {"protocolVersion": "2025-11-25", "capabilities": capabilities,
                                            "clientInfo": {"name": "approval-test", "version": "1"}})
            assert "result" in r, r
            s.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return s

    def events(self, kind):
        p = subprocess.run([str(BIN), "audit", "query", "--json", "--type", kind, "--state-dir", str(self.state)],
                           capture_output=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return [json.loads(l) for l in p.stdout.splitlines()]


@pytest.fixture
def env(workspace):
    s = Setup(workspace)
    yield s
    shutil.rmtree(s.d, ignore_errors=True)


def fields(e):
    return e.get("fields", e)


def text(result):
    return result["content"][0]["text"]


# MARK: handshake era


def call_and_answer(s, id, arguments, answer):
    """tools/call; answers the elicitation/create it causes with `answer`
    (an ElicitResult); returns (the elicitation request, the call's result)."""
    s.send({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "echo", "arguments": arguments}})
    ask = s.recv()
    assert ask.get("method") == "elicitation/create", ask
    s.send({"jsonrpc": "2.0", "id": ask["id"], "result": answer})
    return ask, s.recv_id(id)["result"]


def test_handshake_accepted_runs_the_call(env):
    env.policy([{"tool": "echo"}])
    s = env.server({"elicitation": {}})
    ask, r = call_and_answer(s, 1, {"text": "approved text"}, {"action": "accept", "content": {}})
    p = ask["params"]
    assert "echo" in p["message"] and "approved text" in p["message"]
    assert p["requestedSchema"]["type"] == "object"
    assert not r["isError"] and text(r) == "approved text"
    s.close()
    approved = [fields(e) for e in env.events("call.approved")]
    assert len(approved) == 1 and approved[0]["mechanism"] == "elicitation/create"
    assert approved[0]["rule"] == "approval[0]" and approved[0]["tool"] == "echo"
    starts = [fields(e) for e in env.events("call.start")]
    assert len(starts) == 1 and "approval[0] approved via elicitation/create" in starts[0]["approval"]


@pytest.mark.parametrize("action", ["decline", "cancel"])
def test_handshake_declined_or_cancelled_is_refused_before_any_worker(env, action):
    env.policy([{"tool": "echo"}])
    s = env.server({"elicitation": {}})
    _, r = call_and_answer(s, 1, {"text": "x"}, {"action": action})
    assert r["isError"] and "declined" in text(r)
    s.close()
    assert env.events("call.start") == []
    refused = [fields(e) for e in env.events("call.refused")]
    assert [e["reason"] for e in refused] == ["approval_declined"]


def test_handshake_without_elicitation_capability_is_refused_plainly(env):
    env.policy([{"tool": "echo"}])
    s = env.server({})
    r = s.request(1, "tools/call", {"name": "echo", "arguments": {"text": "x"}})["result"]
    assert r["isError"] and "elicitation" in text(r) and "approval" in text(r)
    assert s.pending == [], "no elicitation/create was sent"
    s.close()
    assert env.events("call.start") == []
    assert [fields(e)["reason"] for e in env.events("call.refused")] == ["approval_unavailable"]


def test_handshake_unanswered_elicitation_is_refused_at_the_timeout(env):
    env.policy([{"tool": "echo"}], approvalTimeoutSeconds=1)
    s = env.server({"elicitation": {}})
    s.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}})
    ask = s.recv()
    assert ask.get("method") == "elicitation/create"
    started = time.time()
    r = s.recv_id(1, timeout=5)["result"]
    assert r["isError"] and "no answer came within 1 s" in text(r)
    assert time.time() - started < 3
    # A late answer changes nothing, and the session goes on.
    s.send({"jsonrpc": "2.0", "id": ask["id"], "result": {"action": "accept"}})
    _, r = call_and_answer(s, 2, {"text": "y"}, {"action": "accept"})
    assert not r["isError"] and text(r) == "y"
    s.close()
    assert len(env.events("call.start")) == 1
    assert [fields(e)["reason"] for e in env.events("call.refused")] == ["approval_unavailable"]


def test_handshake_approval_only_in_the_rules_phase(env):
    env.policy([{"tool": "echo", "phase": "plan"}])
    s = env.server({"elicitation": {}})
    # In observe: no question, the call runs.
    r = s.request(1, "tools/call", {"name": "echo", "arguments": {"text": "a"}})["result"]
    assert not r["isError"] and s.pending == []
    r = s.request(2, "tools/call", {"name": "set_phase", "arguments": {"phase": "plan"}})["result"]
    assert not r["isError"]
    _, r = call_and_answer(s, 3, {"text": "b"}, {"action": "decline"})
    assert r["isError"]
    s.close()


# MARK: 2026-07-28


def modern_call(s, id, arguments, caps=None, **params):
    p = {"name": "echo", "arguments": arguments,
         "_meta": {PV: V, CAPS: {"elicitation": {}} if caps is None else caps,
                   INFO: {"name": "modern-approval", "version": "1"}}}
    p.update(params)
    return s.request(id, "tools/call", p)


def ask_modern(s, id, arguments):
    r = modern_call(s, id, arguments)["result"]
    assert r["resultType"] == "input_required", r
    req = r["inputRequests"]["approval"]
    assert req["method"] == "elicitation/create"
    assert req["params"]["mode"] == "form" and "echo" in req["params"]["message"]
    assert req["params"]["requestedSchema"] == {"type": "object", "properties": {}}
    assert isinstance(r["requestState"], str)
    assert "content" not in r and "isError" not in r
    return r["requestState"]


def answer(action="accept"):
    return {"approval": {"action": action}}


def test_modern_accepted_runs_the_call(env):
    env.policy([{"tool": "echo"}])
    s = env.server()
    state = ask_modern(s, 1, {"text": "hello"})
    r = modern_call(s, 2, {"text": "hello"}, inputResponses=answer(), requestState=state)["result"]
    assert r["resultType"] == "complete" and not r["isError"] and text(r) == "hello"
    s.close()
    assert [fields(e)["mechanism"] for e in env.events("call.approval_requested")] == ["input_required"]
    assert [fields(e)["mechanism"] for e in env.events("call.approved")] == ["input_required"]
    assert len(env.events("call.start")) == 1


def test_modern_declined_is_refused(env):
    env.policy([{"tool": "echo"}])
    s = env.server()
    state = ask_modern(s, 1, {"text": "hello"})
    r = modern_call(s, 2, {"text": "hello"}, inputResponses=answer("decline"), requestState=state)["result"]
    assert r["resultType"] == "complete" and r["isError"] and "declined" in text(r)
    s.close()
    assert env.events("call.start") == []
    assert [fields(e)["reason"] for e in env.events("call.refused")] == ["approval_declined"]


def test_modern_without_elicitation_capability_is_refused_plainly(env):
    env.policy([{"tool": "echo"}])
    s = env.server()
    r = modern_call(s, 1, {"text": "x"}, caps={})["result"]
    assert r["resultType"] == "complete" and r["isError"]
    assert "elicitation" in text(r) and "requestState" not in r
    # Capabilities are per request: the next request that declares it is asked.
    ask_modern(s, 2, {"text": "x"})
    s.close()
    assert env.events("call.start") == []
    assert [fields(e)["reason"] for e in env.events("call.refused")] == ["approval_unavailable"]


def tamper(state):
    payload, mac = state.split(".")
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    doc = json.loads(raw)
    doc["exp"] += 3600
    forged = base64.urlsafe_b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode().rstrip("=")
    return forged + "." + mac


def test_modern_tampered_state_is_refused(env):
    env.policy([{"tool": "echo"}])
    s = env.server()
    state = ask_modern(s, 1, {"text": "x"})
    for bad in (tamper(state), state[:-2] + ("AA" if state[-2:] != "AA" else "BB"), "garbage", 7):
        r = modern_call(s, 2, {"text": "x"}, inputResponses=answer(), requestState=bad)["result"]
        assert r["isError"], bad
        assert "not valid" in text(r)
    # The untouched state still works once.
    r = modern_call(s, 3, {"text": "x"}, inputResponses=answer(), requestState=state)["result"]
    assert not r["isError"]
    s.close()
    reasons = [fields(e)["reason"] for e in env.events("call.refused")]
    assert reasons == ["approval_invalid"] * 4
    assert len(env.events("call.start")) == 1


def test_modern_replayed_state_is_refused(env):
    env.policy([{"tool": "echo"}])
    s = env.server()
    state = ask_modern(s, 1, {"text": "x"})
    r = modern_call(s, 2, {"text": "x"}, inputResponses=answer(), requestState=state)["result"]
    assert not r["isError"]
    r = modern_call(s, 3, {"text": "x"}, inputResponses=answer(), requestState=state)["result"]
    assert r["isError"] and "already used" in text(r)
    s.close()
    assert len(env.events("call.start")) == 1


def test_modern_state_of_another_call_is_refused(env):
    env.policy([{"tool": "echo"}])
    s = env.server()
    state = ask_modern(s, 1, {"text": "harmless"})
    r = modern_call(s, 2, {"text": "something else"}, inputResponses=answer(), requestState=state)["result"]
    assert r["isError"] and "another call" in text(r)
    s.close()
    assert env.events("call.start") == []


def test_modern_expired_state_is_refused(env):
    env.policy([{"tool": "echo"}], approvalTimeoutSeconds=1)
    s = env.server()
    state = ask_modern(s, 1, {"text": "x"})
    time.sleep(2.1)
    r = modern_call(s, 2, {"text": "x"}, inputResponses=answer(), requestState=state)["result"]
    assert r["isError"] and "expired" in text(r)
    s.close()
    assert env.events("call.start") == []


def test_modern_state_without_an_answer_is_refused(env):
    env.policy([{"tool": "echo"}])
    s = env.server()
    state = ask_modern(s, 1, {"text": "x"})
    r = modern_call(s, 2, {"text": "x"}, requestState=state)["result"]
    assert r["isError"] and "inputResponses" in text(r)
    s.close()
    assert env.events("call.start") == []


def test_approval_policy_errors_name_file_and_field(env):
    env.policy([{"tool": "echo", "phase": "deploy"}])
    p = subprocess.run([str(BIN), "policy", "check", str(env.policies / "policy.json")],
                       capture_output=True, text=True)
    assert p.returncode != 0
    assert "policy.json" in p.stderr and "approval[0].phase" in p.stderr, p.stderr


def test_policy_explain_names_the_approval_rule(env):
    env.policy([{"tool": "echo", "phase": "plan"}])
    def explain(*args):
        return subprocess.run([str(BIN), "policy", "explain", "--policy", str(env.policies / "policy.json"),
                               "--manifests", str(env.manifests), "--tool", "echo", *args],
                              capture_output=True, text=True)
    p = explain("--phase", "plan")
    assert p.returncode == 0 and "approval: approval[0]" in p.stdout, p.stdout + p.stderr
    p = explain("--phase", "observe")
    assert p.returncode == 0 and "approval:" not in p.stdout, p.stdout


def test_handshake_call_cancelled_while_asking_is_not_answered(env):
    env.policy([{"tool": "echo"}])
    s = env.server({"elicitation": {}})
    s.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}})
    ask = s.recv()
    assert ask.get("method") == "elicitation/create"
    s.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}})
    with pytest.raises(TimeoutError):
        s.recv_id(1, timeout=1.5)
    # Answering afterwards runs nothing; the session goes on.
    s.send({"jsonrpc": "2.0", "id": ask["id"], "result": {"action": "accept"}})
    _, r = call_and_answer(s, 2, {"text": "y"}, {"action": "accept"})
    assert not r["isError"] and text(r) == "y"
    s.close()
    assert len(env.events("call.start")) == 1
    refused = [fields(e) for e in env.events("call.refused")]
    assert [e["reason"] for e in refused] == ["approval_unavailable"] and "cancelled" in refused[0]["detail"]
