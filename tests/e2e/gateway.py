"""Server cells for the gateway tests: manifests for existing MCP stdio
servers (a cell manifest with a `server` object), for the real ones from PyPI that `make
gateway-servers` installs (`gateway_directory()`) and for the small test servers
in tests/e2e/servers/.

Everything here builds data; nothing starts the supervisor (`direct_tools`
alone runs a server, unsandboxed). Two routes run a server under the
sandbox:

- as a server cell (`server_manifest`): the supervisor speaks MCP to it;
- as a command cell (`command_manifest`): the same program, files, limits and
  syscall groups, with a whole MCP conversation (`conversation`) fed to its
  stdin and its stdout returned as the tool's text (`responses` parses it).
  This route needs nothing of the gateway and is how the syscalls and paths
  each server needs were found (`mcp-supervisor call ... --learn`).

The interpreter is the system CPython (/usr/bin/python3.11), executed by the
supervisor from a sealed copy, so /proc/self/exe is not a venv's python:
a venv's packages reach it through PYTHONPATH, with `-S` so that site does
not add (or read) dist-packages directories outside the sandbox's paths.
"""
import atexit
import hashlib
import json
import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
def gateway_directory():
    """Where `make gateway-servers` installs the servers (the Makefile's
    GATEWAY, exported as MCPS_GATEWAY_DIR): outside the checkout, which may
    sit in a private directory workers cannot enter, named by the user and
    the requirement files' digest."""
    if os.environ.get("MCPS_GATEWAY_DIR"):
        return Path(os.environ["MCPS_GATEWAY_DIR"])
    reqs = b"".join((ROOT / "tests" / f).read_bytes()
                    for f in ("requirements-gateway.txt", "requirements-gateway-sqlite.txt"))
    return Path(f"/var/tmp/mcp-supervisor-gateway-{os.getuid()}-{hashlib.sha256(reqs).hexdigest()[:16]}")


GATEWAY = gateway_directory()
# mcp-server-time and mcp-server-git (MCP SDK 2.x).
VENV = GATEWAY / "venv"
SITE = VENV / "lib" / "python3.11" / "site-packages"
# mcp-server-sqlite (MCP SDK 1.x).
VENV_SQLITE = GATEWAY / "venv-sqlite"
SITE_SQLITE = VENV_SQLITE / "lib" / "python3.11" / "site-packages"
def _servers_copy():
    """The test servers (tests/e2e/servers) from a world-readable copy: the
    workers run as another uid, and the checkout may sit in a private
    directory. One copy per test process, removed at its exit."""
    d = Path(tempfile.mkdtemp(prefix="mcps-servers-"))
    d.chmod(0o755)
    dest = d / "servers"
    shutil.copytree(Path(__file__).resolve().parent / "servers", dest,
                    ignore=shutil.ignore_patterns("__pycache__"))
    for p in [dest, *dest.iterdir()]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    atexit.register(shutil.rmtree, d, True)
    return dest


SERVERS = _servers_copy()

