"""http_fetch through the connection broker, and cells that wrap existing
programs (git, jq), through the MCP front end: normal use and each refusal,
with the security events they leave."""
import http.server
import json
import shutil
import ssl
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from conftest import BIN, ROOT, RawServer, bundled_manifest


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        port = self.server.server_address[1]
        routes = {
            "/hello": (200, {}, b"hello from loopback\n"),
            "/redirect-in": (302, {"Location": "/hello"}, b""),
            # Same port, another loopback address: not on the allowlist.
            "/redirect-out": (302, {"Location": f"http://127.0.0.2:{port}/hello"}, b""),
            "/big": (200, {}, b"x" * 100_000),
        }
        status, headers, body = routes.get(self.path, (404, {}, b"not found\n"))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


RAW_SOCKET_CELL = """
import mcpcell, socket

@mcpcell.tool("raw_connect")
def raw_connect(args, ctx):
    s = socket.create_connection(("127.0.0.1", args["port"]))
    return "connected without the broker"

mcpcell.serve()
"""


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def env():
    d = Path(tempfile.mkdtemp(prefix="mcps-net-"))
    d.chmod(0o755)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    # The same over TLS, with a certificate for 127.0.0.1 that the cell is
    # told to trust (SSL_CERT_FILE is read by OpenSSL in the worker).
    tls = d / "tls"
    tls.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(tls / "key.pem"), "-out", str(tls / "cert.pem")],
                   check=True, capture_output=True)
    (tls / "cert.pem").chmod(0o644)
    httpsd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls / "cert.pem", tls / "key.pem")
    httpsd.socket = ctx.wrap_socket(httpsd.socket, server_side=True)
    tls_port = httpsd.server_address[1]
    threading.Thread(target=httpsd.serve_forever, daemon=True).start()

    # A repository whose own config tries to make git run a program.
    repo = d / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "t@example.org")
    git(repo, "config", "user.name", "Tester")
    (repo / "notes.txt").write_text("one\n")
    git(repo, "add", "notes.txt")
    git(repo, "commit", "-qm", "first commit")
    (repo / "notes.txt").write_text("one\ntwo\n")
    git(repo, "commit", "-qam", "second commit")
    (repo / "notes.txt").write_text("one\ntwo\nthree (uncommitted)\n")
    subprocess.run(["chmod", "-R", "a+rX", str(repo)], check=True)

    man = d / "manifests"
    man.mkdir()
    fetch = bundled_manifest("http-fetch")
    fetch["network"]["connect"] = [f"127.0.0.1:{port}", f"localhost:{port}", f"127.0.0.1:{tls_port}"]
    fetch["environment"]["set"]["SSL_CERT_FILE"] = str(tls / "cert.pem")
    fetch["filesystem"]["read"].append(str(tls / "cert.pem"))
    (man / "http-fetch.json").write_text(json.dumps(fetch))
    raw = bundled_manifest("http-fetch")
    raw["name"] = "raw-net"
    (d / "raw_net.py").write_text(RAW_SOCKET_CELL)
    raw["script"] = {"path": str(d / "raw_net.py"), "sha256": __import__("hashlib").sha256(RAW_SOCKET_CELL.encode()).hexdigest()}
    raw["tools"] = [{"name": "raw_connect", "description": "Tries a socket of its own.",
                     "inputSchema": {"type": "object", "properties": {"port": {"type": "integer"}}}}]
    (man / "raw-net.json").write_text(json.dumps(raw))
    gitm = bundled_manifest("git-read")
    gitm["workingDirectory"] = str(repo)
    gitm["filesystem"]["read"][0] = str(repo)
    (man / "git-read.json").write_text(json.dumps(gitm))
    (man / "jq.json").write_text(json.dumps(bundled_manifest("jq")))

    s = RawServer.serving(d, man, "--allow-unsigned")
    s.d, s.port, s.repo, s.tls_port = d, port, repo, tls_port
    yield s
    s.close()
    httpd.shutdown()
    httpsd.shutdown()
    shutil.rmtree(d, ignore_errors=True)


def call(s, tool, args):
    r = s.request(next(s.ids), "tools/call", {"name": tool, "arguments": args}, )["result"]
    return r, r["content"][0]["text"]


