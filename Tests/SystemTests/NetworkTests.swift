import StrictJSON
import SupervisorCore
import SupervisorPlatform
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// The connection broker with real workers (Python cells using
/// cells/python/mcpcell.py) and a real TCP listener on loopback; run as
/// root and as an unprivileged user.
final class NetworkTests: XCTestCase {
    static let python = "/usr/bin/python3.11"

    static let script = """
        import os, mcpcell

        @mcpcell.tool("probe")
        def probe(args, ctx):
            action = args["action"]
            if action == "fetch":
                out = []
                for _ in range(args.get("times", 1)):
                    s = mcpcell.connect(args["host"], args["port"], 5)
                    s.sendall(b"ping\\n")
                    out.append(s.recv(100).decode().strip())
                    s.close()
                return " ".join(out)
            if action == "raw":
                import socket
                socket.create_connection(("127.0.0.1", args["port"]))
                return "connected on its own"
            if action == "fd5":
                try:
                    os.fstat(5)
                    return "fd 5 open"
                except OSError:
                    return "fd 5 closed"
            raise mcpcell.ToolError("unknown action")

        mcpcell.serve()
        """

    /// A loopback listener answering "pong" to each connection.
    final class Listener: @unchecked Sendable {
        // @unchecked: `count` is guarded by `lock`; the rest is immutable.
        let fd: Int32
        let port: Int
        private let lock = NSLock()
        private var count = 0
        /// Connections accepted so far.
        var accepted: Int { lock.withLock { count } }
        init(address: String = "127.0.0.1") throws {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            self.fd = fd
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_addr.s_addr = inet_addr(address)
            a.sin_port = 0
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            let ok = withUnsafePointer(to: &a) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && listen(fd, 16) == 0 }
            }
            guard ok else { throw SystemError("listen", errno: errno) }
            _ = withUnsafeMutablePointer(to: &a) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
            }
            port = Int(UInt16(bigEndian: a.sin_port))
            Thread.detachNewThread {
                while true {
                    let c = accept(fd, nil, nil)
                    if c < 0 { return }
                    self.lock.withLock { self.count += 1 }
                    var buf = [UInt8](repeating: 0, count: 64)
                    _ = read(c, &buf, 64)
                    _ = "pong\n".withCString { write(c, $0, 5) }
                    close(c)
                }
            }
        }
        deinit {
            shutdown(fd, Int32(SHUT_RDWR))
            close(fd)
        }
    }

    func cell(network: String) throws -> PreparedCell {
        let dir = Harness.tempDir("net")
        let scriptPath = dir + "/probe.py"
        let fd = try Sys.open(scriptPath, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o644)
        try fd.writeAll(Array(Self.script.utf8))
        fd.close()
        let library = Harness.root + "/cells/python/mcpcell.py"
        func digest(_ p: String) throws -> String { sha256Hex(try readFile(p, limit: 1 << 30)) }
        let text = """
            {
              "name": "netprobe", "version": "1", "description": "Network probe.",
              "executable": {"path": "\(Self.python)", "sha256": "\(try digest(Self.python))"},
              "libraries": [{"path": "\(library)", "sha256": "\(try digest(library))"}],
              "script": {"path": "\(scriptPath)", "sha256": "\(try digest(scriptPath))"},
              "argv": ["python3", "-I", "-S", "-"],
              "tools": [{"name": "probe", "description": "Probe.", "inputSchema": {"type": "object"}}],
              "limits": {"timeoutMilliseconds": 10000, "fileSizeMiB": 0},
              "filesystem": {"read": ["/usr/lib/python3.11", "/lib/x86_64-linux-gnu", "/etc/ld.so.cache"],
                             "execute": ["/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"]},
              "network": \(network),
              "syscalls": {"groups": ["base", "python", "files-read", "network-client"]},
              "sideEffects": "reads"
            }
            """
        return try Harness.prepare(
            try CellManifest.parse(bytes: Array(text.utf8), path: dir + "/netprobe.json", manifestSHA256: "x"))
    }

    func run(_ c: PreparedCell, _ args: JSONObject) throws -> (CallReport, [NetworkDecision]) {
        var decisions: [NetworkDecision] = []
        let r = try Harness.runner().run(
            cell: c, tool: "probe", arguments: args, callID: "n1",
            onNetwork: { decisions.append($0) })
        return (r, decisions)
    }

    func testGrantedConnectionIsPassedToTheWorker() throws {
        let l = try Listener()
        let c = try cell(network: #"{"connect": ["127.0.0.1:\#(l.port)"], "maxConnections": 2}"#)
        let (r, d) = try run(c, ["action": "fetch", "host": "127.0.0.1", "port": .int(Int64(l.port)), "times": 2])
        XCTAssertEqual(Harness.text(r), "pong pong", "\(r.outcome) \(r.diagnostics)")
        XCTAssertEqual(d.map(\.refusal), [nil, nil])
        XCTAssertEqual(d.first?.address, "127.0.0.1:\(l.port)")

        // The third connection is over the limit.
        let (r2, d2) = try run(c, ["action": "fetch", "host": "127.0.0.1", "port": .int(Int64(l.port)), "times": 3])
        guard case .toolError(let m) = r2.outcome else { return XCTFail("\(r2.outcome)") }
        XCTAssertTrue(m.contains("limit of 2 connections"), m)
        XCTAssertEqual(d2.count, 3)
        XCTAssertNotNil(d2.last?.refusal)
    }

    func testHostsOffTheAllowlistAreRefused() throws {
        let l = try Listener()
        let c = try cell(network: #"{"connect": ["127.0.0.1:\#(l.port + 1)", "localhost:\#(l.port)"]}"#)
        for (host, expect) in [
            ("127.0.0.1", "not on the cell's network allowlist"), ("localhost", "resolves only to internal addresses"),
        ] {
            let (r, d) = try run(c, ["action": "fetch", "host": .string(host), "port": .int(Int64(l.port))])
            guard case .toolError(let m) = r.outcome else { return XCTFail("\(r.outcome) \(r.diagnostics)") }
            XCTAssertTrue(m.contains(expect), m)
            XCTAssertEqual(d.count, 1)
            XCTAssertTrue(d[0].refusal?.contains(expect) == true)
        }
    }

    func testSocketOfItsOwnIsKilled() throws {
        let l = try Listener()
        let c = try cell(network: #"{"connect": ["127.0.0.1:\#(l.port)"]}"#)
        let (r, _) = try run(c, ["action": "raw", "port": .int(Int64(l.port))])
        XCTAssertEqual(r.outcome, .sandboxViolation(syscall: "socket", architecture: "x86_64"), r.diagnostics)
    }

    func testWorkerWithoutNetworkHasNoBroker() throws {
        let c = try cell(network: #""none""#)
        let (r, _) = try run(c, ["action": "fd5"])
        XCTAssertEqual(Harness.text(r), "fd 5 closed", "\(r.outcome) \(r.diagnostics)")
        let l = try Listener()
        let (r2, d) = try run(c, ["action": "fetch", "host": "127.0.0.1", "port": .int(Int64(l.port))])
        guard case .toolError(let m) = r2.outcome else { return XCTFail("\(r2.outcome)") }
        XCTAssertTrue(m.contains("no connection broker"), m)
        XCTAssertTrue(d.isEmpty)
    }
}
