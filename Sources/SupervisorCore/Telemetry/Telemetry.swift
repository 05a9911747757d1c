import CoreMetrics
import Foundation
import StrictJSON
import SupervisorPlatform
import Synchronization

/// A security log record once it is durable (written and fdatasynced), as
/// `SecurityLog.recordObserver` hands it over: the line exactly as the log
/// file holds it, without the newline.
public struct DurableRecord: Sendable {
    public let seq: UInt64
    public let type: String
    public let line: [UInt8]
    /// When the data sync that made it durable ended (Unix time).
    public let writtenUnixNanoseconds: UInt64
}

/// Told of every call the pipeline ends or refuses, with its stage times
/// (monotonic nanoseconds, `SupervisorMetrics.clock()`), after the call's
/// record is durable. Must only queue: it runs on the call's path.
public protocol CallObserver: Sendable {
    func callEnded(_ call: CallTimeline)
    func callRefused(_ call: ToolCall, tool: String, cell: PreparedCell?, reason: String, arrived: UInt64)
}

/// What the pipeline knows of one admitted call's stages.
public struct CallTimeline: Sendable {
    public var call: ToolCall
    public var callID: String
    public var tool: String
    public var cell: PreparedCell
    public var report: CallReport
    /// Arrival at the pipeline; the end of admission; the append of
    /// call.end and how long until it was durable.
    public var arrived: UInt64
    public var admitNanoseconds: UInt64
    public var appendedAt: UInt64
    public var recordNanoseconds: UInt64
    /// call.end could not be made durable: the result was withheld.
    public var recordFailed: Bool
}

/// Traces of calls and the security log's records, exported as they happen
/// (docs/operations.md, "Traces and security events"): spans and log
/// records over OTLP/HTTP with the JSON encoding, records to a JSON-lines
/// file. Every sink is behind its own bounded `ExportChannel`: a slow or
/// unreachable sink costs drops (counted), never time on a call or on the
/// log's writer. The security log stays the record.
public final class Telemetry: CallObserver {
    let resource: [(String, AttributeValue)]
    let traces: ExportChannel<SpanData>?
    let otlpLogs: ExportChannel<DurableRecord>?
    let jsonl: ExportChannel<DurableRecord>?
    let jsonlFile: FileDescriptor?
    /// Counters of sent and dropped items per sink, once metrics exist.
    let counters: ExportCountersSlot

    public static let sinks = ["otlp_traces", "otlp_logs", "events_jsonl"]

