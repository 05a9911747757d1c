import Foundation
import StrictJSON
import XCTest

@testable import SupervisorCore

/// The settings table (`Setting.all`) is the single declaration of every
/// server setting: the file parser, the flags, the digest and the docs must
/// all follow it.
final class SettingTableTests: XCTestCase {
    var repositoryRoot: String {
        var root = #filePath
        for _ in 0..<3 { root = String(root[..<root.lastIndex(of: "/")!]) }
        return root
    }

    /// A valid value for a setting that is not its default, as a file and as
    /// a flag would spell it.
    func sample(_ s: Setting) -> (json: JSONValue, flag: String) {
        switch s.kind {
        case .directory: return (.string("/sample/\(s.key)"), "/sample/\(s.key)")
        case .integer(_, let r, let d):
            let v = d == r.upperBound ? r.lowerBound : r.upperBound
            return (.int(Int64(v)), "\(v)")
        case .identity: return (.int(4242), "4242")
        case .choice(_, let c, let d):
            let v = c.first { $0 != d }!
            return (.string(v), v)
        case .file: return (.string("/sample/\(s.key).prom"), "/sample/\(s.key).prom")
        case .endpoint: return (.string("http://127.0.0.1:4318/sample"), "http://127.0.0.1:4318/sample")
        case .toolPatterns: return (.array(["fs_read", "git_*"]), "fs_read,git_*")
        }
    }

    func writeConfig(_ o: JSONObject) -> String {
        let p = NSTemporaryDirectory() + "mcps-config-\(UInt32.random(in: 0...UInt32.max)).json"
        _ = FileManager.default.createFile(atPath: p, contents: Data(JSONValue.object(o).serializedBytes()))
        return p
    }

    func testDocsTableIsGeneratedFromTheTable() throws {
        let path = repositoryRoot + "/docs/configuration.md"
        let doc = try String(contentsOfFile: path, encoding: .utf8)
        let regenerated = try XCTUnwrap(Setting.documentWithTable(doc), "\(path) lacks the settings table markers")
        XCTAssertEqual(regenerated, doc, "docs/configuration.md disagrees with Setting.all: run `make docs`")
        for s in Setting.all {
            XCTAssertTrue(doc.contains("| `\(s.key)` | `--\(s.flag)` |"), s.key)
        }
    }

    func testKeysFlagsAndPropertiesAreEachDeclaredOnce() {
        XCTAssertEqual(Set(Setting.all.map(\.key)).count, Setting.all.count)
        XCTAssertEqual(Set(Setting.all.map(\.flag)).count, Setting.all.count)
        for s in Setting.all {
            XCTAssertFalse(s.help.isEmpty, s.key)
            XCTAssertFalse(s.defaultDescription.isEmpty, s.key)
            XCTAssertTrue(s.flagHelp.contains("default: "), s.key)
        }
        // Setting each entry changes exactly one stored property, and every
        // stored property (but the file's path) is some entry's.
        let defaults = SupervisorSettings()
        func children(_ s: SupervisorSettings) -> [String: String] {
            var out: [String: String] = [:]
            for c in Mirror(reflecting: s).children { out[c.label!] = "\(c.value)" }
            return out
        }
        let before = children(defaults)
        var covered: Set<String> = []
        for s in Setting.all {
            var changed = defaults
            XCTAssertNoThrow(try s.apply(flagValue: sample(s).flag, to: &changed))
            let after = children(changed)
            let differing = before.keys.filter { before[$0] != after[$0] }
            XCTAssertEqual(differing.count, 1, "\(s.key) sets \(differing)")
            covered.formUnion(differing)
        }
        XCTAssertEqual(covered, Set(before.keys).subtracting(["configurationFile"]))
    }

    func testDefaultsComeFromTheTable() {
        let s = SupervisorSettings()
        for setting in Setting.all {
            switch setting.kind {
            case .integer(_, let range, let d):
                XCTAssertEqual(setting.value(in: s), .int(Int64(d)), setting.key)
                XCTAssertTrue(range.contains(d), setting.key)
            case .choice(_, let choices, let d):
                XCTAssertEqual(setting.value(in: s), .string(d), setting.key)
                XCTAssertTrue(choices.contains(d), setting.key)
            case .identity:
                XCTAssertEqual(setting.value(in: s), .null, "\(setting.key): the host decides")
            case .directory(_, let d):
                XCTAssertEqual(setting.value(in: s), .string(d()), setting.key)
            case .file, .endpoint:
                XCTAssertEqual(setting.value(in: s), .null, "\(setting.key): off unless given")
            case .toolPatterns:
                XCTAssertEqual(setting.value(in: s), .array([]), "\(setting.key): empty unless given")
            }
        }
        XCTAssertEqual(s.maxConcurrentCalls, 4)
        XCTAssertEqual(s.logLevel, "info")
    }

