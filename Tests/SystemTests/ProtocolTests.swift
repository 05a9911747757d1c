import StrictJSON
import SupervisorCore
import XCTest

/// A worker that breaks the frame protocol ends its call as a protocol
/// violation; the supervisor never resynchronises.
final class WorkerProtocolTests: XCTestCase {
    func raw(_ hex: String, exit: Int64 = 0, limits: String = "{}") throws -> CallReport {
        let cell = try Harness.prepare(try Harness.probeManifest(limits: limits))
        return try Harness.call(cell, ["action": "raw", "hex": .string(hex), "exit": .int(exit)], id: "p1")
    }

    func frame(_ json: String) -> String {
        let b = Array(json.utf8)
        let n = b.count
        return String(format: "%08x", n) + b.map { String(format: "%02x", $0) }.joined()
    }

    func assertViolation(_ r: CallReport, _ contains: String, file: StaticString = #filePath, line: UInt = #line) {
        guard case .protocolViolation(let m) = r.outcome else {
            return XCTFail("expected a protocol violation, got \(r.outcome.detail)", file: file, line: line)
        }
        XCTAssertTrue(m.contains(contains), "\(m)", file: file, line: line)
    }

    func testOversizedLengthIsRejectedBeforeAllocating() throws {
        assertViolation(try raw("ffffffff"), "exceeds the limit")
    }

    func testZeroLength() throws { assertViolation(try raw("00000000"), "zero") }

    func testTruncatedPrefix() throws { assertViolation(try raw("0000"), "length prefix") }

    func testBodyShorterThanDeclared() throws { assertViolation(try raw("000000107b7d"), "frame body") }

    func testInvalidUTF8() throws { assertViolation(try raw("00000004" + "22c32822"), "UTF-8") }

    func testInvalidJSON() throws { assertViolation(try raw(frame("{nope")), "not valid JSON") }

    func testDuplicateKeys() throws {
        assertViolation(try raw(frame(#"{"type":"result","type":"error","id":"p1","content":[]}"#)), "duplicate key")
    }

    func testDeepNesting() throws {
        assertViolation(
            try raw(frame(String(repeating: "[", count: 200) + String(repeating: "]", count: 200))), "deeper")
    }

    func testWrongID() throws {
        assertViolation(try raw(frame(#"{"type":"result","id":"other","content":[]}"#)), "not this call")
    }

    func testUnknownFrameType() throws {
        assertViolation(
            try raw(frame(#"{"type":"request","id":"p1","tool":"x","arguments":{}}"#)), "unknown frame type")
    }

    func testSecondResult() throws {
        let one = frame(#"{"type":"result","id":"p1","content":[]}"#)
        assertViolation(try raw(one + one), "after the final result")
    }

    func testExitWithoutResult() throws { assertViolation(try raw("", exit: 0), "without sending a result") }

    func testExitZeroAfterPartialFrame() throws {
        let f = frame(#"{"type":"result","id":"p1","content":[]}"#)
        assertViolation(try raw(String(f.prefix(20))), "frame body")
    }

    func testValidRawResultIsAccepted() throws {
        let r = try raw(frame(#"{"type":"result","id":"p1","content":[{"type":"text","text":"ok\u001b[31m"}]}"#))
        guard case .success(let res) = r.outcome else { return XCTFail(r.outcome.detail) }
        XCTAssertEqual(res.content.first?["text"]?.stringValue, "ok[31m", "control characters are stripped")
    }
}
