"""Egress by allowlist, no other route (docs/egress.md), end to end:
mcp-server-fetch from PyPI as a server cell behind the egress proxy, against
loopback HTTP and HTTPS servers of the test, through `mcp-supervisor run`;
refusals recorded as network.refused; and the hostile test server
(tests/e2e/servers/escape.py) with network, which finds no route but the
proxy: a direct TCP connection, UDP, a raw socket and an abstract unix
socket of the host are each stopped. As root (workers run as nobody) and as
an unprivileged user."""
import http.server
import json
import socket
import ssl
import subprocess
import threading

import pytest

import gateway as g
from test_gateway import (  # noqa: F401 (fixtures)
    TEST_UID, Gateway, call, check_serving, gw, manifest, observed, ok, root_gw, stderr, text, with_tools)

PAGE = (b"<html><head><title>Egress test</title></head><body><article><h1>Hello egress</h1>"
        + b"<p>This page came through the supervisor's egress proxy, which is the only way out. </p>" * 4
        + b"</article></body></html>")


class Site:
    """A loopback HTTP (or HTTPS) server of the test: /robots.txt allows all,
    /echo answers with the Authorization header it received (as an upstream
    reflecting a credential back would), every other path is PAGE. Records
    the paths it was asked for and each request's headers."""

    def __init__(self, tls=None, port=0):
        site = self
        self.paths = []
        self.headers = []

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body leave in two writes: without TCP_NODELAY the
            # second waits for the peer's delayed ACK (40 ms).
            disable_nagle_algorithm = True

            def do_GET(self):
                site.paths.append(self.path)
                site.headers.append(dict(self.headers))
                body = b"User-agent: *\nAllow: /\n" if self.path == "/robots.txt" else PAGE
                if self.path == "/echo":
                    body = f"you sent: {self.headers.get('Authorization')}".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain" if self.path == "/robots.txt" else "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls["cert"], tls["key"])
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def make_tls(d):
    """A test CA and a certificate for 127.0.0.1 signed by it (openssl)."""
    sh = ("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem "
          "-days 2 -subj /CN=mcps-e2e-ca && printf 'subjectAltName=IP:127.0.0.1\\n' > s.ext && "
          "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout s.key -out s.csr "
          "-subj /CN=127.0.0.1 && openssl x509 -req -in s.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
          "-extfile s.ext -out s.pem && chmod 644 ca.pem")
    subprocess.run(["sh", "-c", sh], cwd=d, check=True, capture_output=True)
    return {"ca": str(d / "ca.pem"), "cert": str(d / "s.pem"), "key": str(d / "s.key")}


@pytest.fixture
def sites(tmp_path):
    tls = make_tls(tmp_path)
    plain, secure = Site(), Site(tls)
    yield plain, secure, tls
    plain.close()
    secure.close()


def fetch_doc(gw, connect, ca=None):
    """mcp-server-fetch behind the proxy; `ca`: the CA its httpx trusts
    (SSL_CERT_FILE, readable by the worker)."""
    env, read = {}, []
    if ca:
        env["SSL_CERT_FILE"] = ca
        read.append(ca)
    return with_tools(manifest(g.fetch_manifest, None, connect, env=env, read=read))


def test_fetch_server_reaches_listed_sites_through_the_proxy(gw, sites):
    plain, secure, tls = sites
    ca = gw.path("ca") / "ca.pem"
    ca.write_bytes(open(tls["ca"], "rb").read())
    ca.chmod(0o644)
    gw.write(fetch_doc(gw, [f"127.0.0.1:{plain.port}", f"127.0.0.1:{secure.port}"], ca=str(ca)))
    s = gw.serve()
    got = text(ok(s, "fetch_fetch", {"url": f"http://127.0.0.1:{plain.port}/page"}))
    assert "Hello egress" in got, got
    assert plain.paths == ["/robots.txt", "/page"], plain.paths
    # HTTPS: an opaque CONNECT tunnel; the server's own TLS to the site.
    got = text(ok(s, "fetch_fetch", {"url": f"https://127.0.0.1:{secure.port}/secure"}))
    assert "Hello egress" in got, got
    assert secure.paths == ["/robots.txt", "/secure"], secure.paths
    s.close()
    granted = gw.events("network.granted")
    assert sorted((e["host"], e["port"]) for e in granted) == sorted(
        [("127.0.0.1", plain.port)] * 2 + [("127.0.0.1", secure.port)] * 2), granted
    assert all(e["cell"] == "fetch" and e["address"].startswith("127.0.0.1:") for e in granted), granted
    assert gw.events("network.refused") == []
    gw.verify()


