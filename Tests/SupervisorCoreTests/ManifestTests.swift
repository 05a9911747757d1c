import StrictJSON
import XCTest

@testable import SupervisorCore

/// Shared by the manifest test classes: a minimal valid manifest, patched.
class ManifestTestCase: XCTestCase {
    let sha = String(repeating: "a", count: 64)

    func manifest(_ patch: (inout JSONObject) -> Void = { _ in }) -> [UInt8] {
        var o: JSONObject = [
            "name": "demo", "version": "1.0", "description": "A demo cell.",
            "executable": ["path": "/bin/true", "sha256": .string(sha)],
            "tools": [["name": "demo", "description": "Demo tool.", "inputSchema": ["type": "object"]]],
            "sideEffects": "none",
        ]
        patch(&o)
        return JSONValue.object(o).serializedBytes()
    }

    func parse(_ bytes: [UInt8]) throws -> CellManifest {
        try CellManifest.parse(bytes: bytes, path: "/m/demo.json", manifestSHA256: "h")
    }

    func parse(_ patch: (inout JSONObject) -> Void) throws -> CellManifest { try parse(manifest(patch)) }

    func assertError(
        _ field: String, _ contains: String, _ patch: (inout JSONObject) -> Void,
        file: StaticString = #filePath, line: UInt = #line
    ) {
        XCTAssertThrowsError(try parse(manifest(patch)), file: file, line: line) { e in
            guard let c = e as? ConfigError else { return XCTFail("\(e)", file: file, line: line) }
            XCTAssertEqual(c.file, "/m/demo.json", file: file, line: line)
            XCTAssertEqual(c.field, field, "\(c)", file: file, line: line)
            XCTAssertTrue(c.message.contains(contains), "\(c)", file: file, line: line)
        }
    }
}

final class ManifestTests: ManifestTestCase {
    func testMinimalManifestGetsDocumentedDefaults() throws {
        let m = try parse(manifest())
        XCTAssertEqual(m.argv, ["true"])
        XCTAssertEqual(m.limits, CellManifest.Limits())
        XCTAssertEqual(m.limits.timeoutMilliseconds, 10_000)
        XCTAssertEqual(m.limits.processes, .none)
        XCTAssertEqual(m.limits.scratchMiB, 64)
        XCTAssertEqual(m.limits.scratchFiles, 4096)
        XCTAssertEqual(m.network, .none)
        XCTAssertEqual(m.phases, [])
    }

    func testRelativeExecutableResolvesAgainstManifestDirectory() throws {
        let m = try parse(manifest { $0["executable"] = ["path": "../bin/cell", "sha256": .string(self.sha)] })
        XCTAssertEqual(m.executable.path, "/bin/cell")
    }

    func testBadInputs() {
        assertError("name", "required field is missing") { $0["name"] = nil }
        assertError("name", "expected a string") { $0["name"] = 5 }
        assertError("name", "must match") { $0["name"] = "bad name" }
        assertError("bogus", "unknown field") { $0["bogus"] = true }
        assertError("limits.scratchMiB", "out of range 1...65536 MiB") { $0["limits"] = ["scratchMiB": 0] }
        assertError("limits.scratchFiles", "out of range 16...1000000") { $0["limits"] = ["scratchFiles": 15] }
        assertError("executable.sha256", "64 lower-case hex") {
            $0["executable"] = ["path": "/bin/true", "sha256": "ABC"]
        }
        assertError("executable.extra", "unknown field") {
            $0["executable"] = ["path": "/bin/true", "sha256": .string(self.sha), "extra": 1]
        }
        assertError("tools", "at least one tool") { $0["tools"] = [] }
        assertError("tools[0].inputSchema", "type") {
            $0["tools"] = [["name": "t", "description": "d", "inputSchema": ["type": "string"]]]
        }
        assertError("tools[0].inputSchema.properties.x.frobnicate", "unsupported JSON Schema keyword") {
            $0["tools"] = [
                [
                    "name": "t", "description": "d",
                    "inputSchema": ["type": "object", "properties": ["x": ["frobnicate": 1]]],
                ]
            ]
        }
        assertError("tools[1].name", "duplicate tool name") {
            $0["tools"] = [
                ["name": "t", "description": "d", "inputSchema": ["type": "object"]],
                ["name": "t", "description": "d", "inputSchema": ["type": "object"]],
            ]
        }
        assertError("tools[0].description", "hidden or control character U+202E") {
            $0["tools"] = [["name": "t", "description": "ok \u{202E}evil", "inputSchema": ["type": "object"]]]
        }
        assertError("tools[0].description", "U+1B") {
            $0["tools"] = [["name": "t", "description": "\u{1B}[2Jhidden", "inputSchema": ["type": "object"]]]
        }
        assertError("tools[0].description", "U+E0041") {
            $0["tools"] = [["name": "t", "description": "tag \u{E0041}", "inputSchema": ["type": "object"]]]
        }
        assertError("limits.timeoutMilliseconds", "out of range") { $0["limits"] = ["timeoutMilliseconds": 0] }
        assertError("limits.memoryMiB", "expected an integer") { $0["limits"] = ["memoryMiB": "lots"] }
        assertError("limits.processes", "expected one of") { $0["limits"] = ["processes": "many"] }
        assertError("limits.frameKiB", "exceeds limits.outputKiB") { $0["limits"] = ["outputKiB": 4, "frameKiB": 8] }
        assertError("limits.cpu", "unknown field") { $0["limits"] = ["cpu": 1] }
        assertError("filesystem.write[0]", "below /") { $0["filesystem"] = ["write": ["/"]] }
        assertError("network", "expected \"none\" or") { $0["network"] = "internet" }
        assertError("sideEffects", "required field is missing") { $0["sideEffects"] = nil }
        assertError("phases", "must list the phases") { $0["sideEffects"] = "writes" }
        assertError("environment.pass[0]", "not a valid variable name") { $0["environment"] = ["pass": ["1X"]] }
        assertError("argv", "at least argv[0]") { $0["argv"] = [] }
    }

