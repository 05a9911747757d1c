import Foundation
import Logging
import StrictJSON
import SupervisorCore
import SupervisorEgress
import SupervisorPlatform
import XCTest

/// A test `InterceptionAuthority`: a CA made with openssl, leaves signed by
/// it on demand (the real one is the supervisor's per-install CA).
final class TestAuthority: InterceptionAuthority {
    let directory: String
    var caCertificatePath: String { directory + "/ca.pem" }

    init(directory: String) throws {
        self.directory = directory
        try Shell.run(
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem "
                + "-days 2 -subj /CN=mcps-test-interception-ca", in: directory)
    }

    func leafCertificate(forHost host: String) throws -> (certificateChainPEM: String, privateKeyPEM: String) {
        let san = IPAddress(literal: host) != nil ? "IP:\(host)" : "DNS:\(host)"
        let name = "leaf-\(host.replacingOccurrences(of: ":", with: "_"))"
        try Shell.run(
            "printf 'subjectAltName=\(san)\\n' > \(name).ext && "
                + "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout \(name).key "
                + "-out \(name).csr -subj /CN=\(host) && "
                + "openssl x509 -req -in \(name).csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
                + "-extfile \(name).ext -out \(name).pem", in: directory)
        return (
            try String(contentsOfFile: directory + "/\(name).pem", encoding: .utf8),
            try String(contentsOfFile: directory + "/\(name).key", encoding: .utf8)
        )
    }
}

enum Shell {
    @discardableResult
    static func run(_ command: String, in directory: String) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", command]
        p.currentDirectoryURL = URL(fileURLWithPath: directory)
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        guard p.terminationStatus == 0 else { throw SystemError("\(command): \(text)", errno: 0) }
        return text
    }
}

/// Credential injection by the egress proxy (docs/egress.md): for plain
/// HTTP and for a CONNECT it terminates with the authority's leaf, the
/// upstream server sees the header the manifest binds, and the worker's
/// process never holds the value (not in its environment, not in what it
/// can read of itself).
final class EgressInterceptionTests: XCTestCase {
    static let secret = "Bearer planted-\(UInt32.random(in: 1...UInt32.max))-secret"

    static let fetchScript = """
        import os, urllib.request, mcpcell

        @mcpcell.tool("probe")
        def probe(args, ctx):
            req = urllib.request.Request(args["url"], headers={"Authorization": "Bearer from-the-worker"})
            with urllib.request.urlopen(req, timeout=10) as r:
                body = r.read().decode()
            try:
                with open("/proc/self/environ", "rb") as f:
                    environ = f.read().decode(errors="replace")
            except OSError as e:
                environ = "unreadable: %s" % e
            seen = " ".join(sorted(k for k in os.environ if "PROXY" in k.upper() or k.endswith("_FILE") or k.endswith("BUNDLE")))
            return "%s|%s|%s|%s" % (body, environ.replace("\\0", " "), repr(dict(os.environ)), seen)

        mcpcell.serve()
        """

    func cell(dir: String, connect: [String]) throws -> PreparedCell {
        let scriptPath = dir + "/fetch.py"
        try Self.fetchScript.write(toFile: scriptPath, atomically: true, encoding: .utf8)
        let library = Harness.root + "/cells/python/mcpcell.py"
        func digest(_ p: String) throws -> String { sha256Hex(try readFile(p, limit: 1 << 30)) }
        let py = NetworkTests.python
        let hosts = JSONValue.array(connect.map { .string($0) }).serialized()
        let text = """
            {
              "name": "inject", "version": "1", "description": "Fetch with an injected credential.",
              "executable": {"path": "\(py)", "sha256": "\(try digest(py))"},
              "libraries": [{"path": "\(library)", "sha256": "\(try digest(library))"}],
              "script": {"path": "\(scriptPath)", "sha256": "\(try digest(scriptPath))"},
              "argv": ["python3", "-I", "-S", "-"],
              "tools": [{"name": "probe", "description": "Probe.", "inputSchema": {"type": "object"}}],
              "limits": {"timeoutMilliseconds": 15000, "fileSizeMiB": 0},
              "filesystem": {"read": ["/usr/lib/python3.11", "/lib/x86_64-linux-gnu", "/etc/ld.so.cache",
                                      "/usr/lib/ssl/openssl.cnf"],
                             "execute": ["/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"]},
              "network": {"connect": \(hosts), "egress": "proxy"},
              "syscalls": {"groups": ["base", "python", "files-read", "network-client", "python-mcp-server"]},
              "sideEffects": "reads"
            }
            """
        return try Harness.prepare(
            try CellManifest.parse(bytes: Array(text.utf8), path: dir + "/inject.json", manifestSHA256: "x"))
    }

