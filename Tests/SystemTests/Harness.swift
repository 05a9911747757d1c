import Logging
import StrictJSON
import SupervisorCore
import SupervisorPlatform
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Shared setup for tests that run real workers. The cells are the release
/// builds `make cells` produces; a missing one is a failure, not a skip.
enum Harness {
    /// The checkout; MCPS_TEST_ROOT points at a copy of the parts the tests
    /// need (the unprivileged pass runs from one the test user can read).
    static let root: String = {
        if let r = getenv("MCPS_TEST_ROOT"), r.pointee != 0 { return String(cString: r) }
        var p = #filePath
        for _ in 0..<3 { p = String(p[..<p.lastIndex(of: "/")!]) }
        return p
    }()
    static let probe = root + "/.build/release/probe-cell"
    static let echo = root + "/.build/release/echo-cell"
    static let features = KernelFeatures.probe()
    static let groups: SyscallGroups = try! SyscallGroups.load(path: root + "/policies/syscall-groups.json")

    static func tempDir(_ name: String) -> String {
        let d = "/tmp/mcps-test-\(getpid())-\(name)-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(d, 0o755)
        return d
    }

    static let state = tempDir("state")
    static let scratchRoot = tempDir("scratch-root") + "/scratch"

    static func host() -> HostSandbox {
        HostSandbox(features: features, scratchRoot: scratchRoot, protectedPaths: [state])
    }

    static func runner() throws -> CallRunner {
        var l = Logger(label: "test")
        l.logLevel = .critical
        return try CallRunner(host: host(), logger: l)
    }

    /// A manifest for the probe cell with the given overrides (JSON fragments).
    static func probeManifest(
        executable: String = probe, limits: String = "{}", filesystem: String = "{}",
        groups: [String] = ["base"], allow: [String] = []
    ) throws -> CellManifest {
        guard let bytes = try? readFile(executable, limit: 1 << 30) else {
            XCTFail("\(executable) is missing: run `make cells` first")
            throw XCTSkip("cell binary missing")
        }
        let text = """
            {
              "name": "probe", "version": "1", "description": "Tries forbidden things.",
              "executable": {"path": "\(executable)", "sha256": "\(sha256Hex(bytes))"},
              "tools": [{"name": "probe", "description": "Probe.", "inputSchema": {"type": "object"}}],
              "limits": \(limits), "filesystem": \(filesystem),
              "syscalls": {"groups": \(JSONValue.array(groups.map { .string($0) }).serialized()), "allow": \(JSONValue.array(allow.map { .string($0) }).serialized())},
              "sideEffects": "none"
            }
            """
        return try CellManifest.parse(bytes: Array(text.utf8), path: "probe.json", manifestSHA256: "x")
    }

    static func prepare(_ m: CellManifest) throws -> PreparedCell {
        try PreparedCell(manifest: m, groups: groups, host: host())
    }

    /// Runs one probe call and returns the report.
    static func call(
        _ cell: PreparedCell, _ args: JSONObject, id: String = "t1",
        onMessage: (WorkerMessage) -> Void = { _ in }
    ) throws -> CallReport {
        try runner().run(cell: cell, tool: "probe", arguments: args, callID: id, onMessage: onMessage)
    }

    static func text(_ r: CallReport) -> String? {
        guard case .success(let res) = r.outcome else { return nil }
        return res.content.first?["text"]?.stringValue
    }

    /// Entries left in the scratch root (must be none between calls).
    static func scratchLeftovers() -> [String] {
        guard let d = opendir(scratchRoot) else { return [] }
        defer { closedir(d) }
        var out: [String] = []
        while let e = readdir(d) {
            let n = withUnsafeBytes(of: e.pointee.d_name) {
                String(cString: $0.bindMemory(to: CChar.self).baseAddress!)
            }
            if n != "." && n != ".." { out.append(n) }
        }
        return out
    }
}
