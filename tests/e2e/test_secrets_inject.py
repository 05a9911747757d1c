"""Secrets the server never holds, end to end (docs/secrets.md, `inject`;
docs/egress.md, "Credentials the worker never holds"): a secret set with
`mcp-supervisor secret set` and bound to one host of a server cell's
network allowlist is added by the egress proxy to the requests the server
makes there, over plain HTTP and over HTTPS (the proxy terminating the
worker's TLS with the per-install CA), through `mcp-supervisor run`.
The server (tests/e2e/servers/secretleak.py, urllib following the proxy
variables) never holds the value: not in its environment, not in what
comes back to it when the upstream echoes the header; neither do the
client's bytes, the security log nor the supervisor's stderr. As root
(workers run as nobody) and as uid 4242."""
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import gateway as g
from test_egress import Site, sites  # noqa: F401 (fixture)
from test_gateway import (  # noqa: F401 (fixtures)
    Gateway, call, gw, manifest, observed, ok, root_gw, stderr, with_tools)
from test_secrets import PLANTED, leaks, secret_cli, state_bytes

NAME = "api_token"
MARKER = f"[secret:{NAME}]"
# urllib over the proxy: a Python server's groups and the calls made on a
# connection (socket and connect come with network.egress "proxy").
GROUPS = [*g.SERVER_GROUPS, "network-client"]


def binding(host, scheme=None):
    inject = {"host": host, "header": "Authorization", "format": "Bearer {secret}"}
    if scheme:
        inject["scheme"] = scheme
    return {"name": NAME, "source": "store", "inject": inject}


def inject_doc(connect, inject_host, read=(), scheme=None, **kw):
    """secretleak.py as a server cell allowed `connect`, with the secret
    bound to `inject_host` (not to its environment)."""
    doc = with_tools(manifest(g.script_server_manifest, None, "secretleak.py", name="leak", groups=GROUPS,
                              read=list(read), **kw))
    doc["network"] = {"connect": list(connect)}
    doc["secrets"] = [binding(inject_host, scheme)]
    return doc


def record_client(monkeypatch):
    """Every byte the test's client reads from the supervisor."""
    received = []
    real_read = os.read

    def recording_read(fd, n):
        chunk = real_read(fd, n)
        received.append(chunk)
        return chunk

    monkeypatch.setattr(os, "read", recording_read)
    return received


def fetched(s, url, **args):
    return observed(ok(s, "leak_fetch", {"url": url, **args}))


def no_leak_anywhere(gw, s, received):
    client = b"".join(received)
    assert not leaks(client), "the client received the secret"
    assert not leaks(state_bytes(gw)), "the security log (or another state file) holds the secret"
    assert not leaks(Path(s.stderr_path).read_bytes()), "the supervisor's stderr holds the secret"


def test_a_server_reading_its_injected_secret_from_the_environment_finds_nothing(gw):
    """The hostile case: the secret is bound to the proxy, so the server's
    environment (as the variable it would use, or anywhere else in it)
    does not hold it."""
    secret_cli(gw, "set", NAME, input=PLANTED.encode())
    gw.write(inject_doc(["127.0.0.1:9"], "127.0.0.1:9"))
    s = gw.serve()
    got = observed(ok(s, "leak_env"))
    assert got == {"present": False, "length": 0, "sha256": hashlib.sha256(b"").hexdigest()}, got
    environ = bytes.fromhex(observed(ok(s, "leak_environ"))["hex"])
    assert b"HTTP_PROXY=http://127.0.0.1:3128" in environ, environ
    # What it is given instead: the bundle that trusts the per-install CA.
    published = gw.dir / "scratch" / "egress-ca.pem"
    for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        assert f"{var}={published}".encode() in environ.split(b"\0"), environ
    assert not leaks(environ), "the worker's environment holds the injected secret"
    s.close()
    gw.verify()