def test_unlisted_hosts_and_names_leading_to_loopback_are_refused(root_gw, sites):
    gw = root_gw
    plain, _, _ = sites
    gw.write(fetch_doc(gw, [f"127.0.0.1:{plain.port}", f"localhost:{plain.port}"]))
    s = gw.serve()
    for url, reason in [(f"http://127.0.0.2:{plain.port}/x", "not on the cell's network allowlist"),
                        (f"http://localhost:{plain.port}/x", "resolves only to internal addresses")]:
        r, _ = call(s, "fetch_fetch", {"url": url})
        assert r["result"]["isError"] is True, r
    s.close()
    assert plain.paths == [], "a refused request reached the site"
    refused = gw.events("network.refused")
    assert [(e["host"], e["port"]) for e in refused] == [("127.0.0.2", plain.port), ("localhost", plain.port)], refused
    assert "not on the cell's network allowlist" in refused[0]["reason"], refused
    assert "resolves only to internal addresses" in refused[1]["reason"], refused
    assert all(e["tool"] == "fetch_fetch" for e in refused), refused
    gw.verify()


def escape_with_network(gw, out):
    doc = manifest(g.script_server_manifest, None, "escape.py", write=[out], limits={"processes": "processes"})
    doc["network"] = {"connect": ["127.0.0.1:9"]}
    return with_tools(doc)


def test_a_server_ignoring_the_proxy_finds_no_other_route(gw):
    out = gw.path("out", 0o777)
    gw.write(escape_with_network(gw, out))
    s = gw.serve()
    who = check_serving(s)
    env = who["env"]
    assert env["HTTP_PROXY"] == env["https_proxy"] == env["ALL_PROXY"] == "http://127.0.0.1:3128", env
    assert env["NO_PROXY"] == env["no_proxy"] == "", env

    # A direct TCP connection to a listener of the test: no route.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    res = observed(ok(s, "escape_connect_tcp", {"port": listener.getsockname()[1]}))
    assert res["ok"] is False and res["errname"] in ("ECONNREFUSED", "ENETUNREACH", "EACCES"), res
    with pytest.raises(socket.timeout):
        listener.accept()
    listener.close()

    # UDP to a socket of the test: refused, nothing arrives.
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.5)
    res = observed(ok(s, "escape_udp_send", {"port": udp.getsockname()[1]}))
    assert res["ok"] is False and res["errname"] == "EACCES", res
    with pytest.raises(socket.timeout):
        udp.recvfrom(100)
    udp.close()

    # An abstract unix socket the test listens on: out of reach.
    name = f"mcps-egress-test-{id(gw)}"
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind("\0" + name)
    abstract.listen(1)
    abstract.settimeout(0.5)
    res = observed(ok(s, "escape_abstract_connect", {"name": name}))
    assert res["ok"] is False and res["errname"] in ("EACCES", "EPERM", "ECONNREFUSED"), res
    with pytest.raises(socket.timeout):
        abstract.accept()
    abstract.close()

    # A raw socket: a sandbox violation, the server killed.
    r, _ = call(s, "escape_raw_socket")
    assert r["result"]["isError"] is True, r
    check_serving(s)
    s.close()
    ends = {e["tool"]: e["outcome"] for e in gw.events("call.end")}
    assert ends["escape_raw_socket"] == "sandbox_violation", ends
    (v,) = gw.events("sandbox.violation")
    assert "socket" in json.dumps(v), v
    # The proxy was never asked for anything.
    assert gw.events("network.granted") == [] and gw.events("network.refused") == []
    gw.verify()
