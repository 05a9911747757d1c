import Logging
import StrictJSON
import SupervisorCore
import XCTest

/// The supervisor holds a bounded amount of worker output whatever the
/// manifest declares: 8 MiB per call, and a budget for all calls together.
final class OutputCapTests: XCTestCase {
    func probe(frameKiB: Int) throws -> PreparedCell {
        try Harness.prepare(
            try Harness.probeManifest(
                limits: #"{"timeoutMilliseconds": 20000, "outputKiB": 1048576, "frameKiB": \#(frameKiB)}"#))
    }

    /// A frame the manifest allows (64 MiB) but over the cap is refused
    /// from its length prefix: only the first read's bytes were taken in.
    func testFrameOverTheCapIsRefusedFromItsPrefix() throws {
        let r = try Harness.call(try probe(frameKiB: 65536), ["action": "frame-flood", "bytes": .int(16 << 20)])
        XCTAssertEqual(r.outcome, .limitExceeded(.bufferedOutput), r.outcome.detail)
        XCTAssertLessThan(r.bytesFromWorker, 1 << 20)
    }

    /// Under the cap, the frame is taken whole (and judged on its content).
    func testFrameUnderTheCapIsRead() throws {
        let r = try Harness.call(try probe(frameKiB: 65536), ["action": "frame-flood", "bytes": .int(4 << 20)])
        XCTAssertEqual(r.outcome, .protocolViolation("frame is string, not an object"), r.outcome.detail)
    }

    /// The budget for all calls together applies below the per-call cap,
    /// and every call gives its share back.
    func testTheTotalBudgetBoundsACallAndIsGivenBack() throws {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let runner = try CallRunner(host: Harness.host(), logger: logger, outputBudgetBytes: 2 << 20)
        let cell = try probe(frameKiB: 8192)
        let big = runner.run(
            cell: cell, tool: "probe", arguments: ["action": "frame-flood", "bytes": .int(3 << 20)],
            callID: "b1")
        XCTAssertEqual(big.outcome, .limitExceeded(.bufferedOutput), big.outcome.detail)
        XCTAssertEqual(runner.outputBudget.usedBytes, 0)
        let small = runner.run(
            cell: cell, tool: "probe",
            arguments: ["action": "frame-flood", "bytes": .int(1 << 20)], callID: "b2")
        XCTAssertEqual(small.outcome, .protocolViolation("frame is string, not an object"), small.outcome.detail)
        XCTAssertEqual(runner.outputBudget.usedBytes, 0)
        let answer = runner.run(cell: cell, tool: "probe", arguments: ["action": "echo", "text": "x"], callID: "b3")
        XCTAssertEqual(Harness.text(answer), "x", answer.outcome.detail)
        XCTAssertEqual(runner.outputBudget.usedBytes, 0)
    }
}
