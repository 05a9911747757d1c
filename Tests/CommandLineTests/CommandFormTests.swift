import ArgumentParser
import Foundation
import StrictJSON
import SupervisorCore
import XCTest

@testable import mcp_supervisor

/// The forms the command line accepts and the messages it gives: time
/// bounds, version arguments, readable file errors, and the defaults found
/// from the executable rather than the working directory.
final class CommandFormTests: XCTestCase {
    let now = Date(timeIntervalSince1970: 1_795_000_000)  // 2026-11-18T11:06:40Z

    func testTimeBoundsAcceptRFC3339DatesAndTimesAgo() throws {
        XCTAssertEqual(try TimeBound.parse("2026-11-22T10:00:00Z"), "2026-11-22T10:00:00.000000Z")
        XCTAssertEqual(try TimeBound.parse("2026-11-22T11:00:00+01:00"), "2026-11-22T10:00:00.000000Z")
        XCTAssertEqual(try TimeBound.parse("2026-11-22T10:00:00.250Z"), "2026-11-22T10:00:00.250000Z")
        XCTAssertEqual(try TimeBound.parse("2026-11-22"), "2026-11-22T00:00:00.000000Z")
        XCTAssertEqual(try TimeBound.parse("15m", now: now), "2026-11-18T10:51:40.000000Z")
        XCTAssertEqual(try TimeBound.parse("2h", now: now), "2026-11-18T09:06:40.000000Z")
        XCTAssertEqual(try TimeBound.parse("1d", now: now), "2026-11-17T11:06:40.000000Z")
        XCTAssertEqual(try TimeBound.parse("90s", now: now), "2026-11-18T11:05:10.000000Z")
        XCTAssertEqual(try TimeBound.parse("1w", now: now), "2026-11-11T11:06:40.000000Z")
    }

    func testTimeBoundsRefuseEverythingElse() {
        for bad in ["yesterday", "", "15", "m", "-5m", "2h30m", "2026-13-01", "2026-11-22 10:00", "10:00", "1y"] {
            XCTAssertThrowsError(try TimeBound.parse(bad, now: now), bad) {
                XCTAssertTrue("\($0)".contains("cannot read the time"), "\($0)")
            }
        }
    }

    /// The bound compares with the log's own timestamps as strings.
    func testTimeBoundsCompareWithLogTimes() throws {
        let bound = try TimeBound.parse("2026-11-22T10:00:00Z")
        XCTAssertLessThan("2026-11-22T09:59:59.999999Z", bound)
        XCTAssertGreaterThanOrEqual("2026-11-22T10:00:00.000000Z", bound)
        XCTAssertGreaterThan("2026-11-22T10:00:00.000001Z", bound)
    }

    func testQueryRefusesAnUnreadableSinceAsAUsageError() {
        XCTAssertThrowsError(try Audit.Query.parseAsRoot(["--since", "yesterday"])) {
            XCTAssertTrue(Audit.Query.message(for: $0).contains("cannot read the time \"yesterday\""))
        }
        let q = try? Audit.Query.parseAsRoot(["--since", "2026-11-22T11:00:00+01:00", "--until", "2026-11-23"])
        XCTAssertEqual((q as? Audit.Query)?.filter.since, "2026-11-22T10:00:00.000000Z")
        XCTAssertEqual((q as? Audit.Query)?.filter.until, "2026-11-23T00:00:00.000000Z")
    }

    func testCellVersionHasOneFormAndTheOldOneStillWorks() throws {
        XCTAssertTrue(try CellCommand.cellVersion("echo:3f6506dc1eaf", nil) == ("echo", "3f6506dc1eaf"))
        XCTAssertTrue(try CellCommand.cellVersion("echo", "3f6506dc1eaf") == ("echo", "3f6506dc1eaf"))
        XCTAssertThrowsError(try CellCommand.cellVersion("echo", nil))
        XCTAssertThrowsError(try CellCommand.cellVersion("echo:", nil))
        XCTAssertNoThrow(try CellCommand.Revoke.parseAsRoot(["echo:3f6506", "--key", "k"]))
        XCTAssertNoThrow(try CellCommand.Revoke.parseAsRoot(["echo", "3f6506", "--key", "k"]))
        XCTAssertThrowsError(try CellCommand.Activate.parseAsRoot(["echo", "--key", "k"])) {
            XCTAssertTrue(CellCommand.Activate.message(for: $0).contains("expected CELL:VERSION"))
        }
    }

    func testFoundationFileErrorsReadAsOneLine() {
        let missing = CocoaError(.fileReadNoSuchFile, userInfo: [NSFilePathErrorKey: "/nowhere/k.key"])
        XCTAssertEqual(describeError(missing), "cannot read /nowhere/k.key: no such file or directory")
        let denied = NSError(
            domain: NSCocoaErrorDomain, code: NSFileWriteNoPermissionError,
            userInfo: [
                NSFilePathErrorKey: "/etc/x.sig",
                NSUnderlyingErrorKey: NSError(domain: NSPOSIXErrorDomain, code: Int(EACCES)),
            ])
        XCTAssertEqual(describeError(denied), "cannot write /etc/x.sig: EACCES (Permission denied)")
        let other = NSError(domain: NSCocoaErrorDomain, code: 512, userInfo: [NSFilePathErrorKey: "/tmp/none/x"])
        XCTAssertFalse(describeError(other).contains("NSCocoaErrorDomain"), describeError(other))
        XCTAssertEqual(describeError(TrustCommandError("plain")), "plain")
    }

    /// Defaults come from where the executable is, never from the working
    /// directory: a `policies/` in the directory a client starts the
    /// server in cannot change the sandbox.
    func testDefaultsIgnoreTheWorkingDirectory() throws {
        let dir = NSTemporaryDirectory() + "cwd-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir + "/policies", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir + "/manifests", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let before = FileManager.default.currentDirectoryPath
        XCTAssertTrue(FileManager.default.changeCurrentDirectoryPath(dir))
        defer { _ = FileManager.default.changeCurrentDirectoryPath(before) }
        let s = SupervisorSettings()
        XCTAssertNotEqual(s.policiesDirectory, dir + "/policies")
        XCTAssertNotEqual(s.manifestsDirectory, dir + "/manifests")
        XCTAssertTrue(SupervisorSettings.shareDirectories().contains { s.policiesDirectory == $0 + "/policies" })
    }
}
