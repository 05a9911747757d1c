"""The gateway end to end: existing MCP stdio servers as server cells
(docs/gateway.md), spoken to through `mcp-supervisor run` in raw JSON-RPC
and managed with the CLI. Real servers from PyPI (`make gateway-servers`:
mcp-server-time, -git, -sqlite) and the small test servers of
tests/e2e/servers/ (counter, rugpull, escape): registration (signed, and
`manifest pin --tools`), listing and calling, per-call freshness and
sessions, prespawned pre-initialized servers, paths outside the declared
ones refused by the kernel, a rug pull quarantined and released, hostile
attempts each stopped and recorded while the supervisor keeps serving, tool
name collisions, and the security log verifying afterwards. As root (workers
run as nobody) and, for the key cases, as an unprivileged user."""
import functools
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
from conftest import BIN, ROOT, RawServer, wait_gone
from test_gateway_servers import make_repo

TEST_UID = 4242
IDENTITIES = ["root", "user"]


@functools.cache
def _digest(path):
    """Package tree digests, once per test process (the trees do not change
    while the tests run; hashing mcp-server-time's takes about a second)."""
    return g.tree_digest(path)


def manifest(builder, *args, **kw):
    """A server-cell manifest from a tests/e2e/gateway.py builder, its
    package digests filled from the cache."""
    doc = builder(*args, digests=False, **kw)
    for p in doc["server"]["packages"]:
        p["sha256"] = _digest(p["path"])
    return doc


@functools.cache
def _tools(key):
    return g.direct_tools(json.loads(key))


def with_tools(doc):
    """`doc` with its server's own tools pinned (asked directly, once per
    executable, argv and environment)."""
    key = json.dumps({k: doc[k] for k in ("executable", "argv", "environment")}, sort_keys=True)
    doc["tools"] = json.loads(json.dumps(_tools(key)))
    return doc


