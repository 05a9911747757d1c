"""Three `serve --http` instances behind HAProxy (the Debian package) on
loopback: 2026-07-28 calls of two tenants go through the balancer to any
instance; one instance is killed mid-run (requests on it fail cleanly, the
rest keep being answered); each surviving instance's security log verifies.
A second test shares one trust ledger between three instances and revokes a
cell. What a shared deployment still lacks (a shared approval key) is
in docs/http.md and docs/deployment.md."""
import hashlib
import http.client
import json
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import BIN
from test_http import HTTPServer, make_work, modern_body, modern_headers, response_of

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
TOKENS = {"acme": "acme-ha-token-" + "4" * 32, "globex": "globex-ha-token-" + "5" * 32}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def cluster(workspace):
    assert Path(HAPROXY).exists(), "haproxy missing: apt-get install haproxy (make deps installs it when root)"
    front = free_port()
    cfg = {
        "allowedHosts": [f"127.0.0.1:{front}"],
        "staticTokens": [{"name": t, "tenant": t, "sha256": hashlib.sha256(tok.encode()).hexdigest()}
                         for t, tok in TOKENS.items()],
        "tenants": {"acme": {"cells": ["echo"]}, "globex": {"cells": ["probe"]}},
    }
    instances = [HTTPServer(make_work(workspace, f"ha{i}"), cfg) for i in range(3)]
    d = Path(tempfile.mkdtemp(prefix="mcps-haproxy-"))
    servers = "\n".join(f"    server i{i} 127.0.0.1:{s.port} check inter 200ms fall 1 rise 2"
                        for i, s in enumerate(instances))
    (d / "haproxy.cfg").write_text(f"""
global
    maxconn 256
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    retries 2
    option redispatch
    # Only a request that never reached an instance is sent again: a
    # tools/call that reached one may have run (no double execution).
    retry-on conn-failure
frontend mcp
    bind 127.0.0.1:{front}
    default_backend supervisors
backend supervisors
    balance roundrobin
    # Handshake-era sessions live in the instance that answered initialize:
    # learn its Mcp-Session-Id from the answer, send the session there.
    stick-table type string len 128 size 100k expire 1h
    stick store-response res.hdr(Mcp-Session-Id)
    stick match req.hdr(Mcp-Session-Id)
    option httpchk GET /healthz
    http-check send hdr Host 127.0.0.1:{front}
{servers}
""")
    ha = subprocess.Popen([HAPROXY, "-db", "-f", str(d / "haproxy.cfg")], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
    end = time.time() + 10
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", front), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    time.sleep(1)  # the first health checks
    yield front, instances
    ha.terminate()
    ha.wait(10)
    for s in instances:
        s.stop()
        shutil.rmtree(s.work, ignore_errors=True)
    shutil.rmtree(d, ignore_errors=True)


def call(front, tenant, i):
    tool = "echo" if tenant == "acme" else "probe"
    args = {"text": f"t{i}"} if tool == "echo" else {"action": "echo"}
    c = http.client.HTTPConnection("127.0.0.1", front, timeout=10)
    try:
        body = modern_body(i, "tools/call", {"name": tool, "arguments": args})
        c.request("POST", "/mcp", body=json.dumps(body), headers=modern_headers(TOKENS[tenant], "tools/call", tool))
        r = c.getresponse()
        data = r.read()
        if r.status != 200:
            return f"http {r.status}"
        m = response_of(r, data)
        return "ok" if "result" in m and not m["result"].get("isError") else f"error {m}"
    except (OSError, http.client.HTTPException) as e:
        return f"failed {e!r}"
    finally:
        c.close()


def test_three_instances_behind_haproxy(cluster):
    import threading
    front, instances = cluster
    results = []  # (time, result)
    lock = threading.Lock()
    start = time.time()

    def client(k):
        i = 0
        while time.time() - start < 4:
            tenant = "acme" if (i + k) % 2 == 0 else "globex"
            r = call(front, tenant, 1000 * k + i)
            with lock:
                results.append((time.time() - start, r))
            i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    killed_at = time.time() - start
    instances[1].proc.send_signal(signal.SIGKILL)  # mid-run: calls are in flight
    instances[1].proc.wait(10)
    for t in threads:
        t.join()
    print({r: sum(1 for _, x in results if x == r) for r in {x for _, x in results}})
    before = [r for t, r in results if t < killed_at]
    after = [r for t, r in results if t >= killed_at]
    assert before and all(r == "ok" for r in before), before
    # The killed instance's requests fail cleanly (an HTTP 5xx from the
    # balancer or a closed connection, never a wrong answer); HAProxy then
    # routes around it and the rest keep being answered.
    assert all(r == "ok" or r.startswith(("http 5", "failed")) for r in after), after
    late = [r for t, r in results if t >= killed_at + 1]
    assert late and all(r == "ok" for r in late), late
    # The surviving instances served calls of both tenants.
    for s in (instances[0], instances[2]):
        ends = [e for e in s.events() if e.get("type") == "call.end"]
        assert {e.get("tenant") for e in ends} == {"acme", "globex"}, ends
    # Each surviving instance's own hash chain verifies after a clean stop.
    for s in (instances[0], instances[2]):
        s.stop()
        out = subprocess.run([str(BIN), "audit", "verify", "--state-dir", str(s.work / "state")],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr


def cli(*args):
    p = subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def direct_call(server, i):
    c = server.conn(timeout=10)
    try:
        body = modern_body(i, "tools/call", {"name": "echo", "arguments": {"text": f"d{i}"}})
        c.request("POST", "/mcp", body=json.dumps(body), headers=modern_headers(TOKENS["acme"], "tools/call", "echo"))
        r = c.getresponse()
        data = r.read()
        assert r.status == 200, (r.status, data)
        return response_of(r, data)
    finally:
        c.close()


def test_shared_ledger_revocation_reaches_every_instance(workspace):
    """Three signed-mode instances, each with its own state directory (log,
    keys), read one ledger (`--ledger`). One is killed; a `cell revoke`
    appended to the shared ledger is refused by each survivor, asked
    directly, within the documented bound; each log then verifies."""
    shared = Path(tempfile.mkdtemp(prefix="mcps-ledger-"))
    shared.chmod(0o755)
    ledger = shared / "trust" / "ledger.jsonl"
    admin = shared / "admin-state"
    key = shared / "operator"
    manifest = shared / "echo.json"
    shutil.copy(workspace / "manifests" / "echo.json", manifest)
    cli("keys", "generate", "--out", key, "--state-dir", admin, "--ledger", ledger)
    cli("cell", "sign", manifest, "--key", f"{key}.key")
    cli("cell", "register", manifest, "--key", f"{key}.key", "--state-dir", admin, "--ledger", ledger)
    version = json.loads(cli("cell", "list", "--json", "--state-dir", admin, "--ledger", ledger))[0]["active"]
    cfg = {"allowedHosts": [], "staticTokens": [{"name": "acme", "tenant": "acme",
                                                 "sha256": hashlib.sha256(TOKENS["acme"].encode()).hexdigest()}],
           "tenants": {"acme": {"cells": ["echo"]}}}
    instances = []
    try:
        for i in range(3):
            work = make_work(workspace, f"ledger{i}")
            instances.append(HTTPServer(work, cfg, trust=("--ledger", str(ledger), "--ledger-recheck-seconds", "2")))
        for k, s in enumerate(instances):
            m = direct_call(s, k)
            assert "result" in m and not m["result"].get("isError"), m
            # Its own log and keys, not the shared directory's.
            assert (s.work / "state" / "security").is_dir()
            assert not (s.work / "state" / "trust" / "ledger.jsonl").exists()
        instances[1].proc.send_signal(signal.SIGKILL)
        instances[1].proc.wait(10)
        cli("cell", "revoke", f"echo:{version}", "--key", f"{key}.key", "--reason", "test",
            "--state-dir", admin, "--ledger", ledger)
        revoked_at = time.time()
        for k, s in enumerate((instances[0], instances[2])):
            m = direct_call(s, 100 + k)
            assert time.time() - revoked_at < 2, "refusal took longer than the stated bound"
            text = json.dumps(m)
            assert ("error" in m or m["result"].get("isError")) and "echo" in text, m
        for s in (instances[0], instances[2]):
            s.stop()
        out = subprocess.run([str(BIN), "audit", "verify", "--instance", str(instances[0].work / "state"),
                              "--instance", str(instances[2].work / "state")],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and out.stdout.count(": OK:") == 2, out.stdout + out.stderr
    finally:
        for s in instances:
            s.stop()
            shutil.rmtree(s.work, ignore_errors=True)
        shutil.rmtree(shared, ignore_errors=True)


def listed_tools(server):
    c = server.conn(timeout=10)
    try:
        c.request("POST", "/mcp", body=json.dumps(modern_body(1, "tools/list")),
                  headers=modern_headers(TOKENS["acme"], "tools/list"))
        r = c.getresponse()
        data = r.read()
        assert r.status == 200, (r.status, data)
        return {t["name"] for t in response_of(r, data)["result"]["tools"]}
    finally:
        c.close()


def test_ledger_recheck_sees_a_change_inotify_misses(workspace):
    """A ledger updated the way the kubelet updates a ConfigMap volume (the
    file is a symlink through `..data`, swapped by rename) changes no name
    the file watch looks at. With `--ledger-recheck-seconds 1` the revoked
    cell leaves the tool list within the bound without any call; without it
    it stays listed (new calls would still be refused: they look first)."""
    d = Path(tempfile.mkdtemp(prefix="mcps-ledger-cm-"))
    d.chmod(0o755)
    real, admin, key, manifest = d / "real" / "ledger.jsonl", d / "admin", d / "op", d / "echo.json"
    shutil.copy(workspace / "manifests" / "echo.json", manifest)
    cli("keys", "generate", "--out", key, "--state-dir", admin, "--ledger", real)
    cli("cell", "sign", manifest, "--key", f"{key}.key")
    cli("cell", "register", manifest, "--key", f"{key}.key", "--state-dir", admin, "--ledger", real)
    version = json.loads(cli("cell", "list", "--json", "--state-dir", admin, "--ledger", real))[0]["active"]
    cm = d / "cm"
    (cm / "..v1").mkdir(parents=True)
    shutil.copy(real, cm / "..v1" / "ledger.jsonl")
    (cm / "..data").symlink_to("..v1")
    (cm / "ledger.jsonl").symlink_to("..data/ledger.jsonl")
    cfg = {"allowedHosts": [], "staticTokens": [{"name": "acme", "tenant": "acme",
                                                 "sha256": hashlib.sha256(TOKENS["acme"].encode()).hexdigest()}],
           "tenants": {"acme": {"cells": ["echo"]}}}
    servers = []
    try:
        for i, recheck in enumerate(("1", "0")):
            servers.append(HTTPServer(make_work(workspace, f"cm{i}"), cfg,
                                      trust=("--ledger", str(cm / "ledger.jsonl"), "--ledger-recheck-seconds", recheck)))
        for s in servers:
            assert "echo" in listed_tools(s)
        cli("cell", "revoke", f"echo:{version}", "--key", f"{key}.key", "--state-dir", admin, "--ledger", real)
        (cm / "..v2").mkdir()
        shutil.copy(real, cm / "..v2" / "ledger.jsonl")
        (cm / "..data_tmp").symlink_to("..v2")
        (cm / "..data_tmp").rename(cm / "..data")
        time.sleep(2.5)
        assert "echo" not in listed_tools(servers[0])
        assert "echo" in listed_tools(servers[1])  # the file watch alone did not see it
        m = direct_call(servers[1], 7)  # a call looks first: refused
        assert "error" in m or m["result"].get("isError"), m
        assert "echo" not in listed_tools(servers[1])
    finally:
        for s in servers:
            s.stop()
            shutil.rmtree(s.work, ignore_errors=True)
        shutil.rmtree(d, ignore_errors=True)
