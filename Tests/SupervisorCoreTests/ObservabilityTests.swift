import Foundation
import StrictJSON
import SupervisorPlatform
import Synchronization
import XCTest

@testable import SupervisorCore

/// What operators see: the log records an append became (for receipts),
/// the metrics and their textfile, the statistics of `audit stats`.
final class ObservabilityTests: XCTestCase {
    var state = ""

    override func setUp() {
        state = NSTemporaryDirectory() + "mcps-obs-\(UUID().uuidString)"
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: state)
    }

    static func end(_ id: String) -> SecurityEvent {
        SecurityEvent(.callEnd, ["callId": .string(id), "outcome": "success"])
    }

    /// Appends with `recorded:` and waits for the answer.
    static func append(_ log: SecurityLog, _ events: [SecurityEvent]) -> ([LogRecordID]?, SecurityLogError?) {
        let done = DispatchSemaphore(value: 0)
        let answer = Answer()
        log.append(events) { records, error in
            answer.set(records, error)
            done.signal()
        }
        done.wait()
        return answer.get()
    }

    final class Answer: @unchecked Sendable {
        // @unchecked: written once before the semaphore is signalled, read after the wait.
        var records: [LogRecordID]?
        var error: SecurityLogError?
        func set(_ r: [LogRecordID]?, _ e: SecurityLogError?) {
            records = r
            error = e
        }
        func get() -> ([LogRecordID]?, SecurityLogError?) { (records, error) }
    }

    // MARK: the records an append became

    func testAppendTellsWhichRecordsItsEventsBecame() throws {
        let log = try SecurityLog(
            stateDirectory: state, checkpointIdleMilliseconds: 60_000, retryMilliseconds: 20)
        // Concurrent appenders and unsynced events in between: each append
        // is told its own records, in the order of its events.
        let found = Mutex<[String: LogRecordID]>([:])
        DispatchQueue.concurrentPerform(iterations: 4) { t in
            for i in 0..<25 {
                log.appendLater([SecurityEvent(.callStart, ["callId": .string("later-\(t)-\(i)")])])
                let (records, error) = Self.append(log, [Self.end("a-\(t)-\(i)"), Self.end("b-\(t)-\(i)")])
                XCTAssertNil(error)
                XCTAssertEqual(records?.count, 2)
                found.withLock {
                    $0["a-\(t)-\(i)"] = records?.first
                    $0["b-\(t)-\(i)"] = records?.last
                }
            }
        }
        // After a failed data sync the log recovers with log.recovered
        // first: the records still name the append's own events.
        log.faultInjector = { $0 == .dataSync ? LogFault(errno: EIO, partialBytes: 0) : nil }
        let (none, failed) = Self.append(log, [Self.end("refused")])
        XCTAssertNil(none, "a failed append became no record")
        XCTAssertEqual(failed?.errno, EIO)
        log.faultInjector = nil
        var recovered: ([LogRecordID]?, SecurityLogError?) = (nil, nil)
        for _ in 0..<200 {
            recovered = Self.append(log, [Self.end("after")])
            if recovered.1 == nil { break }
            Thread.sleep(forTimeInterval: 0.02)
        }
        XCTAssertNil(recovered.1)
        found.withLock { $0["after"] = recovered.0?.first }
        log.close()

        let records = try SecurityLogReader.records(directory: state + "/security")
        let byID = Dictionary(
            records.compactMap { r in r["callId"]?.stringValue.map { ($0, r) } }, uniquingKeysWith: { a, _ in a })
        let all = found.withLock { $0 }
        XCTAssertEqual(all.count, 201)
        for (id, r) in all {
            let onDisk = try XCTUnwrap(byID[id], id)
            XCTAssertEqual(Int64(r.seq), onDisk.seq, id)
            XCTAssertEqual(r.sha256, onDisk.hash, id)
        }
        XCTAssertTrue(records.contains { $0.type == "log.recovered" })
        XCTAssertNil(byID["refused"])
    }

    // MARK: metrics

    func report(_ outcome: CallOutcome, prespawned: Bool = false, denied: DeniedSyscall? = nil) -> CallReport {
        CallReport(
            outcome: outcome, exit: nil, durationNanoseconds: 2_000_000, cpuNanoseconds: 0, peakMemoryBytes: nil,
            bytesFromWorker: 0, diagnostics: "", spawnNanoseconds: 500_000, firstFrameNanoseconds: 0,
            reapNanoseconds: 0, deniedSyscall: denied, prespawned: prespawned)
    }

    /// Sample lines of the exposition, by metric name and labels.
    func samples(_ m: SupervisorMetrics) -> [String: Double] {
        var out: [String: Double] = [:]
        for line in String(decoding: m.exposition(), as: UTF8.self).split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let v = Double(line[line.index(after: space)...]) else {
                continue
            }
            out[String(line[..<space])] = v
        }
        return out
    }

    func testMetricsCountWhatTheLogRecords() throws {
        let m = SupervisorMetrics()
        let cell = "c"
        func ended(_ tool: String, _ r: CallReport) {
            let events = callEndEvents(tool: tool, cell: cell, report: r)
            m.callEnded(
                tool: tool, report: r, events: events, admitNanoseconds: 10_000, recordNanoseconds: 300_000,
                totalNanoseconds: 3_000_000)
        }
        ended("echo", report(.success(CellResult(content: [], structuredContent: nil)), prespawned: true))
        ended("echo", report(.success(CellResult(content: [], structuredContent: nil))))
        ended("probe", report(.sandboxViolation(syscall: "socket", architecture: "x86_64")))
        ended("probe", report(.timeout))
        ended(
            "probe",
            report(.toolError("no"), denied: DeniedSyscall(syscall: "ptrace", architecture: "x86_64")))
        m.callRefused(reason: "policy")
        m.callRefused(reason: "policy")
        m.logSynced(nanoseconds: 1_500_000)
        m.countWorkers { 3 }

        let s = samples(m)
        XCTAssertEqual(s[#"mcp_supervisor_calls_total{tool="echo",outcome="success"}"#], 2)
        XCTAssertEqual(s[#"mcp_supervisor_calls_total{tool="probe",outcome="sandbox_violation"}"#], 1)
        XCTAssertEqual(s[#"mcp_supervisor_calls_total{tool="probe",outcome="timeout"}"#], 1)
        XCTAssertEqual(s[#"mcp_supervisor_calls_total{tool="probe",outcome="tool_error"}"#], 1)
        XCTAssertEqual(s[#"mcp_supervisor_refusals_total{reason="policy"}"#], 2)
        XCTAssertEqual(s[#"mcp_supervisor_sandbox_violations_total{kind="seccomp"}"#], 2)
        XCTAssertEqual(s[#"mcp_supervisor_sandbox_violations_total{kind="limit"}"#], 1)
        XCTAssertEqual(s["mcp_supervisor_prespawn_hits_total"], 1)
        XCTAssertEqual(s["mcp_supervisor_prespawn_misses_total"], 4)
        XCTAssertEqual(s["mcp_supervisor_workers_alive"], 3)
        XCTAssertEqual(s["mcp_supervisor_security_log_sync_seconds_count"], 1)
        XCTAssertEqual(s[#"mcp_supervisor_call_duration_seconds_count{tool="echo"}"#], 2)
        XCTAssertEqual(s[#"mcp_supervisor_call_duration_seconds_bucket{tool="echo",le="0.005"}"#], 2)
        XCTAssertEqual(s[#"mcp_supervisor_call_duration_seconds_bucket{tool="echo",le="0.0025"}"#], 0)
        for stage in ["admit", "record", "run"] {
            XCTAssertEqual(s[#"mcp_supervisor_stage_duration_seconds_count{tool="echo",stage="\#(stage)"}"#], 2, stage)
        }
        // A prespawned worker's spawn is not part of its call.
        XCTAssertEqual(s[#"mcp_supervisor_stage_duration_seconds_count{tool="echo",stage="spawn"}"#], 1)
    }

    /// The events `SecurityEvent.callEnd` writes, without a PreparedCell.
    func callEndEvents(tool: String, cell: String, report r: CallReport) -> [SecurityEvent] {
        var events = [SecurityEvent(.callEnd, ["tool": .string(tool), "outcome": .string(r.outcome.kind)])]
        switch r.outcome {
        case .sandboxViolation: events.append(SecurityEvent(.sandboxViolation, ["kind": "seccomp"]))
        case .timeout, .limitExceeded: events.append(SecurityEvent(.sandboxViolation, ["kind": "limit"]))
        default: break
        }
        if r.deniedSyscall != nil, !r.outcome.isSandboxViolation {
            events.append(SecurityEvent(.sandboxViolation, ["kind": "seccomp"]))
        }
        return events
    }

    func testMetricsTextfileIsReplacedWholeAndFailuresAreReported() throws {
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        let m = SupervisorMetrics()
        let path = state + "/mcp-supervisor.prom"
        let file = MetricsTextfile(path: path, metrics: m, intervalSeconds: 3600)
        XCTAssertNil(file.writeOnce())
        let inode = try FileManager.default.attributesOfItem(atPath: path)[.systemFileNumber] as? Int
        m.callRefused(reason: "busy")
        XCTAssertNil(file.writeOnce())
        let text = try String(contentsOfFile: path, encoding: .utf8)
        XCTAssertTrue(text.contains(#"mcp_supervisor_refusals_total{reason="busy"} 1"#), text)
        XCTAssertNotEqual(
            try FileManager.default.attributesOfItem(atPath: path)[.systemFileNumber] as? Int, inode,
            "a new file is renamed over the old one (a reader never sees a partial file)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: path + ".tmp"))
        // The thread writes once at start and once more at stop.
        file.start()
        m.callRefused(reason: "busy")
        file.stop()
        XCTAssertTrue(
            try String(contentsOfFile: path, encoding: .utf8).contains(
                #"mcp_supervisor_refusals_total{reason="busy"} 2"#))
        // A directory that does not exist: the error names the file.
        let bad = MetricsTextfile(path: state + "/missing/x.prom", metrics: m, intervalSeconds: 1)
        let error = try XCTUnwrap(bad.writeOnce())
        XCTAssertTrue("\(error)".contains("missing/x.prom.tmp"), "\(error)")
    }

    // MARK: top

    func testTopReadsTheMetricsBack() throws {
        let m = SupervisorMetrics()
        let ok = report(.success(CellResult(content: [], structuredContent: nil)))
        // 98 calls of 3 ms and 2 of 600 ms: p50 in the 2.5–5 ms bucket, p99
        // in the 500 ms–1 s one.
        for i in 0..<100 {
            m.callEnded(
                tool: "echo", report: ok, events: [], admitNanoseconds: 0, recordNanoseconds: 0,
                totalNanoseconds: i < 98 ? 3_000_000 : 600_000_000)
        }
        m.callEnded(
            tool: "probe", report: report(.timeout), events: [SecurityEvent(.sandboxViolation, ["kind": "limit"])],
            admitNanoseconds: 0, recordNanoseconds: 0, totalNanoseconds: 1_000_000)
        m.callRefused(reason: "policy")
        let snap = try MetricsSnapshot(text: String(decoding: m.exposition(), as: UTF8.self))
        let rows = snap.tools
        XCTAssertEqual(rows.map(\.tool), ["echo", "probe"])
        XCTAssertEqual(rows[0].calls, 100)
        XCTAssertEqual(rows[1].outcomes, ["timeout": 1])
        let p50 = try XCTUnwrap(rows[0].p50Seconds)
        XCTAssertTrue(p50 > 0.0025 && p50 <= 0.005, "\(p50)")
        let p99 = try XCTUnwrap(rows[0].p99Seconds)
        XCTAssertTrue(p99 > 0.5 && p99 <= 1, "\(p99)")
        let screen = snap.screen(previous: nil, elapsedSeconds: 0)
        XCTAssertTrue(screen.contains("refusals: policy 1"), screen)
        XCTAssertTrue(screen.contains("sandbox violations: limit 1"), screen)
        XCTAssertTrue(screen.contains("timeout 1"), screen)
        // Escaped label values, and a line that is no sample.
        let odd = try MetricsSnapshot(text: #"x{a="q\"uote",b="back\\slash"} 2"# + "\n")
        XCTAssertEqual(odd.value("x", ["a": "q\"uote", "b": "back\\slash"]), 2)
        XCTAssertThrowsError(try MetricsSnapshot(text: "# HELP x\nnot a sample\n")) {
            XCTAssertTrue("\($0)".contains("line 2"), "\($0)")
        }
    }

    // MARK: audit stats

    func testCallStatsFromRecords() {
        var s = CallStats()
        for d in [100, 200, 300, 400, 500, 600, 700, 800, 900, 10_000] {
            s.add(type: "call.end", ["tool": "echo", "outcome": "success", "durationMicroseconds": .int(Int64(d))])
        }
        s.add(type: "call.end", ["tool": "probe", "outcome": "sandbox_violation", "durationMicroseconds": 50])
        s.add(type: "sandbox.violation", ["tool": "probe", "kind": "seccomp"])
        s.add(type: "call.refused", ["tool": "probe", "reason": "rate_limited"])
        s.add(type: "call.start", ["tool": "echo"])
        XCTAssertEqual(s.tools["echo"]?.calls, 10)
        XCTAssertEqual(s.tools["echo"]?.percentile(50), 500)
        XCTAssertEqual(s.tools["echo"]?.percentile(99), 10_000)
        XCTAssertEqual(s.tools["probe"]?.outcomes, ["sandbox_violation": 1])
        XCTAssertEqual(s.refusals, ["rate_limited": 1])
        XCTAssertEqual(s.violations, ["seccomp": 1])
        let json = JSONValue.object(s.json)
        XCTAssertEqual(json["tools"]?["echo"]?["p99Microseconds"], .int(10_000))
        XCTAssertEqual(json["tools"]?["echo"]?["p50Microseconds"], .int(500))
        XCTAssertTrue(s.table.contains("rate_limited 1"), s.table)
    }
}
