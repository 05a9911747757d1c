"""`mcp-supervisor server add | list | remove` end to end (docs/gateway.md,
"Adding a server with one command"), with no internet: the tests build small
wheels of an MCP server (standard library only: mcpstdio.py from
tests/e2e/servers, packaged as a dependency of its own) and serve them from
a PEP 503 index on loopback. pip runs inside the sandbox; the server cell it
produces is then called through `mcp-supervisor run` by a raw JSON-RPC
client. As root (workers run as nobody) and as an unprivileged user."""
import base64
import hashlib
import http.server
import json
import os
import socket
import subprocess
import threading
import zipfile
from pathlib import Path

import pytest

import gateway as g
from test_gateway import Gateway, ok, stderr, text, tools_of, call

MCPSTDIO = (Path(__file__).resolve().parent / "servers" / "mcpstdio.py").read_text()
PYTHON = "/usr/bin/python3.11"

ECHO_SERVER = '''
import os
from mcpstdio import Server


def main():
    s = Server("testecho", "1.0.0")
    s.tool("echo", "Echo the text back, with the uid the server runs as.",
           properties={"text": {"type": "string"}}, required=["text"],
           handler=lambda a: {"echo": a["text"], "uid": os.getuid()})
    s.run()
'''

EXITING_SERVER = '''
import sys


def main():
    sys.stderr.write("this server refuses to start\\n")
    sys.exit(3)
'''


def _record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def make_wheel(out_dir, name, version, files, requires=(), scripts=None):
    """A pure-Python wheel (PEP 427) built by hand: `files` maps paths in
    the wheel to their text; `scripts` maps console-script names to
    `module:function`. Returns its path."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    entries = dict(files)
    entries[f"{info}/METADATA"] = meta
    entries[f"{info}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: mcps-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    if scripts:
        entries[f"{info}/entry_points.txt"] = "[console_scripts]\n" + "".join(
            f"{k} = {v}\n" for k, v in scripts.items())
    record = [_record_line(p, t.encode()) for p, t in entries.items()] + [f"{info}/RECORD,,"]
    entries[f"{info}/RECORD"] = "\n".join(record) + "\n"
    path = Path(out_dir) / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, t in entries.items():
            z.writestr(p, t)
    return path


class Index:
    """A PEP 503 simple index of wheels on 127.0.0.1, served from a thread
    of the test; `requests` lists the paths asked for."""

    def __init__(self, root):
        self.root = Path(root)
        (self.root / "files").mkdir(parents=True, exist_ok=True)
        self.requests = []
        index = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(index.root), **kw)

            def log_message(self, *a):
                pass

            def do_GET(self):
                index.requests.append(self.path)
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/simple"

    def add(self, wheel):
        """Publishes `wheel` (a wheel or sdist file) under its project's page."""
        wheel = Path(wheel)
        data = wheel.read_bytes()
        (self.root / "files" / wheel.name).write_bytes(data)
        project = wheel.name.split("-")[0].replace("_", "-").lower()
        page = self.root / "simple" / project
        page.mkdir(parents=True, exist_ok=True)
        links = page / "links"
        lines = (links.read_text().splitlines() if links.exists() else [])
        lines.append(f'<a href="../../files/{wheel.name}#sha256={hashlib.sha256(data).hexdigest()}">{wheel.name}</a>')
        links.write_text("\n".join(lines))
        (page / "index.html").write_text("<!DOCTYPE html><html><body>\n" + "\n".join(lines) + "\n</body></html>\n")

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# An sdist whose build backend (in-tree, PEP 517, no requirements) tries to
# connect to another loopback server before it writes the wheel of the echo
# server: build code, which --allow-sdist lets run, inside the sandbox.
SDIST_BACKEND = '''
import base64, hashlib, os, socket, zipfile
NAME, VERSION, DIST = "mcp-server-sdecho", "1.0.0", "mcp_server_sdecho"
INFO = f"{DIST}-{VERSION}.dist-info"
META = f"Metadata-Version: 2.1\\nName: {NAME}\\nVersion: {VERSION}\\nRequires-Dist: mcps-stdio-kit\\n"


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(d, config_settings=None, metadata_directory=None):
    # Directly (the route the namespace does not have), then through the
    # proxy variables (the proxy's allowlist has only the index).
    try:
        c = socket.create_connection(("127.0.0.1", OTHER_PORT), timeout=3)
        c.sendall(b"GET /direct HTTP/1.0\\r\\n\\r\\n")
        c.recv(100)
        c.close()
    except OSError:
        pass
    try:
        import urllib.request
        urllib.request.urlopen(f"http://127.0.0.1:{OTHER_PORT}/proxied", timeout=3).read()
    except Exception:
        pass
    files = {f"{DIST}/__init__.py": SERVER, f"{INFO}/METADATA": META,
             f"{INFO}/WHEEL": "Wheel-Version: 1.0\\nGenerator: t\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
             f"{INFO}/entry_points.txt": f"[console_scripts]\\n{NAME} = {DIST}:main\\n"}
    rec = [f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(t.encode()).digest()).rstrip(b'=').decode()},{len(t)}"
           for p, t in files.items()]
    files[f"{INFO}/RECORD"] = "\\n".join(rec + [f"{INFO}/RECORD,,"]) + "\\n"
    name = f"{DIST}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(d, name), "w") as z:
        for p, t in files.items():
            z.writestr(p, t)
    return name
'''


