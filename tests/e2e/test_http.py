"""`mcp-supervisor serve --http`: Streamable HTTP in both eras, the request
guard (Host, Origin, sizes, timeouts, stream limits), bearer tokens from a
test issuer run here (JWKS on a loopback http.server), static tokens, and
the principal reaching the policy and the security log (docs/http.md)."""
import base64
import hashlib
import hmac
import http.client
import http.server
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import BIN, ROOT, bundled_manifest, probe_manifest

MODERN = "2026-07-28"
RESOURCE = "http://127.0.0.1/mcp-test-resource"
STATIC_TOKEN = "operator-secret-token-0123456789"


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def int_b64(n: int) -> str:
    return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


class Issuer:
    """A test authorization server: RSA keys, a JWKS on loopback, tokens."""

    def __init__(self):
        self.keys = {"k1": rsa.generate_private_key(public_exponent=65537, key_size=2048)}
        self.published = ["k1"]
        self.issuer = "http://127.0.0.1/test-issuer"
        self.fetches = 0
        issuer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                issuer.fetches += 1
                body = json.dumps(issuer.jwks()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.jwks_url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"

    def jwks(self):
        out = []
        for kid in self.published:
            pub = self.keys[kid].public_key().public_numbers()
            out.append({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": int_b64(pub.n), "e": int_b64(pub.e)})
        return {"keys": out}

    def claims(self, **over):
        now = int(time.time())
        c = {"iss": self.issuer, "aud": RESOURCE, "sub": "alice", "exp": now + 300, "iat": now,
             "scope": "mcp:tools", "client_id": "test-client", "tenant": "acme", "groups": ["dev"]}
        c.update(over)
        return {k: v for k, v in c.items() if v is not None}

    def token(self, kid="k1", **over):
        return jwt.encode(self.claims(**over), self.keys[kid], algorithm="RS256", headers={"kid": kid})

    def public_pem(self, kid="k1"):
        return self.keys[kid].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def stop(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def issuer():
    i = Issuer()
    yield i
    i.stop()


class HTTPServer:
    """`serve --http 127.0.0.1:0` on a workspace; its port from stderr."""

    def __init__(self, work: Path, config: dict, policy: dict = None, trust=("--allow-unsigned",)):
        self.work = work
        (work / "http.json").write_text(json.dumps(config))
        # The bundled policy admits only uid:* (stdio); token principals need a rule.
        if policy is None:
            policy = {"principals": [{"name": "http callers", "principal": "*", "allow": ["*"]}]}
        if True:
            policies = work / "policies"
            policies.mkdir(exist_ok=True)
            (policies / "policy.json").write_text(json.dumps(policy))
            shutil.copy(ROOT / "policies" / "syscall-groups.json", policies / "syscall-groups.json")
        self.proc = subprocess.Popen(
            [str(BIN), "serve", "--http", "127.0.0.1:0", "--http-config", str(work / "http.json"),
             "--manifests", str(work / "manifests"), "--policies", str(policies),
             "--state-dir", str(work / "state"), "--scratch-dir", str(work / "scratch"), *trust,
             # No prespawned workers: each call's worker is a new child, so a
             # test can tell which pid served it.
             "--prespawn", "0", "--log-level", "warning"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.stderr = []
        self.port = None
        ready = threading.Event()

        def drain():
            for line in self.proc.stderr:
                text = line.decode(errors="replace")
                self.stderr.append(text)
                if "serving MCP on http" in text and "://127.0.0.1:" in text:
                    self.port = int(text.rsplit(":", 1)[1].split("/")[0])
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        assert ready.wait(30), "server did not start"
        assert self.port, "server did not start: " + "".join(self.stderr)

    def conn(self, timeout=30):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def wait_event(self, pred, timeout=5):
        """The records, once one satisfies `pred` (appends are durable but
        asynchronous to the response)."""
        end = time.time() + timeout
        while True:
            ev = self.events()
            if any(pred(e) for e in ev) or time.time() > end:
                return ev
            time.sleep(0.05)

    def events(self):
        """The security log's records."""
        out = []
        for f in sorted((self.work / "state" / "security").glob("*.jsonl")):
            for line in f.read_text().splitlines():
                if line.strip():
                    out.append(json.loads(line))
        return out


def make_work(workspace, name):
    d = Path(tempfile.mkdtemp(prefix=f"mcps-http-{name}-"))
    os.chmod(d, 0o755)
    shutil.copytree(workspace / "manifests", d / "manifests")
    (d / "manifests" / "probe-slow.json").write_text(json.dumps(
        probe_manifest("probe_slow", limits={"timeoutMilliseconds": 30000})))
    return d


def base_config(issuer, **over):
    c = {
        "resource": RESOURCE,
        "allowedOrigins": ["http://app.example"],
        "oauth": {"issuer": issuer.issuer, "jwksUrl": issuer.jwks_url, "algorithms": ["RS256"],
                  "requiredScopes": ["mcp:tools"], "jwksMinRefetchSeconds": 0},
        "staticTokens": [{"name": "operator", "sha256": hashlib.sha256(STATIC_TOKEN.encode()).hexdigest(),
                          "scopes": ["mcp:tools"]}],
    }
    c.update(over)
    return c


@pytest.fixture(scope="module")
def server(workspace, issuer):
    work = make_work(workspace, "main")
    s = HTTPServer(work, base_config(issuer, limits={"requestTimeoutMilliseconds": 1500, "idleTimeoutMilliseconds": 2000,
                                                    "maxStreamsPerClient": 4, "maxBodyBytes": 65536}))
    yield s
    s.stop()
    shutil.rmtree(work, ignore_errors=True)


def modern_body(id, method, params=None):
    p = dict(params or {})
    p["_meta"] = {**p.get("_meta", {}), "io.modelcontextprotocol/protocolVersion": MODERN,
                  "io.modelcontextprotocol/clientCapabilities": {}}
    return {"jsonrpc": "2.0", "id": id, "method": method, "params": p}


def modern_headers(token, method, name=None, **extra):
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
         "MCP-Protocol-Version": MODERN, "Mcp-Method": method, "Authorization": f"Bearer {token}"}
    if name is not None:
        h["Mcp-Name"] = name
    h.update(extra)
    return h


def post(srv, body, headers, conn=None):
    c = conn or srv.conn()
    c.request("POST", "/mcp", body=json.dumps(body) if not isinstance(body, bytes) else body, headers=headers)
    r = c.getresponse()
    data = r.read()
    return r, data


def sse_messages(data: bytes):
    out = []
    for block in data.decode().split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))
    return out


def response_of(r, data):
    if r.getheader("Content-Type", "").startswith("text/event-stream"):
        msgs = sse_messages(data)
        return [m for m in msgs if "id" in m and "method" not in m][-1]
    return json.loads(data)


# ---------------------------------------------------------------- 2026-07-28


def test_modern_call_with_jwt(server, issuer):
    tok = issuer.token()
    body = modern_body(1, "tools/call", {"name": "echo", "arguments": {"text": "hi"}})
    r, data = post(server, body, modern_headers(tok, "tools/call", "echo"))
    assert r.status == 200, data
    m = response_of(r, data)
    assert m["result"]["resultType"] == "complete"
    assert not m["result"].get("isError"), m
    r, data = post(server, modern_body(2, "tools/list"), modern_headers(tok, "tools/list"))
    names = [t["name"] for t in json.loads(data)["result"]["tools"]]
    assert "echo" in names and "probe" in names
    r, data = post(server, modern_body(3, "server/discover"), modern_headers(tok, "server/discover"))
    assert MODERN in json.loads(data)["result"]["supportedVersions"]


@pytest.mark.parametrize("change,why", [
    ({"Mcp-Method": "tools/list"}, "Mcp-Method"),
    ({"Mcp-Name": "probe"}, "Mcp-Name"),
    ({"Mcp-Name": None}, "Mcp-Name header is required"),
    ({"Mcp-Method": None}, "Mcp-Method header is required"),
])
def test_modern_header_mismatch_is_400_32020(server, issuer, change, why):
    h = modern_headers(issuer.token(), "tools/call", "echo")
    for k, v in change.items():
        if v is None:
            h.pop(k)
        else:
            h[k] = v
    r, data = post(server, modern_body(7, "tools/call", {"name": "echo", "arguments": {"text": "x"}}), h)
    assert r.status == 400, data
    m = json.loads(data)
    assert m["error"]["code"] == -32020 and why in m["error"]["message"], m


def test_modern_version_header_must_match_body(server, issuer):
    body = modern_body(8, "tools/list")
    body["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = "2025-11-25"
    r, data = post(server, body, modern_headers(issuer.token(), "tools/list"))
    assert r.status == 400 and json.loads(data)["error"]["code"] == -32020
    # A name header on a method that names nothing is a mismatch too.
    r, data = post(server, modern_body(9, "tools/list"), modern_headers(issuer.token(), "tools/list", "echo"))
    assert r.status == 400 and json.loads(data)["error"]["code"] == -32020
    # An unknown protocol version header is refused before the body is read.
    r, data = post(server, modern_body(10, "tools/list"),
                   modern_headers(issuer.token(), "tools/list", **{"MCP-Protocol-Version": "1999-01-01"}))
    assert r.status == 400


def test_progress_and_logs_on_the_request_stream(server, issuer):
    p = {"name": "probe", "arguments": {"action": "progress", "steps": 2},
         "_meta": {"progressToken": "tok-1", "io.modelcontextprotocol/logLevel": "info"}}
    r, data = post(server, modern_body(11, "tools/call", p), modern_headers(issuer.token(), "tools/call", "probe"))
    assert r.status == 200 and r.getheader("Content-Type").startswith("text/event-stream")
    msgs = sse_messages(data)
    progress = [m for m in msgs if m.get("method") == "notifications/progress"]
    logs = [m for m in msgs if m.get("method") == "notifications/message"]
    assert [m["params"]["progress"] for m in progress] == [1, 2]
    assert all(m["params"]["progressToken"] == "tok-1" for m in progress)
    assert len(logs) == 2
    assert msgs[-1]["id"] == 11 and msgs[-1]["result"]["resultType"] == "complete"


def worker_pids(ppid):
    out = subprocess.run(["ps", "-o", "pid=,ppid=,args=", "-e"], capture_output=True, text=True).stdout
    pids = []
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2 and int(parts[1]) == ppid:
            pids.append(int(parts[0]))
    return pids


def test_closing_the_stream_kills_the_worker(server, issuer):
    before = set(worker_pids(server.proc.pid))
    s = socket.create_connection(("127.0.0.1", server.port))
    body = json.dumps(modern_body(12, "tools/call", {"name": "probe_slow", "arguments": {"action": "sleep", "ms": 20000}}))
    h = modern_headers(issuer.token(), "tools/call", "probe_slow")
    head = "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % server.port
    head += "".join(f"{k}: {v}\r\n" for k, v in h.items())
    head += f"Content-Length: {len(body)}\r\n\r\n"
    s.sendall(head.encode() + body.encode())
    # The stream's head arrives once the call runs.
    s.settimeout(10)
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    new = []
    end = time.time() + 10
    while time.time() < end and not new:
        new = [p for p in worker_pids(server.proc.pid) if p not in before]
        time.sleep(0.05)
    assert new, "no worker started"
    s.close()
    end = time.time() + 5
    while time.time() < end and any(Path(f"/proc/{p}").exists() for p in new):
        time.sleep(0.05)
    assert not any(Path(f"/proc/{p}").exists() for p in new), f"worker {new} still alive after the stream closed"
    # Recorded as cancelled.
    end = time.time() + 5
    while time.time() < end:
        ends = [e for e in server.events() if e.get("type") == "call.end" and e.get("tool") == "probe_slow"]
        if ends:
            break
        time.sleep(0.1)
    assert ends and ends[-1]["outcome"] in ("cancelled", "killed"), ends


# ---------------------------------------------------------------- guard


def test_origin_and_host(server, issuer):
    tok = issuer.token()
    body = modern_body(20, "tools/list")
    r, _ = post(server, body, modern_headers(tok, "tools/list", Origin="http://evil.example"))
    assert r.status == 403
    r, _ = post(server, body, modern_headers(tok, "tools/list", Origin="http://app.example"))
    assert r.status == 200
    c = server.conn()
    c.putrequest("POST", "/mcp", skip_host=True)
    c.putheader("Host", f"rebind.example:{server.port}")
    for k, v in modern_headers(tok, "tools/list").items():
        c.putheader(k, v)
    data = json.dumps(body).encode()
    c.putheader("Content-Length", str(len(data)))
    c.endheaders(data)
    r = c.getresponse()
    r.read()
    assert r.status == 421
    ev = server.wait_event(lambda e: e.get("type") == "http.refused" and e["status"] == 421)
    refused = [e for e in ev if e.get("type") == "http.refused"]
    assert any(e["status"] == 403 and "Origin" in e["reason"] for e in refused)
    assert any(e["status"] == 421 for e in refused)


def test_get_is_405_and_unknown_path_404(server, issuer):
    c = server.conn()
    c.request("GET", "/mcp", headers={"Authorization": f"Bearer {issuer.token()}"})
    r = c.getresponse()
    r.read()
    assert r.status == 405 and "POST" in r.getheader("Allow")
    c.request("POST", "/other", body="{}", headers={"Content-Type": "application/json"})
    r = c.getresponse()
    r.read()
    assert r.status == 404


def test_healthz_needs_no_token_and_says_nothing_else(server):
    """Probes (a balancer's, Kubernetes') ask `/healthz` without a token;
    the answer is "ok" and nothing about the server. The Host rule still
    applies; only GET and HEAD."""
    c = server.conn()
    c.request("GET", "/healthz")
    r = c.getresponse()
    body = r.read()
    assert r.status == 200 and body == b"ok\n", (r.status, body)
    assert {k.lower() for k, _ in r.getheaders()} <= {"content-type", "content-length", "cache-control",
                                                      "connection", "date"}, r.getheaders()
    c.request("HEAD", "/healthz")
    r = c.getresponse()
    assert r.status == 200 and r.read() == b""
    c.request("POST", "/healthz", body="{}", headers={"Content-Type": "application/json"})
    r = c.getresponse()
    r.read()
    assert r.status == 405 and r.getheader("Allow") == "GET"
    c.close()
    c = server.conn()
    c.request("GET", "/healthz", headers={"Host": "evil.example"})
    r = c.getresponse()
    r.read()
    assert r.status == 421


def test_body_limit_413(server, issuer):
    big = modern_body(21, "tools/call", {"name": "echo", "arguments": {"text": "x" * 70000}})
    r, _ = post(server, big, modern_headers(issuer.token(), "tools/call", "echo"))
    assert r.status == 413


def test_slow_client_is_closed_by_the_request_timeout(server):
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    start = time.time()
    s.settimeout(10)
    try:
        while True:
            s.sendall(b"X-Slow: 1\r\n")
            time.sleep(0.2)
            if time.time() - start > 8:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    elapsed = time.time() - start
    # Bounded by the request timeout, with room for a loaded machine (the loop gives up at 8 s).
    assert elapsed < 6, f"a slow client held its connection {elapsed:.1f} s (request timeout 1.5 s)"
    s.close()


def test_idle_connection_is_closed(server):
    s = socket.create_connection(("127.0.0.1", server.port))
    s.settimeout(10)
    start = time.time()
    assert s.recv(1) == b""
    elapsed = time.time() - start
    assert 1.5 < elapsed < 6, f"an idle connection lived {elapsed:.1f} s (idle timeout 2 s)"
    s.close()


def test_concurrent_stream_limit_429(server, issuer):
    tok = issuer.token()
    socks = []
    body = json.dumps(modern_body(30, "tools/call", {"name": "probe_slow", "arguments": {"action": "sleep", "ms": 3000}}))
    h = modern_headers(tok, "tools/call", "probe_slow")
    head = "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % server.port
    head += "".join(f"{k}: {v}\r\n" for k, v in h.items()) + f"Content-Length: {len(body)}\r\n\r\n"
    for _ in range(4):
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(head.encode() + body.encode())
        s.settimeout(10)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        socks.append(s)
    r, data = post(server, modern_body(31, "tools/list"), modern_headers(tok, "tools/list"))
    assert r.status == 429 and r.getheader("Retry-After") == "1", data
    for s in socks:
        s.close()
    time.sleep(0.5)
    r, _ = post(server, modern_body(32, "tools/list"), modern_headers(tok, "tools/list"))
    assert r.status == 200
    assert any(e.get("type") == "http.refused" and e["status"] == 429 and e["principal"] == "oauth:alice"
               for e in server.wait_event(lambda e: e.get("type") == "http.refused" and e["status"] == 429))


# ---------------------------------------------------------------- tokens


def hs256_with_public_key(issuer):
    header = b64url(json.dumps({"alg": "HS256", "kid": "k1", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(issuer.claims()).encode())
    sig = hmac.new(issuer.public_pem(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(sig)}"


def alg_none(issuer):
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(issuer.claims()).encode())
    return f"{header}.{payload}."


@pytest.mark.parametrize("name", ["expired", "not_yet_valid", "wrong_audience", "wrong_issuer", "unknown_kid",
                                  "alg_none", "hs256_public_key", "garbage", "bad_signature"])
def test_bad_tokens_are_401(server, issuer, name):
    now = int(time.time())
    if name == "expired":
        tok = issuer.token(exp=now - 120)
    elif name == "not_yet_valid":
        tok = issuer.token(nbf=now + 600)
    elif name == "wrong_audience":
        tok = issuer.token(aud="https://other.example/mcp")
    elif name == "wrong_issuer":
        tok = issuer.token(iss="https://evil.example")
    elif name == "unknown_kid":
        issuer.keys["rogue"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        tok = issuer.token(kid="rogue")
    elif name == "alg_none":
        tok = alg_none(issuer)
    elif name == "hs256_public_key":
        tok = hs256_with_public_key(issuer)
    elif name == "bad_signature":
        t = issuer.token()
        tok = t[:-4] + ("AAAA" if not t.endswith("AAAA") else "BBBB")
    else:
        tok = "not-a-token"
    r, data = post(server, modern_body(40, "tools/list"), modern_headers(tok, "tools/list"))
    assert r.status == 401, (name, data)
    wa = r.getheader("WWW-Authenticate")
    assert wa.startswith("Bearer ") and 'error="invalid_token"' in wa
    assert 'resource_metadata="http://127.0.0.1/.well-known/oauth-protected-resource/mcp-test-resource"' in wa


def test_missing_token_points_to_metadata(server):
    r, data = post(server, modern_body(41, "tools/list"), {"Content-Type": "application/json",
                   "MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/list"})
    assert r.status == 401
    assert r.getheader("WWW-Authenticate").startswith('Bearer resource_metadata="')
    c = server.conn()
    c.request("GET", "/.well-known/oauth-protected-resource/mcp-test-resource")
    r = c.getresponse()
    meta = json.loads(r.read())
    assert r.status == 200 and meta["resource"] == RESOURCE
    assert meta["authorization_servers"] == [server_issuer(server)]
    assert meta["scopes_supported"] == ["mcp:tools"]


def server_issuer(server):
    return json.loads((server.work / "http.json").read_text())["oauth"]["issuer"]


def test_key_rotation_fetches_the_jwks_again(server, issuer):
    issuer.keys["k2"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    issuer.published = ["k1", "k2"]
    try:
        r, data = post(server, modern_body(42, "tools/list"), modern_headers(issuer.token(kid="k2"), "tools/list"))
        assert r.status == 200, data
    finally:
        issuer.published = ["k1"]


def test_missing_scope_is_403(server, issuer):
    r, data = post(server, modern_body(43, "tools/list"), modern_headers(issuer.token(scope="other"), "tools/list"))
    assert r.status == 403
    wa = r.getheader("WWW-Authenticate")
    assert 'error="insufficient_scope"' in wa and 'scope="mcp:tools"' in wa


def test_static_token(server):
    h = modern_headers(STATIC_TOKEN, "tools/call", "echo")
    r, data = post(server, modern_body(44, "tools/call", {"name": "echo", "arguments": {"text": "op"}}), h)
    assert r.status == 200 and not response_of(r, data)["result"].get("isError")
    r, _ = post(server, modern_body(45, "tools/list"), modern_headers(STATIC_TOKEN + "x", "tools/list"))
    assert r.status == 401
    starts = [e for e in server.wait_event(lambda e: e.get("principal") == "token:operator")
              if e.get("type") == "call.start" and e.get("principal") == "token:operator"]
    assert starts


def test_tokens_are_never_recorded(server, issuer):
    """The token stops at the transport: neither a static token nor a JWT
    (accepted or refused) appears in the security log."""
    jwt_token = issuer.token()
    bad = issuer.token(aud="https://other.example/mcp")
    for tok in (jwt_token, bad, STATIC_TOKEN):
        post(server, modern_body(46, "tools/call", {"name": "echo", "arguments": {"text": "t"}}),
             modern_headers(tok, "tools/call", "echo"))
    server.wait_event(lambda e: e.get("type") == "http.refused" and e.get("reason") == "wrong audience")
    text = "".join(f.read_text() for f in (server.work / "state" / "security").glob("*.jsonl"))
    for tok in (jwt_token, bad, STATIC_TOKEN, jwt_token.split(".")[2]):
        assert tok not in text


# ---------------------------------------------------------------- handshake era


def test_handshake_session_raw(server, issuer):
    tok = issuer.token()
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
         "Authorization": f"Bearer {tok}"}
    r, data = post(server, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}, h)
    assert r.status == 200
    sid = r.getheader("Mcp-Session-Id")
    assert sid and len(sid) >= 32
    assert json.loads(data)["result"]["protocolVersion"] == "2025-06-18"
    h2 = {**h, "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-06-18"}
    r, _ = post(server, {"jsonrpc": "2.0", "method": "notifications/initialized"}, h2)
    assert r.status == 202
    # Another principal cannot use the session.
    r, _ = post(server, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                {**h2, "Authorization": f"Bearer {issuer.token(sub='mallory')}"})
    assert r.status == 404
    # Nor can the same principal with a token of other groups or scopes:
    # the policy decided on the session's, so a narrower token is another session.
    for other in (issuer.token(groups=["ops"]), issuer.token(scope="mcp:tools extra")):
        r, _ = post(server, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                    {**h2, "Authorization": f"Bearer {other}"})
        assert r.status == 404
    r, _ = post(server, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                {**h2, "Authorization": f"Bearer {issuer.token()}"})
    assert r.status == 200
    r, data = post(server, {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, h2)
    assert r.status == 200 and json.loads(data)["result"]["tools"]
    c = server.conn()
    c.request("DELETE", "/mcp", headers={"Mcp-Session-Id": sid, "Authorization": f"Bearer {tok}"})
    r = c.getresponse()
    r.read()
    assert r.status == 204
    r, _ = post(server, {"jsonrpc": "2.0", "id": 4, "method": "tools/list"}, h2)
    assert r.status == 404


def test_handshake_cancelled_call_ends_its_stream(server, issuer):
    tok = issuer.token()
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
         "Authorization": f"Bearer {tok}"}
    r, _ = post(server, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}, h)
    h["Mcp-Session-Id"] = r.getheader("Mcp-Session-Id")
    post(server, {"jsonrpc": "2.0", "method": "notifications/initialized"}, h)
    before = set(worker_pids(server.proc.pid))
    body = json.dumps({"jsonrpc": "2.0", "id": 77, "method": "tools/call",
                       "params": {"name": "probe_slow", "arguments": {"action": "sleep", "ms": 20000}}})
    head = "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % server.port
    head += "".join(f"{k}: {v}\r\n" for k, v in h.items()) + f"Content-Length: {len(body)}\r\n\r\n"
    s = socket.create_connection(("127.0.0.1", server.port))
    s.settimeout(10)
    s.sendall(head.encode() + body.encode())
    got = s.recv(4096)
    assert got.startswith(b"HTTP/1.1 200") and b"text/event-stream" in got
    new = []
    end = time.time() + 10
    while time.time() < end and not new:
        new = [p for p in worker_pids(server.proc.pid) if p not in before]
        time.sleep(0.05)
    assert new
    r, _ = post(server, {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 77}}, h)
    assert r.status == 202
    # The stream ends (the last chunk) without an answer; the worker is gone.
    while b"0\r\n\r\n" not in got:
        chunk = s.recv(4096)
        assert chunk, "connection closed instead of the stream ending"
        got += chunk
    assert b'"result"' not in got and b'"error"' not in got
    s.close()
    end = time.time() + 5
    while time.time() < end and any(Path(f"/proc/{p}").exists() for p in new):
        time.sleep(0.05)
    assert not any(Path(f"/proc/{p}").exists() for p in new)


def test_official_python_sdk_client(server, issuer):
    """The official MCP Python SDK 1.x Streamable HTTP client, with a token."""
    script = r"""
import asyncio, sys
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

async def main(url, token):
    async with streamablehttp_client(url, headers={"Authorization": "Bearer " + token}) as (r, w, _):
        async with ClientSession(r, w) as s:
            await s.initialize()
            tools = await s.list_tools()
            assert any(t.name == "echo" for t in tools.tools)
            res = await s.call_tool("echo", {"text": "from the sdk"})
            assert not res.isError, res
            print("OK", res.content[0].text if res.content else "")

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""
    py = ROOT / ".venv" / "bin" / "python"
    out = subprocess.run([str(py), "-c", script, f"http://127.0.0.1:{server.port}/mcp", issuer.token()],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("OK"), out.stderr[-3000:]
    inits = [e for e in server.wait_event(lambda e: e.get("type") == "client.initialize")
             if e.get("type") == "client.initialize" and e.get("transport") == "http"]
    assert inits and inits[-1]["principal"] == "oauth:alice" and inits[-1]["tenant"] == "acme"


# ---------------------------------------------------------------- policy on the principal


def test_policy_on_the_principal(workspace, issuer):
    policy = {
        "principals": [
            {"name": "alice", "principal": "oauth:alice", "allow": ["*"],
             "rateOverall": {"perSecond": 0.01, "burst": 2}},
            {"name": "carol", "principal": "oauth:carol", "allow": ["*"]},
            {"name": "everyone else", "principal": "*", "allow": []},
        ],
    }
    work = make_work(workspace, "policy")
    srv = HTTPServer(work, base_config(issuer), policy=policy)
    try:
        body = modern_body(50, "tools/call", {"name": "echo", "arguments": {"text": "p"}})
        r, data = post(srv, body, modern_headers(issuer.token(sub="alice"), "tools/call", "echo"))
        assert not response_of(r, data)["result"].get("isError"), data
        r, data = post(srv, body, modern_headers(issuer.token(sub="bob"), "tools/call", "echo"))
        res = response_of(r, data)["result"]
        assert res.get("isError"), data
        ev = srv.wait_event(lambda e: e["type"] == "call.refused")
        assert any(e["type"] == "call.start" and e["principal"] == "oauth:alice" for e in ev)
        refused = [e for e in ev if e["type"] == "call.refused" and e.get("principal") == "oauth:bob"]
        assert refused and refused[-1]["reason"] == "policy", refused
        # The rate bucket is alice's own: her third call is refused, carol's is not.
        r, data = post(srv, body, modern_headers(issuer.token(sub="alice"), "tools/call", "echo"))
        assert not response_of(r, data)["result"].get("isError"), data
        r, data = post(srv, body, modern_headers(issuer.token(sub="alice"), "tools/call", "echo"))
        assert response_of(r, data)["result"].get("isError"), data
        r, data = post(srv, body, modern_headers(issuer.token(sub="carol"), "tools/call", "echo"))
        assert not response_of(r, data)["result"].get("isError"), data
        ev = srv.wait_event(lambda e: e["type"] == "call.refused" and e.get("reason") == "rate_limit")
        limited = [e for e in ev if e["type"] == "call.refused" and e.get("reason") == "rate_limit"]
        assert [e["principal"] for e in limited] == ["oauth:alice"], limited
        # Every call record carries the token's tenant.
        assert all(e.get("tenant") == "acme" for e in ev if e["type"] in ("call.start", "call.end", "call.refused"))
    finally:
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_policy_on_token_groups_and_scopes(workspace, issuer):
    """A rule scoped to a group and a scope: a token with both may call
    echo, one without the group is refused and the refusal names the rule."""
    policy = {
        "principals": [
            {"name": "ops", "principal": "oauth:*", "groups": ["ops", "sre-*"], "scopes": ["mcp:tools"],
             "allow": ["echo"]},
            {"name": "operator", "principal": "token:*", "allow": ["probe*"]},
        ],
    }
    work = make_work(workspace, "groups")
    srv = HTTPServer(work, base_config(issuer), policy=policy)
    try:
        body = modern_body(55, "tools/call", {"name": "echo", "arguments": {"text": "g"}})
        r, data = post(srv, body, modern_headers(
            issuer.token(sub="alice", groups=["dev", "sre-eu"]), "tools/call", "echo"))
        res = response_of(r, data)["result"]
        assert not res.get("isError"), data
        # bob's token has the scope but not the group: no rule covers him.
        r, data = post(srv, body, modern_headers(issuer.token(sub="bob", groups=["dev"]), "tools/call", "echo"))
        res = response_of(r, data)["result"]
        assert res.get("isError"), data
        ev = srv.wait_event(lambda e: e["type"] == "call.refused" and e.get("principal") == "oauth:bob")
        started = [e for e in ev if e["type"] == "call.start" and e["principal"] == "oauth:alice"]
        assert started and "principals[0] (ops)" in started[-1]["decision"], started
        refused = [e for e in ev if e["type"] == "call.refused" and e.get("principal") == "oauth:bob"]
        assert refused and refused[-1]["reason"] == "policy", refused
        assert refused[-1]["rule"] == \
            'principals[0] (ops) groups ["ops", "sre-*"]: the caller has none of them', refused
        assert refused[-1]["groups"] == ["dev"], refused
        # The static token (no groups) is decided by its own rule.
        r, data = post(srv, body, modern_headers(STATIC_TOKEN, "tools/call", "echo"))
        assert response_of(r, data)["result"].get("isError"), data
        ev = srv.wait_event(lambda e: e["type"] == "call.refused" and e.get("principal") == "token:operator")
        refused = [e for e in ev if e["type"] == "call.refused" and e.get("principal") == "token:operator"]
        assert refused[-1]["rule"] == "principals[1] (operator): no allow[] pattern matches", refused
    finally:
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_policy_names_the_rule_a_token_lacks_a_scope_for(workspace, issuer):
    policy = {"principals": [{"name": "writers", "principal": "*", "scopes": ["mcp:tools", "fs:write"],
                              "allow": ["*"]}]}
    work = make_work(workspace, "scopes")
    srv = HTTPServer(work, base_config(issuer), policy=policy)
    try:
        body = modern_body(57, "tools/call", {"name": "echo", "arguments": {"text": "s"}})
        r, data = post(srv, body, modern_headers(issuer.token(sub="carol", scope="mcp:tools fs:write"),
                                                 "tools/call", "echo"))
        assert not response_of(r, data)["result"].get("isError"), data
        r, data = post(srv, body, modern_headers(issuer.token(sub="dave"), "tools/call", "echo"))
        assert response_of(r, data)["result"].get("isError"), data
        ev = srv.wait_event(lambda e: e["type"] == "call.refused" and e.get("principal") == "oauth:dave")
        refused = [e for e in ev if e["type"] == "call.refused" and e.get("principal") == "oauth:dave"]
        assert refused and refused[-1]["rule"] == \
            'principals[0] (writers) scopes ["mcp:tools", "fs:write"]: the caller lacks "fs:write"', refused
    finally:
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_config_errors_refuse_to_start(workspace, tmp_path, issuer):
    bad = base_config(issuer)
    bad["oauth"]["algorithms"] = ["HS256"]
    (tmp_path / "h.json").write_text(json.dumps(bad))
    out = subprocess.run([str(BIN), "serve", "--http", "127.0.0.1:0", "--http-config", str(tmp_path / "h.json"),
                          "--state-dir", str(tmp_path / "state"), "--allow-unsigned",
                          "--manifests", str(workspace / "manifests")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "oauth.algorithms[0]" in out.stderr and "never none or HS" in out.stderr


def test_non_loopback_without_tls_warns(workspace, tmp_path):
    cfg = {"staticTokens": [{"name": "op", "sha256": hashlib.sha256(b"t").hexdigest()}]}
    (tmp_path / "h.json").write_text(json.dumps(cfg))
    os.chmod(tmp_path, 0o755)
    p = subprocess.Popen([str(BIN), "serve", "--http", "0.0.0.0:0", "--http-config", str(tmp_path / "h.json"),
                          "--state-dir", str(tmp_path / "state"), "--scratch-dir", str(tmp_path / "scratch"),
                          "--allow-unsigned", "--manifests", str(workspace / "manifests")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        seen = ""
        end = time.time() + 30
        while time.time() < end and "serving MCP" not in seen:
            seen += p.stderr.readline()
        assert "WARNING" in seen and "without TLS" in seen, seen
    finally:
        p.terminate()
        p.wait(10)


# ---------------------------------------------------------------- TLS and the global limit


@pytest.fixture(scope="module")
def tls_server(workspace, tmp_path_factory):
    import datetime
    import ipaddress
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    work = make_work(workspace, "tls")
    (work / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (work / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                     serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cfg = {"staticTokens": [{"name": "operator", "sha256": hashlib.sha256(STATIC_TOKEN.encode()).hexdigest()}],
           "tls": {"certificate": str(work / "cert.pem"), "privateKey": str(work / "key.pem")},
           "limits": {"maxStreams": 2, "maxStreamsPerClient": 8}}
    s = HTTPServer(work, cfg)
    assert any("serving MCP on https://" in line for line in s.stderr)
    yield s
    s.stop()
    shutil.rmtree(work, ignore_errors=True)


def tls_context(srv):
    import ssl
    ctx = ssl.create_default_context(cafile=str(srv.work / "cert.pem"))
    return ctx


def test_tls_call(tls_server):
    c = http.client.HTTPSConnection("127.0.0.1", tls_server.port, context=tls_context(tls_server), timeout=30)
    body = modern_body(60, "tools/call", {"name": "echo", "arguments": {"text": "tls"}})
    r, data = post(tls_server, body, modern_headers(STATIC_TOKEN, "tools/call", "echo"), conn=c)
    assert r.status == 200 and not response_of(r, data)["result"].get("isError"), data
    # Plain HTTP to the TLS port gets no HTTP answer.
    p = http.client.HTTPConnection("127.0.0.1", tls_server.port, timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
        p.request("POST", "/mcp", body="{}", headers={"Content-Type": "application/json"})
        p.getresponse().read()


def test_global_stream_limit_503(tls_server):
    import ssl
    ctx = tls_context(tls_server)
    body = json.dumps(modern_body(61, "tools/call", {"name": "probe_slow", "arguments": {"action": "sleep", "ms": 3000}}))
    h = modern_headers(STATIC_TOKEN, "tools/call", "probe_slow")
    head = "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % tls_server.port
    head += "".join(f"{k}: {v}\r\n" for k, v in h.items()) + f"Content-Length: {len(body)}\r\n\r\n"
    socks = []
    for _ in range(2):
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", tls_server.port)), server_hostname="127.0.0.1")
        s.sendall(head.encode() + body.encode())
        s.settimeout(10)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        socks.append(s)
    c = http.client.HTTPSConnection("127.0.0.1", tls_server.port, context=ctx, timeout=30)
    r, data = post(tls_server, modern_body(62, "tools/list"), modern_headers(STATIC_TOKEN, "tools/list"), conn=c)
    assert r.status == 503 and r.getheader("Retry-After") == "1", data
    for s in socks:
        s.close()


# ---------------------------------------------------------------- tenants


def test_tenants_see_and_call_only_their_cells(workspace):
    tokens = {"acme": "acme-token-" + "1" * 32, "globex": "globex-token-" + "2" * 32, None: "no-tenant-" + "3" * 32}
    static = []
    for tenant, tok in tokens.items():
        t = {"name": tenant or "none", "sha256": hashlib.sha256(tok.encode()).hexdigest()}
        if tenant:
            t["tenant"] = tenant
        static.append(t)
    cfg = {"staticTokens": static, "tenants": {"acme": {"cells": ["echo"]}, "globex": {"cells": ["probe"]}}}
    work = make_work(workspace, "tenants")
    srv = HTTPServer(work, cfg)
    try:
        def listed(tok):
            r, data = post(srv, modern_body(70, "tools/list"), modern_headers(tok, "tools/list"))
            assert r.status == 200, data
            return sorted(t["name"] for t in json.loads(data)["result"]["tools"] if t["name"] != "set_phase")

        assert listed(tokens["acme"]) == ["echo"]
        assert listed(tokens["globex"]) == ["probe"]
        # A tool of another tenant does not exist for this one.
        r, data = post(srv, modern_body(71, "tools/call", {"name": "probe", "arguments": {"action": "echo"}}),
                       modern_headers(tokens["acme"], "tools/call", "probe"))
        m = response_of(r, data)
        assert "error" in m or m["result"].get("isError"), m
        r, data = post(srv, modern_body(72, "tools/call", {"name": "echo", "arguments": {"text": "a"}}),
                       modern_headers(tokens["acme"], "tools/call", "echo"))
        assert not response_of(r, data)["result"].get("isError"), data
        r, data = post(srv, modern_body(73, "tools/call", {"name": "probe", "arguments": {"action": "echo"}}),
                       modern_headers(tokens["globex"], "tools/call", "probe"))
        assert not response_of(r, data)["result"].get("isError"), data
        # A caller without a tenant is not served when tenants are configured.
        r, data = post(srv, modern_body(74, "tools/list"), modern_headers(tokens[None], "tools/list"))
        assert r.status == 403, data
        srv.wait_event(lambda e: e.get("type") == "http.refused" and e.get("principal") == "token:none")
        ev = srv.wait_event(lambda e: e.get("type") == "call.end" and e.get("tenant") == "globex")
        starts = [(e["tenant"], e["tool"]) for e in ev if e["type"] == "call.start"]
        assert ("acme", "echo") in starts and ("globex", "probe") in starts and ("acme", "probe") not in starts
        # The audit view of one tenant holds only its records.
        out = subprocess.run([str(BIN), "audit", "query", "--tenant", "acme", "--json",
                              "--state-dir", str(work / "state")], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        recs = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        assert recs and all(r["tenant"] == "acme" for r in recs)
        assert any(r["type"] == "call.start" and r["tool"] == "echo" for r in recs)
        assert not any(r.get("tool") == "probe" for r in recs if r["type"] == "call.start")
    finally:
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_modern_approval_over_http_is_bound_to_the_principal(workspace, issuer):
    policy = {"principals": [{"name": "all", "principal": "*", "allow": ["*"]}], "approval": [{"tool": "echo"}]}
    work = make_work(workspace, "approval")
    srv = HTTPServer(work, base_config(issuer), policy=policy)
    try:
        def call(id, tok, **extra):
            p = {"name": "echo", "arguments": {"text": "approve me"}, **extra}
            body = modern_body(id, "tools/call", p)
            body["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"] = {"elicitation": {}}
            r, data = post(srv, body, modern_headers(tok, "tools/call", "echo"))
            assert r.status == 200, data
            return response_of(r, data)["result"]

        alice, bob = issuer.token(sub="alice"), issuer.token(sub="bob")
        r = call(80, alice)
        assert r["resultType"] == "input_required" and isinstance(r["requestState"], str), r
        state = r["requestState"]
        answer = {"approval": {"action": "accept"}}
        # Another principal cannot use alice's approval.
        r = call(81, bob, inputResponses=answer, requestState=state)
        assert r.get("isError"), r
        r = call(82, alice, inputResponses=answer, requestState=state)
        assert r["resultType"] == "complete" and not r.get("isError"), r
        ev = srv.wait_event(lambda e: e["type"] == "call.approved")
        assert [e["principal"] for e in ev if e["type"] == "call.approved"] == ["oauth:alice"]
        assert [e["reason"] for e in ev if e["type"] == "call.refused" and e["principal"] == "oauth:bob"] == \
            ["approval_invalid"]
    finally:
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_modern_approval_granted_on_one_instance_completes_on_another(workspace, issuer, tmp_path):
    """Two instances sharing the approval key and used-state directory: a
    request state issued by A is completed on B, and replaying it on either
    is refused."""
    shared = tmp_path / "approvals"
    shared.mkdir(mode=0o700)
    config = base_config(issuer, approvalState={"keyFile": str(shared / "approval.key"),
                                                "usedDirectory": str(shared / "used")})
    policy = {"principals": [{"name": "all", "principal": "*", "allow": ["*"]}], "approval": [{"tool": "echo"}]}
    works = [make_work(workspace, "approval-a"), make_work(workspace, "approval-b")]
    servers = []
    try:
        servers = [HTTPServer(w, config, policy=policy) for w in works]
        a, b = servers
        assert oct(os.stat(shared / "approval.key").st_mode & 0o777) == "0o600"

        def call(srv, id, **extra):
            p = {"name": "echo", "arguments": {"text": "approve me"}, **extra}
            body = modern_body(id, "tools/call", p)
            body["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"] = {"elicitation": {}}
            r, data = post(srv, body, modern_headers(issuer.token(sub="alice"), "tools/call", "echo"))
            assert r.status == 200, data
            return response_of(r, data)["result"]

        r = call(a, 90)
        assert r["resultType"] == "input_required", r
        state = r["requestState"]
        answer = {"approval": {"action": "accept"}}
        r = call(b, 91, inputResponses=answer, requestState=state)
        assert r["resultType"] == "complete" and not r.get("isError"), r
        assert "approve me" in json.dumps(r["content"]), r
        for srv, id in ((a, 92), (b, 93)):
            r = call(srv, id, inputResponses=answer, requestState=state)
            assert r.get("isError"), r
            assert "already used" in json.dumps(r["content"]), r
        evb = b.wait_event(lambda e: e["type"] == "call.approved")
        assert [e["principal"] for e in evb if e["type"] == "call.approved"] == ["oauth:alice"]
        assert [e["reason"] for e in evb if e["type"] == "call.refused"] == ["approval_invalid"]
        eva = a.wait_event(lambda e: e["type"] == "call.refused" and e.get("reason") == "approval_invalid")
        assert not [e for e in eva if e["type"] == "call.approved"]
        assert [e["reason"] for e in eva if e["type"] == "call.refused"] == ["approval_invalid"]
        # One use, one record in the shared directory.
        assert len(os.listdir(shared / "used")) == 1
    finally:
        for srv in servers:
            srv.stop()
        for w in works:
            shutil.rmtree(w, ignore_errors=True)


def test_shared_approval_key_others_can_read_is_refused_at_start(workspace, issuer, tmp_path):
    key = tmp_path / "approval.key"
    key.write_text("approval-hmac-sha256:" + base64.b64encode(os.urandom(32)).decode() + "\n")
    os.chmod(key, 0o644)
    config = base_config(issuer, approvalState={"keyFile": str(key), "usedDirectory": str(tmp_path / "used")})
    work = make_work(workspace, "approval-key")
    try:
        (work / "http.json").write_text(json.dumps(config))
        p = subprocess.run(
            [str(BIN), "serve", "--http", "127.0.0.1:0", "--http-config", str(work / "http.json"),
             "--manifests", str(work / "manifests"), "--state-dir", str(work / "state"),
             "--scratch-dir", str(work / "scratch"), "--allow-unsigned"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        assert p.returncode == 2, p
        err = p.stderr.decode()
        assert f"approvalState: approval key file {key} has mode 644: it must be 0600" in err, err
        assert not (tmp_path / "used").exists()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_one_principal_cannot_hold_every_session(server, issuer):
    def initialize(tok):
        h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
             "Authorization": f"Bearer {tok}"}
        r, _ = post(server, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "s", "version": "1"}}}, h)
        assert r.status == 200
        return {**h, "Mcp-Session-Id": r.getheader("Mcp-Session-Id")}

    other = initialize(issuer.token(sub="carol"))
    mallory = issuer.token(sub="mallory")
    first = initialize(mallory)
    for _ in range(32):
        initialize(mallory)
    # The principal's least recently used session ended; others' stay.
    r, _ = post(server, {"jsonrpc": "2.0", "id": 2, "method": "ping"}, first)
    assert r.status == 404
    r, _ = post(server, {"jsonrpc": "2.0", "id": 3, "method": "ping"}, other)
    assert r.status == 200


def test_subscriptions_listen_hears_tool_list_changes(workspace, issuer):
    import signal
    work = make_work(workspace, "listen")
    srv = HTTPServer(work, base_config(issuer))
    try:
        body = json.dumps(modern_body(90, "subscriptions/listen", {"notifications": {"toolsListChanged": True}}))
        h = modern_headers(issuer.token(), "subscriptions/listen")
        head = "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % srv.port
        head += "".join(f"{k}: {v}\r\n" for k, v in h.items()) + f"Content-Length: {len(body)}\r\n\r\n"
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.settimeout(10)
        s.sendall(head.encode() + body.encode())
        got = b""
        while b"subscriptions/acknowledged" not in got:
            chunk = s.recv(4096)
            assert chunk, got
            got += chunk
        assert got.startswith(b"HTTP/1.1 200") and b"text/event-stream" in got
        (work / "manifests" / "probe-new.json").write_text(json.dumps(probe_manifest("probe_new")))
        srv.proc.send_signal(signal.SIGHUP)
        while b"notifications/tools/list_changed" not in got:
            chunk = s.recv(4096)
            assert chunk, got
            got += chunk
        assert b'"io.modelcontextprotocol/subscriptionId":90' in got
        s.close()
        # The stream's slot is given back once the client closed it.
        time.sleep(0.3)
        r, data = post(srv, modern_body(91, "tools/list"), modern_headers(issuer.token(), "tools/list"))
        assert r.status == 200 and "probe_new" in [t["name"] for t in json.loads(data)["result"]["tools"]]
    finally:
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)