def test_plain_http_upstream_receives_the_header_and_the_echo_is_redacted(gw, sites, monkeypatch):
    plain, _, _ = sites
    secret_cli(gw, "set", NAME, input=(PLANTED + "\n").encode())
    gw.write(inject_doc([f"127.0.0.1:{plain.port}"], f"127.0.0.1:{plain.port}", scheme="http"))
    received = record_client(monkeypatch)
    s = gw.serve()
    got = fetched(s, f"http://127.0.0.1:{plain.port}/echo")
    assert got == {"ok": True, "status": 200, "body": f"you sent: Bearer {MARKER}"}, got
    assert plain.paths == ["/echo"], plain.paths
    assert plain.headers[0].get("Authorization") == f"Bearer {PLANTED}", plain.headers
    # What the server itself had: nothing, anywhere in its environment.
    assert not leaks(bytes.fromhex(observed(ok(s, "leak_environ"))["hex"]))
    s.close()
    assert MARKER.encode() in b"".join(received)
    no_leak_anywhere(gw, s, received)
    granted = gw.events("network.granted")
    assert [(e["host"], e["port"], e["tool"]) for e in granted] == [("127.0.0.1", plain.port, "leak_fetch")]
    gw.verify()


def test_https_upstream_receives_the_header_through_the_per_install_ca(gw, sites, monkeypatch):
    """The proxy terminates the worker's TLS for the bound host with the
    per-install CA (the worker trusts it through SSL_CERT_FILE, the
    published bundle: system roots + that CA), and verifies the upstream
    with the test CA given by --egress-ca-bundle.

    Another HTTPS host of the same cell, without an injection, is an opaque
    tunnel: the worker's own TLS reaches the upstream. A loopback upstream
    has a certificate from the test CA, which the published bundle does not
    hold (only a public host would verify against its system roots, and the
    tests use no network): the worker trusts it by naming the test CA itself
    (`cafile`); through SSL_CERT_FILE alone it refuses that upstream, which
    shows the tunnel was not opened by the proxy. A client pinning its own
    CA for the bound host refuses the proxy's certificate: fail closed, no
    request reaches the upstream."""
    _, secure, tls = sites
    opaque = Site(tls)
    try:
        ca_dir = gw.path("ca")
        ca = ca_dir / "ca.pem"
        shutil.copy(tls["ca"], ca)
        ca.chmod(0o644)
        bound, other = f"127.0.0.1:{secure.port}", f"127.0.0.1:{opaque.port}"
        secret_cli(gw, "set", NAME, input=PLANTED.encode())
        gw.write(inject_doc([bound, other], bound, read=[str(ca)]))
        received = record_client(monkeypatch)
        s = gw.serve("--egress-ca-bundle", ca)

        got = fetched(s, f"https://{bound}/echo")
        assert got == {"ok": True, "status": 200, "body": f"you sent: Bearer {MARKER}"}, (got, print(stderr(s)[-3000:]))
        assert secure.paths == ["/echo"] and secure.headers[0].get("Authorization") == f"Bearer {PLANTED}"

        # Pinning the test CA for the bound host: the proxy's certificate is
        # refused by the worker; nothing reaches the upstream.
        got = fetched(s, f"https://{bound}/echo", cafile=str(ca))
        assert got["ok"] is False and "CERTIFICATE_VERIFY_FAILED" in got["error"], got
        assert secure.paths == ["/echo"], secure.paths

        # The host without an injection: an opaque tunnel, verified by the
        # worker with the test CA; no header added.
        got = fetched(s, f"https://{other}/echo", cafile=str(ca))
        assert got == {"ok": True, "status": 200, "body": "you sent: None"}, got
        assert opaque.paths == ["/echo"] and "Authorization" not in opaque.headers[0], opaque.headers
        # Through SSL_CERT_FILE (system roots + per-install CA) the test
        # CA's upstream does not verify: the proxy did not terminate it.
        got = fetched(s, f"https://{other}/echo")
        assert got["ok"] is False and "CERTIFICATE_VERIFY_FAILED" in got["error"], got
        assert opaque.paths == ["/echo"], opaque.paths
        s.close()
    finally:
        opaque.close()

    # The bundle the worker was given: the system roots, then the CA.
    published = (gw.dir / "scratch" / "egress-ca.pem").read_bytes()
    roots = Path("/etc/ssl/certs/ca-certificates.crt").read_bytes()
    ca_pem = (Path(gw.state) / "egress-ca" / "ca.pem").read_bytes()
    assert roots and published.startswith(roots) and published.endswith(ca_pem), len(published)
    assert MARKER.encode() in b"".join(received)
    no_leak_anywhere(gw, s, received)
    granted = gw.events("network.granted")
    assert sorted((e["host"], e["port"]) for e in granted) == sorted(
        [("127.0.0.1", secure.port)] * 2 + [("127.0.0.1", opaque.port)] * 2), granted
    gw.verify()