def make_sdist(out_dir, other_port):
    """mcp-server-sdecho 1.0.0 as an sdist (SDIST_BACKEND)."""
    import io
    import tarfile
    top = "mcp_server_sdecho-1.0.0"
    backend = f"OTHER_PORT = {other_port}\nSERVER = {ECHO_SERVER!r}\n" + SDIST_BACKEND
    files = {"pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
             "backend.py": backend,
             "PKG-INFO": "Metadata-Version: 2.1\nName: mcp-server-sdecho\nVersion: 1.0.0\n"}
    path = Path(out_dir) / f"{top}.tar.gz"
    with tarfile.open(path, "w:gz") as t:
        for name, text_ in files.items():
            data = text_.encode()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            info.mode = 0o644
            t.addfile(info, io.BytesIO(data))
    return path


def publish_echo(index, tmp, version="1.0.0", name="mcp-server-testecho", server=ECHO_SERVER, scripts=True,
                 requires=("mcps-stdio-kit",)):
    """The test server (and its dependency, the mcpstdio kit) in the index."""
    wheels = Path(tmp) / "wheels"
    wheels.mkdir(exist_ok=True)
    if "mcps-stdio-kit" in requires:
        index.add(make_wheel(wheels, "mcps-stdio-kit", "0.1", {"mcpstdio.py": MCPSTDIO}))
    module = name.replace("-", "_")
    w = make_wheel(wheels, name, version, {f"{module}/__init__.py": server}, requires=requires,
                   scripts={name: f"{module}:main"} if scripts else None)
    index.add(w)
    return w


@pytest.fixture(params=["root", "user"])
def sgw(request):
    w = Gateway(request.param)
    w.key = w.dir / "dev"
    w.cli("keys", "generate", "--out", w.key)
    w.index = Index(w.path("index"))
    yield w
    w.index.close()
    w.close()


@pytest.fixture
def root_sgw():
    w = Gateway("root")
    w.key = w.dir / "dev"
    w.cli("keys", "generate", "--out", w.key)
    w.index = Index(w.path("index"))
    yield w
    w.index.close()
    w.close()


def add(gw, *args, ok_=True, yes=True):
    """`server add ARGS --key K --policies P [--yes]` as the gateway's identity."""
    extra = ["--key", f"{gw.key}.key", "--policies", gw.policies, "--python", PYTHON]
    # The options first: everything after a `--` in ARGS is the command.
    argv, env = gw._argv([gw.bin, "server", "add", *extra, *(["--yes"] if yes else []), "--state-dir", gw.state,
                          *args])
    p = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env, stdin=subprocess.DEVNULL)
    if ok_:
        assert p.returncode == 0, (args, p.stdout[-4000:], p.stderr[-4000:])
    return p


def servers(gw):
    return json.loads(gw.cli("server", "list", "--json").stdout)


def installs(gw, name):
    d = gw.state / "servers" / name
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def registered(gw):
    return json.loads(gw.cli("cell", "list", "--json").stdout)


