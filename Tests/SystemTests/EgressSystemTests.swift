import Logging
import StrictJSON
import SupervisorCore
import SupervisorEgress
import SupervisorPlatform
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Workers behind the egress proxy (docs/egress.md), with real processes:
/// the probe cell and a Python cell using urllib, in network namespaces of
/// their own; run as root and as an unprivileged user.
final class EgressNamespaceTests: XCTestCase {
    static let proxy: EgressProxyServer = {
        var l = Logger(label: "egress-test")
        l.logLevel = .critical
        return try! EgressProxyServer(logger: l)
    }()

    override func setUp() {
        XCTAssertTrue(
            Harness.features.netNamespaces,
            "a network namespace per worker is required: \(Harness.features.netNamespaceError ?? "")")
    }

    func runner() throws -> CallRunner {
        let r = try Harness.runner()
        r.enableEgress(Self.proxy)
        return r
    }

    func probeCell(network: String) throws -> PreparedCell {
        let bytes = try readFile(Harness.probe, limit: 1 << 30)
        let text = """
            {
              "name": "probe", "version": "1", "description": "Tries forbidden things.",
              "executable": {"path": "\(Harness.probe)", "sha256": "\(sha256Hex(bytes))"},
              "tools": [{"name": "probe", "description": "Probe.", "inputSchema": {"type": "object"}}],
              "network": \(network),
              "syscalls": {"groups": ["base"]},
              "sideEffects": "none"
            }
            """
        return try Harness.prepare(try CellManifest.parse(bytes: Array(text.utf8), path: "p.json", manifestSHA256: "x"))
    }

    func call(_ c: PreparedCell, _ args: JSONObject, runner: CallRunner? = nil) throws -> (
        CallReport, [NetworkDecision]
    ) {
        var decisions: [NetworkDecision] = []
        let r = try (runner ?? self.runner()).run(
            cell: c, tool: "probe", arguments: args, callID: "e1", onNetwork: { decisions.append($0) })
        return (r, decisions)
    }