    /// Opens the JSON-lines file (appending, created 0600 if missing; a
    /// regular file only) now, so that a path that cannot be written stops
    /// the server at start.
    public init(otlp: OTLPEndpoint?, eventsJSONL: String?, serviceVersion: String) throws(SystemError) {
        resource = [
            ("service.name", .string("mcp-supervisor")), ("service.version", .string(serviceVersion)),
            ("service.instance.id", .string(TraceContext.randomID(bytes: 16))),
        ]
        let counters = ExportCountersSlot()
        self.counters = counters
        func count(_ sink: String) -> @Sendable (Int, Int) -> Void {
            { sent, dropped in counters.value.withLock { $0 }?.count(sink: sink, sent: sent, dropped: dropped) }
        }
        if let otlp {
            let r = resource
            traces = ExportChannel<SpanData>(
                name: "\(otlp)/v1/traces",
                send: { HTTPPost.send(OTLPJSON.traces($0, resource: r), to: otlp, path: "/v1/traces") },
                counted: count("otlp_traces"))
            otlpLogs = ExportChannel<DurableRecord>(
                name: "\(otlp)/v1/logs",
                send: { HTTPPost.send(OTLPJSON.logs($0, resource: r), to: otlp, path: "/v1/logs") },
                counted: count("otlp_logs"))
        } else {
            traces = nil
            otlpLogs = nil
        }
        if let path = eventsJSONL {
            // O_NONBLOCK: opening a FIFO without a reader must not hang the
            // start. Only a regular file is taken: a FIFO or a socket could
            // block the export thread or take half a line.
            let fd = try Sys.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK, mode: 0o600)
            let mode: UInt32
            do { mode = try fd.stat().mode } catch {
                fd.close()
                throw error
            }
            guard mode & UInt32(S_IFMT) == UInt32(S_IFREG) else {
                fd.close()
                throw SystemError("not a regular file", errno: EINVAL)
            }
            jsonlFile = fd
            jsonl = ExportChannel<DurableRecord>(
                name: path,
                send: { records in
                    var out: [UInt8] = []
                    for r in records { out += r.line + [0x0A] }
                    do { try fd.writeAll(out) } catch { return "\(error)" }
                    return nil
                }, counted: count("events_jsonl"))
        } else {
            jsonlFile = nil
            jsonl = nil
        }
        traces?.start()
        otlpLogs?.start()
        jsonl?.start()
    }

    public var exportsRecords: Bool { otlpLogs != nil || jsonl != nil }

    /// Exports every record `log` makes durable from now on.
    public func attach(to log: SecurityLog) {
        guard exportsRecords else { return }
        let (a, b) = (otlpLogs, jsonl)
        log.recordObserver = { records in
            a?.offer(records)
            b?.offer(records)
        }
    }

    /// Traces `pipeline`'s calls; counts sent and dropped items in `metrics`.
    public func attach(to pipeline: CallPipeline, metrics: SupervisorMetrics?) {
        if let metrics {
            let c = ExportCounters(metrics: metrics, sinks: Array(dropped.keys).sorted())
            counters.value.withLock { $0 = c }
        }
        if traces != nil { pipeline.callObserver = self }
    }

    /// Sends what is queued (at most `seconds` in all), then stops. Call it
    /// after the log's last record (`supervisor.stop`).
    public func stop(seconds: TimeInterval = 2) {
        let deadline = Date(timeIntervalSinceNow: seconds)
        otlpLogs?.stop(seconds: max(0.1, deadline.timeIntervalSinceNow))
        // A thread still inside a write keeps its descriptor: closed, its
        // number could be reused by a file opened next (the metrics file).
        if jsonl?.stop(seconds: max(0.1, deadline.timeIntervalSinceNow)) == true { jsonlFile?.close() }
        traces?.stop(seconds: max(0.1, deadline.timeIntervalSinceNow))
    }

    /// Items dropped so far by each sink that is configured.
    public var dropped: [String: Int] {
        var d: [String: Int] = [:]
        if let traces { d["otlp_traces"] = traces.droppedCount }
        if let otlpLogs { d["otlp_logs"] = otlpLogs.droppedCount }
        if let jsonl { d["events_jsonl"] = jsonl.droppedCount }
        return d
    }

    // MARK: spans of a call

    static func unixNanoseconds() -> UInt64 {
        UInt64(Date().timeIntervalSince1970 * 1_000_000_000)
    }

    /// One span per call (kind SERVER, a child of the client's span when
    /// its `_meta` carried a `traceparent`) and one child per stage:
    /// `admit`, then `spawn` or `prespawn.take`, `run`, `record`.
    public func callEnded(_ c: CallTimeline) {
        guard let traces, c.call.traceContext?.sampled ?? true else { return }
        let now = SupervisorMetrics.clock()
        let wallNow = Self.unixNanoseconds()
        func wall(_ m: UInt64) -> UInt64 { m >= now ? wallNow : wallNow - (now - m) }
        let outcome = c.report.outcome.kind
        let root = rootSpan(c.call, name: c.tool, start: wall(c.arrived), end: wallNow)
        var spans = [root]
        spans[0].attributes += [
            ("mcp_supervisor.cell.name", .string(c.cell.name)),
            ("mcp_supervisor.cell.version", .string(c.cell.version)),
            ("mcp_supervisor.cell.version_id", .string(c.cell.manifest.manifestSHA256)),
            ("mcp_supervisor.call.id", .string(c.callID)),
            ("mcp_supervisor.outcome", .string(outcome)),
            ("mcp_supervisor.prespawned", .bool(c.report.prespawned)),
        ]
        if c.recordFailed {
            spans[0].error = "record_failed"
        } else if outcome != "success" {
            spans[0].error = outcome
        }
        func child(_ stage: String, _ start: UInt64, _ end: UInt64) {
            spans.append(
                SpanData(
                    traceID: root.traceID, spanID: TraceContext.randomID(bytes: 8), parentSpanID: root.spanID,
                    traceState: root.traceState, name: stage, kind: .internalSpan, startUnixNanoseconds: wall(start),
                    endUnixNanoseconds: wall(max(start, end)), attributes: [("mcp_supervisor.stage", .string(stage))]))
        }
        let admitted = c.arrived + c.admitNanoseconds
        child("admit", c.arrived, admitted)
        switch c.report.outcome {
        case .refused, .cannotRun:
            break  // no worker served the call (as the metrics count it)
        default:
            // The runner started at the answer minus the worker's part.
            let runnerStart = max(admitted, c.appendedAt &- min(c.appendedAt, c.report.durationNanoseconds))
            var runStart = runnerStart
            if c.report.prespawned {
                // Taking a ready worker is a lock and a dequeue: an instant.
                child("prespawn.take", runnerStart, runnerStart)
            } else {
                runStart = min(c.appendedAt, runnerStart + c.report.spawnNanoseconds)
                child("spawn", runnerStart, runStart)
            }
            child("run", runStart, c.appendedAt)
        }
        child("record", c.appendedAt, c.appendedAt + c.recordNanoseconds)
        traces.offer(spans)
    }

    /// A refused call: its span and its `admit` child, which refused it.
    public func callRefused(_ call: ToolCall, tool: String, cell: PreparedCell?, reason: String, arrived: UInt64) {
        guard let traces, call.traceContext?.sampled ?? true else { return }
        let now = SupervisorMetrics.clock()
        let wallNow = Self.unixNanoseconds()
        let start = wallNow - (now - min(now, arrived))
        var root = rootSpan(call, name: tool, start: start, end: wallNow)
        if let cell {
            root.attributes += [
                ("mcp_supervisor.cell.name", .string(cell.name)),
                ("mcp_supervisor.cell.version", .string(cell.version)),
                ("mcp_supervisor.cell.version_id", .string(cell.manifest.manifestSHA256)),
            ]
        }
        root.attributes += [
            ("mcp_supervisor.outcome", .string("refused")), ("mcp_supervisor.refusal.reason", .string(reason)),
        ]
        root.error = "refused: \(reason)"
        let admit = SpanData(
            traceID: root.traceID, spanID: TraceContext.randomID(bytes: 8), parentSpanID: root.spanID,
            traceState: root.traceState, name: "admit", kind: .internalSpan, startUnixNanoseconds: start,
            endUnixNanoseconds: wallNow, attributes: [("mcp_supervisor.stage", .string("admit"))], error: reason)
        traces.offer([root, admit])
    }

    func rootSpan(_ call: ToolCall, name tool: String, start: UInt64, end: UInt64) -> SpanData {
        let ctx = call.traceContext
        return SpanData(
            traceID: ctx?.traceID ?? TraceContext.randomID(bytes: 16), spanID: TraceContext.randomID(bytes: 8),
            parentSpanID: ctx?.parentSpanID, traceState: ctx?.traceState, name: "tools/call \(tool)", kind: .server,
            startUnixNanoseconds: start, endUnixNanoseconds: end,
            attributes: [
                ("mcp.method.name", .string("tools/call")), ("gen_ai.operation.name", .string("execute_tool")),
                ("gen_ai.tool.name", .string(tool)),
            ])
    }
}