def test_added_from_an_index_serves_its_tool_then_is_listed_and_removed(sgw):
    """pypi:NAME from a loopback index: pip (sandboxed) installs the server
    and its dependency, the starting profile is learned, the tools and the
    permissions are shown, the cell is signed and registered; a signed-only
    supervisor serves it; `server list` shows it; `server remove` revokes it
    and deletes its install."""
    gw = sgw
    publish_echo(gw.index, gw.dir)
    p = add(gw, "pypi:mcp-server-testecho", "--index-url", gw.index.url)
    out = p.stdout
    assert "installed 2 distribution(s): mcp-server-testecho==1.0.0, mcps-stdio-kit==0.1" in out, out
    assert "testecho_echo  (server name echo)" in out, out
    assert "network: none" in out and "write: nothing" in out and "secrets: none" in out, out
    assert f"127.0.0.1:{gw.index.port}" in out, out
    assert any(r.startswith("/simple/mcp-server-testecho/") for r in gw.index.requests), gw.index.requests
    assert "registered: testecho 1.0.0" in out and "active: testecho" in out, out
    [install] = installs(gw, "testecho")
    record = json.loads((gw.state / "servers" / "testecho" / install / "install.json").read_text())
    assert record["package"] == "mcp-server-testecho" and record["version"] == "1.0.0", record
    assert sorted(record["requirements"])[0].startswith("mcp-server-testecho==1.0.0 --hash=sha256:"), record
    site = next((gw.state / "servers" / "testecho" / install / "venv" / "lib").glob("python*/site-packages"))
    st = site.stat()
    assert st.st_mode & 0o022 == 0 and st.st_uid == (0 if not gw.as_user else 4242), oct(st.st_mode)

    [row] = servers(gw)
    assert (row["name"], row["package"], row["version"], row["tools"], row["state"]) == (
        "testecho", "mcp-server-testecho", "1.0.0", 1, "active"), row

    s = gw.serve(signed=True)
    assert "testecho_echo" in tools_of(s)
    r = ok(s, "testecho_echo", {"text": "hello"})
    assert r["structuredContent"]["echo"] == "hello", r
    assert r["structuredContent"]["uid"] == (65534 if not gw.as_user else 4242), r
    s.close()
    assert gw.events("server.installed"), "no server.installed event"

    rm = gw.cli("server", "remove", "testecho", "--key", f"{gw.key}.key")
    assert "revoked: testecho" in rm.stdout, rm.stdout
    assert not (gw.state / "servers" / "testecho").exists()
    [row] = servers(gw)
    assert row["state"] == "revoked", row
    c = gw.cli("call", "testecho_echo", "--args", '{"text": "x"}', "--policies", gw.policies, ok=False)
    assert c.returncode != 0 and "revoked" in c.stderr, (c.stdout, c.stderr)
    assert gw.events("server.removed"), "no server.removed event"
    gw.verify()


def test_the_installer_reaches_only_the_index(root_sgw):
    """A package whose dependency is a direct URL on another loopback
    server: pip, inside the sandbox, cannot reach it (only the index's
    host:port is allowed), the add fails naming it, and nothing is left."""
    gw = root_sgw
    other = Index(gw.path("other"))
    try:
        wheels = gw.path("wheels2")
        dep = make_wheel(wheels, "mcps-stdio-kit", "0.1", {"mcpstdio.py": MCPSTDIO})
        other.add(dep)
        publish_echo(gw.index, gw.dir, requires=(f"mcps-stdio-kit @ http://127.0.0.1:{other.port}/files/{dep.name}",))
        p = add(gw, "pypi:mcp-server-testecho", "--index-url", gw.index.url, ok_=False)
        assert p.returncode == 1, (p.stdout, p.stderr)
        assert other.requests == [], other.requests
        assert f"pip tried to reach 127.0.0.1:{other.port}, which is not the package index" in p.stderr, p.stderr
        assert not (gw.state / "servers" / "testecho").exists()
        assert registered(gw) == [], registered(gw)
        [failed] = gw.events("server.install_failed")
        assert failed["cell"] == "testecho", failed
    finally:
        other.close()


def test_an_sdist_builds_only_with_allow_sdist_and_its_build_reaches_nothing(root_sgw):
    """An sdist is refused by default (wheels only); with --allow-sdist its
    build code runs inside the sandbox, where its connection to another
    loopback server finds no route (the worker's network namespace has only
    the proxy), and the server it builds is registered and serves."""
    gw = root_sgw
    other = Index(gw.path("other"))
    try:
        wheels = gw.path("wheels-sd")
        gw.index.add(make_wheel(wheels, "mcps-stdio-kit", "0.1", {"mcpstdio.py": MCPSTDIO}))
        gw.index.add(make_sdist(wheels, other.port))
        p = add(gw, "pypi:mcp-server-sdecho", "--index-url", gw.index.url, ok_=False)
        assert p.returncode == 1 and "only wheels are accepted; --allow-sdist" in p.stderr, p.stderr
        assert not (gw.state / "servers" / "sdecho").exists()
        add(gw, "pypi:mcp-server-sdecho", "--index-url", gw.index.url, "--allow-sdist")
        assert other.requests == [], other.requests
        s = gw.serve(signed=True)
        assert ok(s, "sdecho_echo", {"text": "built"})["structuredContent"]["echo"] == "built"
        s.close()
    finally:
        other.close()