    func testFileAndFlagsAcceptTheSameKeysAndValues() throws {
        var all = JSONObject()
        for s in Setting.all { all[s.key] = sample(s).json }
        let fromFile = try SupervisorSettings.resolve(configurationFile: writeConfig(all), flags: [])
        let fromFlags = try SupervisorSettings.resolve(
            configurationFile: writeConfig([:]), flags: Setting.all.map { ($0, sample($0).flag) })
        for s in Setting.all {
            XCTAssertEqual(s.value(in: fromFile), sample(s).json, s.key)
            XCTAssertEqual(s.value(in: fromFlags), sample(s).json, s.key)
        }
        // Flags override the file.
        let both = try SupervisorSettings.resolve(
            configurationFile: writeConfig(["maxConcurrentCalls": 8]), flags: [(.maxConcurrentCalls, "9")])
        XCTAssertEqual(both.maxConcurrentCalls, 9)
        // Only the table's keys.
        XCTAssertThrowsError(
            try SupervisorSettings.resolve(configurationFile: writeConfig(["manifest": "x"]), flags: [])
        ) {
            XCTAssertEqual(($0 as? ConfigError)?.field, "manifest")
            XCTAssertTrue("\($0)".hasSuffix("manifest: unknown field"), "\($0)")
        }
    }

    func testOutOfRangeIsRefusedAlikeByFileAndFlag() throws {
        for s in Setting.all {
            let bad: (JSONValue, String)
            switch s.kind {
            case .directory: bad = (.int(1), "")
            case .integer(_, let r, _): bad = (.int(Int64(r.upperBound) + 1), "\(r.upperBound + 1)")
            case .identity: bad = (.int(0), "0")
            case .choice: bad = (.string("loud"), "loud")
            case .file: bad = (.string("/tmp/"), "")
            case .endpoint: bad = (.string("https://collector:4318"), "collector:4318")
            case .toolPatterns: bad = (.array(["fs read"]), "fs read")
            }
            let path = writeConfig([s.key: bad.0])
            XCTAssertThrowsError(try SupervisorSettings.resolve(configurationFile: path, flags: []), s.key) {
                XCTAssertEqual(
                    $0 as? ConfigError, ConfigError(file: path, field: s.key, message: ($0 as! ConfigError).message))
            }
            XCTAssertThrowsError(
                try SupervisorSettings.resolve(configurationFile: writeConfig([:]), flags: [(s, bad.1)])
            ) {
                XCTAssertTrue("\($0)".hasPrefix("--\(s.flag): "), "\($0)")
            }
        }
    }

    func testWorkersNeverRunAsRoot() throws {
        let path = writeConfig(["workerUid": 0])
        XCTAssertThrowsError(try SupervisorSettings.resolve(configurationFile: path, flags: [])) {
            XCTAssertEqual(
                "\($0)", "\(path): workerUid: 0 is out of range 1...4294967294 uid: workers never run as root (uid 0)")
        }
        XCTAssertThrowsError(
            try SupervisorSettings.resolve(configurationFile: writeConfig([:]), flags: [(.workerUid, "0")])
        ) {
            XCTAssertEqual(
                "\($0)", "--worker-uid: 0 is out of range 1...4294967294 uid: workers never run as root (uid 0)")
        }
        XCTAssertThrowsError(
            try SupervisorSettings.resolve(configurationFile: writeConfig(["workerGid": 0]), flags: []))
        XCTAssertThrowsError(
            try SupervisorSettings.resolve(configurationFile: writeConfig([:]), flags: [(.workerGid, "0")]))
        // (uid_t)-1 means "unchanged" to setresuid: refused as well.
        XCTAssertThrowsError(
            try SupervisorSettings.resolve(configurationFile: writeConfig([:]), flags: [(.workerUid, "4294967295")]))
        let ok = try SupervisorSettings.resolve(configurationFile: writeConfig([:]), flags: [(.workerUid, "1000")])
        XCTAssertEqual(ok.workerUID, 1000)
    }

    func testRelativePathsInTheFileAreRelativeToTheFile() throws {
        let path = writeConfig(["stateDirectory": "state", "manifests": "../m"])
        let s = try SupervisorSettings.resolve(configurationFile: path, flags: [])
        let dir = String(path[..<path.lastIndex(of: "/")!])
        XCTAssertEqual(s.stateDirectory, dir + "/state")
        XCTAssertEqual(s.manifestsDirectory, String(dir[..<dir.lastIndex(of: "/")!]) + "/m")
        XCTAssertEqual(s.configurationFile, path)
        XCTAssertEqual(s.recorded["configFile"], .string(path))
    }

    func testRecordedSettingsNameEveryKey() {
        XCTAssertEqual(SupervisorSettings().recorded.keys, Setting.all.map(\.key) + ["configFile"])
    }
}
