import Foundation
import StrictJSON
import SupervisorCore
import XCTest

/// A frame cell's call is answered at its final frame: the report reaches
/// the caller before the worker's teardown, and the reap only confirms it.
final class AnswerTests: XCTestCase {
    final class Seen: @unchecked Sendable {
        // @unchecked: written and read on the test's thread only (the runner
        // calls back on the thread that called `run`).
        var order: [String] = []
        var answered: CallReport?
        var delivered: CallReport?
    }

    func run(_ args: JSONObject, limits: String = "{}") throws -> Seen {
        let cell = try Harness.prepare(try Harness.probeManifest(limits: limits))
        let seen = Seen()
        _ = try Harness.runner().run(
            cell: cell, tool: "probe", arguments: args, callID: "p1",
            answered: { r in
                seen.order.append("answered")
                seen.answered = r
            },
            deliver: { r in
                seen.order.append("delivered")
                seen.delivered = r
            })
        return seen
    }

    func frame(_ json: String) -> String {
        let b = Array(json.utf8)
        return String(format: "%08x", b.count) + b.map { String(format: "%02x", $0) }.joined()
    }

    func testTheAnswerComesAtTheFinalFrameBeforeTheReap() throws {
        let seen = try run(["action": "echo", "text": "hello"])
        XCTAssertEqual(seen.order, ["answered", "delivered"])
        guard let a = seen.answered, let d = seen.delivered else { return XCTFail("no answer") }
        guard case .success(let r) = a.outcome else { return XCTFail(a.outcome.detail) }
        XCTAssertEqual(r.content.first?["text"]?.stringValue, "hello")
        XCTAssertEqual(d.outcome, a.outcome, "the reap names the same outcome")
        XCTAssertNil(a.exit, "answered before the worker was reaped")
        XCTAssertNotNil(d.exit)
        XCTAssertGreaterThan(a.durationNanoseconds, 0)
        XCTAssertLessThanOrEqual(a.durationNanoseconds, d.durationNanoseconds)
        XCTAssertEqual(a.peakMemoryBytes, d.peakMemoryBytes, "peak memory is read at the final frame")
    }

    func testAToolErrorIsAnsweredAtItsFrameToo() throws {
        let seen = try run(["action": "raw", "hex": .string(frame(#"{"type":"error","id":"p1","message":"no"}"#))])
        XCTAssertEqual(seen.order, ["answered", "delivered"])
        XCTAssertEqual(seen.answered?.outcome, .toolError("no"))
    }

    /// A second result in the same write is seen before any answer: the call
    /// is a protocol violation, answered only after the reap.
    func testTwoResultsInOneWriteAreAProtocolViolationNotAnAnswer() throws {
        let one = frame(#"{"type":"result","id":"p1","content":[]}"#)
        let seen = try run(["action": "raw", "hex": .string(one + one)])
        XCTAssertEqual(seen.order, ["delivered"])
        guard case .protocolViolation(let m)? = seen.delivered?.outcome else {
            return XCTFail("expected a protocol violation, got \(seen.delivered?.outcome.detail ?? "nothing")")
        }
        XCTAssertTrue(m.contains("after the final result"), m)
    }

    /// Without a final frame there is no early answer: the reap decides.
    func testACallWithoutAFinalFrameIsAnsweredAtTheReap() throws {
        let seen = try run(["action": "raw", "hex": "", "exit": 0])
        XCTAssertEqual(seen.order, ["delivered"])
    }
}