    /// A listener outside on 127.0.0.1 is not reachable from the worker's
    /// namespace (no route: the kernel, not the program), and sees nobody;
    /// the proxy's port inside is the one endpoint.
    func testOnlyTheProxyIsReachableInsideTheNamespace() throws {
        let outside = try NetworkTests.Listener()
        let c = try probeCell(network: #"{"connect": ["127.0.0.1:\#(outside.port)"], "egress": "proxy"}"#)
        let (direct, d1) = try call(c, ["action": "tcp-connect", "port": .int(Int64(outside.port))])
        let text = Harness.text(direct) ?? "\(direct.outcome)"
        XCTAssertTrue(
            ["errno \(ECONNREFUSED)", "errno \(ENETUNREACH)", "errno \(EACCES)"].contains(text),
            "a direct connection must find no route: \(text)")
        XCTAssertTrue(d1.isEmpty, "nothing was asked of the proxy")
        XCTAssertEqual(outside.accepted, 0, "the listener outside saw a connection")
        let (viaProxy, _) = try call(c, ["action": "tcp-connect", "port": .int(Int64(Self.proxy.listenerPort))])
        XCTAssertEqual(Harness.text(viaProxy), "ok 0", "\(viaProxy.outcome) \(viaProxy.diagnostics)")
    }

    /// The kernel's routing, not only Landlock: with a proxy whose port is
    /// the one Landlock lets the worker connect to, a listener of the test
    /// on 127.0.0.2 at that same port is out of reach from the namespace
    /// (ECONNREFUSED there: its loopback is its own) and sees nobody.
    func testTheHostsLoopbackIsNotTheNamespaces() throws {
        let outside = try NetworkTests.Listener(address: "127.0.0.2")
        var l = Logger(label: "egress-test")
        l.logLevel = .critical
        let proxy = try EgressProxyServer(listenerPort: UInt16(outside.port), logger: l)
        defer { proxy.shutdown() }
        let r = try Harness.runner()
        r.enableEgress(proxy)
        let c = try probeCell(network: #"{"connect": ["127.0.0.2:\#(outside.port)"], "egress": "proxy"}"#)
        let (direct, _) = try call(
            c, ["action": "tcp-connect", "host": "127.0.0.2", "port": .int(Int64(outside.port))], runner: r)
        XCTAssertEqual(Harness.text(direct), "errno \(ECONNREFUSED)", "\(direct.outcome) \(direct.diagnostics)")
        XCTAssertEqual(outside.accepted, 0, "the listener outside saw a connection")
        // The same port on 127.0.0.1 inside is the proxy.
        let (inside, _) = try call(c, ["action": "tcp-connect", "port": .int(Int64(outside.port))], runner: r)
        XCTAssertEqual(Harness.text(inside), "ok 0", "\(inside.outcome)")
    }

    /// No UDP: a datagram socket fails with EACCES (a resolver goes on;
    /// the namespace would have nowhere to send it anyway). A raw socket is
    /// a violation: the worker is killed and the call names it.
    func testDatagramSocketsFailAndRawSocketsAreViolations() throws {
        let c = try probeCell(network: #"{"connect": ["127.0.0.1:9"], "egress": "proxy"}"#)
        let (udp, _) = try call(c, ["action": "udp", "port": 53])
        XCTAssertEqual(Harness.text(udp), "errno \(EACCES)", "\(udp.outcome)")
        let (raw, _) = try call(c, ["action": "raw-socket"])
        guard case .sandboxViolation(let syscall, _) = raw.outcome else {
            return XCTFail("raw socket: \(raw.outcome) \(Harness.text(raw) ?? "")")
        }
        XCTAssertEqual(syscall, "socket")
    }

    /// Without the proxy the cell cannot run: never a worker with a network
    /// route it should not have, never one silently without its namespace.
    func testACellBehindTheProxyCannotRunWithoutIt() throws {
        let c = try probeCell(network: #"{"connect": ["127.0.0.1:9"], "egress": "proxy"}"#)
        let (r, _) = try call(c, ["action": "echo", "text": "x"], runner: try Harness.runner())
        guard case .cannotRun(.unsupported(let why)) = r.outcome else { return XCTFail("\(r.outcome)") }
        XCTAssertTrue(why.contains("no egress proxy"), why)
    }

    /// The egress stage needs the namespace: asked for without CLONE_NEWNET
    /// the spawn fails at its named stage.
    func testTheEgressStageFailsClosedWithoutANetworkNamespace() throws {
        let exe = try Sys.open("/bin/true", O_RDONLY)
        let null = try Sys.open("/dev/null", O_RDWR)
        let (a, b) = try Sys.socketPair(type: SocketType.seqPacket)
        defer {
            for fd in [exe, null, a, b] { fd.close() }
        }
        var r = SpawnRequest(
            executable: exe, argv: ["true"], environment: [], stdin: null, stdout: null, stderr: null,
            request: null, response: null, workingDirectory: "/")
        r.egressListener = (b, 3128)
        if !Harness.features.isRoot {
            r.namespaceFlags = Namespaces.user
            r.uidMap = "\(geteuid()) \(geteuid()) 1\n"
            r.gidMap = "\(getegid()) \(getegid()) 1\n"
        }
        XCTAssertThrowsError(try WorkerProcess.spawn(r)) { e in
            XCTAssertEqual(e as? SpawnError, SpawnError(stage: .egressListener, errno: EINVAL))
        }
    }

    static let fetchScript = """
        import os, urllib.request, mcpcell

        @mcpcell.tool("probe")
        def probe(args, ctx):
            if args.get("sequential"):
                # Keep-alive connections the client closes itself (as an
                # HTTP client pool does), without Connection: close.
                import http.client
                out = []
                for _ in range(args["sequential"]):
                    c = http.client.HTTPConnection("127.0.0.1", 3128, timeout=5)
                    c.request("GET", args["url"])
                    r = c.getresponse()
                    r.read()
                    out.append(str(r.status))
                    c.close()
                return " ".join(out)
            if args.get("concurrent"):
                import http.client
                held, out = [], []
                for _ in range(args["concurrent"]):
                    c = http.client.HTTPConnection("127.0.0.1", 3128, timeout=5)
                    c.request("GET", args["url"])
                    r = c.getresponse()
                    r.read()
                    out.append(str(r.status))
                    held.append(c)
                return " ".join(out)
            try:
                with urllib.request.urlopen(args["url"], timeout=5) as r:
                    return "%d %s" % (r.status, r.read().decode())
            except urllib.error.HTTPError as e:
                return "HTTP %d %s" % (e.code, e.read().decode().strip())

        mcpcell.serve()
        """

    /// A Python worker fetches through the proxy named in HTTP_PROXY: an
    /// allowed address works, an unlisted one and a name leading to
    /// loopback are refused, one decision each.
    func testHTTPThroughTheProxyFollowsTheAllowlist() throws {
        let server = try HTTPTestServer()
        let dir = Harness.tempDir("egress")
        let scriptPath = dir + "/fetch.py"
        let fd = try Sys.open(scriptPath, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o644)
        try fd.writeAll(Array(Self.fetchScript.utf8))
        fd.close()
        let library = Harness.root + "/cells/python/mcpcell.py"
        func digest(_ p: String) throws -> String { sha256Hex(try readFile(p, limit: 1 << 30)) }
        let py = NetworkTests.python
        let text = """
            {
              "name": "fetch", "version": "1", "description": "Fetch through the proxy.",
              "executable": {"path": "\(py)", "sha256": "\(try digest(py))"},
              "libraries": [{"path": "\(library)", "sha256": "\(try digest(library))"}],
              "script": {"path": "\(scriptPath)", "sha256": "\(try digest(scriptPath))"},
              "argv": ["python3", "-I", "-S", "-"],
              "tools": [{"name": "probe", "description": "Probe.", "inputSchema": {"type": "object"}}],
              "limits": {"timeoutMilliseconds": 10000, "fileSizeMiB": 0},
              "filesystem": {"read": ["/usr/lib/python3.11", "/lib/x86_64-linux-gnu", "/etc/ld.so.cache"],
                             "execute": ["/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"]},
              "network": {"connect": ["127.0.0.1:\(server.port)", "localhost:\(server.port)"], "egress": "proxy",
                          "maxConnections": 2},
              "syscalls": {"groups": ["base", "python", "files-read", "network-client", "python-mcp-server"]},
              "sideEffects": "reads"
            }
            """
        let c = try Harness.prepare(
            try CellManifest.parse(bytes: Array(text.utf8), path: dir + "/fetch.json", manifestSHA256: "x"))
        let (ok, d1) = try call(c, ["url": .string("http://127.0.0.1:\(server.port)/hello")])
        XCTAssertEqual(Harness.text(ok), "200 hello /hello", "\(ok.outcome) \(ok.diagnostics)")
        XCTAssertEqual(d1, [NetworkDecision(host: "127.0.0.1", port: server.port, address: "127.0.0.1:\(server.port)")])

        let (name, d2) = try call(c, ["url": .string("http://localhost:\(server.port)/x")])
        XCTAssertTrue(Harness.text(name)?.hasPrefix("HTTP 403") == true, "\(name.outcome)")
        XCTAssertEqual(d2.count, 1)
        XCTAssertTrue(d2.first?.refusal?.contains("resolves only to internal addresses") == true, "\(d2)")

        let (unlisted, d3) = try call(c, ["url": .string("http://127.0.0.2:\(server.port)/x")])
        XCTAssertTrue(
            Harness.text(unlisted)?.contains("not on the cell's network allowlist") == true, "\(unlisted.outcome)")
        XCTAssertEqual(d3.map(\.host), ["127.0.0.2"])
        XCTAssertEqual(server.requests, ["/hello"], "only the allowed request reached the server")

        // maxConnections (2) bounds connections open at once, not in all:
        // closed ones free their place; a third held open is refused.
        let url = JSONValue.string("http://127.0.0.1:\(server.port)/n")
        let (seq, d4) = try call(c, ["url": url, "sequential": 5])
        XCTAssertEqual(Harness.text(seq), "200 200 200 200 200", "\(seq.outcome) \(seq.diagnostics)")
        XCTAssertEqual(d4.count, 5)
        let (held, d5) = try call(c, ["url": url, "concurrent": 3])
        XCTAssertEqual(Harness.text(held), "200 200 503", "\(held.outcome) \(held.diagnostics)")
        XCTAssertEqual(d5.map { $0.refusal != nil }, [false, false, true])
        XCTAssertTrue(d5.last?.refusal?.contains("limit of 2 connections open at once") == true, "\(d5)")
    }
}

/// A loopback HTTP server answering `hello <path>` to each request.
final class HTTPTestServer: @unchecked Sendable {
    // @unchecked: `seen` is guarded by `lock`; the rest is immutable.
    let fd: Int32
    let port: Int
    private let lock = NSLock()
    private var seen: [String] = []
    private var auth: [String] = []
    var requests: [String] { lock.withLock { seen } }
    /// The Authorization header of each request (absent ones not listed).
    var authorizations: [String] { lock.withLock { auth } }

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafePointer(to: &a) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && listen(fd, 16) == 0 }
        }
        guard ok else { throw SystemError("listen", errno: errno) }
        _ = withUnsafeMutablePointer(to: &a) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        port = Int(UInt16(bigEndian: a.sin_port))
        Thread.detachNewThread { [self] in
            while true {
                let c = accept(fd, nil, nil)
                if c < 0 { return }
                var buf = [UInt8](repeating: 0, count: 4096)
                let n = read(c, &buf, buf.count)
                let head = String(decoding: buf.prefix(max(0, n)), as: UTF8.self)
                let path = head.split(separator: " ").dropFirst().first.map(String.init) ?? "?"
                let authorization = head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("authorization:") }
                    .map { String($0.dropFirst("authorization:".count)).trimmingCharacters(in: .whitespaces) }
                lock.withLock {
                    seen.append(path)
                    if let authorization { auth.append(authorization) }
                }
                let body = "hello \(path)"
                let reply = "HTTP/1.1 200 OK\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
                _ = reply.withCString { write(c, $0, strlen($0)) }
                close(c)
            }
        }
    }

    deinit {
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
    }
}
