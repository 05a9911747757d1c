"""Configuration file, reload on SIGHUP, and the unprivileged mode."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from conftest import BIN, ROOT, RawServer, probe_manifest, server_args


def test_broken_configuration_names_file_and_field(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"maxConcurrentCalls": 0}))
    p = subprocess.run([str(BIN), "run", "--config", str(cfg)], input=b"", capture_output=True, timeout=30)
    assert p.returncode == 2
    assert f"{cfg}: maxConcurrentCalls: 0 is out of range".encode() in p.stderr, p.stderr
    assert p.stdout == b""
    cfg.write_text(json.dumps({"manifest": "x"}))
    p = subprocess.run([str(BIN), "run", "--config", str(cfg)], input=b"", capture_output=True, timeout=30)
    assert p.returncode == 2 and b"manifest: unknown field" in p.stderr, p.stderr
    cfg.write_text(json.dumps({"prespawn": 17}))
    p = subprocess.run([str(BIN), "run", "--config", str(cfg)], input=b"", capture_output=True, timeout=30)
    assert p.returncode == 2 and f"{cfg}: prespawn: 17 is out of range 0...16".encode() in p.stderr, p.stderr
    p = subprocess.run([str(BIN), "run", "--prespawn=-1"], input=b"", capture_output=True, timeout=30)
    assert p.returncode != 0 and b"--prespawn: -1 is out of range 0...16 workers" in p.stderr, p.stderr


ROOT_REFUSED = b"workerUid: 0 is out of range 1...4294967294 uid: workers never run as root (uid 0)"


def test_worker_uid_0_is_refused_by_flag_and_file(tmp_path):
    """Workers never run as root, whichever way the uid is given."""
    p = subprocess.run([str(BIN), "run", "--worker-uid", "0"], input=b"", capture_output=True, timeout=30)
    assert p.returncode != 0 and b"--worker-uid: 0 is out of range" in p.stderr, p.stderr
    assert b"workers never run as root" in p.stderr and p.stdout == b""
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"workerUid": 0}))
    p = subprocess.run([str(BIN), "run", "--config", str(cfg)], input=b"", capture_output=True, timeout=30)
    assert p.returncode == 2 and f"{cfg}: ".encode() + ROOT_REFUSED in p.stderr, p.stderr
    assert p.stdout == b""
    # The commands that run or check cells read the same file and flags.
    for args in (["call", "echo"], ["doctor"], ["validate"]):
        p = subprocess.run([str(BIN), *args, "--config", str(cfg)], capture_output=True, timeout=30)
        assert p.returncode == 2 and ROOT_REFUSED in p.stderr, (args, p.stderr)
        p = subprocess.run([str(BIN), *args, "--worker-uid", "0"], capture_output=True, timeout=30)
        assert p.returncode != 0 and b"workers never run as root" in p.stderr, (args, p.stderr)
    cfg.write_text(json.dumps({"workerGid": 0}))
    p = subprocess.run([str(BIN), "run", "--config", str(cfg)], input=b"", capture_output=True, timeout=30)
    assert p.returncode == 2 and b"workerGid: 0 is out of range" in p.stderr, p.stderr


def test_config_show_is_file_then_flags(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"maxConcurrentCalls": 8, "stateDirectory": "state", "logLevel": "debug"}))
    p = subprocess.run([str(BIN), "config", "show", "--config", str(cfg), "--max-concurrent-calls", "9"],
                       capture_output=True, timeout=30, check=True)
    shown = json.loads(p.stdout)
    assert shown["maxConcurrentCalls"] == 9 and shown["logLevel"] == "debug"
    assert shown["stateDirectory"] == str(tmp_path / "state") and shown["configFile"] == str(cfg)
    assert shown["workerUid"] is None and shown["prespawn"] == 1


def test_configuration_file_sets_paths_and_limits(workspace, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"manifests": str(workspace / "manifests"), "policies": str(ROOT / "policies"),
                               "stateDirectory": "state", "scratchDirectory": "scratch", "toolsPageSize": 2}))
    p = subprocess.Popen([str(BIN), "run", "--allow-unsigned", "--config", str(cfg)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    msgs = [{"jsonrpc": "2.0", "id": 1, "method": "initialize",
             "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "c", "version": "1"}}},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}]
    out, _ = p.communicate(b"".join(json.dumps(m).encode() + b"\n" for m in msgs), timeout=30)
    replies = {r["id"]: r for r in map(json.loads, out.splitlines())}
    assert len(replies[2]["result"]["tools"]) == 2 and replies[2]["result"]["nextCursor"]
    assert (tmp_path / "state").is_dir(), "relative paths are relative to the configuration file"


def test_sighup_reload_announces_changed_tools(workspace):
    d = Path(tempfile.mkdtemp(prefix="mcps-reload-"))
    try:
        shutil.copytree(workspace / "manifests", d / "manifests")
        s = RawServer(workspace)
        s.proc.kill()
        s.proc.wait()
        s = RawServer(workspace, "--manifests", str(d / "manifests"))
        s.initialize()
        before = {t["name"] for t in s.request(1, "tools/list")["result"]["tools"]}
        (d / "manifests" / "added.json").write_text(json.dumps(probe_manifest("added_tool")))
        s.proc.send_signal(signal.SIGHUP)
        note = s.recv(timeout=10)
        assert note["method"] == "notifications/tools/list_changed", note
        after = {t["name"] for t in s.request(2, "tools/list")["result"]["tools"]}
        assert after == before | {"added_tool"}
        # A reload without changes announces nothing; a broken manifest
        # refuses only that cell.
        (d / "manifests" / "broken.json").write_text("{")
        s.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert {t["name"] for t in s.request(3, "tools/list")["result"]["tools"]} == after
        assert not s.pending
        s.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_runs_as_an_unprivileged_user(workspace):
    if os.geteuid() != 0:
        # Already unprivileged: every other test ran in this mode.
        return
    tmp_path = Path(tempfile.mkdtemp(prefix="mcps-unpriv-"))
    os.chmod(tmp_path, 0o777)
    # The checkout may sit in a directory the test user cannot enter: run
    # from world-readable copies of the binary, the cells and the policies.
    shutil.copy(BIN, tmp_path / "mcp-supervisor")
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    (tmp_path / "manifests").mkdir()
    for name in ("echo.json", "probe.json"):
        doc = json.loads((workspace / "manifests" / name).read_text())
        exe = tmp_path / Path(doc["executable"]["path"]).name
        shutil.copy(doc["executable"]["path"], exe)
        doc["executable"]["path"] = str(exe)
        (tmp_path / "manifests" / name).write_text(json.dumps(doc))
    subprocess.run(["chmod", "-R", "a+rX", str(tmp_path)], check=True)
    cmd = ["setpriv", "--reuid=4242", "--regid=4242", "--clear-groups", str(tmp_path / "mcp-supervisor"), "run",
           "--manifests", str(tmp_path / "manifests"), "--policies", str(tmp_path / "policies"),
           "--state-dir", str(tmp_path / "state"), "--scratch-dir", str(tmp_path / "scratch"), "--allow-unsigned"]
    msgs = [{"jsonrpc": "2.0", "id": 1, "method": "initialize",
             "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "c", "version": "1"}}},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}},
            {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
             "params": {"name": "probe", "arguments": {"action": "read", "path": "/etc/shadow"}}},
            {"jsonrpc": "2.0", "id": 4, "method": "tools/call",
             "params": {"name": "probe", "arguments": {"action": "syscall", "nr": 101}}}]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={"PATH": os.environ["PATH"], "HOME": "/nonexistent"})
    for m in msgs:
        p.stdin.write(json.dumps(m).encode() + b"\n")
        p.stdin.flush()
        if m.get("id", 1) > 1:
            time.sleep(0.3)
    out, err = p.communicate(timeout=30)
    replies = {r["id"]: r for r in map(json.loads, out.splitlines())}
    assert 2 in replies, (out, err[-3000:])
    assert replies[2]["result"]["content"][0]["text"] == "x", (replies, err[-2000:])
    assert replies[3]["result"]["content"][0]["text"] == "errno 13"
    assert "forbidden system call ptrace" in replies[4]["result"]["content"][0]["text"]
    assert b"uid=4242" in err


def test_audit_and_trust_commands_use_the_configured_state_directory(workspace, tmp_path):
    """The state directory of the configuration file is where `run` logs,
    and where `audit` and the trust commands look."""
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"manifests": str(workspace / "manifests"), "policies": str(ROOT / "policies"),
                               "stateDirectory": "state", "scratchDirectory": "scratch"}))
    subprocess.run([str(BIN), "run", "--allow-unsigned", "--config", str(cfg)], input=b"", capture_output=True,
                   timeout=30, check=True)
    p = subprocess.run([str(BIN), "audit", "verify", "--config", str(cfg)], capture_output=True, timeout=30)
    assert p.returncode == 0 and b"audit verify: OK" in p.stdout, (p.stdout, p.stderr)
    p = subprocess.run([str(BIN), "keys", "generate", "--config", str(cfg), "--out", str(tmp_path / "k")],
                       capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "state" / "security").is_dir()
    cfg.write_text(json.dumps({"stateDirectory": 7}))
    p = subprocess.run([str(BIN), "audit", "tail", "--config", str(cfg)], capture_output=True, timeout=30)
    assert p.returncode != 0 and b"stateDirectory: expected a path" in p.stderr, p.stderr
