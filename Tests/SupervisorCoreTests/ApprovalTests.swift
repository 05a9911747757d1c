import Foundation
import StrictJSON
import Synchronization
import XCTest

@testable import SupervisorCore

/// Approval without any worker: the policy's approval rules and the
/// 2026-07-28 era's request state (MAC, binding to the call, expiry,
/// single use).
final class ApprovalTests: XCTestCase {
    final class WallClock: Sendable {
        let now = Mutex<Int64>(1_800_000_000)
        func advance(_ seconds: Int64) { now.withLock { $0 += seconds } }
    }

    func request(
        tool: String = "fs_write", arguments: JSONObject = JSONObject([("path", "/tmp/a"), ("content", "x")]),
        principal: String = "uid:1000", timeout: Int = 60
    ) -> ApprovalRequest {
        ApprovalRequest(
            tool: tool, arguments: arguments, principal: principal, phase: "act", rule: "approval[0]",
            timeoutSeconds: timeout)
    }

    func states(_ clock: WallClock, capacity: Int = 4096) -> ApprovalStates {
        ApprovalStates(capacity: capacity, clock: { clock.now.withLock { $0 } })
    }

    func problem(_ r: Result<Void, ApprovalStates.Problem>) -> ApprovalStates.Problem? {
        if case .failure(let p) = r { return p }
        return nil
    }

    func testAFreshStateIsAcceptedOnceThenRefusedAsReplayed() {
        let clock = WallClock()
        let s = states(clock)
        let token = s.issue(for: request())
        XCTAssertNoThrow(try s.redeem(token, for: request()).get())
        XCTAssertEqual(problem(s.redeem(token, for: request())), .replayed)
    }

    func testATamperedStateFailsTheMAC() {
        let s = states(WallClock())
        let token = s.issue(for: request())
        let parts = token.split(separator: ".").map(String.init)
        // Re-sign nothing: change the payload (another tool) and keep the MAC.
        var payload = Data(base64URL: parts[0])!
        let text = String(decoding: payload, as: UTF8.self).replacingOccurrences(of: "fs_write", with: "fs_wrote")
        payload = Data(text.utf8)
        XCTAssertEqual(problem(s.redeem(payload.base64URL + "." + parts[1], for: request())), .tampered)
        // A flipped MAC byte.
        var mac = Data(base64URL: parts[1])!
        mac[0] ^= 1
        XCTAssertEqual(problem(s.redeem(parts[0] + "." + mac.base64URL, for: request())), .tampered)
        XCTAssertEqual(problem(s.redeem("not a state", for: request())), .malformed)
        XCTAssertEqual(problem(s.redeem("", for: request())), .malformed)
        // A state of another run (another key) is refused as well.
        let other = states(WallClock()).issue(for: request())
        XCTAssertEqual(problem(s.redeem(other, for: request())), .tampered)
    }

    func testAnExpiredStateIsRefused() {
        let clock = WallClock()
        let s = states(clock)
        let token = s.issue(for: request(timeout: 60))
        clock.advance(60)
        XCTAssertEqual(problem(s.redeem(token, for: request())), .expired)
        let fresh = s.issue(for: request(timeout: 60))
        clock.advance(59)
        XCTAssertNoThrow(try s.redeem(fresh, for: request()).get())
    }

    func testAStateIsBoundToToolArgumentsAndPrincipal() {
        let s = states(WallClock())
        let token = s.issue(for: request())
        XCTAssertEqual(problem(s.redeem(token, for: request(tool: "fs_delete"))), .otherCall)
        XCTAssertEqual(
            problem(s.redeem(token, for: request(arguments: JSONObject([("path", "/etc/passwd"), ("content", "x")])))),
            .otherCall)
        XCTAssertEqual(problem(s.redeem(token, for: request(principal: "uid:0"))), .otherCall)
        // Refusing a foreign call does not use the state up.
        XCTAssertNoThrow(try s.redeem(token, for: request()).get())
    }

    func temporaryDirectory() throws -> String {
        let d = NSTemporaryDirectory() + "approval-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: false)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        return d
    }