def events(s, type_):
    p = subprocess.run([str(BIN), "audit", "query", "--json", "--type", type_, "--state-dir", str(s.d / "state")],
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]


def test_http_fetch_through_the_broker(env):
    r, t = call(env, "http_fetch", {"url": f"http://127.0.0.1:{env.port}/hello"})
    assert not r["isError"], t
    assert t == "hello from loopback\n"
    assert r["structuredContent"]["status"] == 200
    granted = [e for e in events(env, "network.granted") if e["port"] == env.port]
    assert granted and granted[-1]["address"] == f"127.0.0.1:{env.port}"
    assert granted[-1]["tool"] == "http_fetch"

    r, t = call(env, "http_fetch", {"url": f"http://127.0.0.1:{env.port}/redirect-in"})
    assert not r["isError"] and t == "hello from loopback\n"
    r, t = call(env, "http_fetch", {"url": f"http://127.0.0.1:{env.port}/big", "maxBytes": 1000})
    assert not r["isError"] and len(t) == 1000 and r["structuredContent"]["truncated"] is True


def test_https_through_the_broker(env):
    """TLS runs in the worker over the socket the supervisor connected."""
    r, t = call(env, "http_fetch", {"url": f"https://127.0.0.1:{env.tls_port}/hello"})
    assert not r["isError"], t
    assert t == "hello from loopback\n" and r["structuredContent"]["status"] == 200


def test_http_fetch_refusals(env):
    # A port that is not on the allowlist.
    r, t = call(env, "http_fetch", {"url": f"http://127.0.0.1:{env.port + 1}/hello"})
    assert r["isError"] and "not on the cell's network allowlist" in t
    # A redirect may not leave the allowlist: the broker checks every hop.
    r, t = call(env, "http_fetch", {"url": f"http://127.0.0.1:{env.port}/redirect-out"})
    assert r["isError"] and f"127.0.0.2:{env.port} is not on the cell's network allowlist" in t
    # A name on the allowlist may not resolve into the local network.
    r, t = call(env, "http_fetch", {"url": f"http://localhost:{env.port}/hello"})
    assert r["isError"] and "resolves only to internal addresses" in t
    # Not http(s), or outside the schema.
    r, t = call(env, "http_fetch", {"url": "file:///etc/passwd"})
    assert r["isError"]
    refused = events(env, "network.refused")
    assert any(f["host"] == "127.0.0.2" and "allowlist" in f["reason"] for f in refused)
    assert any(f["host"] == "localhost" and "internal" in f["reason"] for f in refused)
    assert any(f["port"] == env.port + 1 for f in refused)


def test_worker_socket_of_its_own_is_killed_by_seccomp(env):
    r, t = call(env, "raw_connect", {"port": env.port})
    assert r["isError"]
    assert "forbidden system call socket" in t
    v = [e for e in events(env, "sandbox.violation") if e["tool"] == "raw_connect"]
    assert v and v[-1]["syscall"] == "socket"


def test_git_log_show_diff(env):
    r, t = call(env, "git_log", {"maxCount": 5})
    assert not r["isError"], t
    assert "second commit" in t and "first commit" in t and "Tester" in t
    r, t = call(env, "git_log", {"maxCount": 1})
    assert "second commit" in t and "first commit" not in t
    r, t = call(env, "git_show", {"revision": "HEAD~1"})
    assert not r["isError"] and "first commit" in t and "+one" in t
    r, t = call(env, "git_diff", {"from": "HEAD~1", "to": "HEAD", "stat": True})
    assert not r["isError"] and "notes.txt | 1 +" in t
    r, t = call(env, "git_show", {"revision": "no-such-revision"})
    assert r["isError"] and "exit status 128" in t


def test_git_option_injection_is_refused(env):
    target = env.d / "pwned.txt"
    for args in ({"revision": f"--output={target}"}, {"revision": "HEAD", "path": "--output=x"}):
        r, t = call(env, "git_show", args)
        if "path" in args:
            # After "--" in the template a leading dash is a path, not an option.
            assert not r["isError"], t
        else:
            assert r["isError"] and "would be read as an option" in t, t
    assert not target.exists()
    r, t = call(env, "git_log", {"maxCount": 1, "revision": "--all"})
    assert r["isError"] and "would be read as an option" in t
    # Not admitted: a refusal, not a sandbox violation.
    v = [e for e in events(env, "call.refused") if e.get("reason") == "invalid_arguments"]
    assert v and "revision" in v[-1]["detail"] and v[-1]["tool"] == "git_log"
    assert not [e for e in events(env, "sandbox.violation") if e.get("kind") == "arguments"]