final class ExportCountersSlot: Sendable {
    let value = Mutex<ExportCounters?>(nil)
}

/// `mcp_supervisor_export_sent_total` and `_dropped_total`, by sink.
struct ExportCounters: Sendable {
    let sent: [String: CoreMetrics.Counter]
    let dropped: [String: CoreMetrics.Counter]

    init(metrics: SupervisorMetrics, sinks: [String]) {
        func make(_ name: String) -> [String: CoreMetrics.Counter] {
            Dictionary(
                uniqueKeysWithValues: sinks.map {
                    (
                        $0,
                        CoreMetrics.Counter(
                            label: SupervisorMetrics.prefix + name, dimensions: [("sink", $0)],
                            factory: metrics.factory)
                    )
                })
        }
        sent = make("export_sent_total")
        dropped = make("export_dropped_total")
    }

    func count(sink: String, sent s: Int, dropped d: Int) {
        if s > 0 { sent[sink]?.increment(by: s) }
        if d > 0 { dropped[sink]?.increment(by: d) }
    }
}

extension DurableRecord {
    /// The records of one data sync, stamped with its end.
    static func synced(_ records: [DurableRecord]) -> [DurableRecord] {
        let now = Telemetry.unixNanoseconds()
        return records.map { DurableRecord(seq: $0.seq, type: $0.type, line: $0.line, writtenUnixNanoseconds: now) }
    }
}