    func testInvalidJSONAndDuplicateKeysAreRejected() {
        XCTAssertThrowsError(try parse(Array("{".utf8))) { XCTAssertTrue("\($0)".contains("not valid JSON")) }
        let dup = Array(#"{"name":"a","name":"b"}"#.utf8)
        XCTAssertThrowsError(try parse(dup)) { XCTAssertTrue("\($0)".contains("duplicate key \"name\"")) }
    }

    func testActuatorWithPhasesParses() throws {
        let m = try parse(
            manifest {
                $0["sideEffects"] = "writes"
                $0["phases"] = ["act"]
            })
        XCTAssertTrue(m.sideEffects.isActuator)
        XCTAssertEqual(m.phases, ["act"])
    }
}

final class SyscallGroupTests: ManifestTestCase {
    func write(_ text: String) -> String {
        let p = "/tmp/mcps-groups-\(UInt32.random(in: 0...UInt32.max)).json"
        FileManagerLite.write(p, text)
        return p
    }

    func testShippedGroupsLoad() throws {
        var root = #filePath
        for _ in 0..<3 { root = String(root[..<root.lastIndex(of: "/")!]) }
        let g = try SyscallGroups.load(path: root + "/policies/syscall-groups.json")
        XCTAssertNotNil(g.groups["base"])
    }

    func testUnknownAndForbiddenSyscallsAreRejected() {
        XCTAssertThrowsError(try SyscallGroups.load(path: write(#"{"groups": {"g": ["read", "frobnicate"]}}"#))) {
            XCTAssertEqual(($0 as? ConfigError)?.field, "groups.g[1]")
        }
        XCTAssertThrowsError(try SyscallGroups.load(path: write(#"{"groups": {"g": ["ptrace"]}}"#))) {
            XCTAssertTrue("\($0)".contains("never allowed"))
        }
        XCTAssertThrowsError(
            try SyscallGroups.load(
                path: write(#"{"groups": {"g": [{"name": "ioctl", "argument": 9, "values": [1]}]}}"#))
        ) {
            XCTAssertEqual(($0 as? ConfigError)?.field, "groups.g[0].argument")
        }
    }

    func testNetworkAndIPCSyscallsAreRefusedInManifestsAndGroups() {
        // The manifest that sent UDP with network "none" (issue 19, item 9).
        assertError("syscalls.allow[0]", "network access comes only from the manifest's \"network\" declaration") {
            $0["network"] = "none"
            $0["syscalls"] = ["groups": ["base"], "allow": ["socket", "sendto"]]
        }
        for call in ["connect", "bind", "listen", "accept", "accept4"] {
            assertError("syscalls.allow[1]", "\"\(call)\" is never allowed") {
                $0["syscalls"] = ["allow": ["getcwd", .string(call)]]
            }
        }
        for call in ["shmget", "semget", "msgget", "mq_open"] {
            assertError("syscalls.allow[0]", "outlive the call") { $0["syscalls"] = ["allow": [.string(call)]] }
        }
        XCTAssertThrowsError(try SyscallGroups.load(path: write(#"{"groups": {"g": ["read", "connect"]}}"#))) {
            XCTAssertEqual(($0 as? ConfigError)?.field, "groups.g[1]")
            XCTAssertTrue("\($0)".contains("\"network\" declaration"), "\($0)")
        }
    }

    func testLearnModeExplainsNetworkCallsInsteadOfProposingThem() throws {
        let groups = SyscallGroups(groups: ["base": [.init(name: "read", argument: nil, values: [])]], sourcePath: "x")
        let m = try parse { $0["syscalls"] = ["groups": ["base"]] }
        let p = groups.proposal(for: ["socket", "connect", "shmget", "getxattr"], manifest: m)
        XCTAssertEqual(p.network, ["socket", "connect"])
        XCTAssertEqual(p.forbidden, ["shmget"])
        XCTAssertEqual(p.addAllow, ["getxattr"])
    }
}

enum FileManagerLite {
    static func write(_ path: String, _ text: String) {
        let f = fopen(path, "w")!
        fputs(text, f)
        fclose(f)
    }
}