    /// A loopback HTTPS server (Python) answering each request with its
    /// Authorization header; its certificate is signed by a CA only the
    /// proxy trusts (egressCaBundle).
    final class TLSServer {
        let process = Process()
        let port: Int
        init(dir: String) throws {
            try Shell.run(
                "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout up-ca.key "
                    + "-out up-ca.pem -days 2 -subj /CN=mcps-test-upstream-ca && "
                    + "printf 'subjectAltName=IP:127.0.0.1\\n' > up.ext && "
                    + "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout up.key -out up.csr "
                    + "-subj /CN=127.0.0.1 && openssl x509 -req -in up.csr -CA up-ca.pem -CAkey up-ca.key "
                    + "-CAcreateserial -days 2 -extfile up.ext -out up.pem", in: dir)
            let script = """
                import http.server, ssl, sys
                class H(http.server.BaseHTTPRequestHandler):
                    def do_GET(self):
                        body = ("auth=" + str(self.headers.get_all("Authorization"))).encode()
                        self.send_response(200)
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                    def log_message(self, *a): pass
                s = http.server.HTTPServer(("127.0.0.1", 0), H)
                c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                c.load_cert_chain("\(dir)/up.pem", "\(dir)/up.key")
                s.socket = c.wrap_socket(s.socket, server_side=True)
                print(s.server_address[1], flush=True)
                s.serve_forever()
                """
            process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
            process.arguments = ["-c", script]
            // Its own directory: the inherited one may be closed to the
            // unprivileged test user (a private checkout).
            process.currentDirectoryURL = URL(fileURLWithPath: dir)
            let out = Pipe()
            process.standardOutput = out
            try process.run()
            var line = Data()
            while !line.contains(0x0A) {
                let d = out.fileHandleForReading.availableData
                if d.isEmpty { break }
                line += d
            }
            guard let p = Int(String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
            else { throw SystemError("the TLS test server did not start", errno: 0) }
            port = p
        }
        deinit { process.terminate() }
    }

    func testHeadersAreInjectedForPlainHTTPAndTerminatedTLS() throws {
        let dir = Harness.tempDir("intercept")
        chmod(dir, 0o755)
        let authority = try TestAuthority(directory: dir)
        chmod(authority.caCertificatePath, 0o644)
        let tls = try TLSServer(dir: dir)
        let http = try HTTPTestServer()
        var l = Logger(label: "egress-test")
        l.logLevel = .critical
        let proxy = try EgressProxyServer(upstreamCABundle: dir + "/up-ca.pem", logger: l)
        defer { proxy.shutdown() }
        let injections = [
            CredentialInjection(
                host: "127.0.0.1", port: tls.port, headerName: "Authorization", headerValue: Self.secret,
                secretName: "UPSTREAM_TOKEN"),
            CredentialInjection(
                host: "127.0.0.1", port: http.port, headerName: "Authorization", headerValue: Self.secret,
                secretName: "UPSTREAM_TOKEN", scheme: .http),
        ]
        let runner = try Harness.runner()
        runner.enableEgress(proxy) { _ in EgressCredentialSet(injections: injections, authority: authority) }
        let c = try cell(dir: dir, connect: ["127.0.0.1:\(tls.port)", "127.0.0.1:\(http.port)"])

        var decisions: [NetworkDecision] = []
        let r = runner.run(
            cell: c, tool: "probe", arguments: ["url": .string("https://127.0.0.1:\(tls.port)/")], callID: "i1",
            onNetwork: { decisions.append($0) })
        let text = try XCTUnwrap(Harness.text(r), "\(r.outcome) \(r.diagnostics)")
        let parts = text.split(separator: "|", omittingEmptySubsequences: false).map(String.init)
        XCTAssertEqual(parts.first, "auth=['\(Self.secret)']", "the upstream sees the injected header, only it")
        XCTAssertFalse(parts.dropFirst().joined().contains("planted"), "the worker's environment holds the secret")
        XCTAssertTrue(parts.last?.contains("SSL_CERT_FILE") == true, parts.last ?? "")
        XCTAssertEqual(decisions.map(\.refusal), [nil])

        // Plain HTTP: the same header, set by the proxy.
        let plain = runner.run(
            cell: c, tool: "probe", arguments: ["url": .string("http://127.0.0.1:\(http.port)/p")], callID: "i2")
        XCTAssertTrue(Harness.text(plain)?.hasPrefix("hello /p|") == true, "\(plain.outcome) \(plain.diagnostics)")
        XCTAssertEqual(http.authorizations, [Self.secret])
        XCTAssertFalse(Harness.text(plain)?.contains("planted") ?? true)
    }

    /// Without injections a CONNECT stays an opaque tunnel: the worker sees
    /// the upstream's own certificate, which it does not trust.
    func testConnectWithoutInjectionsIsNotTerminated() throws {
        let dir = Harness.tempDir("opaque")
        chmod(dir, 0o755)
        let authority = try TestAuthority(directory: dir)
        chmod(authority.caCertificatePath, 0o644)
        let tls = try TLSServer(dir: dir)
        var l = Logger(label: "egress-test")
        l.logLevel = .critical
        let proxy = try EgressProxyServer(upstreamCABundle: dir + "/up-ca.pem", logger: l)
        defer { proxy.shutdown() }
        let runner = try Harness.runner()
        runner.enableEgress(proxy) { _ in EgressCredentialSet(injections: [], authority: authority) }
        let c = try cell(dir: dir, connect: ["127.0.0.1:\(tls.port)"])
        let r = runner.run(
            cell: c, tool: "probe", arguments: ["url": .string("https://127.0.0.1:\(tls.port)/")], callID: "o1")
        guard case .toolError(let m) = r.outcome else { return XCTFail("\(r.outcome)") }
        XCTAssertTrue(m.contains("CERTIFICATE_VERIFY_FAILED"), m)
    }
}