class Gateway:
    """A manifests directory, state and scratch for `mcp-supervisor run` and
    the CLI, owned by the identity the supervisor runs as (root, or uid
    4242 through setpriv with world-readable copies of the binary and the
    policies, as the checkout may sit where that user cannot enter)."""

    def __init__(self, identity="root"):
        self.dir = Path(tempfile.mkdtemp(prefix="mcps-gwe-"))
        self.dir.chmod(0o755)
        self.manifests = self.dir / "manifests"
        self.manifests.mkdir()
        self.state = self.dir / "state"
        self.as_user = identity == "user" and os.geteuid() == 0
        if self.as_user:
            shutil.copy(BIN, self.dir / "mcp-supervisor")
            shutil.copytree(ROOT / "policies", self.dir / "policies")
            self.bin, self.policies = self.dir / "mcp-supervisor", self.dir / "policies"
        else:
            self.bin, self.policies = BIN, ROOT / "policies"
        self.servers = []
        self.logs = 0

    def path(self, name, mode=0o755):
        """A directory for the test's own files, usable by the workers."""
        d = self.dir / name
        d.mkdir()
        d.chmod(mode)
        return d

    def write(self, doc, name=None):
        p = self.manifests / f"{name or doc['name']}.json"
        p.write_text(json.dumps(doc, indent=1))
        return p

    def _argv(self, argv):
        """`argv` as the identity: as the test user, everything under the
        directory is handed over first."""
        argv = [str(a) for a in argv]
        if not self.as_user:
            return argv, None
        subprocess.run(["chown", "-R", f"{TEST_UID}:{TEST_UID}", str(self.dir)], check=True)
        env = {"PATH": os.environ["PATH"], "HOME": "/nonexistent", "XDG_STATE_HOME": "", "XDG_RUNTIME_DIR": "",
               "XDG_CONFIG_HOME": ""}
        return ["setpriv", f"--reuid={TEST_UID}", f"--regid={TEST_UID}", "--clear-groups", *argv], env

    def cli(self, *args, ok=True, timeout=120):
        """`mcp-supervisor ARGS --state-dir STATE` (and --policies where the
        command reads syscall groups)."""
        extra = ["--state-dir", self.state]
        if args[0] == "manifest" or args[:2] in (("cell", "register"),):
            extra += ["--policies", self.policies]
        argv, env = self._argv([self.bin, *args, *extra])
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
        if ok:
            assert p.returncode == 0, (args, p.returncode, p.stdout[-3000:], p.stderr[-3000:])
        return p

    def serve(self, *extra, signed=False, state=None):
        """`mcp-supervisor run` on the manifests, initialized; its stderr
        goes to a file (`stderr(s)`) so that nothing can block it."""
        self.logs += 1
        err = self.dir / f"stderr-{self.logs}.log"
        args = [self.bin, "run", "--manifests", self.manifests, "--policies", self.policies,
                "--state-dir", state or self.state, "--scratch-dir", self.dir / "scratch", "--log-level", "warning",
                *([] if signed else ["--allow-unsigned"]), *extra]
        argv, env = self._argv(args)
        s = RawServer.__new__(RawServer)
        with open(err, "wb") as f:
            s.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=f, env=env)
        s.pending = []
        s.stderr_path = err
        s.ids = iter(range(1000, 100000))
        self.servers.append(s)
        # A client that could answer every request a server might make:
        # none must reach it.
        r = s.request(0, "initialize", {"protocolVersion": g.PROTOCOL_VERSION,
                                        "capabilities": {"sampling": {}, "elicitation": {}, "roots": {}},
                                        "clientInfo": {"name": "gateway-e2e", "version": "1"}})
        assert "result" in r, (r, stderr(s)[-3000:])
        s.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return s

    def events(self, *types, **filters):
        """The security log's records of these types (audit query --json)."""
        args = ["audit", "query", "--json"]
        for t in types:
            args += ["--type", t]
        for k, v in filters.items():
            args += [f"--{k}", v]
        p = self.cli(*args)
        return [json.loads(line) for line in p.stdout.splitlines()]

    def verify(self):
        p = self.cli("audit", "verify")
        assert "audit verify: OK" in p.stdout, p.stdout + p.stderr

    def close(self):
        for s in self.servers:
            if s.proc.poll() is None:
                s.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def stderr(s):
    return Path(s.stderr_path).read_text(errors="replace")


@pytest.fixture(params=IDENTITIES)
def gw(request):
    w = Gateway(request.param)
    yield w
    w.close()


@pytest.fixture
def root_gw():
    w = Gateway("root")
    yield w
    w.close()


def tools_of(s):
    """The client's tools/list (every page), by name."""
    out, cursor = {}, None
    while True:
        r = s.request(next(s.ids), "tools/list", {"cursor": cursor} if cursor else None)
        assert "result" in r, r
        out.update({t["name"]: t for t in r["result"]["tools"]})
        cursor = r["result"].get("nextCursor")
        if not cursor:
            return out


