import ArgumentParser
import Foundation
import SupervisorCore
import SupervisorServer
import XCTest

@testable import mcp_supervisor

/// Every entry of the settings table has exactly one flag, tied to it, and
/// `run` refuses what the table refuses.
final class FlagTableTests: XCTestCase {
    func sample(_ s: Setting) -> String {
        switch s.kind {
        case .directory: return "/sample/\(s.key)"
        case .integer(_, let r, let d): return "\(d == r.upperBound ? r.lowerBound : r.upperBound)"
        case .identity: return "4242"
        case .choice(_, let c, let d): return c.first { $0 != d }!
        case .file: return "/sample/\(s.key).prom"
        case .endpoint: return "http://127.0.0.1:4318"
        case .toolPatterns: return "fs_read,git_*"
        }
    }

    func flags(_ args: [String], scope: Setting.Scope) throws -> [(Setting, String?)] {
        scope == .cells ? try CommonOptions.parse(args).flags : try ServerOptions.parse(args).flags
    }

    func testEveryTableEntryHasExactlyOneFlag() throws {
        let common = try CommonOptions.parse([]).flags
        let server = try ServerOptions.parse([]).flags
        XCTAssertEqual(common.map(\.0.key), Setting.all.filter { $0.scope == .cells }.map(\.key))
        XCTAssertEqual(
            Set(server.map(\.0.key)), Set(Setting.all.filter { $0.scope == .server }.map(\.key)))
        XCTAssertEqual(common.count + server.count, Setting.all.count)
        XCTAssertTrue((common + server).allSatisfy { $0.1 == nil }, "no flag given, no value")
        // `--<flag> value` reaches exactly its own entry: an option declared
        // with one entry's name but paired with another's fails here.
        for s in Setting.all {
            let given = try flags(["--\(s.flag)", sample(s)], scope: s.scope).filter { $0.1 != nil }
            XCTAssertEqual(given.map(\.0.key), [s.key], s.flag)
            XCTAssertEqual(given.first?.1, sample(s), s.flag)
        }
    }

    /// The trust and audit commands take the state directory (and the trust
    /// commands the policies) from the same table entries and file.
    func testStateCommandsShareTheTableFlags() throws {
        let state = try StateOptions.parse(["--state-dir", "/sample/state"])
        XCTAssertEqual(state.flags.compactMap { $0.1 == nil ? nil : $0.0.key }, ["stateDirectory"])
        XCTAssertEqual(state.settings().stateDirectory, "/sample/state")
        let trust = try TrustLocation.parse(["--state-dir", "/s", "--policies", "/p"])
        XCTAssertEqual(trust.state, "/s")
        XCTAssertEqual(trust.policies, "/p")
        let audit = try Audit.Location.parse(["--state-dir", "/a"])
        XCTAssertEqual(audit.state, "/a")
        XCTAssertThrowsError(try TrustLocation.parse(["--policies", ""]))
    }

    func testRunAndConfigShowTakeEveryFlag() throws {
        let args = Setting.all.flatMap { ["--\($0.flag)", sample($0)] }
        let run = try Run.parse(args + ["--allow-unsigned"])
        let show = try ConfigCommand.Show.parse(args)
        for command in [
            run.cellOptions.flags + run.serverOptions.flags,
            show.cellOptions.flags + show.serverOptions.flags,
        ] {
            XCTAssertEqual(command.count, Setting.all.count)
            for (s, v) in command { XCTAssertEqual(v, sample(s), s.key) }
        }
    }

    func testOutOfRangeFlagsAreUsageErrors() {
        XCTAssertThrowsError(try Run.parse(["--worker-uid", "0"])) {
            XCTAssertEqual(
                Run.message(for: $0),
                "--worker-uid: 0 is out of range 1...4294967294 uid: workers never run as root (uid 0)")
        }
        for command: ParsableCommand.Type in [Call.self, Doctor.self, Validate.self, ConfigCommand.Show.self] {
            let extra = command == Call.self ? ["echo"] : []
            XCTAssertThrowsError(try command.parseAsRoot(extra + ["--worker-uid", "0"]), "\(command)") {
                XCTAssertTrue(command.message(for: $0).contains("workers never run as root"), "\(command)")
            }
        }
        XCTAssertThrowsError(try Run.parse(["--prespawn=17"])) {
            XCTAssertEqual(Run.message(for: $0), "--prespawn: 17 is out of range 0...16 workers")
        }
        XCTAssertThrowsError(try Run.parse(["--log-level", "loud"]))
        XCTAssertThrowsError(try Run.parse(["--max-message-bytes", "1"]))
    }

    /// `ServiceOptions` keeps its own copy of the server settings: each of
    /// its properties named like a `SupervisorSettings` one holds the same
    /// value, by default and when set.
    func testServiceOptionsTakeTheSettings() throws {
        func same(_ o: ServiceOptions, _ s: SupervisorSettings) -> Int {
            var settings: [String: String] = [:]
            for c in Mirror(reflecting: s).children { settings[c.label!] = "\(c.value)" }
            var shared = 0
            for c in Mirror(reflecting: o).children {
                guard let v = settings[c.label!] else { continue }
                XCTAssertEqual("\(c.value)", v, c.label!)
                shared += 1
            }
            return shared
        }
        XCTAssertEqual(same(ServiceOptions(), SupervisorSettings()), 6)
        let path = NSTemporaryDirectory() + "mcps-empty-config-\(UInt32.random(in: 0...UInt32.max)).json"
        try "{}".write(toFile: path, atomically: true, encoding: .utf8)
        let s = try SupervisorSettings.resolve(configurationFile: path, flags: Setting.all.map { ($0, sample($0)) })
        XCTAssertEqual(same(ServiceOptions(settings: s), s), 6)
    }
}
