"""Existing MCP stdio servers under the sandbox, before the gateway speaks
to them: mcp-server-time, -git and -sqlite from PyPI (`make
gateway-servers`) and the hostile test servers of tests/e2e/servers/, each
run as a command cell (tests/e2e/gateway.py, `command_manifest`) over a
whole MCP conversation on stdin, with the files, limits and syscall groups
their server-cell manifests declare, enforcing (not learn mode). As root
(workers run as nobody) and as an unprivileged user."""
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import gateway as g
from conftest import BIN, ROOT

TEST_UID = 4242
IDENTITIES = ["root", "user"]


class Work:
    """A manifests directory, state and scratch for `mcp-supervisor call`,
    owned by the identity the supervisor runs as."""

    def __init__(self, identity):
        self.dir = Path(tempfile.mkdtemp(prefix="mcps-gw-"))
        self.dir.chmod(0o755)
        (self.dir / "manifests").mkdir()
        self.as_user = identity == "user" and os.geteuid() == 0
        if self.as_user:
            # The checkout may sit where the test user cannot enter: the
            # binary and the policies from world-readable copies.
            shutil.copy(BIN, self.dir / "mcp-supervisor")
            shutil.copytree(ROOT / "policies", self.dir / "policies")
            self.bin, self.policies = self.dir / "mcp-supervisor", self.dir / "policies"
        else:
            self.bin, self.policies = BIN, ROOT / "policies"

    def path(self, name, mode=0o755):
        """A directory for the test's own files, usable by the workers."""
        d = self.dir / name
        d.mkdir()
        d.chmod(mode)
        return d

    def converse(self, doc, *calls, learn=False, timeout=120):
        """Runs the server of `doc` once over initialize, tools/list and
        `calls`; returns (outcome object, responses by id, stderr)."""
        cmd = g.command_manifest(doc)
        (self.dir / "manifests" / f"{doc['name']}.json").write_text(json.dumps(cmd))
        argv = [str(self.bin), "call", cmd["tools"][0]["name"], "--manifests", str(self.dir / "manifests"),
                "--policies", str(self.policies), "--state-dir", str(self.dir / "state"),
                "--scratch-dir", str(self.dir / "scratch"), "--allow-unsigned", "--json",
                "--args", json.dumps({"stdin": g.conversation(*calls)}), *(["--learn"] if learn else [])]
        env = None
        if self.as_user:
            subprocess.run(["chown", "-R", f"{TEST_UID}:{TEST_UID}", str(self.dir)], check=True)
            argv = ["setpriv", f"--reuid={TEST_UID}", f"--regid={TEST_UID}", "--clear-groups", *argv]
            env = {"PATH": os.environ["PATH"], "HOME": "/nonexistent"}
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
        assert p.stdout.startswith("{"), (p.returncode, p.stdout[-2000:], p.stderr[-3000:])
        outcome = json.loads(p.stdout)
        text = "".join(c.get("text", "") for c in outcome.get("content", []))
        return outcome, g.responses(text), p.stderr

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(params=IDENTITIES)
def work(request):
    w = Work(request.param)
    yield w
    w.close()


@pytest.fixture
def root_work():
    w = Work("root")
    yield w
    w.close()


def listed(rs):
    return [t["name"] for t in rs[2]["result"]["tools"]]


def text_of(r):
    assert "result" in r, r
    return "".join(c.get("text", "") for c in r["result"]["content"])


def make_repo(d, files):
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.org", GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1")
    subprocess.run(["git", "init", "-q", "-b", "main", str(d)], check=True, env=env)
    for name, content in files.items():
        (d / name).write_text(content)
    subprocess.run(["git", "add", "."], cwd=d, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "first"], cwd=d, check=True, env=env)
    subprocess.run(["chmod", "-R", "a+rX", str(d)], check=True)


def check_handshake(rs, server_name):
    init = rs[1]["result"]
    assert init["protocolVersion"] == g.PROTOCOL_VERSION, init
    assert init["serverInfo"]["name"] == server_name, init


# ---------------------------------------------------------------------------
# Real servers from PyPI

def test_time_server_lists_and_calls(work):
    outcome, rs, err = work.converse(
        g.time_manifest(), ("get_current_time", {"timezone": "Europe/Paris"}),
        ("convert_time", {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}),
        ("get_current_time", {"timezone": "Nowhere/Atlantis"}))
    assert outcome["outcome"] == "success", (outcome, err[-3000:])
    check_handshake(rs, "mcp-time")
    assert listed(rs) == ["get_current_time", "convert_time"]
    assert json.loads(text_of(rs[3]))["timezone"] == "Europe/Paris"
    assert json.loads(text_of(rs[4]))["target"]["timezone"] == "Asia/Tokyo"
    assert rs[5]["result"]["isError"] is True and "Nowhere/Atlantis" in text_of(rs[5])