def test_an_upgrade_that_widens_is_refused_without_approval(root_sgw):
    """Re-adding a name is an upgrade: a widening (here a readable path) is
    shown and refused without --approve-widening, leaving the active
    version and its install as they were; approved, it is registered."""
    gw = root_sgw
    publish_echo(gw.index, gw.dir)
    add(gw, "pypi:mcp-server-testecho", "--index-url", gw.index.url)
    [first] = installs(gw, "testecho")
    before = servers(gw)
    publish_echo(gw.index, gw.dir, version="1.1.0")
    p = add(gw, "pypi:mcp-server-testecho", "--index-url", gw.index.url, "--read", "/usr/share/zoneinfo", ok_=False)
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert any(line.strip().startswith("widens: filesystem.read: +") and line.endswith("/usr/share/zoneinfo")
               for line in p.stdout.splitlines()), p.stdout
    assert "--approve-widening" in p.stderr, p.stderr
    assert installs(gw, "testecho") == [first]
    assert servers(gw) == before
    p = add(gw, "pypi:mcp-server-testecho", "--index-url", gw.index.url, "--read", "/usr/share/zoneinfo",
            "--approve-widening")
    assert "approving for testecho: widens: filesystem.read" in p.stdout, p.stdout
    [row] = servers(gw)
    assert row["version"] == "1.1.0" and row["state"] == "active", row
    assert len(installs(gw, "testecho")) == 2


@pytest.mark.parametrize("case", ["unknown", "version", "unreachable", "no_script", "handshake", "no_tty"])
def test_a_failed_add_says_why_and_leaves_nothing(root_sgw, case):
    gw = root_sgw
    if case == "no_script":
        publish_echo(gw.index, gw.dir, scripts=False)
    elif case == "handshake":
        publish_echo(gw.index, gw.dir, server=EXITING_SERVER, requires=())
    else:
        publish_echo(gw.index, gw.dir)
    url = gw.index.url
    spec = "pypi:mcp-server-testecho"
    if case == "unknown":
        spec = "pypi:mcp-server-nosuchthing"
    elif case == "version":
        spec = "pypi:mcp-server-testecho==9.9"
    elif case == "unreachable":
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/simple"
        s.close()
    p = add(gw, spec, "--index-url", url, ok_=False, yes=case != "no_tty")
    assert p.returncode == 1, (p.stdout, p.stderr)
    expected = {
        "unknown": "unknown package: no distribution of pypi:mcp-server-nosuchthing was found from " + url,
        "version": "version not found: pypi:mcp-server-testecho==9.9 is not among the versions offered from " + url,
        "unreachable": f"the package index is unreachable from {url}: ",
        "no_script": "mcp-server-testecho declares no console script",
        "handshake": "did not complete its MCP handshake",
        "no_tty": "no terminal to confirm on",
    }[case]
    assert expected in p.stderr, p.stderr
    name = "nosuchthing" if case == "unknown" else "testecho"
    assert not (gw.state / "servers" / name).exists(), list((gw.state / "servers").rglob("*"))[:20]
    assert registered(gw) == []
    assert gw.events("server.install_failed")


def test_local_wheel_and_command_forms(sgw):
    """A local wheel (no index: its dependency from --find-links) and a
    command already on the machine (a script pinned with its directory)."""
    gw = sgw
    wheels = gw.path("local-wheels")
    make_wheel(wheels, "mcps-stdio-kit", "0.1", {"mcpstdio.py": MCPSTDIO})
    w = make_wheel(wheels, "mcp-server-testecho", "2.0.0", {"mcp_server_testecho/__init__.py": ECHO_SERVER},
                   requires=("mcps-stdio-kit",), scripts={"mcp-server-testecho": "mcp_server_testecho:main"})
    for p in [wheels, *wheels.iterdir()]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    add(gw, str(w), "--no-index", "--find-links", str(wheels))
    add(gw, "--name", "ctr", "--side-effects", "reads", "--", PYTHON, "-S", str(g.SERVERS / "counter.py"))
    [ctr] = installs(gw, "ctr")
    doc = json.loads((gw.state / "servers" / "ctr" / ctr / "manifest.json").read_text())
    assert doc["sideEffects"] == "reads" and doc["argv"][1:] == ["-S", str(g.SERVERS / "counter.py")], doc
    assert doc["server"]["packages"][0]["path"] == str(g.SERVERS), doc
    rows = {r["name"]: r for r in servers(gw)}
    assert rows["testecho"]["version"] == "2.0.0" and rows["testecho"]["state"] == "active", rows
    assert rows["ctr"]["state"] == "active", rows
    s = gw.serve(signed=True)
    assert ok(s, "testecho_echo", {"text": "local"})["structuredContent"]["echo"] == "local"
    assert ok(s, "ctr_count")["structuredContent"]["count"] == 1
    s.close()