def test_repository_config_cannot_make_git_run_a_program(env):
    # core.fsmonitor makes git start a program when it looks at the working
    # tree; the worker may not create processes, so git is stopped.
    git(env.repo, "config", "core.fsmonitor", f"touch {env.d}/fsmonitor-ran")
    try:
        r, t = call(env, "git_diff", {"from": "HEAD"})
        assert r["isError"] and "stopped by the sandbox" in t, t
        assert not (env.d / "fsmonitor-ran").exists()
    finally:
        git(env.repo, "config", "--unset", "core.fsmonitor")
    r, t = call(env, "git_diff", {"from": "HEAD"})
    assert not r["isError"] and "three (uncommitted)" in t


def test_jq(env):
    r, t = call(env, "jq", {"filter": ".items[] | select(.n > 1) | .name",
                            "input": {"items": [{"name": "a", "n": 1}, {"name": "b", "n": 2}]}})
    assert not r["isError"] and t.strip() == '"b"'
    r, t = call(env, "jq", {"filter": ".", "input": {"a": [1, 2]}, "compact": True})
    assert t.strip() == '{"a":[1,2]}'
    r, t = call(env, "jq", {"filter": ".a |", "input": {}})
    assert r["isError"] and "exit status 3" in t
    r, t = call(env, "jq", {"filter": "--rawfile", "input": {}})
    assert r["isError"] and "would be read as an option" in t
    r, t = call(env, "jq", {"filter": 'input_filename, $__loc__', "input": 1})
    assert not r["isError"]


def test_learn_mode_records_and_proposes():
    """A cell whose allowlist lacks what it needs: killed normally; learn
    mode lets the call finish and proposes the missing syscalls."""
    tmp_path = Path(tempfile.mkdtemp(prefix="mcps-learn-"))
    tmp_path.chmod(0o755)  # workers (nobody, under root) reach the scratch below
    man = tmp_path / "manifests"
    man.mkdir()
    doc = bundled_manifest("jq")
    doc["syscalls"] = {"groups": ["base"]}
    (man / "jq.json").write_text(json.dumps(doc))
    args = ["call", "jq", "--manifests", str(man), "--policies", str(ROOT / "policies"), "--allow-unsigned",
            "--scratch-dir", str(tmp_path / "scratch"), "--args", json.dumps({"filter": ".a", "input": {"a": 7}})]
    p = subprocess.run([str(BIN), *args], capture_output=True, timeout=60)
    assert p.returncode == 1 and b"killed by SIGSYS" in p.stderr, p.stderr
    p = subprocess.run([str(BIN), *args, "--learn"], capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == b"7"
    err = p.stderr.decode()
    assert "syscalls outside the allowlist: access, getcwd" in err or "syscalls outside the allowlist: getcwd, access" in err, err
    proposal = next(line for line in err.splitlines() if line.strip().startswith('"syscalls"'))
    proposed = json.loads("{" + proposal.strip() + "}")["syscalls"]
    # The proposal, applied, runs without learn mode.
    doc["syscalls"] = proposed
    (man / "jq.json").write_text(json.dumps(doc))
    p = subprocess.run([str(BIN), *args], capture_output=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == b"7", p.stderr
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_validate_refuses_network_syscalls_without_network(tmp_path):
    """The manifest that sent UDP with network "none": validate names the
    field and says where network access comes from."""
    from conftest import probe_manifest
    doc = probe_manifest()
    doc["network"] = "none"
    doc["syscalls"] = {"groups": ["base"], "allow": ["socket", "sendto"]}
    m = tmp_path / "udp.json"
    m.write_text(json.dumps(doc))
    p = subprocess.run([str(BIN), "validate", "--policies", str(ROOT / "policies"), str(m)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "syscalls.allow[0]" in p.stderr and '"socket" is never allowed' in p.stderr, p.stderr
    assert 'network access comes only from the manifest\'s "network" declaration' in p.stderr, p.stderr