def test_git_server_lists_and_calls(work):
    repo = work.path("repo")
    make_repo(repo, {"README": "hello\n"})
    (repo / "README").write_text("hello\nchanged\n")
    outcome, rs, err = work.converse(
        g.git_manifest(None, repo), ("git_status", {"repo_path": str(repo)}),
        ("git_log", {"repo_path": str(repo), "max_count": 5}), ("git_diff_unstaged", {"repo_path": str(repo)}),
        ("git_show", {"repo_path": str(repo), "revision": "HEAD"}))
    assert outcome["outcome"] == "success", (outcome, err[-3000:])
    check_handshake(rs, "mcp-git")
    assert {"git_status", "git_log", "git_diff_unstaged", "git_show", "git_commit"} <= set(listed(rs))
    assert "modified:   README" in text_of(rs[3]), rs[3]
    assert "Message: first" in text_of(rs[4]), rs[4]
    assert "+changed" in text_of(rs[5]), rs[5]
    assert "+hello" in text_of(rs[6]), rs[6]


def test_sqlite_server_lists_and_calls(work):
    data = work.path("data", 0o777)
    outcome, rs, err = work.converse(
        g.sqlite_manifest(None, data / "test.db"), ("create_table", {"query": "CREATE TABLE t (x INTEGER)"}),
        ("write_query", {"query": "INSERT INTO t VALUES (42)"}), ("read_query", {"query": "SELECT x FROM t"}))
    assert outcome["outcome"] == "success", (outcome, err[-3000:])
    check_handshake(rs, "sqlite")
    assert {"read_query", "write_query", "create_table", "list_tables", "describe_table"} <= set(listed(rs))
    assert "42" in text_of(rs[5]), rs[5]
    assert sqlite3.connect(data / "test.db").execute("SELECT x FROM t").fetchall() == [(42,)]


def test_a_python_mcp_server_needs_the_python_mcp_server_group(root_work):
    """Without the group, the asyncio server is stopped at start-up: the
    group is what lets it serve (the test above shows it suffices)."""
    outcome, rs, err = root_work.converse(g.time_manifest(groups=["base", "python"]),
                                          ("get_current_time", {"timezone": "UTC"}))
    assert outcome["outcome"] == "sandbox_violation", outcome
    group = json.loads((ROOT / "policies" / "syscall-groups.json").read_text())["groups"]["python-mcp-server"]
    names = {x if isinstance(x, str) else x["name"] for x in group}
    assert any(f"syscall {n} " in outcome["detail"] for n in names), outcome["detail"]
    assert 3 not in rs


def test_git_server_outside_its_repository_is_refused_by_the_kernel(root_work):
    """Started without --repository, mcp-server-git checks no path itself:
    unsandboxed it reads any repository; as a cell, only the declared one."""
    declared, other = root_work.path("declared"), root_work.path("other")
    make_repo(declared, {"a": "declared\n"})
    make_repo(other, {"b": "other\n"})
    doc = g.git_manifest(None, declared)
    doc["argv"] = ["python3", "-S", "-m", "mcp_server_git"]
    calls = [("git_log", {"repo_path": str(declared), "max_count": 1}),
             ("git_log", {"repo_path": str(other), "max_count": 1})]

    # Unsandboxed, the same server, arguments and environment read both.
    env = {**doc["environment"]["set"], "PATH": "/usr/bin:/bin", "HOME": str(root_work.dir)}
    p = subprocess.run([str(g.PYTHON), *doc["argv"][1:]], input=g.conversation(*calls), capture_output=True,
                       text=True, env=env, timeout=120)
    direct = g.responses(p.stdout)
    assert "Message: first" in text_of(direct[3]) and "Message: first" in text_of(direct[4]), (direct, p.stderr)
    assert not direct[4]["result"].get("isError")

    outcome, rs, err = root_work.converse(doc, *calls)
    assert outcome["outcome"] == "success", (outcome, err[-3000:])
    assert "Message: first" in text_of(rs[3]), rs[3]
    assert rs[4]["result"]["isError"] is True, rs[4]
    assert "Message: first" not in text_of(rs[4]), rs[4]


def test_sqlite_server_writes_only_in_its_declared_directory(root_work):
    """The server runs any statement it is given: ATTACH of a database
    elsewhere (in a directory anyone may write) is refused by the kernel."""
    data, elsewhere = root_work.path("data", 0o777), root_work.path("elsewhere", 0o777)
    outcome, rs, err = root_work.converse(
        g.sqlite_manifest(None, data / "test.db"), ("create_table", {"query": "CREATE TABLE t (x INTEGER)"}),
        ("write_query", {"query": f"ATTACH DATABASE '{elsewhere}/evil.db' AS evil"}),
        ("write_query", {"query": "CREATE TABLE evil.stolen (x INTEGER)"}),
        ("write_query", {"query": "INSERT INTO t VALUES (7)"}))
    assert outcome["outcome"] == "success", (outcome, err[-3000:])
    assert "unable to open database" in text_of(rs[4]), rs[4]
    assert "error" in text_of(rs[5]).lower(), rs[5]
    assert list(elsewhere.iterdir()) == []
    assert sqlite3.connect(data / "test.db").execute("SELECT x FROM t").fetchall() == [(7,)]


# ---------------------------------------------------------------------------
# The test servers