# The real interpreter file (/usr/bin/python3 is a link; the supervisor
# executes and hashes files).
PYTHON = Path(os.path.realpath("/usr/bin/python3.11"))
# What any CPython server reads besides its packages: the standard library,
# shared libraries (libc, libm, libz, libexpat, libffi, libsqlite3, ...) and
# the loader's cache; /dev/null because the MCP SDK's stdio transport points
# fd 0 at it while serving (stray reads by handlers then see EOF).
PYTHON_READ = ["/usr/lib/python3.11", "/lib/x86_64-linux-gnu", "/etc/ld.so.cache", "/dev/null"]
PYTHON_EXECUTE = ["/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"]
# Syscall groups (policies/syscall-groups.json) of a Python MCP stdio server
# on asyncio/anyio, found with learn mode (docs/manifest.md, python-mcp-server).
SERVER_GROUPS = ["base", "python", "python-mcp-server"]
# mcp-server-fetch (httpx on asyncio, through the egress proxy), found with
# learn mode: a Python server's groups, `network-client` for the calls on its
# connections (getsockopt, setsockopt, getpeername; `socket` and `connect`
# come with network.egress "proxy", docs/egress.md) and `events` (pipe2, for
# readabilipy's subprocess).
FETCH_GROUPS = [*SERVER_GROUPS, "network-client", "events"]
# Environment of every Python server cell: UTF-8 stdio whatever the locale,
# no .pyc written into the (verified, read-only) package trees.
PYTHON_ENV = {"LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
# The Python servers run anyio/asyncio with worker threads (stdin is read by
# a thread): threads, no processes. memoryMiB is address space (RLIMIT_AS),
# not memory used: each thread reserves an 8 MiB stack and glibc a malloc
# arena of up to 64 MiB. Measured unsandboxed: mcp-server-time peaks at ~290
# MiB of address space with 4 threads, mcp-server-git at ~650 MiB with 8;
# under 256 MiB a busy server fails with "can't start new thread". 1024 MiB.
SERVER_LIMITS = {"timeoutMilliseconds": 20000, "cpuSeconds": 10, "memoryMiB": 1024, "openFiles": 64,
                 "fileSizeMiB": 0, "outputKiB": 1024, "frameKiB": 1024, "processes": "threads"}
# git as GitPython runs it: no system or global configuration, any owner
# accepted (the worker's uid is not the repository's), no pager, no prompt.
GIT_ENV = {"GIT_PYTHON_GIT_EXECUTABLE": "/usr/bin/git", "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory",
           "GIT_CONFIG_VALUE_0": "*", "GIT_PAGER": "cat", "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0"}

PROTOCOL_VERSION = "2025-11-25"


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tree_digest(root):
    """The package tree digest `manifest pin` records (docs/manifest.md,
    `server.packages`): SHA-256 over a depth-first walk, names sorted by
    their UTF-8 bytes in each directory, links not followed, one line per
    entry below `root`: `<relative path>\\0<f|l|d>\\0<sha256 | link target |
    "">\\0<x if any execute bit, links excepted>\\n`."""
    h = hashlib.sha256()

    def visit(d, rel):
        for name in sorted(os.listdir(d), key=lambda n: os.fsencode(n)):
            full = os.path.join(d, name)
            r = f"{rel}/{name}" if rel else name
            st = os.lstat(full)
            if stat.S_ISDIR(st.st_mode):
                kind, value = "d", ""
            elif stat.S_ISLNK(st.st_mode):
                kind, value = "l", os.readlink(full)
            elif stat.S_ISREG(st.st_mode):
                kind, value = "f", sha256(full)
            else:
                raise ValueError(f"{full}: neither a file, a directory nor a link")
            x = "x" if st.st_mode & 0o111 and not stat.S_ISLNK(st.st_mode) else ""
            h.update(f"{r}\0{kind}\0{value}\0{x}\n".encode())
            if kind == "d":
                visit(full, r)

    root = str(root)
    assert os.path.isdir(root), f"{root}: not a directory"
    visit(root, "")
    return h.hexdigest()


def unreachable(path):
    """The first directory on the way to `path` (itself included) that other
    users cannot search, or None. Workers run as another uid (nobody under a
    root supervisor), and Landlock only narrows what that uid may already
    open: a package tree in a private directory cannot be imported."""
    p = Path(path).resolve()
    for d in [*reversed(p.parents), p]:
        if d.is_dir() and not d.stat().st_mode & 0o001:
            return d
    return None


def _unique(paths):
    out = []
    for p in map(str, paths):
        if p not in out:
            out.append(p)
    return out


def server_manifest(name, argv, *, packages, read=(), write=(), execute=(), groups=SERVER_GROUPS,
                    lifecycle="perCall", prefix=None, env=None, limits=None, tools=None, side_effects="none",
                    startup_ms=None, digests=True, executable=PYTHON, phases=None, allow=()):
    """A server cell manifest for a Python MCP stdio server.

    `packages`: the directories it imports from (each pinned by its tree
    digest, on PYTHONPATH in this order, readable). `read`, `write`,
    `execute`: paths beyond the interpreter's own (PYTHON_READ,
    PYTHON_EXECUTE). `groups`, `allow`: syscalls. `env`: variables beyond PYTHON_ENV and PYTHONPATH.
    `limits`: overrides of SERVER_LIMITS. `tools`: the pinned definitions
    (None: none yet, registration writes them). `digests=False` leaves the
    package digests blank for `manifest pin` to fill. An actuator
    (`side_effects` writes or external) runs in `phases` (default: act, as
    in policies/policy.json)."""
    packages = [Path(p) for p in packages]
    for p in packages:
        assert p.is_dir(), f"{p} missing: run `make gateway-servers`"
        blocked = unreachable(p)
        assert blocked is None, (f"{p}: {blocked} is not searchable by other users, so a server cell's worker "
                                 f"(another uid) cannot import from it: chmod o+x {blocked}, or work in a checkout "
                                 f"outside private directories")
    environment = dict(PYTHON_ENV)
    environment["PYTHONPATH"] = ":".join(map(str, packages))
    environment.update(env or {})
    server = {"lifecycle": lifecycle, "packages": [
        {"path": str(p), "sha256": tree_digest(p) if digests else ""} for p in packages]}
    if prefix is not None:
        server["toolPrefix"] = prefix
    if startup_ms is not None:
        server["startupTimeoutMilliseconds"] = startup_ms
    doc = {
        "name": name,
        "version": "1",
        "description": f"The MCP server {name} run as a sandboxed server cell for the tests.",
        "executable": {"path": str(executable), "sha256": sha256(executable)},
        "argv": list(argv),
        "environment": {"set": environment},
        "server": server,
        "tools": list(tools or []),
        "limits": {**SERVER_LIMITS, **(limits or {})},
        "filesystem": {
            "read": _unique([*PYTHON_READ, *packages, *read]),
            "write": _unique(write),
            "execute": _unique([*PYTHON_EXECUTE, *execute]),
        },
        "syscalls": {"groups": list(groups), **({"allow": list(allow)} if allow else {})},
        "sideEffects": side_effects,
    }
    if phases is not None or side_effects in ("writes", "external"):
        doc["phases"] = list(phases or ["act"])
    return doc


def _save(ws, doc):
    """Writes the manifest into ws/manifests (when ws is given); returns it."""
    if ws is not None:
        d = Path(ws) / "manifests"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{doc['name']}.json").write_text(json.dumps(doc, indent=1))
    return doc


def time_manifest(ws=None, name="time", **kw):
    """mcp-server-time: reads its packages, the interpreter's files and the
    system's time zone database (zoneinfo looks a zone up in
    /usr/share/zoneinfo first; an unreadable file there is an error, not a
    fall back to the tzdata package)."""
    return _save(ws, server_manifest(
        name, ["python3", "-S", "-m", "mcp_server_time", "--local-timezone", "UTC"], packages=[SITE],
        read=["/usr/share/zoneinfo", *kw.pop("read", ())], **kw))


def git_manifest(ws, repo, name="git", **kw):
    """mcp-server-git on one repository: reads the repository, runs the
    system git (GitPython starts `git` for every command, so child processes
    in a PID namespace of its own) and nothing else; /dev/null is writable
    because git opens it read-write at start-up (sanitize_stdfds) and dies
    if it cannot. Read-only tools; the write tools (git_commit, git_add,
    ...) fail on the read-only tree."""
    # RLIMIT_NPROC counts the server's threads (up to 8 seen) with the git
    # processes, and all processes of the worker's uid.
    limits = {"processes": "processes", "maxProcesses": 64, **kw.pop("limits", {})}
    return _save(ws, server_manifest(
        name, ["python3", "-S", "-m", "mcp_server_git", "--repository", str(repo)], packages=[SITE],
        read=[repo, *kw.pop("read", ())], write=["/dev/null", *kw.pop("write", ())], execute=["/usr/bin/git", "/usr/lib/git-core", *kw.pop("execute", ())],
        env={**GIT_ENV, **kw.pop("env", {})}, limits=limits,
        groups=kw.pop("groups", [*SERVER_GROUPS, "events", "files-read"]), allow=kw.pop("allow", ["close_range"]),
        side_effects="reads", **kw))


def sqlite_manifest(ws, db, name="sqlite", **kw):
    """mcp-server-sqlite on one database file: writes only in the database's
    directory (SQLite creates its journal beside the file); reads
    /dev/urandom, which SQLite seeds its generator from (temporary names)."""
    db = Path(db)
    limits = {"fileSizeMiB": 16, **kw.pop("limits", {})}
    return _save(ws, server_manifest(
        name, ["python3", "-S", "-c", "import sys; from mcp_server_sqlite import main; sys.exit(main())",
               "--db-path", str(db)],
        packages=[SITE_SQLITE], read=["/dev/urandom", *kw.pop("read", ())], write=[db.parent, *kw.pop("write", ())],
        limits=limits,
        groups=kw.pop("groups", [*SERVER_GROUPS, "files-write"]), side_effects="writes", **kw))


def fetch_manifest(ws, connect, name="fetch", **kw):
    """mcp-server-fetch behind the egress proxy (docs/egress.md): `connect`
    is its network allowlist (host:port entries). It runs in a network
    namespace of its own whose only endpoint is the proxy, named by the
    proxy variables the supervisor sets; httpx (trust_env) follows them.
    `--allow-private-ips`: the tests' servers are on loopback, which the
    server itself refuses by default (the proxy still refuses a name that
    leads there unless the address itself is listed)."""
    # readabilipy (the HTML simplifier) runs `node -v` through subprocess
    # before every extraction: a child process (so "processes"), and PATH
    # leads nowhere, so that the exec fails with ENOENT (readabilipy then
    # takes its pure-Python path) rather than EACCES from Landlock on
    # /usr/bin/node (which it does not catch).
    doc = server_manifest(
        name, ["python3", "-S", "-m", "mcp_server_fetch", "--allow-private-ips", *kw.pop("args", ())],
        packages=[SITE], groups=kw.pop("groups", FETCH_GROUPS), allow=kw.pop("allow", ["close_range"]),
        limits={"processes": "processes", **kw.pop("limits", {})}, env={"PATH": "/nonexistent", **kw.pop("env", {})},
        **kw)
    doc["network"] = {"connect": list(connect)}
    return _save(ws, doc)


def script_server_manifest(ws, script, name=None, **kw):
    """One of the test servers in tests/e2e/servers/ (stdlib only): the
    directory of scripts is its package, verified like any other."""
    name = name or Path(script).stem
    return _save(ws, server_manifest(
        name, ["python3", "-S", str(SERVERS / Path(script).name), *kw.pop("args", ())], packages=[SERVERS], **kw))


# ---------------------------------------------------------------------------
# The command-cell route: a server run once over a conversation on stdin.

# `mcp-supervisor call --args` is one argv string: Linux caps one at 128 KiB
# (MAX_ARG_STRLEN), and the conversation travels in it JSON-escaped.
ARGV_BUDGET = 120_000


def conversation(*calls, padding=None, version=PROTOCOL_VERSION):
    """The client's side of one MCP session as stdin text: initialize,
    notifications/initialized, tools/list (id 2), then each (tool, arguments)
    as tools/call (ids 3, 4, ...).

    The SDK's servers end the session at stdin EOF and a call still running
    then may fail (mcp-server-git's subprocess gets EAGAIN while the
    interpreter shuts down), so the conversation ends with `padding`
    notifications the server ignores (notifications/cancelled of a request
    that does not exist): reading them keeps the session open while the
    calls are answered, ~0.2-0.35 ms each here. Default: as many as fit in
    ARGV_BUDGET once escaped (about 1,300), no sleep involved."""
    msgs = [{"jsonrpc": "2.0", "id": 1, "method": "initialize",
             "params": {"protocolVersion": version, "capabilities": {},
                        "clientInfo": {"name": "gateway-test", "version": "1"}}},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}]
    for i, (tool, args) in enumerate(calls):
        msgs.append({"jsonrpc": "2.0", "id": 3 + i, "method": "tools/call",
                     "params": {"name": tool, "arguments": args}})
    head = "".join(json.dumps(m, separators=(",", ":")) + "\n" for m in msgs)
    pad = json.dumps({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 0}},
                     separators=(",", ":")) + "\n"
    if padding is None:
        padding = max(0, (ARGV_BUDGET - len(json.dumps(head))) // (len(json.dumps(pad)) - 2))
    return head + pad * padding


def command_manifest(server_doc, name=None, tool=None):
    """The server cell `server_doc` as a command cell: one tool (default
    `<name>_converse`) whose `stdin` argument is fed to the server, whose
    stdout (the server's responses) is the result. Same executable, argv,
    environment, limits, files and syscalls."""
    doc = json.loads(json.dumps(server_doc))
    doc.pop("server")
    doc["name"] = name or f"{server_doc['name']}-converse"
    doc["tools"] = [{
        "name": tool or f"{server_doc['name'].replace('-', '_')}_converse",
        "description": "Run the server once over the MCP conversation given as stdin; return its stdout.",
        "inputSchema": {"type": "object", "properties": {"stdin": {"type": "string", "maxLength": 4194304}},
                        "required": ["stdin"], "additionalProperties": False},
        "command": {"argv": doc["argv"], "stdin": "stdin"},
    }]
    doc.pop("argv")
    # The padded conversation is echoed by nothing, but the responses are
    # held whole by the supervisor: room for a tools/list and a few calls.
    doc["limits"]["outputKiB"] = max(doc["limits"].get("outputKiB", 1024), 1024)
    return doc


def direct_tools(doc, timeout=60):
    """The tools the server of `doc` lists, asked directly (unsandboxed,
    the same interpreter, argv and environment): the definitions to pin in
    a manifest that is run without registration (`--allow-unsigned`).
    Stdin stays open until the listing is read: the SDK's servers end the
    session at EOF, and a loaded machine may not have answered by then."""
    import subprocess
    env = {**doc["environment"]["set"], "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    p = subprocess.Popen([doc["executable"]["path"], *doc["argv"][1:]], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd="/")
    timer = threading.Timer(timeout, p.kill)
    timer.start()
    seen = []
    try:
        p.stdin.write(conversation(padding=0))
        p.stdin.flush()
        for line in p.stdout:
            seen.append(line)
            if responses(line).get(2):
                break
    finally:
        timer.cancel()
        p.stdin.close()
        p.kill()
        err = p.stderr.read()
        p.wait()
    listing = responses("".join(seen)).get(2)
    assert listing and "result" in listing, ("".join(seen)[-2000:], err[-2000:])
    return listing["result"]["tools"]


def pinned(doc):
    """`doc` with its server's tools pinned (`direct_tools`)."""
    doc["tools"] = direct_tools(doc)
    return doc


def responses(stdout):
    """The server's JSON-RPC messages in a command cell's output, by id
    (notifications and server requests under their method name, in a list)."""
    out = {}
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        m = json.loads(line)
        if "method" in m:
            out.setdefault(m["method"], []).append(m)
        else:
            out[m.get("id")] = m
    return out
