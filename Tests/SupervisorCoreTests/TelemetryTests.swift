import Foundation
import StrictJSON
import SupervisorPlatform
import Synchronization
import XCTest

@testable import SupervisorCore

/// Traces and security-event export (docs/operations.md, "Traces and
/// security events"): what the log hands to exporters, trace context and
/// endpoint parsing, the bounded queue, the OTLP/JSON encoding.
final class TelemetryTests: XCTestCase {
    var state = ""

    override func setUp() {
        state = NSTemporaryDirectory() + "mcps-otel-\(UUID().uuidString)"
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: state)
    }

    /// Every record the log holds is handed over once it is durable, once,
    /// byte for byte; records cut back out after a failed data sync are
    /// handed over only as they are finally written (with their final seq).
    func testRecordObserverGetsExactlyTheDurableRecords() throws {
        let log = try SecurityLog(stateDirectory: state, checkpointIdleMilliseconds: 60_000, retryMilliseconds: 20)
        let seen = Mutex<[DurableRecord]>([])
        log.recordObserver = { records in seen.withLock { $0 += records } }
        for i in 0..<20 {
            log.appendLater([SecurityEvent(.callStart, ["callId": .string("s\(i)")])])
            XCTAssertNil(log.appendAndWait([ObservabilityTests.end("e\(i)")]))
        }
        let before = seen.withLock { $0.count }
        XCTAssertEqual(before, 40)
        // Unsynced, then a failed data sync: nothing of it is handed over.
        log.appendLater([SecurityEvent(.callStart, ["callId": "cut"])])
        log.faultInjector = { $0 == .dataSync ? LogFault(errno: EIO) : nil }
        XCTAssertNotNil(log.appendAndWait([ObservabilityTests.end("refused")]))
        XCTAssertEqual(seen.withLock { $0.count }, before, "nothing that is not durable is exported")
        log.faultInjector = nil
        var error: SecurityLogError? = SecurityLogError.closed(state)
        for _ in 0..<200 where error != nil {
            error = log.appendAndWait([ObservabilityTests.end("after")])
            if error != nil { Thread.sleep(forTimeInterval: 0.02) }
        }
        XCTAssertNil(error)
        log.close(finalEvent: SecurityEvent(.supervisorStop, ["reason": "test"]))

        var lines: [[UInt8]] = []
        for f in try SecurityLog.eventFiles(in: state + "/security") {
            let bytes = try XCTUnwrap(FileManager.default.contents(atPath: f.path))
            lines += bytes.split(separator: 0x0A).map(Array.init)
        }
        let got = seen.withLock { $0 }
        XCTAssertEqual(got.map(\.line), lines, "one for one, in order, byte for byte")
        XCTAssertEqual(got.map(\.seq), Array(1...UInt64(lines.count)))
        for (r, line) in zip(got, lines) {
            let o = try JSONParser.parse(line)
            XCTAssertEqual(o["type"]?.stringValue, r.type)
            XCTAssertGreaterThan(r.writtenUnixNanoseconds, 0)
        }
        XCTAssertTrue(got.contains { $0.type == "log.recovered" })
        XCTAssertEqual(got.filter { $0.line.contains(Array("\"cut\"".utf8)) }.count, 1)
    }

    func testTraceparentIsParsedAsW3CSays() {
        let ok = TraceContext(
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", tracestate: "a=1,b=2")
        XCTAssertEqual(ok?.traceID, "4bf92f3577b34da6a3ce929d0e0e4736")
        XCTAssertEqual(ok?.parentSpanID, "00f067aa0ba902b7")
        XCTAssertEqual(ok?.sampled, true)
        XCTAssertEqual(ok?.traceState, "a=1,b=2")
        XCTAssertEqual(
            TraceContext(traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")?.sampled, false)
        // A later version may carry more fields; version 00 may not.
        XCTAssertNotNil(TraceContext(traceparent: "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"))
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  // uppercase
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  // zero span id
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  // invalid version
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  // short
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "", "garbage",
        ] {
            XCTAssertNil(TraceContext(traceparent: bad), bad)
        }
        // A tracestate that is not printable ASCII is dropped, not passed on.
        XCTAssertNil(
            TraceContext(
                traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", tracestate: "a=\u{1b}[31m"
            )?.traceState)
        let meta = JSONObject([("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")])
        XCTAssertNotNil(TraceContext(meta: meta))
        XCTAssertNil(TraceContext(meta: JSONObject([("traceparent", 5)])))
        XCTAssertNil(TraceContext(meta: nil))
    }

    func testEndpointParsing() throws {
        XCTAssertEqual(
            try OTLPEndpoint.parse("http://127.0.0.1:4318").get(),
            OTLPEndpoint(host: "127.0.0.1", port: 4318, basePath: ""))
        XCTAssertEqual(
            try OTLPEndpoint.parse("http://collector/otlp/").get(),
            OTLPEndpoint(host: "collector", port: 4318, basePath: "/otlp"))
        XCTAssertEqual(
            try OTLPEndpoint.parse("http://[::1]:9000").get(), OTLPEndpoint(host: "::1", port: 9000, basePath: ""))
        for (bad, why) in [
            ("https://c:4318", "https is not supported"), ("127.0.0.1:4318", "expected http://"),
            ("http://:4318", "no host"), ("http://h:0", "bad port"), ("http://h:x", "bad port"),
            ("http://u:p@h:1", "credentials"), ("http://h/p?q=1", "query"),
        ] {
            guard case .failure(let p) = OTLPEndpoint.parse(bad) else { return XCTFail(bad) }
            XCTAssertTrue(p.description.contains(why), "\(bad): \(p)")
        }
    }

    /// A sink that never returns: `offer` still returns at once, the queue
    /// stays at its capacity, the rest is counted as dropped, and `stop`
    /// gives up on time and counts what it could not send.
    func testAStuckSinkNeverBlocksOfferAndDropsAreCounted() {
        let release = DispatchSemaphore(value: 0)
        let counts = Mutex<(sent: Int, dropped: Int)>((0, 0))
        let channel = ExportChannel<Int>(
            name: "stuck", capacity: 100, batchSize: 10, interval: 0.01,
            send: { _ in
                release.wait()
                return nil
            },
            counted: { s, d in counts.withLock { $0 = ($0.sent + s, $0.dropped + d) } })
        channel.start()
        let t0 = monotonicNanoseconds()
        for i in 0..<10_000 { channel.offer(i) }
        let took = Double(monotonicNanoseconds() - t0) / 1e9
        XCTAssertLessThan(took, 1, "offer never waits on the sink")
        // At most the queue and the one batch in flight are kept.
        XCTAssertGreaterThanOrEqual(channel.droppedCount, 10_000 - 110)
        let s0 = monotonicNanoseconds()
        channel.stop(seconds: 0.2)
        XCTAssertLessThan(Double(monotonicNanoseconds() - s0) / 1e9, 1)
        XCTAssertEqual(channel.droppedCount, 10_000, "everything not sent is counted")
        XCTAssertEqual(counts.withLock { $0.dropped }, 10_000)
        XCTAssertEqual(counts.withLock { $0.sent }, 0)
        release.signal()
    }

    /// The protobuf JSON mapping: hex ids, 64-bit integers as strings, enums
    /// as numbers, lowerCamelCase names; a log record's body is the line.
    func testOTLPJSONEncoding() throws {
        let span = SpanData(
            traceID: "4bf92f3577b34da6a3ce929d0e0e4736", spanID: "00f067aa0ba902b7", parentSpanID: "1111111111111111",
            traceState: "a=1", name: "tools/call echo", kind: .server, startUnixNanoseconds: 1_700_000_000_000_000_001,
            endUnixNanoseconds: 1_700_000_000_000_000_002,
            attributes: [("gen_ai.tool.name", .string("echo")), ("n", .int(7)), ("b", .bool(true))],
            error: "timeout")
        let doc = try JSONParser.parse(OTLPJSON.traces([span], resource: [("service.name", .string("x"))]))
        let s = try XCTUnwrap(
            doc["resourceSpans"]?.arrayValue?[0]["scopeSpans"]?.arrayValue?[0]["spans"]?.arrayValue?[0])
        XCTAssertEqual(s["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736")
        XCTAssertEqual(s["parentSpanId"], "1111111111111111")
        XCTAssertEqual(s["traceState"], "a=1")
        XCTAssertEqual(s["kind"], 2)
        XCTAssertEqual(s["startTimeUnixNano"], "1700000000000000001")
        XCTAssertEqual(s["status"]?["code"], 2)
        XCTAssertEqual(s["attributes"]?.arrayValue?[1]["value"]?["intValue"], "7")
        XCTAssertEqual(s["attributes"]?.arrayValue?[2]["value"]?["boolValue"], true)
        XCTAssertEqual(
            doc["resourceSpans"]?.arrayValue?[0]["resource"]?["attributes"]?.arrayValue?[0]["key"], "service.name")

        let line = Array(#"{"seq":3,"type":"sandbox.violation","prev":"ab"}"#.utf8)
        let logs = try JSONParser.parse(
            OTLPJSON.logs(
                [DurableRecord(seq: 3, type: "sandbox.violation", line: line, writtenUnixNanoseconds: 5)],
                resource: []))
        let r = try XCTUnwrap(
            logs["resourceLogs"]?.arrayValue?[0]["scopeLogs"]?.arrayValue?[0]["logRecords"]?.arrayValue?[0])
        XCTAssertEqual(r["body"]?["stringValue"]?.stringValue.map { Array($0.utf8) }, line)
        XCTAssertEqual(r["severityText"], "WARN")
        XCTAssertEqual(r["eventName"], "sandbox.violation")
        XCTAssertEqual(r["timeUnixNano"], "5")
    }
}
