"""The syscall profiler through the built binary (docs/resilience.md,
"Syscall profiler"): the probe cell served with the profiler on fills its
behaviour profile with the syscalls it made, insights suggests removing an
allowed group it never used, a syscall new after warm-up is an anomaly, and
a syscall outside the allowlist still kills the worker."""
import json
import shutil
import subprocess

import pytest

from conftest import BIN, probe_manifest
from test_resilience import Setup, text


@pytest.fixture
def env(workspace):
    s = Setup(workspace)
    yield s
    shutil.rmtree(s.d, ignore_errors=True)


def probe_cell(env, name, groups=("base",)):
    (env.manifests / f"{name}.json").write_text(json.dumps(probe_manifest(name, groups=groups)))


def profile(env, name):
    found = list((env.state / "profiles").glob(f"{name}@*.json"))
    assert len(found) == 1, found
    return json.loads(found[0].read_text())


def insights(env, *args):
    return subprocess.run([str(BIN), "insights", *args, "--manifests", str(env.manifests), "--policies",
                           str(env.policies), "--state-dir", str(env.state)], capture_output=True, text=True,
                          timeout=60)


def test_profiled_calls_fill_the_profile_and_insights_suggest_unused_syscalls(env):
    probe_cell(env, "lean", groups=("base", "files-write"))
    probe_cell(env, "plain")
    env.policy({"profileSyscalls": ["lean"]})
    s = env.server()
    for _ in range(4):
        r = env.call(s, "lean", action="syscall", nr=39)
        assert not r["isError"] and text(r).startswith("ok "), r
    receipt = r["_meta"]["io.github.mcp-supervisor/receipt"]["seccomp"]
    assert receipt["defaultAction"] == "kill_process" and "profilerSha256" in receipt, receipt
    plain = env.call(s, "plain", action="syscall", nr=39)
    assert "profilerSha256" not in plain["_meta"]["io.github.mcp-supervisor/receipt"]["seccomp"]
    s.close()

    doc = profile(env, "lean")
    assert doc["profiledCalls"] == 4 and doc["syscallCalls"] == 4, doc
    seen = doc["syscallsSeen"]
    assert seen["getpid"]["calls"] == 4 and seen["getpid"]["count"] >= 4, seen
    assert seen["read"]["calls"] == 4 and seen["write"]["calls"] == 4, seen
    # What the profiler lets through unseen, and what the cell never does.
    assert not {"execveat", "close", "exit_group", "unlink", "mkdir", "rename"} & set(seen), seen
    assert doc["syscalls"] == seen, "every call was learned"
    assert profile(env, "plain")["profiledCalls"] == 0, "only the cells the policy names are profiled"
    ends = {e["cell"]: e for e in env.events("call.end")}
    assert ends["lean"]["profiledSyscalls"] == len(seen) and "profiledSyscalls" not in ends["plain"]

    # Too few profiled calls: nothing to suggest yet.
    p = insights(env, "--json")
    assert p.returncode == 0, p.stderr
    assert [i for i in json.loads(p.stdout)["insights"] if i["kind"] == "unused_syscalls"] == []
    p = insights(env, "--json", "--min-profiled-calls", "4")
    found = [i for i in json.loads(p.stdout)["insights"] if i["kind"] == "unused_syscalls"]
    assert len(found) == 1, p.stdout
    i = found[0]
    assert i["subject"] == "lean"
    assert i["summary"].startswith("4 profiled calls used none of: group files-write"), i
    assert '"syscalls": {"groups":["base"]}' in i["apply"] and "lean.json" in i["apply"], i
    assert "profiles/lean@" in i["evidence"] and "4 profiled calls" in i["evidence"], i
    t = insights(env, "--min-profiled-calls", "4")
    assert "[unused_syscalls] lean: 4 profiled calls used none of: group files-write" in t.stdout, t.stdout
    env.verify()


def test_a_syscall_outside_the_allowlist_still_kills_a_profiled_worker(env):
    probe_cell(env, "lean")
    env.policy({"profileSyscalls": ["*"]})
    s = env.server()
    assert not env.call(s, "lean", action="syscall", nr=39)["isError"]
    r = env.call(s, "lean", action="syscall", nr=110)  # getppid: not in base
    assert r["isError"] and "stopped by the sandbox" in text(r), r
    s.close()
    v = env.events("sandbox.violation")
    assert len(v) == 1 and v[0]["kind"] == "seccomp" and v[0]["syscall"] == "unnamed", v
    end = env.events("call.end")[-1]
    assert end["outcome"] == "sandbox_violation" and end["signal"] == 31, end
    # The violation is the profile's too (it scores 10 × the threshold when
    # scoring is on); the call is not learned.
    doc = profile(env, "lean")
    assert doc["profiledCalls"] == 2 and doc["syscallCalls"] == 1, doc
    env.verify()


def test_a_syscall_new_after_warm_up_is_an_anomaly(env):
    probe_cell(env, "lean")
    env.policy({"profileSyscalls": ["lean"], "anomaly": {"response": "record", "warmupCalls": 5}})
    s = env.server()
    for _ in range(7):
        assert not env.call(s, "lean", action="syscall", nr=39)["isError"]
    assert env.events("cell.anomaly") == []
    # getuid (102) is allowed by base: the call runs and is answered, and
    # the profile never saw it.
    r = env.call(s, "lean", action="syscall", nr=102)
    assert not r["isError"] and text(r).startswith("ok "), r
    s.close()
    a = env.events("cell.anomaly")
    assert len(a) == 1, a
    d = [x for x in a[0]["deviations"] if x["measure"] == "syscall"]
    assert len(d) == 1 and "getuid" in d[0]["detail"] and d[0]["score"] == 10.0, a[0]
    assert a[0]["response"] == "record"
    env.verify()


def test_call_command_profiles_one_call(env):
    probe_cell(env, "lean")

    def call(nr, *flags):
        return subprocess.run([str(BIN), "call", "lean", "--args", json.dumps({"action": "syscall", "nr": nr}),
                               "--allow-unsigned", "--manifests", str(env.manifests), "--policies", str(env.policies),
                               "--state-dir", str(env.state), *flags], capture_output=True, text=True, timeout=60)

    p = call(39, "--profile-syscalls", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["outcome"] == "success" and out["syscalls"]["getpid"] >= 1 and "unlink" not in out["syscalls"], out
    p = call(39, "--profile-syscalls")
    assert "profile: " in p.stderr and "getpid 1" in p.stderr, p.stderr
    p = call(110, "--profile-syscalls", "--json")
    assert p.returncode == 1 and json.loads(p.stdout)["outcome"] == "sandbox_violation", p.stdout
    assert "syscall unnamed (profiled)" in json.loads(p.stdout)["detail"]
    p = call(39, "--profile-syscalls", "--learn")
    assert p.returncode == 2 and "cannot be combined" in p.stderr, p.stderr
