"""Secrets end to end (docs/secrets.md): the store and its CLI, a server
cell given a secret in its environment (`env`), and a planted value that the
cell echoes in its result, error, stderr and log notifications never
reaching the client's bytes, the security log or the supervisor's stderr.
As root (workers run as nobody) and as uid 4242 for the store's ownership."""
import base64
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

import gateway as g
from test_gateway import IDENTITIES, Gateway, call, manifest, observed, ok, stderr, text, with_tools

PLANTED = "sk-planted-" + os.urandom(12).hex()


def forms(value):
    """The value as bytes, and its base64 forms a log or a client could hold."""
    v = value.encode()
    out = [v, base64.b64encode(v), base64.b64encode(b"x" + v)[4:-4]]
    return out


def leaks(blob: bytes, value=PLANTED):
    return [f for f in forms(value) if f in blob]


def secret_cli(gw, *args, input=None, ok=True):
    """`mcp-supervisor secret ...` as the gateway's identity, with stdin."""
    argv, env = gw._argv([gw.bin, "secret", *args, "--state-dir", gw.state])
    if args[0] == "list":
        argv += ["--manifests", str(gw.manifests), "--policies", str(gw.policies)]
    p = subprocess.run(argv, input=input, capture_output=True, env=env, timeout=60)
    if ok:
        assert p.returncode == 0, (args, p.returncode, p.stdout, p.stderr)
    return p


def leak_manifest(gw, use_env="LEAKY_TOKEN", **kw):
    doc = with_tools(manifest(g.script_server_manifest, None, "secretleak.py", name="leak", **kw))
    doc["secrets"] = [{"name": "leak_token", "env": use_env}]
    gw.write(doc)
    return doc


def state_bytes(gw):
    """Every file under the state directory but the store itself."""
    out = b""
    for p in Path(gw.state).rglob("*"):
        if p.is_file() and "secrets" not in p.relative_to(gw.state).parts:
            out += p.read_bytes()
    return out


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


def test_store_cli_never_prints_values(gw):
    p = secret_cli(gw, "set", "leak_token", input=(PLANTED + "\n").encode())
    assert b"stored secret leak_token" in p.stdout, p
    store = Path(gw.state) / "secrets"
    assert (store.stat().st_mode & 0o777, (store / "leak_token").stat().st_mode & 0o777) == (0o700, 0o600)
    assert (store / "leak_token").read_bytes() == PLANTED.encode()  # one trailing newline dropped
    expected_uid = 4242 if gw.as_user else 0
    assert (store / "leak_token").stat().st_uid == expected_uid
    leak_manifest(gw)
    for args in (["list"], ["list", "--json"]):
        out = secret_cli(gw, *args)
        assert not leaks(out.stdout + out.stderr), out
        assert b"leak_token" in out.stdout and b"leak" in out.stdout, out
    rows = json.loads(secret_cli(gw, "list", "--json").stdout)
    assert rows == [{"name": "leak_token", "source": "store", "stored": True, "usedBy": [
        {"cell": "leak", "origin": str(gw.manifests / "leak.json"),
         "use": "environment variable LEAKY_TOKEN of the worker"}]}], rows
    # A value is never taken from the command line; names follow the rule.
    bad = secret_cli(gw, "set", "leak_token", PLANTED, ok=False)
    assert bad.returncode != 0 and not leaks(bad.stdout), bad
    bad = secret_cli(gw, "set", "../x", input=b"v", ok=False)
    assert bad.returncode != 0 and b"letters, digits" in bad.stderr, bad
    secret_cli(gw, "set", "other", "--from-file", "/dev/null", ok=False)
    assert secret_cli(gw, "remove", "leak_token").returncode == 0
    assert b"MISSING from the store" in secret_cli(gw, "list").stdout
    assert secret_cli(gw, "remove", "leak_token", ok=False).returncode == 1


