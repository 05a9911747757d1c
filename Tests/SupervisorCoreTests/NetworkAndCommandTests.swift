import Foundation
import StrictJSON
import SupervisorPlatform
import XCTest

@testable import SupervisorCore

#if canImport(Glibc)
import Glibc
#endif

/// The network allowlist and the command-tool form, as parsed from
/// manifests and applied to requests and arguments.
final class NetworkAndCommandTests: ManifestTestCase {
    func testAllowlistEntriesParseAndMatch() throws {
        let m = try parse {
            $0["network"] = ["connect": ["Example.org:443", "*.python.org:443", "127.0.0.1:8080", "[::1]:80"]]
        }
        let n = m.network
        XCTAssertEqual(
            n.hosts.map(\.description), ["example.org:443", "*.python.org:443", "127.0.0.1:8080", "[::1]:80"])
        XCTAssertEqual(n.maxConnections, 8)
        func allowed(_ host: String, _ port: Int) -> Bool {
            n.hosts.contains { $0.matches(host: host, literal: IPAddress(literal: host), port: port) }
        }
        XCTAssertTrue(allowed("example.org", 443))
        XCTAssertFalse(allowed("example.org", 80))
        XCTAssertFalse(allowed("evil-example.org", 443))
        XCTAssertFalse(allowed("example.org.evil.net", 443))
        XCTAssertTrue(allowed("docs.python.org", 443))
        XCTAssertFalse(allowed("python.org", 443), "a wildcard covers names below the domain only")
        XCTAssertFalse(allowed("docs.python.org.evil.net", 443))
        XCTAssertTrue(allowed("127.0.0.1", 8080))
        XCTAssertFalse(allowed("127.0.0.2", 8080))
        XCTAssertTrue(allowed("::1", 80))
    }

    func testBadAllowlistsAreRefusedByField() {
        assertError("network.connect[0]", "host:port") { $0["network"] = ["connect": ["example.org"]] }
        assertError("network.connect[0]", "port must be 1-65535") { $0["network"] = ["connect": ["example.org:0"]] }
        assertError("network.connect[0]", "not a host name") { $0["network"] = ["connect": ["exa mple.org:80"]] }
        assertError("network.connect[1]", "duplicate") { $0["network"] = ["connect": ["a.org:1", "A.org:1"]] }
        assertError("network.connect", "at least one") { $0["network"] = ["connect": []] }
        assertError("network.proxy", "unknown field") { $0["network"] = ["connect": ["a.org:1"], "proxy": true] }
        assertError("network.maxConnections", "out of range") {
            $0["network"] = ["connect": ["a.org:1"], "maxConnections": 0]
        }
    }

    /// `network.egress`: the broker for frame and command cells unless they
    /// opt in to the proxy (docs/egress.md).
    func testEgressDefaultsToTheBrokerAndMayBeTheProxy() throws {
        XCTAssertEqual(try parse { $0["network"] = ["connect": ["a.org:1"]] }.network.egress, .broker)
        let m = try parse { $0["network"] = ["connect": ["a.org:1"], "egress": "proxy"] }
        XCTAssertTrue(m.network.usesProxy)
        assertError("network.egress", "one of broker, proxy") {
            $0["network"] = ["connect": ["a.org:1"], "egress": "direct"]
        }
    }

    /// Fail closed: a host that cannot give a worker a network namespace
    /// refuses a proxy cell, saying how to fix it; a broker cell is unaffected.
    func testAProxyCellIsRefusedWithoutNetworkNamespaces() throws {
        var f = KernelFeatures.probe()
        f.landlockABI = 7
        f.userNamespaces = true
        f.netNamespaces = false
        f.netNamespaceError = "clone: EPERM (Operation not permitted)"
        let host = HostSandbox(features: f, workerUID: 4242, workerGID: 4242, scratchRoot: "/tmp/x", protectedPaths: [])
        let proxy = try parse { $0["network"] = ["connect": ["a.org:1"], "egress": "proxy"] }
        let why = try XCTUnwrap(host.refusal(for: proxy))
        XCTAssertTrue(why.contains("network namespace") && why.contains("CONFIG_NET_NS"), why)
        XCTAssertTrue(why.contains("EPERM"), why)
        XCTAssertNil(host.refusal(for: try parse { $0["network"] = ["connect": ["a.org:1"]] }))
    }

    func testInternalAddressesAreRecognized() {
        for a in [
            "127.0.0.1", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254", "100.64.0.1",
            "0.0.0.0", "224.0.0.1", "::1", "::", "fe80::1", "fd00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
        ] {
            XCTAssertTrue(IPAddress(literal: a)!.isInternal, a)
        }
        for a in ["8.8.8.8", "172.32.0.1", "1.1.1.1", "2001:4860:4860::8888", "::ffff:8.8.8.8"] {
            XCTAssertFalse(IPAddress(literal: a)!.isInternal, a)
        }
    }