def test_counter_counts_in_memory(root_work):
    outcome, rs, err = root_work.converse(g.script_server_manifest(None, "counter.py"), ("count", {}), ("count", {}))
    assert outcome["outcome"] == "success", (outcome, err[-3000:])
    first, second = rs[3]["result"]["structuredContent"], rs[4]["result"]["structuredContent"]
    assert (first["count"], second["count"]) == (1, 2)
    assert first["instance"] == second["instance"] and first["pid"] == second["pid"]


@pytest.mark.parametrize("mode", [None, "description", "schema", "add"])
def test_rugpull_changes_its_tools_when_the_marker_exists(root_work, mode):
    marker_dir = root_work.path("rugpull")
    if mode is not None:
        (marker_dir / "rugpull").write_text(mode)
        (marker_dir / "rugpull").chmod(0o644)
    doc = g.script_server_manifest(None, "rugpull.py", read=[marker_dir], env={"RUGPULL_DIR": str(marker_dir)})
    outcome, rs, err = root_work.converse(doc, ("greet", {"name": "ada"}))
    assert outcome["outcome"] == "success", (outcome, err[-3000:])
    tools = rs[2]["result"]["tools"]
    greet = tools[0]
    assert rs[3]["result"]["structuredContent"] == {"greeting": "hello ada", "drift": mode}
    assert [t["name"] for t in tools] == (["greet", "exfiltrate"] if mode == "add" else ["greet"])
    assert ("<IMPORTANT>" in greet["description"]) == (mode == "description")
    assert ("secret" in greet["inputSchema"]["properties"]) == (mode == "schema")


def test_escape_attempts_on_files_are_refused(root_work):
    state = root_work.dir / "state"
    outcome, rs, err = root_work.converse(
        g.script_server_manifest(None, "escape.py"), ("read_file", {"path": str(g.SERVERS / "escape.py")}),
        ("read_file", {"path": "/etc/passwd"}), ("list_dir", {"path": "/"}),
        ("write_file", {"path": str(state / "planted")}), ("whoami", {}))
    assert outcome["outcome"] == "success", (outcome, err[-3000:])
    obs = {i: rs[i]["result"]["structuredContent"] for i in range(3, 8)}
    assert obs[3]["ok"] is True and "hostile server" in obs[3]["head"]  # its own package: readable
    assert obs[4]["errname"] == "EACCES", obs[4]
    assert obs[5]["errname"] == "EACCES", obs[5]
    assert obs[6]["ok"] is False, obs[6]
    assert not (state / "planted").exists()
    assert obs[7]["uid"] != 0 and obs[7]["env"]["PYTHONPATH"] == str(g.SERVERS)


def test_escape_socket_stops_the_server(root_work):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    try:
        outcome, rs, err = root_work.converse(g.script_server_manifest(None, "escape.py"),
                                              ("connect_tcp", {"port": listener.getsockname()[1]}))
        assert outcome["outcome"] == "sandbox_violation", outcome
        assert "syscall socket" in outcome["detail"], outcome
        assert 3 not in rs
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()


def test_escape_fork_without_processes_stops_the_server(root_work):
    marker = root_work.path("out", 0o777) / "marker"
    outcome, rs, err = root_work.converse(
        g.script_server_manifest(None, "escape.py", write=[marker.parent]),
        ("fork_linger", {"marker": str(marker), "delay_ms": 100}))
    assert outcome["outcome"] == "sandbox_violation" and "syscall clone" in outcome["detail"], outcome
    time.sleep(0.5)
    assert not marker.exists()


def test_escape_child_does_not_outlive_the_server(root_work):
    """With processes allowed, the child is in the worker's PID namespace:
    it dies with the server, before it can write its marker."""
    marker = root_work.path("out", 0o777) / "marker"
    doc = g.script_server_manifest(None, "escape.py", write=[marker.parent], limits={"processes": "processes"})
    for keep in (False, True):
        outcome, rs, err = root_work.converse(
            doc, ("fork_linger", {"marker": str(marker), "delay_ms": 700, "keep_stdio": keep}))
        assert outcome["outcome"] == "success", (outcome, err[-3000:])
        assert rs[3]["result"]["structuredContent"]["ok"] is True, rs[3]
    time.sleep(1.5)
    assert not marker.exists()


def test_escape_server_requests_and_huge_line(root_work):
    doc = g.script_server_manifest(None, "escape.py")
    outcome, rs, err = root_work.converse(doc, ("sample", {}), ("elicit", {}), ("roots", {}))
    assert outcome["outcome"] == "success", (outcome, err[-3000:])
    assert [m["params"]["maxTokens"] for m in rs["sampling/createMessage"]] == [16]
    assert "requestedSchema" in rs["elicitation/create"][0]["params"]
    assert len(rs["roots/list"]) == 1
    # No client answers on this route: each request reports stdin's end.
    assert [rs[i]["result"]["structuredContent"] for i in (3, 4, 5)] == [{"ok": True, "response": None}] * 3

    outcome, rs, err = root_work.converse(doc, ("huge_line", {}))
    assert outcome["outcome"] == "limit_exceeded", outcome
