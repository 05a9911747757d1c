import StrictJSON
import SupervisorCore
import SupervisorPlatform
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// A command cell (an existing program as a tool, argv built from the
/// arguments) with a real program, as root and as an unprivileged user.
final class CommandCellTests: XCTestCase {
    static let jq = "/usr/bin/jq"

    func cell(groups: [String] = ["base"], allow: [String] = ["access", "getcwd"]) throws -> PreparedCell {
        guard let bytes = try? readFile(Self.jq, limit: 1 << 30) else {
            XCTFail("\(Self.jq) is missing: `make deps` installs jq")
            throw XCTSkip("jq missing")
        }
        let text = """
            {
              "name": "jq", "version": "1", "description": "jq.",
              "executable": {"path": "\(Self.jq)", "sha256": "\(sha256Hex(bytes))"},
              "tools": [{"name": "jq", "description": "jq.",
                         "inputSchema": {"type": "object", "properties": {"filter": {"type": "string"}, "input": {}, "raw": {"type": "boolean"}}},
                         "command": {"argv": ["jq", {"if": "raw", "then": ["--raw-output"]}, "{filter}"], "stdin": "input"}}],
              "limits": {"timeoutMilliseconds": 5000, "fileSizeMiB": 0},
              "filesystem": {"read": ["/lib/x86_64-linux-gnu", "/etc/ld.so.cache"],
                             "execute": ["/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"]},
              "syscalls": {"groups": \(JSONValue.array(groups.map { .string($0) }).serialized()), "allow": \(JSONValue.array(allow.map { .string($0) }).serialized())},
              "sideEffects": "none"
            }
            """
        return try Harness.prepare(
            try CellManifest.parse(bytes: Array(text.utf8), path: "/tmp/jq.json", manifestSHA256: "x"))
    }

    func run(_ c: PreparedCell, _ args: JSONObject) throws -> CallReport {
        try Harness.runner().run(cell: c, tool: "jq", arguments: args, callID: "j1")
    }

    func testOutputIsTheResultAndExitStatusDecides() throws {
        let c = try cell()
        let r = try run(c, ["filter": ".a[1]", "input": ["a": [1, "two"]], "raw": true])
        XCTAssertEqual(Harness.text(r), "two\n", "\(r.outcome) \(r.diagnostics)")
        let bad = try run(c, ["filter": ".a |", "input": [:]])
        guard case .toolError(let m) = bad.outcome else { return XCTFail("\(bad.outcome)") }
        XCTAssertTrue(m.hasPrefix("exit status 3"), m)
        XCTAssertTrue(Harness.scratchLeftovers().isEmpty)
    }

    func testOptionInjectionIsRefusedBeforeAnyWorker() throws {
        let r = try run(try cell(), ["filter": "--rawfile", "input": 1])
        guard case .refused(.arguments(let m)) = r.outcome else { return XCTFail("\(r.outcome)") }
        XCTAssertTrue(m.contains("would be read as an option"), m)
        XCTAssertNil(r.exit, "no worker may have started")
    }

    func testTheProgramIsSandboxedLikeAnyWorker() throws {
        // Without the two extra syscalls jq makes, the filter stops it.
        let r = try run(try cell(allow: []), ["filter": ".", "input": 1])
        guard case .sandboxViolation(let s, _) = r.outcome else { return XCTFail("\(r.outcome)") }
        XCTAssertTrue(["access", "getcwd"].contains(s), s)
    }
}