def test_env_secret_reaches_the_server_and_never_leaves_it(gw, monkeypatch):
    """The server gets the value in its environment; whatever it does with
    it (result, structured content, base64, error, stderr, log and progress
    notifications, a crash), the client's bytes, the security log and the
    supervisor's stderr hold only `[secret:leak_token]`."""
    secret_cli(gw, "set", "leak_token", input=PLANTED.encode())
    leak_manifest(gw)
    received = []
    real_read = os.read

    def recording_read(fd, n):
        chunk = real_read(fd, n)
        received.append(chunk)
        return chunk

    monkeypatch.setattr(os, "read", recording_read)
    s = gw.serve()
    s.request(next(s.ids), "logging/setLevel", {"level": "debug"})
    got = observed(ok(s, "leak_env"))
    assert got == {"present": True, "length": len(PLANTED),
                   "sha256": hashlib.sha256(PLANTED.encode()).hexdigest()}, got
    echoed = ok(s, "leak_echo")
    assert "the token is [secret:leak_token]" in text(echoed), echoed
    assert echoed["structuredContent"]["plain"] == "the token is [secret:leak_token]", echoed
    assert "[secret:leak_token]" in echoed["structuredContent"], echoed
    assert "[secret:leak_token]" in echoed["structuredContent"]["base64"], echoed
    r, _ = call(s, "leak_fail")
    assert r["result"]["isError"] is True and "[secret:leak_token]" in text(r["result"]), r
    r, _ = call(s, "leak_crash")
    assert r["result"]["isError"] is True, r
    s.close()
    client = b"".join(received)
    assert b"[secret:leak_token]" in client
    assert not leaks(client), "the client received the secret"
    assert not leaks(state_bytes(gw)), "the security log holds the secret"
    assert not leaks(Path(s.stderr_path).read_bytes()), "the supervisor's stderr holds the secret"
    ends = gw.events("call.end", tool="leak_crash")
    assert ends and ends[0]["outcome"] == "protocol_violation", ends
    gw.verify()


def test_missing_secret_refuses_the_call_naming_it(gw):
    leak_manifest(gw)
    s = gw.serve()
    r, _ = call(s, "leak_env")
    assert r["result"]["isError"] is True, r
    assert text(r["result"]) == ("The tool cannot run: its secret leak_token is not available; an operator must "
                                 "provide it."), r
    s.close()
    ev = gw.events("cell.cannot_run")
    assert [e["kind"] for e in ev] == ["secret_unavailable"] and ev[0]["secret"] == "leak_token", ev
    assert "secret set leak_token" in ev[0]["detail"], ev
    # doctor says so before any call does.
    d = gw.cli("doctor", "--allow-unsigned", "--manifests", gw.manifests, "--policies", gw.policies, ok=False)
    assert d.returncode == 1 and "CANNOT RUN AS DECLARED" in d.stdout, d.stdout + d.stderr
    assert "secret leak_token is not available" in d.stdout, d.stdout
    secret_cli(gw, "set", "leak_token", input=PLANTED.encode())
    d = gw.cli("doctor", "--allow-unsigned", "--manifests", gw.manifests, "--policies", gw.policies)
    assert "leak 1: OK" in d.stdout and not leaks(d.stdout.encode()), d.stdout


@pytest.mark.parametrize("lifecycle", ["perCall", "session"])
def test_secret_set_after_start_is_used_at_the_next_call(root_gw, lifecycle):
    """The store is read at every call; a server started ahead of its call
    (prespawn) or kept for the session with an older value in its
    environment is not used once the value changed."""
    gw = root_gw
    leak_manifest(gw, lifecycle=lifecycle)
    s = gw.serve("--prespawn", "1")
    r, _ = call(s, "leak_env")
    assert r["result"]["isError"] is True, r
    secret_cli(gw, "set", "leak_token", input=b"first-value")
    assert observed(ok(s, "leak_env"))["sha256"] == hashlib.sha256(b"first-value").hexdigest()
    # Time for the next server to be started and initialized ahead of its
    # call, with the first value.
    time.sleep(3)
    secret_cli(gw, "set", "leak_token", input=b"second-value")
    assert observed(ok(s, "leak_env"))["sha256"] == hashlib.sha256(b"second-value").hexdigest()
    s.close()
    ends = gw.events("call.end", tool="leak_env")
    assert [e["outcome"] for e in ends] == ["cannot_run", "success", "success"], ends
    assert not ends[2].get("prespawned"), "the server holding the old value was used"