@pytest.mark.parametrize("lifecycle", ["perCall", "session"])
def test_secret_set_between_calls_is_injected_at_the_next_call_of_a_prespawned_server(root_gw, sites, lifecycle):
    """A server started ahead of its call (perCall) or kept for the session
    has a proxy attachment with the values of its start: once the secret
    changed it is not used."""
    gw = root_gw
    plain, _, _ = sites
    secret_cli(gw, "set", NAME, input=b"first-value")
    gw.write(inject_doc([f"127.0.0.1:{plain.port}"], f"127.0.0.1:{plain.port}", scheme="http",
                        lifecycle=lifecycle))
    s = gw.serve("--prespawn", "1")
    url = f"http://127.0.0.1:{plain.port}/echo"
    assert fetched(s, url)["ok"] is True
    # Time for the next server to be started and initialized ahead of its
    # call, attached with the first value.
    time.sleep(3)
    secret_cli(gw, "set", NAME, input=b"second-value")
    assert fetched(s, url)["ok"] is True
    s.close()
    assert [h.get("Authorization") for h in plain.headers] == ["Bearer first-value", "Bearer second-value"]
    ends = gw.events("call.end", tool="leak_fetch")
    assert [e["outcome"] for e in ends] == ["success", "success"], ends
    assert not ends[1].get("prespawned"), "the server attached with the old value was used"


