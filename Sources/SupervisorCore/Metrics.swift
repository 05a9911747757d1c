import CoreMetrics
import Foundation
import Prometheus
import SupervisorPlatform
import Synchronization

/// The supervisor's metrics (docs/operations.md, "Metrics"): swift-metrics
/// handles backed by a Prometheus registry of its own (never the process's
/// global `MetricsSystem`, so that tests and several pipelines in one
/// process do not share counts).
///
/// Recording costs a dictionary lookup under a lock and a few atomic adds
/// per call: the handles of a tool are made at its first call and kept.
/// Label values are the supervisor's own words (outcome kinds, refusal
/// reasons, violation kinds, stage names) or tool names from signed
/// manifests, never a string a client chose (an unknown tool's name is not
/// a label), so the number of series stays bounded.
public final class SupervisorMetrics: Sendable {
    public static let prefix = "mcp_supervisor_"
    /// The stages of a call, as docs/architecture.md names them.
    public static let stages = ["admit", "spawn", "run", "record"]

    public let registry: PrometheusCollectorRegistry
    let factory: PrometheusMetricsFactory

    struct ToolHandles: Sendable {
        let duration: CoreMetrics.Timer
        let stages: [String: CoreMetrics.Timer]
        var calls: [String: CoreMetrics.Counter] = [:]
    }
    let tools = Mutex<[String: ToolHandles]>([:])
    let refusals = Mutex<[String: CoreMetrics.Counter]>([:])
    let violations = Mutex<[String: CoreMetrics.Counter]>([:])
    let prespawnHits: CoreMetrics.Counter
    let prespawnMisses: CoreMetrics.Counter
    let workersAlive: CoreMetrics.Gauge
    let logSync: CoreMetrics.Timer
    /// Read at each export: how many workers exist (running and prespawned).
    let workerCount = Mutex<(@Sendable () -> Int)?>(nil)

    public init() {
        registry = PrometheusCollectorRegistry()
        var f = PrometheusMetricsFactory(registry: registry)
        // A call costs ~1 ms, a data sync a few: finer buckets than the
        // library's (which start at 5 ms).
        f.defaultDurationHistogramBuckets = [
            .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .microseconds(2500),
            .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
            .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10),
            .seconds(30),
        ]
        factory = f
        prespawnHits = CoreMetrics.Counter(label: Self.prefix + "prespawn_hits_total", factory: f)
        prespawnMisses = CoreMetrics.Counter(label: Self.prefix + "prespawn_misses_total", factory: f)
        workersAlive = CoreMetrics.Gauge(label: Self.prefix + "workers_alive", factory: f)
        logSync = CoreMetrics.Timer(label: Self.prefix + "security_log_sync_seconds", factory: f)
    }

    /// Counts `pipeline`'s calls, its log's data syncs and its workers
    /// (calls running on the pool, each with at most one worker, plus the
    /// prespawned ones).
    public func attach(to pipeline: CallPipeline) {
        pipeline.metrics = self
        pipeline.log.syncObserver = { [self] in logSynced(nanoseconds: $0) }
        let pool = pipeline.pool
        let runner = pipeline.runner
        countWorkers { pool.load.running + (runner.prespawner?.workerCount ?? 0) }
    }

    /// The monotonic clock stage times are taken with, in nanoseconds.
    @inline(__always) static func clock() -> UInt64 { monotonicNanoseconds() }

    /// Where `workers_alive` comes from (the pool and the prespawner).
    public func countWorkers(_ body: @escaping @Sendable () -> Int) { workerCount.withLock { $0 = body } }

    /// The log's data syncs (`SecurityLog.syncObserver`).
    public func logSynced(nanoseconds: UInt64) { logSync.recordNanoseconds(Int64(clamping: nanoseconds)) }

    /// A call refused before any worker existed (`call.refused`).
    public func callRefused(reason: String) {
        counter(in: refusals, name: "refusals_total", label: "reason", value: reason).increment()
    }

    /// A call that was admitted and ended: its outcome and stage times, and
    /// the sandbox violations and refusals among the events of its end
    /// (the same events the security log records, so the two agree).
    public func callEnded(
        tool: String, report: CallReport, events: [SecurityEvent], admitNanoseconds: UInt64,
        recordNanoseconds: UInt64, totalNanoseconds: UInt64
    ) {
        let kind = report.outcome.kind
        let (calls, handles) = tools.withLock { t -> (CoreMetrics.Counter, ToolHandles) in
            var h = t[tool] ?? makeToolHandles(tool)
            let c = h.calls[kind] ?? makeCounter("calls_total", [("tool", tool), ("outcome", kind)])
            h.calls[kind] = c
            t[tool] = h
            return (c, h)
        }
        calls.increment()
        handles.duration.recordNanoseconds(Int64(clamping: totalNanoseconds))
        handles.stages["admit"]?.recordNanoseconds(Int64(clamping: admitNanoseconds))
        handles.stages["record"]?.recordNanoseconds(Int64(clamping: recordNanoseconds))
        switch report.outcome {
        case .refused, .cannotRun:
            // No worker served the call: it has no spawn or run stage.
            break
        default:
            if report.prespawned {
                prespawnHits.increment()
            } else {
                prespawnMisses.increment()
                handles.stages["spawn"]?.recordNanoseconds(Int64(clamping: report.spawnNanoseconds))
            }
            let spawn = report.prespawned ? 0 : report.spawnNanoseconds
            handles.stages["run"]?.recordNanoseconds(
                Int64(clamping: report.durationNanoseconds > spawn ? report.durationNanoseconds - spawn : 0))
        }
        recorded(events)
    }

    /// Counts the sandbox violations and refusals among `events` (also
    /// those a worker answered at its final frame did after its answer).
    public func recorded(_ events: [SecurityEvent]) {
        for e in events {
            switch e.type {
            case .sandboxViolation:
                let k = e.fields["kind"]?.stringValue ?? "unknown"
                counter(in: violations, name: "sandbox_violations_total", label: "kind", value: k).increment()
            case .callRefused:
                callRefused(reason: e.fields["reason"]?.stringValue ?? "unknown")
            default: break
            }
        }
    }

    /// The exposition text (Prometheus text format 0.0.4).
    public func exposition() -> [UInt8] {
        if let n = workerCount.withLock({ $0 }) { workersAlive.record(n()) }
        return registry.emitToBuffer()
    }

    private func makeCounter(_ name: String, _ dimensions: [(String, String)]) -> CoreMetrics.Counter {
        CoreMetrics.Counter(label: Self.prefix + name, dimensions: dimensions, factory: factory)
    }

    private func makeToolHandles(_ tool: String) -> ToolHandles {
        var stages: [String: CoreMetrics.Timer] = [:]
        for s in Self.stages {
            stages[s] = CoreMetrics.Timer(
                label: Self.prefix + "stage_duration_seconds", dimensions: [("tool", tool), ("stage", s)],
                factory: factory)
        }
        return ToolHandles(
            duration: CoreMetrics.Timer(
                label: Self.prefix + "call_duration_seconds", dimensions: [("tool", tool)], factory: factory),
            stages: stages)
    }

    private func counter(
        in m: borrowing Mutex<[String: CoreMetrics.Counter]>, name: String, label: String, value: String
    ) -> CoreMetrics.Counter {
        m.withLock { d in
            if let c = d[value] { return c }
            let c = makeCounter(name, [(label, value)])
            d[value] = c
            return c
        }
    }
}