    func testBrokerRequestsAreParsedStrictly() {
        XCTAssertEqual(
            try? ConnectionBroker.parseRequest(Array(#"{"host":"Example.ORG.","port":443}"#.utf8), truncated: false).0,
            "example.org")
        for bad in [
            #"{"host":"a.org"}"#, #"{"host":"a.org","port":70000}"#, #"{"host":"a b","port":1}"#,
            #"{"host":"a.org","port":1,"x":1}"#, "[]", "not json",
        ] {
            XCTAssertThrowsError(try ConnectionBroker.parseRequest(Array(bad.utf8), truncated: false), bad)
        }
    }

    func testResolutionIsBoundedByTheCallsTime() {
        let slow: @Sendable (String) throws(SystemError) -> [IPAddress] = { _ in
            usleep(500_000)
            return [IPAddress(literal: "192.0.2.1")!]
        }
        let t0 = monotonicNanoseconds()
        XCTAssertThrowsError(try ConnectionBroker.resolve("slow.example", timeoutMilliseconds: 50, using: slow)) {
            XCTAssertTrue("\(($0 as! ConnectionBroker.Refusal).message)".contains("took longer than 50 ms"))
        }
        XCTAssertLessThan(monotonicNanoseconds() - t0, 400_000_000, "the caller waited for the slow resolver")
        let fast: @Sendable (String) throws(SystemError) -> [IPAddress] = { _ in [IPAddress(literal: "192.0.2.7")!] }
        XCTAssertEqual(
            try? ConnectionBroker.resolve("fast.example", timeoutMilliseconds: 5000, using: fast),
            [IPAddress(literal: "192.0.2.7")!])
        let failing: @Sendable (String) throws(SystemError) -> [IPAddress] = { _ throws(SystemError) in
            throw SystemError("resolve x: Name or service not known", errno: 0)
        }
        XCTAssertThrowsError(try ConnectionBroker.resolve("x", timeoutMilliseconds: 5000, using: failing)) {
            XCTAssertTrue("\(($0 as! ConnectionBroker.Refusal).message)".contains("Name or service not known"))
        }
    }

    func testACancelledCallStopsWaitingForTheResolver() throws {
        let slow: @Sendable (String) throws(SystemError) -> [IPAddress] = { _ in
            usleep(2_000_000)
            return []
        }
        let c = try CallCancellation()
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(50)) { c.cancel() }
        let t0 = monotonicNanoseconds()
        XCTAssertThrowsError(
            try ConnectionBroker.resolve("slow.example", timeoutMilliseconds: 5000, cancellation: c, using: slow)
        ) {
            XCTAssertTrue("\(($0 as! ConnectionBroker.Refusal).message)".contains("cancelled"))
        }
        XCTAssertLessThan(monotonicNanoseconds() - t0, 1_000_000_000)
    }

    func testACancelledCallStopsWaitingForAConnection() throws {
        // A listener whose accept queue is full: further SYNs are dropped, so
        // a connect waits until its timeout, unless the call is cancelled.
        let l = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(l) }
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &a) { p in p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(l, $0, len) } }
        listen(l, 0)
        _ = withUnsafeMutablePointer(to: &a) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(l, $0, &len) }
        }
        let port = Int(UInt16(bigEndian: a.sin_port))
        var fillers: [FileDescriptor] = []
        defer { fillers.forEach { $0.close() } }
        for _ in 0..<4 {
            if let f = try? Network.connect(IPAddress(literal: "127.0.0.1")!, port: port, timeoutMilliseconds: 100) {
                fillers.append(f)
            }
        }
        let c = try CallCancellation()
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(50)) { c.cancel() }
        let t0 = monotonicNanoseconds()
        XCTAssertThrowsError(
            try Network.connect(IPAddress(literal: "127.0.0.1")!, port: port, timeoutMilliseconds: 3000, cancel: c.read)
        ) {
            XCTAssertEqual(($0 as? SystemError)?.errno, ECANCELED, "\($0)")
        }
        XCTAssertLessThan(monotonicNanoseconds() - t0, 1_500_000_000)
    }

    func command(
        _ argv: JSONValue, stdin: String? = nil,
        props: JSONObject = [
            "rev": ["type": "string"], "path": ["type": "string"], "n": ["type": "integer"],
            "stat": ["type": "boolean"], "files": ["type": "array"], "input": [:],
        ]
    ) throws -> CommandTemplate {
        var c: JSONObject = ["argv": argv]
        if let stdin { c["stdin"] = .string(stdin) }
        let m = try parse {
            $0["tools"] = [
                [
                    "name": "t", "description": "d", "inputSchema": ["type": "object", "properties": .object(props)],
                    "command": .object(c),
                ]
            ]
        }
        return m.tools[0].command!
    }

    func testCommandArgvIsBuiltFromArguments() throws {
        let c = try command([
            "git", "log", "--max-count={n}", ["if": "stat", "then": ["--stat"]], "{rev}", "--", "{path}",
        ])
        XCTAssertEqual(try c.build(arguments: ["n": 3]).argv, ["git", "log", "--max-count=3", "--"])
        XCTAssertEqual(
            try c.build(arguments: ["n": 3, "stat": true, "rev": "HEAD~1", "path": "a b.txt"]).argv,
            ["git", "log", "--max-count=3", "--stat", "HEAD~1", "--", "a b.txt"])
        XCTAssertEqual(try c.build(arguments: ["stat": false]).argv, ["git", "log", "--"])
        // After "--" a leading dash is data.
        XCTAssertEqual(try c.build(arguments: ["path": "-rf"]).argv, ["git", "log", "--", "-rf"])
        // A template prefix cannot turn into another option.
        XCTAssertEqual(try c.build(arguments: ["n": -1]).argv, ["git", "log", "--max-count=-1", "--"])
    }

    func testOptionInjectionAndUnrepresentableValuesAreRefused() throws {
        let c = try command(["git", "show", "{rev}", "{files}", "--", "{path}"])
        for args: JSONObject in [
            ["rev": "--output=/tmp/x"], ["rev": "-p"], ["files": ["ok", "--exec=sh"]], ["rev": "a\u{0}b"],
            ["rev": ["k": 1]],
        ] {
            XCTAssertThrowsError(try c.build(arguments: args), "\(args)")
        }
        XCTAssertEqual(try c.build(arguments: ["files": ["a", "b"]]).argv, ["git", "show", "a", "b", "--"])
    }

    func testCommandStdin() throws {
        let c = try command(["jq", "{rev}"], stdin: "input")
        XCTAssertEqual(try c.build(arguments: ["rev": ".", "input": ["a": 1]]).stdin, Array(#"{"a":1}"#.utf8))
        XCTAssertEqual(try c.build(arguments: ["rev": ".", "input": "raw text"]).stdin, Array("raw text".utf8))
    }

    func testBadCommandsAreRefusedByField() {
        func tool(_ cmd: JSONValue) -> (inout JSONObject) -> Void {
            {
                $0["tools"] = [
                    [
                        "name": "t", "description": "d", "inputSchema": ["type": "object", "properties": ["a": [:]]],
                        "command": cmd,
                    ]
                ]
            }
        }
        assertError("tools[0].command.argv[1]", "placeholder {b} is not a property", tool(["argv": ["x", "{b}"]]))
        assertError("tools[0].command.argv[1]", "unterminated", tool(["argv": ["x", "{a"]]))
        assertError("tools[0].command.argv[0]", "fixed text", tool(["argv": ["{a}"]]))
        assertError("tools[0].command.stdin", "not a property", tool(["argv": ["x"], "stdin": "b"]))
        assertError(
            "tools[0].command.argv[1].if", "not a property", tool(["argv": ["x", ["if": "b", "then": ["-v"]]]]))
        assertError(
            "tools[0].command.successExitCodes[0]", "exit status", tool(["argv": ["x"], "successExitCodes": [300]]))
        assertError("tools", "every tool") {
            $0["tools"] = [
                ["name": "t", "description": "d", "inputSchema": ["type": "object"], "command": ["argv": ["x"]]],
                ["name": "u", "description": "d", "inputSchema": ["type": "object"]],
            ]
        }
        assertError("libraries", "declare \"script\"") {
            $0["libraries"] = [["path": "/x.py", "sha256": .string(self.sha)]]
        }
        assertError("workingDirectory", "not under") { $0["workingDirectory"] = "/srv/repo" }
    }

    func testRelativePathsResolveAgainstTheManifest() throws {
        let m = try parse {
            $0["filesystem"] = ["read": ["../repo"]]
            $0["workingDirectory"] = "../repo/sub"
        }
        XCTAssertEqual(m.filesystem.read, ["/repo"])
        XCTAssertEqual(m.workingDirectory, "/repo/sub")
    }

    func testLearnModeProposesTheSmallestGroups() throws {
        let groups = SyscallGroups(
            groups: [
                "base": [.init(name: "read", argument: nil, values: [])],
                "small": [.init(name: "getcwd", argument: nil, values: [])],
                "big": [
                    .init(name: "getcwd", argument: nil, values: []), .init(name: "access", argument: nil, values: []),
                ],
                "net": [.init(name: "ioctl", argument: 1, values: [21537])],
            ], sourcePath: "x")
        let m = try parse { $0["syscalls"] = ["groups": ["base"]] }
        let p = groups.proposal(
            for: ["getcwd", "access", "ioctl(21537)", "ioctl(1)", "fork", "ptrace", "getxattr"], manifest: m)
        XCTAssertEqual(p.addGroups, ["small", "big", "net"])
        XCTAssertEqual(p.addAllow, ["getxattr"])
        XCTAssertEqual(p.unmatchedIoctls, [1])
        XCTAssertEqual(p.processCalls, ["fork"])
        XCTAssertEqual(p.forbidden, ["ptrace"])
    }
}