    func testInstancesSharingKeyAndDirectoryRedeemAStateOnceBetweenThem() throws {
        let dir = try temporaryDirectory()
        let key = try ApprovalStates.loadKey(path: dir + "/approval.key")
        try ApprovalStates.checkUsedDirectory(dir + "/used")
        let clock = WallClock()
        func instance() -> ApprovalStates {
            ApprovalStates(key: key, usedDirectory: dir + "/used", clock: { clock.now.withLock { $0 } })
        }
        let (a, b) = (instance(), instance())
        let token = a.issue(for: request(timeout: 10))
        // Issued by A, redeemed by B; then used up on both.
        XCTAssertNoThrow(try b.redeem(token, for: request()).get())
        XCTAssertEqual(problem(b.redeem(token, for: request())), .replayed)
        XCTAssertEqual(problem(a.redeem(token, for: request())), .replayed)
        // An instance with another key (not shared) refuses it as tampered.
        XCTAssertEqual(problem(states(clock).redeem(a.issue(for: request()), for: request())), .tampered)
        // The key file is read back as the same key.
        let again = ApprovalStates(
            key: try ApprovalStates.loadKey(path: dir + "/approval.key"), usedDirectory: dir + "/used",
            clock: { clock.now.withLock { $0 } })
        XCTAssertNoThrow(try again.redeem(a.issue(for: request()), for: request()).get())
        // Records are pruned only well after their state expired.
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir + "/used").count, 2)
        clock.advance(10 + ApprovalStates.clockSkewAllowance + 61)
        XCTAssertEqual(problem(a.redeem(token, for: request())), .expired)
        XCTAssertNoThrow(try a.redeem(a.issue(for: request()), for: request()).get())
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir + "/used").count, 1)
    }

    func testAStateOfOneTenantIsAnotherCallInAnotherTenant() {
        let clock = WallClock()
        let s = states(clock)
        func r(_ tenant: String?) -> ApprovalRequest {
            ApprovalRequest(
                tool: "fs_write", arguments: JSONObject([("path", "/tmp/a")]), principal: "oauth:a", phase: "act",
                rule: "approval[0]", timeoutSeconds: 60, tenant: tenant)
        }
        let token = s.issue(for: r("acme"))
        XCTAssertEqual(problem(s.redeem(token, for: r("globex"))), .otherCall)
        XCTAssertEqual(problem(s.redeem(token, for: r(nil))), .otherCall)
        XCTAssertNoThrow(try s.redeem(token, for: r("acme")).get())
    }

    func testASharedKeyFileOthersCouldReadIsRefused() throws {
        let dir = try temporaryDirectory()
        let path = dir + "/approval.key"
        _ = try ApprovalStates.loadKey(path: path)
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int, 0o600)
        try FileManager.default.setAttributes([.posixPermissions: 0o640], ofItemAtPath: path)
        XCTAssertThrowsError(try ApprovalStates.loadKey(path: path)) { e in
            XCTAssertTrue("\(e)".contains("\(path) has mode 640: it must be 0600"), "\(e)")
        }
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path)
        try Data("approval-hmac-sha256:c2hvcnQ=\n".utf8).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try ApprovalStates.loadKey(path: path)) { e in
            XCTAssertTrue("\(e)".contains("32 bytes"), "\(e)")
        }
        try FileManager.default.createDirectory(atPath: dir + "/open", withIntermediateDirectories: false)
        try FileManager.default.setAttributes([.posixPermissions: 0o777], ofItemAtPath: dir + "/open")
        XCTAssertThrowsError(try ApprovalStates.checkUsedDirectory(dir + "/open")) { e in
            XCTAssertTrue("\(e)".contains("writable by no one else"), "\(e)")
        }
        XCTAssertThrowsError(try ApprovalStates.loadKey(path: "relative.key"))
    }

    func testASharedKeyFileOfAnotherUserIsRefused() throws {
        try XCTSkipUnless(geteuid() == 0, "giving a file to another user needs root")
        let dir = try temporaryDirectory()
        let path = dir + "/approval.key"
        _ = try ApprovalStates.loadKey(path: path)
        XCTAssertEqual(chown(path, 4242, 4242), 0)
        XCTAssertThrowsError(try ApprovalStates.loadKey(path: path)) { e in
            XCTAssertTrue("\(e)".contains("is owned by uid 4242, not by this user (uid 0)"), "\(e)")
        }
        try FileManager.default.createDirectory(atPath: dir + "/theirs", withIntermediateDirectories: false)
        XCTAssertEqual(chown(dir + "/theirs", 4242, 4242), 0)
        XCTAssertThrowsError(try ApprovalStates.checkUsedDirectory(dir + "/theirs")) { e in
            XCTAssertTrue("\(e)".contains("must be this user's (uid 0)"), "\(e)")
        }
    }

    func testUsedStatesAreBoundedAndForgottenOnlyAfterExpiry() {
        let clock = WallClock()
        let s = states(clock, capacity: 2)
        let a = s.issue(for: request(timeout: 10))
        let b = s.issue(for: request(timeout: 10))
        let c = s.issue(for: request(timeout: 100))
        XCTAssertNoThrow(try s.redeem(a, for: request()).get())
        XCTAssertNoThrow(try s.redeem(b, for: request()).get())
        // Full, and nothing has expired: refused rather than forgetting a or b.
        XCTAssertEqual(problem(s.redeem(c, for: request())), .tooMany)
        clock.advance(11)
        XCTAssertNoThrow(try s.redeem(c, for: request()).get())
        XCTAssertEqual(s.usedCount, 1)
        XCTAssertEqual(problem(s.redeem(c, for: request())), .replayed)
    }

    func testPolicyApprovalRules() throws {
        let doc = """
            {"phases": {"states": ["observe", "act"], "initial": "observe"},
             "principals": [{"name": "local", "allow": ["*"]}],
             "approval": [{"tool": "fs_write", "phase": "act"}, {"tool": "git_*", "principal": "uid:0"}],
             "approvalTimeoutSeconds": 120}
            """
        let p = try Policy.parse(bytes: Array(doc.utf8), path: "p.json")
        XCTAssertEqual(p.approvalTimeoutSeconds, 120)
        XCTAssertEqual(p.approvalRule(tool: "fs_write", phase: "act", principal: "uid:5")?.0, 0)
        XCTAssertNil(p.approvalRule(tool: "fs_write", phase: "observe", principal: "uid:5"))
        XCTAssertEqual(p.approvalRule(tool: "git_log", phase: "observe", principal: "uid:0")?.0, 1)
        XCTAssertNil(p.approvalRule(tool: "git_log", phase: "observe", principal: "uid:5"))
    }

    func testPolicyApprovalErrorsNameFileAndField() {
        func error(_ extra: String) -> ConfigError? {
            let doc = """
                {"phases": {"states": ["observe", "act"], "initial": "observe"},
                 "principals": [{"name": "local", "allow": ["*"]}], \(extra)}
                """
            do {
                _ = try Policy.parse(bytes: Array(doc.utf8), path: "p.json")
                return nil
            } catch { return error }
        }
        XCTAssertEqual(error(#""approval": [{"tool": "x", "phase": "deploy"}]"#)?.field, "approval[0].phase")
        XCTAssertEqual(error(#""approval": [{"phase": "act"}]"#)?.field, "approval[0].tool")
        XCTAssertEqual(error(#""approval": [{"tool": "x", "when": "always"}]"#)?.field, "approval[0].when")
        XCTAssertEqual(error(#""approval": {"tool": "x"}"#)?.field, "approval")
        XCTAssertEqual(error(#""approvalTimeoutSeconds": 0"#)?.field, "approvalTimeoutSeconds")
        XCTAssertEqual(error(#""approvalTimeoutSeconds": 3601"#)?.field, "approvalTimeoutSeconds")
        XCTAssertEqual(error(#""approval": [{"tool": "x"}]"#)?.file, nil)
        XCTAssertEqual(error(#""approval": [{"tool": 3}]"#)?.file, "p.json")
    }
}