def call(s, name, args=None, timeout=60):
    """One tools/call; returns (the response, its wall time in seconds)."""
    id = next(s.ids)
    t0 = time.monotonic()
    s.send({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": args or {}}})
    r = s.recv_id(id, timeout=timeout)
    return r, time.monotonic() - t0


def ok(s, name, args=None, timeout=60):
    """A call that must succeed; returns its result."""
    r, _ = call(s, name, args, timeout)
    assert "result" in r and not r["result"].get("isError"), (name, r, stderr(s)[-3000:])
    return r["result"]


def text(result):
    return "".join(c.get("text", "") for c in result["content"])


def observed(result):
    """A test server's observation (its structuredContent)."""
    assert "structuredContent" in result, result
    return result["structuredContent"]


def connect_is_stopped(s):
    """escape.py's TCP connection to a listener of the test: the call fails
    and the listener sees nobody."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    try:
        r, _ = call(s, "escape_connect_tcp", {"port": listener.getsockname()[1]})
        assert r["result"]["isError"] is True, r
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()


def server_requests(s):
    """Requests the supervisor sent to its client (none are expected from a
    server cell)."""
    return [m for m in s.pending if "method" in m and "id" in m]


# ---------------------------------------------------------------------------
# mcp-server-time: registration, listing, calling

def check_time_tools(listed, server_tools):
    assert {"time_get_current_time", "time_convert_time"} <= set(listed), sorted(listed)
    by_name = {t["name"]: t for t in server_tools}
    for name in ("get_current_time", "convert_time"):
        mine = listed[f"time_{name}"]
        assert mine["description"] == by_name[name]["description"], (mine, by_name[name])
        assert mine["inputSchema"]["properties"].keys() == by_name[name]["inputSchema"]["properties"].keys()


def check_time_calls(s):
    now = json.loads(text(ok(s, "time_get_current_time", {"timezone": "Europe/Paris"})))
    assert now["timezone"] == "Europe/Paris", now
    conv = json.loads(text(ok(s, "time_convert_time", {"source_timezone": "UTC", "time": "12:00",
                                                       "target_timezone": "Asia/Tokyo"})))
    assert conv["target"]["timezone"] == "Asia/Tokyo" and conv["target"]["datetime"].endswith("21:00:00+09:00"), conv
    r, _ = call(s, "time_get_current_time", {"timezone": "Nowhere/Atlantis"})
    assert r["result"]["isError"] is True and "Nowhere/Atlantis" in text(r["result"]), r


def test_time_server_registered_signed_lists_and_calls(root_gw):
    """`cell register` runs the server once in its sandbox, shows its tools,
    pins them into the manifest, signs and registers it; a signed-only
    supervisor then serves them under the cell's prefix."""
    gw = root_gw
    key = gw.dir / "dev"
    gw.cli("keys", "generate", "--out", key)
    doc = manifest(g.time_manifest)
    assert doc["tools"] == []
    path = gw.write(doc)
    reg = gw.cli("cell", "register", path, "--key", f"{key}.key")
    for name in ("time_get_current_time", "time_convert_time"):
        assert name in reg.stdout, reg.stdout
    assert "(server name get_current_time)" in reg.stdout and "arguments: timezone" in reg.stdout, reg.stdout
    written = json.loads(path.read_text())
    server_tools = _tools(json.dumps({k: doc[k] for k in ("executable", "argv", "environment")}, sort_keys=True))
    assert written["tools"] == server_tools, (written["tools"], server_tools)
    assert Path(f"{path}.sig").exists()

    s = gw.serve(signed=True)
    listed = tools_of(s)
    check_time_tools(listed, server_tools)
    check_time_calls(s)
    s.close()
    ends = gw.events("call.end", tool="time_get_current_time")
    assert [e["outcome"] for e in ends] == ["success", "tool_error"], ends


def test_time_server_pinned_with_manifest_pin_tools(gw):
    """Unsigned development: `manifest pin --tools` fills the package digests
    and the server's tools; `run --allow-unsigned` serves them."""
    doc = g.time_manifest(digests=False)
    assert all(p["sha256"] == "" for p in doc["server"]["packages"])
    path = gw.write(doc)
    p = gw.cli("manifest", "pin", "--tools", path)
    assert "time_get_current_time" in p.stderr and "time_convert_time" in p.stderr, p.stderr
    pinned = json.loads(path.read_text())
    assert [pk["sha256"] for pk in pinned["server"]["packages"]] == [_digest(g.SITE)]
    assert [t["name"] for t in pinned["tools"]] == ["get_current_time", "convert_time"], pinned["tools"]

    s = gw.serve()
    check_time_tools(tools_of(s), pinned["tools"])
    check_time_calls(s)


# ---------------------------------------------------------------------------
# Lifecycles and prespawn

def test_per_call_servers_are_fresh_and_session_servers_are_not(root_gw):
    gw = root_gw
    gw.write(with_tools(manifest(g.script_server_manifest, None, "counter.py", name="counter")))
    s = gw.serve()
    assert "counter_count" in tools_of(s)
    seen = [observed(ok(s, "counter_count")) for _ in range(3)]
    assert [o["count"] for o in seen] == [1, 1, 1], seen
    assert len({o["instance"] for o in seen}) == 3 and len({o["pid"] for o in seen}) == 3, seen
    # Each server is killed at its call's answer.
    assert wait_gone([o["pid"] for o in seen]), seen
    s.close()

    doc = with_tools(manifest(g.script_server_manifest, None, "counter.py", name="counter", lifecycle="session"))
    gw.write(doc)
    s = gw.serve()
    first = [observed(ok(s, "counter_count")) for _ in range(3)]
    assert [o["count"] for o in first] == [1, 2, 3], first
    assert len({o["instance"] for o in first}) == 1, first
    assert Path(f"/proc/{first[0]['pid']}").exists()
    s.close()
    # The session's server ends with it.
    assert wait_gone([first[0]["pid"]]), first
    s = gw.serve()
    again = observed(ok(s, "counter_count"))
    assert again["count"] == 1 and again["instance"] != first[0]["instance"], (first, again)


def test_later_calls_are_served_by_a_prespawned_initialized_server(root_gw):
    """The first call starts its own server; meanwhile the prespawn thread
    readies the next one (started, initialized, tools compared), which
    serves a later call at a fraction of the cost."""
    gw = root_gw
    gw.write(with_tools(manifest(g.time_manifest)))
    s = gw.serve()
    _, cold = call(s, "time_get_current_time", {"timezone": "UTC"})
    # The next server takes about as long as that call to get ready (more on
    # a loaded machine: the wait follows it).
    time.sleep(max(2.0, 2.5 * cold))
    r, warm = call(s, "time_get_current_time", {"timezone": "UTC"})
    assert not r["result"].get("isError"), r
    s.close()
    ends = gw.events("call.end", tool="time_get_current_time")
    assert [e["outcome"] for e in ends] == ["success", "success"], ends
    assert not ends[0].get("prespawned") and ends[0]["spawnMicroseconds"] > 0, ends[0]
    assert ends[1].get("prespawned") is True, ends[1]
    # Generous bounds: a Python server takes ~1 s to start here.
    assert cold < 30 and warm < 3, (cold, warm)
    assert warm < cold / 3, (cold, warm)
    assert ends[1]["durationMicroseconds"] < ends[0]["durationMicroseconds"] / 3, ends


# ---------------------------------------------------------------------------
# Paths outside the declared ones

def test_git_server_reads_its_repository_and_the_kernel_refuses_others(root_gw):
    """mcp-server-git started without --repository checks no path itself
    (shown unsandboxed); through the gateway only the declared repository
    can be read."""
    gw = root_gw
    declared, other = gw.path("declared"), gw.path("other")
    make_repo(declared, {"a": "declared\n"})
    make_repo(other, {"b": "other\n"})
    (declared / "a").write_text("declared\nchanged\n")
    doc = manifest(g.git_manifest, None, declared)
    doc["argv"] = ["python3", "-S", "-m", "mcp_server_git"]
    probe = [("git_log", {"repo_path": str(other), "max_count": 1})]
    env = {**doc["environment"]["set"], "PATH": "/usr/bin:/bin", "HOME": str(gw.dir)}
    p = subprocess.run([str(g.PYTHON), *doc["argv"][1:]], input=g.conversation(*probe, padding=200),
                       capture_output=True, text=True, env=env, timeout=120, cwd="/")
    direct = g.responses(p.stdout)
    assert "Message: first" in text(direct[3]["result"]), (direct, p.stderr[-2000:])
    doc["tools"] = direct[2]["result"]["tools"]
    gw.write(doc)

    s = gw.serve()
    assert "Message: first" in text(ok(s, "git_git_log", {"repo_path": str(declared), "max_count": 5}))
    assert "modified:   a" in text(ok(s, "git_git_status", {"repo_path": str(declared)}))
    r, _ = call(s, "git_git_log", {"repo_path": str(other), "max_count": 1})
    assert r["result"].get("isError") is True, r
    assert "Message: first" not in text(r["result"]), r
    ends = gw.events("call.end", tool="git_git_log")
    assert [e["outcome"] for e in ends] == ["success", "tool_error"], ends


def test_sqlite_server_writes_only_in_its_declared_directory(root_gw):
    """The server runs any statement it is given: a database elsewhere (in
    a directory anyone may write) is refused by the kernel."""
    gw = root_gw
    data, elsewhere = gw.path("data", 0o777), gw.path("elsewhere", 0o777)
    doc = manifest(g.sqlite_manifest, None, data / "test.db")
    # The tools as listed directly (unsandboxed, the server creates its
    # database: a throwaway one).
    doc["tools"] = with_tools(manifest(g.sqlite_manifest, None, gw.path("listing") / "list.db"))["tools"]
    gw.write(doc)
    s = gw.serve()
    # An actuator (sideEffects writes) runs in phase act.
    for phase in ("plan", "act"):
        ok(s, "set_phase", {"phase": phase})

    def query(tool, q):
        # mcp-server-sqlite reports a database error as text, not isError.
        return text(ok(s, f"sqlite_{tool}", {"query": q}))

    assert "error" not in query("create_table", "CREATE TABLE t (x INTEGER)").lower()
    assert "unable to open database" in query("write_query", f"ATTACH DATABASE '{elsewhere}/evil.db' AS evil")
    assert "unable to open database" in query("write_query", f"VACUUM INTO '{elsewhere}/copy.db'")
    assert "error" not in query("write_query", "INSERT INTO t VALUES (7)").lower()
    assert "7" in query("read_query", "SELECT x FROM t")
    assert list(elsewhere.iterdir()) == []
    assert sorted(p.name for p in data.iterdir()) == ["test.db"]
    assert sqlite3.connect(data / "test.db").execute("SELECT x FROM t").fetchall() == [(7,)]


# ---------------------------------------------------------------------------
# A rug pull: drift, quarantine, release

def test_rug_pull_is_refused_quarantined_and_released_through_the_cli(root_gw):
    """rugpull.py, registered signed with the tools it lists, then made to
    list others (a poisoned description): refused, quarantined across
    processes, reviewed and released through the CLI."""
    gw = root_gw
    marker_dir = gw.path("rugpull")
    marker = marker_dir / "rugpull"
    key = gw.dir / "dev"
    gw.cli("keys", "generate", "--out", key)
    path = gw.write(manifest(g.script_server_manifest, None, "rugpull.py", read=[marker_dir],
                             env={"RUGPULL_DIR": str(marker_dir)}))
    gw.cli("cell", "register", path, "--key", f"{key}.key")
    assert [t["name"] for t in json.loads(path.read_text())["tools"]] == ["greet"]
    s = gw.serve(signed=True)
    assert observed(ok(s, "rugpull_greet", {"name": "ada"})) == {"greeting": "hello ada", "drift": None}
    s.close()

    marker.write_text("description")
    marker.chmod(0o644)
    s = gw.serve(signed=True)
    r, _ = call(s, "rugpull_greet", {"name": "ada"})
    assert r["result"]["isError"] is True and "hello" not in text(r["result"]), r
    (drift,) = gw.events("cell.drift")
    assert drift["quarantined"] is True and drift["cell"] == "rugpull", drift
    assert 'changed tool "greet": description' in drift["difference"], drift
    assert "<IMPORTANT>" in drift["difference"] and "Greet someone by name." in drift["difference"], drift
    assert len(gw.events("call.end", tool="rugpull_greet", outcome="definition_drift")) == 1
    # Later calls are refused before any server runs, in this process ...
    r, _ = call(s, "rugpull_greet", {"name": "bob"})
    assert r["result"]["isError"] is True and "quarantined" in text(r["result"]), r
    s.close()
    # ... and in a new one with the same state directory.
    s = gw.serve(signed=True)
    r, _ = call(s, "rugpull_greet", {"name": "eve"})
    assert r["result"]["isError"] is True and "quarantined" in text(r["result"]), r
    refused = gw.events("call.refused", tool="rugpull_greet")
    assert [e["reason"] for e in refused] == ["quarantined", "quarantined"], refused
    assert len(gw.events("call.end", tool="rugpull_greet")) == 2  # the first call and the drift: no server since

    listing = json.loads(gw.cli("cell", "quarantined", "--json").stdout)
    assert [(q["cell"], q["label"]) for q in listing] == [("rugpull", "1")], listing
    assert listing[0]["versionId"] == drift["cellVersionId"] and listing[0]["difference"] == drift["difference"]
    gw.cli("cell", "release", "rugpull")
    (released,) = gw.events("cell.released")
    assert released["cell"] == "rugpull" and released["cellVersionId"] == drift["cellVersionId"], released
    assert "no quarantined" in gw.cli("cell", "quarantined").stdout
    assert gw.cli("cell", "release", "rugpull", ok=False).returncode == 1

    # Released while the server still drifts: quarantined again at once.
    r, _ = call(s, "rugpull_greet", {"name": "ada"})
    assert r["result"]["isError"] is True and "hello" not in text(r["result"]), r
    assert len(gw.events("cell.drift")) == 2
    assert len(gw.cli("cell", "quarantined", "--json").stdout.splitlines()) == 1
    gw.cli("cell", "release", "rugpull", drift["cellVersionId"][:12])
    # The server fixed: the running supervisor serves it again.
    marker.unlink()
    assert observed(ok(s, "rugpull_greet", {"name": "ada"})) == {"greeting": "hello ada", "drift": None}
    s.close()
    assert [e["outcome"] for e in gw.events("call.end", tool="rugpull_greet")] == [
        "success", "definition_drift", "definition_drift", "success"]
    gw.verify()


# ---------------------------------------------------------------------------
# A hostile server

def escape_manifest(gw, out):
    return with_tools(manifest(g.script_server_manifest, None, "escape.py", write=[out],
                               limits={"processes": "processes"}))


def check_serving(s):
    """The supervisor still serves: a fresh server answers."""
    who = observed(ok(s, "escape_whoami"))
    assert who["ok"] is True and who["uid"] != 0, who
    return who


def test_escape_read_and_socket_are_stopped(gw):
    """The key hostile cases, as root and as an unprivileged user."""
    out = gw.path("out", 0o777)
    gw.write(escape_manifest(gw, out))
    s = gw.serve()
    secret = gw.path("private", 0o755) / "secret"
    secret.write_text("secret\n")
    secret.chmod(0o644)
    res = observed(ok(s, "escape_read_file", {"path": str(secret)}))
    assert res["ok"] is False and res["errname"] == "EACCES", res
    # The supervisor's state (as the test user, the workers' own uid owns
    # it: only Landlock stands in the way).
    logs = [p for p in gw.state.rglob("*.jsonl")]
    assert logs, list(gw.state.rglob("*"))
    sizes = {p: p.stat().st_size for p in logs}
    for path in (gw.state / "planted", *logs):
        res = observed(ok(s, "escape_write_file", {"path": str(path), "text": "x"}))
        assert res["ok"] is False and res["errname"] == "EACCES", (path, res)
    assert not (gw.state / "planted").exists()
    assert all(p.stat().st_size >= n for p, n in sizes.items()), sizes
    connect_is_stopped(s)
    # Workers run as nobody under root, as the user's own uid otherwise.
    assert check_serving(s)["uid"] == (TEST_UID if gw.as_user else 65534)
    s.close()
    ends = gw.events("call.end", tool="escape_connect_tcp")
    assert [e["outcome"] for e in ends] == ["sandbox_violation"], ends
    (v,) = gw.events("sandbox.violation")
    assert "socket" in json.dumps(v), v
    gw.verify()


def direct(doc, *calls):
    """The server of `doc` run directly (unsandboxed, the same interpreter,
    argv and environment) over `calls`: its responses by id (3, 4, ...)."""
    env = {**doc["environment"]["set"], "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    p = subprocess.run([doc["executable"]["path"], *doc["argv"][1:]], input=g.conversation(*calls, padding=100),
                       capture_output=True, text=True, env=env, timeout=60, cwd="/")
    return g.responses(p.stdout)


def test_hostile_server_is_stopped_and_recorded_and_the_supervisor_keeps_serving(root_gw):
    gw = root_gw
    out = gw.path("out", 0o777)
    doc = escape_manifest(gw, out)
    gw.write(doc)

    # Unsandboxed, the same server connects and leaves a process behind.
    control = out / "control"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(5)
    try:
        rs = direct(doc, ("connect_tcp", {"port": listener.getsockname()[1]}),
                    ("fork_linger", {"marker": str(control), "delay_ms": 100}))
        listener.accept()[0].close()
    finally:
        listener.close()
    assert rs[3]["result"]["structuredContent"]["ok"] is True and rs[4]["result"]["structuredContent"]["ok"], rs
    deadline = time.time() + 5
    while not control.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert control.exists()
    control.unlink()

    s = gw.serve()
    check_serving(s)

    # Files outside its paths: the kernel says EACCES to the server.
    for path in ("/etc/passwd", str(gw.manifests / "escape.json")):
        res = observed(ok(s, "escape_read_file", {"path": path}))
        assert res["ok"] is False and res["errname"] == "EACCES", (path, res)
    check_serving(s)

    # The supervisor's state: nothing written, nothing truncated.
    before = {p: p.stat().st_size for p in gw.state.rglob("*") if p.is_file()}
    log_files = [p for p in before if p.suffix == ".jsonl"]
    assert log_files, before
    for path in [gw.state / "planted", *log_files]:
        res = observed(ok(s, "escape_write_file", {"path": str(path), "text": "x"}))
        assert res["ok"] is False and res["errname"] in ("EACCES", "EPERM"), (path, res)
    assert not (gw.state / "planted").exists()
    for p, size in before.items():
        assert p.stat().st_size >= size, p  # logs grow, never shrink
    check_serving(s)

    # A TCP connection: the server is stopped, the listener sees nobody.
    connect_is_stopped(s)
    check_serving(s)

    # A process meant to outlive the call: gone with the server.
    for keep in (False, True):
        res = observed(ok(s, "escape_fork_linger", {"marker": str(out / f"marker-{keep}"), "delay_ms": 700,
                                                     "keep_stdio": keep}))
        assert res["ok"] is True, res
    check_serving(s)

    # Requests to the client: refused to the server, never seen by the client.
    for tool in ("sample", "elicit", "roots"):
        res = observed(ok(s, f"escape_{tool}"))
        resp = res["response"]
        assert resp is not None and resp["error"]["code"] == -32601 and "result" not in resp, res
    assert server_requests(s) == [], s.pending
    check_serving(s)

    # An endless line: the call ends, the supervisor does not.
    r, _ = call(s, "escape_huge_line")
    assert r["result"]["isError"] is True, r
    check_serving(s)
    time.sleep(1)
    assert list(out.iterdir()) == [], list(out.iterdir())
    s.close()

    ends = {}
    for e in gw.events("call.end"):
        ends.setdefault(e["tool"], []).append(e["outcome"])
    assert ends["escape_connect_tcp"] == ["sandbox_violation"], ends
    assert ends["escape_huge_line"][0] in ("limit_exceeded", "protocol_violation"), ends
    assert set(ends["escape_whoami"]) == {"success"} and len(ends["escape_whoami"]) == 7, ends
    violations = {v["tool"]: v for v in gw.events("sandbox.violation")}
    assert sorted(violations) == ["escape_connect_tcp", "escape_huge_line"], violations
    assert "socket" in violations["escape_connect_tcp"]["detail"], violations
    gw.verify()
    # Each refused server request is recorded with its call's end.
    refused = [(e["tool"], e["methods"]) for e in gw.events("server.request_refused")]
    assert refused == [("escape_sample", ["sampling/createMessage"]), ("escape_elicit", ["elicitation/create"]),
                       ("escape_roots", ["roots/list"])], refused


# ---------------------------------------------------------------------------
# Tool names

def test_tool_name_collision_refuses_the_later_cell_naming_both(root_gw):
    gw = root_gw
    first = with_tools(manifest(g.script_server_manifest, None, "counter.py", name="counter-a", prefix="c"))
    second = with_tools(manifest(g.script_server_manifest, None, "counter.py", name="counter-b", prefix="c"))
    gw.write(first)
    gw.write(second)
    s = gw.serve()
    listed = tools_of(s)
    assert "c_count" in listed
    assert observed(ok(s, "c_count"))["count"] == 1
    s.close()
    err = stderr(s)
    assert "counter-a" in err and "counter-b" in err and "c_count" in err, err
    (refused,) = [e for e in gw.events("cell.refused") if "c_count" in json.dumps(e)]
    assert refused["manifest"] == str(gw.manifests / "counter-b.json"), refused
    assert "counter-a" in refused["reason"], refused


# ---------------------------------------------------------------------------
# The package tree: what a server imports is verified at every spawn

def test_a_changed_package_tree_refuses_the_server_until_restored(root_gw):
    """A file of the server's pinned package tree changed on disk (a
    dependency swapped behind the operator's back): the next call is refused
    before any server runs (`cell.cannot_run`, `hash_mismatch` naming the
    tree), nothing of the changed code runs, and once the tree is restored
    the server serves again. The supervisor notices the change itself
    (inotify on the tree), with a server already waiting ready."""
    gw = root_gw
    pkg = gw.path("pkg")
    shutil.copy(g.SERVERS / "counter.py", pkg / "counter.py")
    shutil.copy(g.SERVERS / "mcpstdio.py", pkg / "mcpstdio.py")
    for f in pkg.iterdir():
        f.chmod(0o644)
    marker = gw.path("marker", 0o777) / "ran"
    doc = g.server_manifest("counter", ["python3", "-S", str(pkg / "counter.py")], packages=[pkg],
                            write=[marker.parent])
    with_tools(doc)
    gw.write(doc)
    s = gw.serve()
    ok(s, "counter_count")
    time.sleep(2.5)  # a prespawned server is ready and checked
    original = (pkg / "counter.py").read_text()
    (pkg / "counter.py").write_text(
        f"open({str(marker)!r}, 'w').write('tampered code ran')\n" + original)
    r, _ = call(s, "counter_count")
    assert r["result"]["isError"] is True, r
    assert "approved version" in text(r["result"]), r
    (cannot,) = gw.events("cell.cannot_run")
    assert cannot["kind"] == "hash_mismatch" and cannot["path"] == f"{pkg}/ (package tree)", cannot
    assert cannot["expectedSha256"] == doc["server"]["packages"][0]["sha256"], cannot
    assert not marker.exists(), "the changed code must never run"
    (pkg / "counter.py").write_text(original)
    ok(s, "counter_count")
    assert not marker.exists()
    s.close()
    gw.verify()