def test_inject_on_a_command_cell_through_the_proxy_and_refused_with_the_broker(root_gw, sites):
    """A command cell with network.egress "proxy" may bind a secret to a
    host (the same server run once over a conversation on stdin); with the
    connection broker (a command cell's default) the manifest is refused
    at `inject`."""
    gw = root_gw
    plain, _, _ = sites
    host = f"127.0.0.1:{plain.port}"
    secret_cli(gw, "set", NAME, input=PLANTED.encode())
    doc = g.command_manifest(inject_doc([host], host, scheme="http"))
    doc["network"]["egress"] = "proxy"
    gw.write(doc)
    s = gw.serve()
    convo = g.conversation(("fetch", {"url": f"http://{host}/echo"}), ("env", {}), padding=50)
    r = ok(s, "leak_converse", {"stdin": convo})
    out = g.responses("".join(c.get("text", "") for c in r["content"]))
    assert out[3]["result"]["structuredContent"] == {"ok": True, "status": 200,
                                                     "body": f"you sent: Bearer {MARKER}"}, out
    assert out[4]["result"]["structuredContent"]["present"] is False, out
    assert plain.headers[0].get("Authorization") == f"Bearer {PLANTED}", plain.headers
    s.close()
    assert not leaks(json.dumps(r).encode()) and not leaks(state_bytes(gw))

    doc["network"]["egress"] = "broker"
    path = gw.write(doc)
    p = subprocess.run([str(gw.bin), "validate", "--policies", str(gw.policies), str(path)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "secrets[0].inject" in p.stderr and "egress proxy" in p.stderr, p.stderr


def test_fetch_server_requests_carry_the_header_over_https(gw, sites):
    """mcp-server-fetch from PyPI (httpx, following the proxy variables and
    SSL_CERT_FILE): its robots.txt and page requests to the bound HTTPS host
    carry the header; its result shows the echo redacted."""
    _, secure, tls = sites
    ca = gw.path("ca") / "ca.pem"
    shutil.copy(tls["ca"], ca)
    ca.chmod(0o644)
    bound = f"127.0.0.1:{secure.port}"
    secret_cli(gw, "set", NAME, input=PLANTED.encode())
    doc = with_tools(manifest(g.fetch_manifest, None, [bound]))
    doc["secrets"] = [binding(bound)]
    gw.write(doc)
    s = gw.serve("--egress-ca-bundle", ca)
    r = ok(s, "fetch_fetch", {"url": f"https://{bound}/echo", "raw": True})
    got = "".join(c.get("text", "") for c in r["content"])
    assert f"you sent: Bearer {MARKER}" in got, got
    s.close()
    assert secure.paths == ["/robots.txt", "/echo"], secure.paths
    assert [h.get("Authorization") for h in secure.headers] == [f"Bearer {PLANTED}"] * 2, secure.headers
    assert not leaks(json.dumps(r).encode()) and not leaks(state_bytes(gw))
    assert not leaks(Path(s.stderr_path).read_bytes())
    gw.verify()


def test_an_egress_ca_readable_by_others_stops_the_call_before_any_request(root_gw, sites):
    """The per-install CA's key must be the supervisor's alone: a key
    readable by others is refused, and the call ends as cell.cannot_run
    naming the fix rather than sending the request without its header or
    through a CA others could use."""
    gw = root_gw
    _, secure, tls = sites
    ca = gw.path("ca") / "ca.pem"
    shutil.copy(tls["ca"], ca)
    bound = f"127.0.0.1:{secure.port}"
    secret_cli(gw, "set", NAME, input=PLANTED.encode())
    gw.write(inject_doc([bound], bound))
    s = gw.serve("--egress-ca-bundle", ca)
    assert fetched(s, f"https://{bound}/echo")["ok"] is True
    s.close()
    ca_dir = Path(gw.state) / "egress-ca"
    assert (ca_dir.stat().st_mode & 0o777, (ca_dir / "ca.key").stat().st_mode & 0o777) == (0o700, 0o600)
    (ca_dir / "ca.key").chmod(0o644)
    s = gw.serve("--egress-ca-bundle", ca)
    r, _ = call(s, "leak_fetch", {"url": f"https://{bound}/echo"})
    assert r["result"]["isError"] is True, r
    s.close()
    assert secure.paths == ["/echo"], secure.paths
    ev = gw.events("cell.cannot_run")
    assert len(ev) == 1 and "egress" in ev[0]["detail"] and "ca.key" in ev[0]["detail"], ev
    ends = gw.events("call.end", tool="leak_fetch")
    assert [e["outcome"] for e in ends] == ["success", "cannot_run"], ends


def test_plain_http_to_a_host_bound_over_https_gets_no_header(gw, sites):
    """A secret bound to a host over https (the default scheme) is added
    only inside TLS the proxy terminates: a worker sending plain HTTP
    (absolute-form through the proxy) to that host:port, to have the value
    cross the network in clear, gets its request forwarded without it."""
    plain, _, _ = sites
    bound = f"127.0.0.1:{plain.port}"
    secret_cli(gw, "set", NAME, input=PLANTED.encode())
    gw.write(inject_doc([bound], bound))
    s = gw.serve()
    got = fetched(s, f"http://{bound}/echo")
    s.close()
    assert got == {"ok": True, "status": 200, "body": "you sent: None"}, got
    assert plain.paths[-1] == "/echo" and "Authorization" not in plain.headers[-1], plain.headers


def test_an_upstream_the_proxy_cannot_verify_never_gets_the_header(gw, sites):
    """Without --egress-ca-bundle the test CA's upstream does not verify
    for the proxy (system roots only): the worker's request is answered 502
    naming the failure, and the upstream sees no request, so no credential
    went to a host whose identity was not checked."""
    _, secure, _ = sites
    bound = f"127.0.0.1:{secure.port}"
    secret_cli(gw, "set", NAME, input=PLANTED.encode())
    gw.write(inject_doc([bound], bound))
    s = gw.serve()
    got = fetched(s, f"https://{bound}/echo")
    assert got["ok"] is False and got["status"] == 502, got
    assert f"connection to {bound} failed" in got["body"] and "CERTIFICATE_VERIFY_FAILED" in got["body"], got
    s.close()
    assert secure.paths == [] and secure.headers == [], secure.headers
    assert not leaks(state_bytes(gw)) and not leaks(Path(s.stderr_path).read_bytes())