def test_world_readable_or_foreign_store_is_refused(root_gw):
    gw = root_gw
    secret_cli(gw, "set", "leak_token", input=PLANTED.encode())
    leak_manifest(gw)
    store = Path(gw.state) / "secrets"
    store.chmod(0o755)
    p = secret_cli(gw, "list", ok=False)
    assert p.returncode == 2 and b"mode 0755" in p.stderr and f"chmod 700 {store}".encode() in p.stderr, p
    s = gw.serve()
    r, _ = call(s, "leak_env")
    assert r["result"]["isError"] is True and "leak_token is not available" in text(r["result"]), r
    store.chmod(0o700)
    (store / "leak_token").chmod(0o644)
    r, _ = call(s, "leak_env")
    assert r["result"]["isError"] is True, r
    # Owned by another user (uid 4242): refused although its mode is right.
    (store / "leak_token").chmod(0o600)
    os.chown(store, 4242, 4242)
    p = secret_cli(gw, "list", ok=False)
    assert p.returncode == 2 and b"owned by uid 4242" in p.stderr, p
    r, _ = call(s, "leak_env")
    assert r["result"]["isError"] is True, r
    s.close()
    details = [e["detail"] for e in gw.events("cell.cannot_run")]
    assert len(details) == 3, details
    assert "mode 0755" in details[0] and "mode 0644" in details[1] and "owned by uid 4242" in details[2], details
    assert not leaks(state_bytes(gw))


def test_cell_show_and_widening(root_gw):
    """`cell show` lists secret names and uses; a new secret, or a new use,
    is a widening that needs --approve-widening."""
    gw = root_gw
    key = gw.dir / "dev"
    gw.cli("keys", "generate", "--out", key)
    doc = leak_manifest(gw)
    path = gw.manifests / "leak.json"
    gw.cli("cell", "sign", path, "--key", f"{key}.key")
    gw.cli("cell", "register", path, "--key", f"{key}.key")
    shown = gw.cli("cell", "show", "leak")
    assert "secrets:" in shown.stdout and "leak_token (store): environment variable LEAKY_TOKEN" in shown.stdout
    js = json.loads(gw.cli("cell", "show", "leak", "--json").stdout)
    assert js["versions"][0]["secrets"] == [{"name": "leak_token", "source": "store", "env": "LEAKY_TOKEN"}], js
    doc["secrets"].append({"name": "second", "source": {"environment": "HOME"}, "env": "SECOND"})
    gw.write(doc)
    gw.cli("cell", "sign", path, "--key", f"{key}.key")
    p = gw.cli("cell", "register", path, "--key", f"{key}.key", ok=False)
    assert p.returncode != 0 and "widens: secrets: + second (supervisor environment $HOME)" in p.stderr, p.stderr
    p = gw.cli("cell", "register", path, "--key", f"{key}.key", "--approve-widening")
    assert "approving for leak: widens: secrets" in p.stdout, p.stdout


def test_frame_cell_env_secret_is_redacted_in_its_structured_result(root_gw):
    """A frame cell (the bundled python_run) given an `env` secret: the code
    it runs sees the value; what it prints (plain or base64, on stdout or
    stderr) comes back as `[secret:NAME]` in the structured result."""
    from conftest import bundled_manifest
    gw = root_gw
    doc = bundled_manifest("python-run")
    doc["secrets"] = [{"name": "leak_token", "env": "LEAKY_TOKEN"}]
    gw.write(doc)
    secret_cli(gw, "set", "leak_token", input=PLANTED.encode())
    received = []
    s = gw.serve()
    code = ("import os, hashlib, base64, sys\nv = os.environ['LEAKY_TOKEN']\n"
            "print(hashlib.sha256(v.encode()).hexdigest())\nprint(v)\nprint(base64.b64encode(v.encode()).decode())\n"
            "print(v, file=sys.stderr)\nraise SystemExit(v)")
    r, _ = call(s, "python_run", {"code": code})
    received.append(json.dumps(r).encode())
    out = r["result"]["structuredContent"]
    lines = out["stdout"].splitlines()
    assert lines[0] == hashlib.sha256(PLANTED.encode()).hexdigest(), out
    assert lines[1:] == ["[secret:leak_token]", "[secret:leak_token]"], out
    assert "[secret:leak_token]" in out["stderr"], out
    s.close()
    assert not leaks(b"".join(received)) and not leaks(state_bytes(gw)), r
