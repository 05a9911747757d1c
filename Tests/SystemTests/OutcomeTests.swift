import StrictJSON
import SupervisorCore
import SupervisorPlatform
import XCTest

/// The outcome names the first cause, whatever the worker does after it: a
/// real worker hits a limit or the deadline and then misbehaves on its way
/// out (catches SIGXCPU, leaves a broken frame behind).
final class OutcomeTests: XCTestCase {
    func probe(limits: String) throws -> PreparedCell {
        try Harness.prepare(try Harness.probeManifest(limits: limits))
    }

    /// The kernel sends SIGXCPU at the CPU limit; a worker that catches it
    /// and answers with an error frame was still stopped by the limit.
    func testCaughtSIGXCPUThenErrorFrameIsTheCPULimit() throws {
        let cell = try probe(limits: #"{"cpuSeconds": 1, "timeoutMilliseconds": 30000}"#)
        let r = try Harness.call(cell, ["action": "catch-sigxcpu", "seconds": 5])
        XCTAssertEqual(r.outcome, .limitExceeded(.cpu), r.outcome.detail)
    }

    /// ... and one that exits from its SIGXCPU handler without a result.
    func testCaughtSIGXCPUThenExitIsTheCPULimit() throws {
        let cell = try probe(limits: #"{"cpuSeconds": 1, "timeoutMilliseconds": 30000}"#)
        let r = try Harness.call(cell, ["action": "catch-sigxcpu", "seconds": 5, "exit": 0])
        XCTAssertEqual(r.outcome, .limitExceeded(.cpu), r.outcome.detail)
        XCTAssertEqual(r.exit, .exited(0))
    }

    /// A worker well inside its CPU limit is not reported as over it.
    func testAnswerBeforeTheCPULimitIsItsAnswer() throws {
        let cell = try probe(limits: #"{"cpuSeconds": 1, "timeoutMilliseconds": 30000}"#)
        let r = try Harness.call(cell, ["action": "catch-sigxcpu", "seconds": 0.3])
        XCTAssertEqual(Harness.text(r), "no SIGXCPU", r.outcome.detail)
    }

    /// The deadline passes while a frame is half written; the frame is cut
    /// when the worker dies of the SIGTERM. The deadline came first.
    func testDeadlineWithAPartialFrameIsATimeout() throws {
        let cell = try probe(limits: #"{"timeoutMilliseconds": 300}"#)
        for ignore in [false, true] {
            let r = try Harness.call(
                cell,
                [
                    "action": "raw", "hex": "000000107b22", "sleepMs": 5000,
                    "ignoreTerm": .bool(ignore),
                ])
            XCTAssertEqual(r.outcome, .timeout, "ignoreTerm \(ignore): \(r.outcome.detail)")
        }
    }

    /// A broken frame before the deadline is still a protocol violation.
    func testPartialFrameBeforeTheDeadlineIsAProtocolViolation() throws {
        let cell = try probe(limits: #"{"timeoutMilliseconds": 5000}"#)
        let r = try Harness.call(cell, ["action": "raw", "hex": "000000107b22"])
        guard case .protocolViolation(let m) = r.outcome else { return XCTFail(r.outcome.detail) }
        XCTAssertTrue(m.contains("frame body"), m)
    }
}