def _add_on_terminal(gw, answer, *args):
    """`server add ARGS` (no --yes) on a pseudo-terminal, answering the
    question with `answer`; returns (exit status, everything it printed)."""
    import pty
    import select
    pid, fd = pty.fork()
    if pid == 0:
        argv = [str(gw.bin), "server", "add", "--key", f"{gw.key}.key", "--policies", str(gw.policies),
                "--python", PYTHON, "--state-dir", str(gw.state), *map(str, args)]
        os.execv(argv[0], argv)
    out = b""
    answered = False
    while True:
        r, _, _ = select.select([fd], [], [], 120)
        if not r:
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
        if not answered and b"[y/N]" in out:
            os.write(fd, answer.encode() + b"\n")
            answered = True
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_the_operator_is_asked_on_a_terminal(root_sgw):
    """Without --yes on a terminal: the tools and permissions, then a
    question; "n" registers nothing and removes the install, "y" registers."""
    gw = root_sgw
    publish_echo(gw.index, gw.dir)
    code, out = _add_on_terminal(gw, "n", "pypi:mcp-server-testecho", "--index-url", gw.index.url)
    assert code == 1 and "register testecho 1.0.0? [y/N]" in out and "not confirmed" in out, out
    assert "permissions of testecho 1.0.0" in out and "testecho_echo" in out, out
    assert not (gw.state / "servers" / "testecho").exists()
    assert registered(gw) == []
    code, out = _add_on_terminal(gw, "y", "pypi:mcp-server-testecho", "--index-url", gw.index.url)
    assert code == 0 and "active: testecho" in out, out
    [row] = servers(gw)
    assert row["state"] == "active", row


def test_a_name_held_by_another_cell_is_refused(root_sgw):
    """`server add --name echo` when echo is a registered frame cell: no
    install, and echo stays as it was."""
    from conftest import bundled_manifest
    gw = root_sgw
    path = gw.write(bundled_manifest("echo"))
    gw.cli("cell", "sign", path, "--key", f"{gw.key}.key")
    gw.cli("cell", "register", path, "--key", f"{gw.key}.key")
    before = registered(gw)
    p = add(gw, "--name", "echo", "--", PYTHON, "-S", str(g.SERVERS / "counter.py"), ok_=False)
    assert p.returncode == 1 and "a cell named echo is registered and is not a server cell" in p.stderr, p.stderr
    assert registered(gw) == before
    assert not (gw.state / "servers" / "echo").exists()


def test_remove_refuses_names_that_are_not_a_directory_of_their_own(root_sgw):
    """`server remove ..` must not reach the state directory; a leftover of
    an interrupted add (not registered) is removed."""
    gw = root_sgw
    gw.cli("keys", "list")
    for name in ("..", "."):
        p = gw.cli("server", "remove", name, "--key", f"{gw.key}.key", ok=False)
        assert p.returncode != 0 and "cannot name a server" in p.stderr, p.stderr
    assert (gw.state / "keys").is_dir()
    p = add(gw, "--name", "ctr", "--read", gw.state / "trust", "--", PYTHON, "-S", str(g.SERVERS / "counter.py"),
            ok_=False)
    assert p.returncode == 1 and "is inside the supervisor's state directory" in p.stderr, p.stderr
    assert registered(gw) == [] and not (gw.state / "servers" / "ctr").exists()
    (gw.state / "servers" / "ghost" / "20260101T000000-0").mkdir(parents=True)
    p = gw.cli("server", "remove", "ghost", "--key", f"{gw.key}.key")
    assert "removed its unregistered install" in p.stdout, p.stdout
    assert not (gw.state / "servers" / "ghost").exists()