/// Writes the metrics for Prometheus's node_exporter textfile collector
/// (or any scraper that reads a file) every `intervalSeconds`, and once at
/// `stop()`. Each write goes to `<path>.tmp` and is renamed over `path`, so
/// a reader never sees a partial file. A stdio server has no port to
/// scrape; the file is its endpoint.
public final class MetricsTextfile: @unchecked Sendable {
    // @unchecked: `started`, `stopped` and `done` are guarded by `cond` (an NSCondition: the writer thread sleeps on it
    // until the next deadline or `stop()`); `failing` belongs to whoever writes: the caller before `start()`,
    // then the writer thread alone; the other fields are set in init only.
    public let path: String
    public let metrics: SupervisorMetrics
    let intervalSeconds: Int
    private let cond = NSCondition()
    private var started = false
    private var stopped = false
    private var done = false
    /// The last write's error, said once on stderr until a write succeeds.
    private var failing = false

    public init(path: String, metrics: SupervisorMetrics, intervalSeconds: Int) {
        self.path = path
        self.metrics = metrics
        self.intervalSeconds = max(1, intervalSeconds)
    }

    /// Writes now, then every interval on a thread of its own.
    public func start() {
        cond.lock()
        started = true
        cond.unlock()
        let t = Thread { [self] in loop() }
        t.name = "metrics-textfile"
        t.start()
    }

    /// Writes once more (the final counts) and stops the thread.
    public func stop() {
        cond.lock()
        guard started else {
            cond.unlock()
            writeOnce()
            return
        }
        stopped = true
        cond.broadcast()
        while !done { cond.wait() }
        cond.unlock()
    }

    private func loop() {
        while true {
            writeOnce()
            cond.lock()
            let deadline = Date(timeIntervalSinceNow: TimeInterval(intervalSeconds))
            while !stopped && cond.wait(until: deadline) {}
            let stop = stopped
            cond.unlock()
            if stop {
                writeOnce()
                cond.lock()
                done = true
                cond.broadcast()
                cond.unlock()
                return
            }
        }
    }

    /// One atomic write. A failure is said on stderr (once until it
    /// recovers) and never stops the server: metrics are not a control.
    @discardableResult
    public func writeOnce() -> SystemError? {
        let tmp = path + ".tmp"
        do {
            let fd = try Sys.open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode: 0o644)
            defer { fd.close() }
            try fd.writeAll(metrics.exposition())
            try Sys.rename(tmp, path)
            if failing { Diagnostics.line("mcp-supervisor: metrics file \(path) is written again") }
            failing = false
            return nil
        } catch {
            if !failing { Diagnostics.line("mcp-supervisor: cannot write the metrics file \(path): \(error)") }
            failing = true
            return error
        }
    }
}
