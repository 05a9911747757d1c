import Foundation
import StrictJSON
import SupervisorCore
import SupervisorPlatform
import Synchronization

/// What the dashboard shows, read from the state directory when the page
/// asks for it: the security log (`SecurityLogReader`, read again only when
/// its files changed), its verification (`audit verify`'s check, run here and
/// kept until the log changes, at most once per `verifyIntervalSeconds`),
/// the trust ledger, the quarantine records, the breakers' last states (as
/// `doctor` reads them) and, when given, the metrics file.
///
/// Only reads: nothing here opens a file for writing or takes the log's
/// writer lock. A request never reads a file itself: the HTTP server asks
/// for `snapshot()` on its one worker thread, which answers from the last
/// snapshot when it is younger than `minimumAgeSeconds`, so a page (or
/// anything else with the token) polling fast costs one read of the state
/// per `minimumAgeSeconds` at most.
final class DashboardSource: Sendable {
    struct Options: Sendable {
        var stateDirectory: String
        var metricsFile: String?
        /// The `ledger` setting; nil: the state directory's.
        var ledgerPath: String? = nil
        /// Calls and violations listed, newest first.
        var recent = 200
        /// Points per tool in the latency plot.
        var latencyPoints = 300
        var verifyIntervalSeconds = 10.0
        var minimumAgeSeconds = 1.0
    }

    /// `audit verify`'s result for the log as it was at `signature`.
    struct Verified {
        var signature: [String]
        var ok: Bool
        var problem: String?
        var lastSeq: Int64
        var report: JSONObject
        var at: Date
    }

    private struct Cache {
        var signature: [String]? = nil
        var records: [LogRecord] = []
        var readError: String? = nil
        var verified: Verified? = nil
        /// What `activity` made of `records` (rebuilt only when they change).
        var activity: [(String, JSONValue)]? = nil
        var snapshot: (at: Date, bytes: [UInt8])? = nil
    }

    let options: Options
    private let cache = Mutex(Cache())

    init(_ options: Options) { self.options = options }

    var logDirectory: String { options.stateDirectory + "/security" }

    /// The snapshot as JSON bytes (see `build`).
    func snapshot(now: Date = Date()) -> [UInt8] {
        cache.withLock { c in
            if let s = c.snapshot, now.timeIntervalSince(s.at) < options.minimumAgeSeconds { return s.bytes }
            refreshLog(&c, now: now)
            let bytes = JSONValue.object(build(&c, now: now)).serializedBytes()
            // Its age counts from when it was made, not asked for.
            c.snapshot = (Date(), bytes)
            return bytes
        }
    }

    /// Each event file's and the checkpoint file's identity and size: a
    /// change of any means new records (or a rotation, or tampering).
    func logSignature() -> [String]? {
        guard let files = try? SecurityLog.eventFiles(in: logDirectory) else { return nil }
        return (files.map(\.path) + [logDirectory + "/checkpoints.jsonl"]).map { p in
            guard let st = try? Sys.stat(p) else { return p + " -" }
            return "\(p) \(st.inode) \(st.size) \(st.mtimeNanoseconds)"
        }
    }

    private func refreshLog(_ c: inout Cache, now: Date) {
        let signature = logSignature()
        if signature != c.signature || signature == nil {
            c.signature = signature
            c.activity = nil
            if signature == nil {
                c.records = []
                c.readError =
                    "no security log in \(logDirectory): no supervisor has run with this state directory yet"
            } else {
                do {
                    c.records = try SecurityLogReader.records(directory: logDirectory)
                    c.readError = nil
                } catch {
                    c.records = []
                    c.readError = "cannot read the security log: \(error)"
                }
            }
        }
        guard let signature else {
            c.verified = nil
            return
        }
        let due = c.verified.map {
            $0.signature != signature && now.timeIntervalSince($0.at) >= options.verifyIntervalSeconds
        }
        guard due ?? true else { return }
        do {
            let r = SecurityLogReader.verify(
                directory: logDirectory,
                publicKeys: try LogSigningKey.publicKeys(stateDirectory: options.stateDirectory),
                checkpointsPath: nil)
            c.verified = Verified(
                signature: signature, ok: r.problem == nil, problem: r.problem.map { "\($0)" }, lastSeq: r.lastSeq,
                report: JSONObject([
                    ("records", .int(Int64(r.records))), ("files", .int(Int64(r.files))),
                    ("checkpoints", .int(Int64(r.checkpoints))),
                    ("keyIds", .array(r.keyIDs.sorted().map { .string($0) })),
                    ("unsignedTails", .int(Int64(r.unsignedTails.count))),
                ]), at: now)
        } catch {
            c.verified = Verified(
                signature: signature, ok: false,
                problem: "unreadable: \(options.stateDirectory)/keys: cannot load the log's public keys: \(error)",
                lastSeq: 0, report: JSONObject(), at: now)
        }
    }

    private func build(_ c: inout Cache, now: Date) -> JSONObject {
        var o = JSONObject([
            ("format", 1), ("generatedAt", .string(Self.time(now))),
            ("stateDirectory", .string(options.stateDirectory)),
        ])
        o["log"] = logSummary(c)
        o["verification"] = verification(c)
        let activity = c.activity ?? activity(c.records)
        c.activity = activity
        for (k, v) in activity { o[k] = v }
        o["cells"] = cells()
        o["quarantined"] = .array(
            Quarantine(directory: Quarantine.directory(stateDirectory: options.stateDirectory)).all().map {
                .object(
                    JSONObject([
                        ("cell", .string($0.cell)), ("versionId", .string($0.versionID)),
                        ("label", .string($0.label)), ("reason", .string($0.reason)), ("since", .string($0.since)),
                        ("difference", .string(Self.clip($0.difference, 2000))),
                    ]))
            })
        o["metrics"] = metrics(now: now)
        return o
    }

    private func logSummary(_ c: Cache) -> JSONValue {
        .object(
            JSONObject([
                ("directory", .string(logDirectory)), ("records", .int(Int64(c.records.count))),
                ("lastSeq", c.records.last.map { .int($0.seq) } ?? .null),
                ("firstTime", c.records.first.map { .string($0.time) } ?? .null),
                ("lastTime", c.records.last.map { .string($0.time) } ?? .null),
                ("error", c.readError.map { .string($0) } ?? .null),
            ]))
    }

    /// `audit verify --json`'s object, with when it was checked and how
    /// many records were written after that check.
    private func verification(_ c: Cache) -> JSONValue {
        guard let v = c.verified else { return .null }
        var o = JSONObject([("ok", .bool(v.ok)), ("problem", v.problem.map { .string($0) } ?? .null)])
        o["lastSeq"] = .int(v.lastSeq)
        for (k, value) in v.report { o[k] = value }
        o["checkedAt"] = .string(Self.time(v.at))
        o["recordsSince"] = .int(Int64(c.records.filter { $0.seq > v.lastSeq }.count))
        return .object(o)
    }

    /// Recent calls (ended and refused), violations, per-tool latency
    /// series and breakers from the log's records; `CallStats` over the
    /// whole log for the totals.
    private func activity(_ records: [LogRecord]) -> [(String, JSONValue)] {
        var stats = CallStats()
        // Indices first: JSON is made only for the rows shown.
        var calls: [Int] = []
        var violations: [Int] = []
        var series: [String: [Int]] = [:]
        var breakers: [Insights.Record] = []
        for (i, r) in records.enumerated() {
            stats.add(type: r.type, r.object)
            switch r.type {
            case SecurityEventType.callEnd.rawValue:
                calls.append(i)
                if r["durationMicroseconds"]?.intValue != nil, let tool = r["tool"]?.stringValue {
                    series[tool, default: []].append(i)
                }
            case SecurityEventType.callRefused.rawValue:
                calls.append(i)
            case SecurityEventType.sandboxViolation.rawValue:
                violations.append(i)
            case SecurityEventType.cellBreaker.rawValue:
                breakers.append(Insights.Record(type: r.type, time: r.time, fields: r.object))
            default:
                break
            }
        }
        let latency: [(String, JSONValue)] = series.sorted { $0.key < $1.key }.map { tool, points in
            let t = stats.tools[tool]
            return (
                tool,
                .object(
                    JSONObject([
                        (
                            "points",
                            .array(
                                points.suffix(options.latencyPoints).map { i -> JSONValue in
                                    let r = records[i]
                                    return [
                                        .string(r.time), r["durationMicroseconds"] ?? .null,
                                        .string(r["outcome"]?.stringValue ?? "?"),
                                    ]
                                })
                        ),
                        ("p50Microseconds", t?.percentile(50).map { .int($0) } ?? .null),
                        ("p99Microseconds", t?.percentile(99).map { .int($0) } ?? .null),
                    ]))
            )
        }
        let states = Insights.breakerStates(breakers).map { b -> JSONValue in
            .object(
                JSONObject([
                    ("cell", .string(b.cell)), ("cellVersion", .string(b.version)), ("state", .string(b.state)),
                    ("since", .string(b.time)),
                ]))
        }
        return [
            ("calls", .array(calls.suffix(options.recent).reversed().map { callJSON(records[$0]) })),
            ("violations", .array(violations.suffix(options.recent).reversed().map { violationJSON(records[$0]) })),
            ("latency", .object(JSONObject(latency))), ("breakers", .array(states)), ("totals", .object(stats.json)),
        ]
    }

    private static func field(_ r: LogRecord, _ k: String) -> JSONValue {
        r[k]?.stringValue.map { .string(clip($0, 300)) } ?? .null
    }

    /// A `call.end` or `call.refused` record as a row of the calls list.
    private func callJSON(_ r: LogRecord) -> JSONValue {
        let s = Self.field
        var o = JSONObject([
            ("seq", .int(r.seq)), ("time", .string(r.time)), ("callId", s(r, "callId")), ("tool", s(r, "tool")),
            ("cell", s(r, "cell")), ("cellVersion", s(r, "cellVersion")),
        ])
        if r.type == SecurityEventType.callRefused.rawValue {
            o["outcome"] = "refused"
            o["reason"] = s(r, "reason")
            o["durationMicroseconds"] = .null
        } else {
            o["outcome"] = s(r, "outcome")
            o["durationMicroseconds"] = r["durationMicroseconds"]?.intValue.map { .int($0) } ?? .null
            o["prespawned"] = r["prespawned"] ?? .null
        }
        o["detail"] = s(r, "detail")
        return .object(o)
    }

    private func violationJSON(_ r: LogRecord) -> JSONValue {
        let s = Self.field
        return .object(
            JSONObject([
                ("seq", .int(r.seq)), ("time", .string(r.time)), ("callId", s(r, "callId")), ("tool", s(r, "tool")),
                ("cell", s(r, "cell")), ("cellVersion", s(r, "cellVersion")), ("kind", s(r, "kind")),
                ("syscall", r["syscall"] ?? .null), ("architecture", s(r, "architecture")), ("limit", s(r, "limit")),
                ("afterAnswer", r["afterAnswer"] ?? .null), ("detail", s(r, "detail")),
            ]))
    }

    /// Every cell of the trust ledger: its versions (newest last), the
    /// lineage of the active one (newest first), and the permissions and
    /// limits its active manifest grants.
    private func cells() -> JSONValue {
        let path = options.ledgerPath ?? Ledger.path(stateDirectory: options.stateDirectory)
        let st = Ledger.load(path: path)
        var rows: [JSONValue] = []
        for name in Set(st.cells.keys).union(st.refusedCells.keys).sorted() {
            let c = st.cells[name]
            var versions: [JSONValue] = []
            for id in c?.order ?? [] {
                guard let v = c?.versions[id] else { continue }
                versions.append(
                    .object(
                        JSONObject([
                            ("id", .string(id)), ("label", .string(v.label)), ("active", .bool(c?.active == id)),
                            ("revoked", .bool(v.revoked)),
                            ("revokeReason", v.revokeReason.map { .string($0) } ?? .null),
                            ("registeredAt", .string(v.registeredAt)), ("signedBy", .string(v.signedBy)),
                            ("approvedWidening", .bool(v.approvedWidening)),
                            ("parent", v.parent.map { .string($0) } ?? .null),
                            ("executableSha256", .string(v.executableSHA256)),
                        ])))
            }
            var lineage: [JSONValue] = []
            var seen = Set<String>()
            var cur = c?.active ?? c?.order.last
            while let id = cur, let v = c?.versions[id], seen.insert(id).inserted {
                lineage.append(.string(id))
                cur = v.parent
            }
            var row = JSONObject([
                ("cell", .string(name)), ("active", c?.active.map { .string($0) } ?? .null),
                ("refused", st.refusal(cell: name).map { .string($0) } ?? .null),
                ("versions", .array(versions)), ("lineage", .array(lineage)),
            ])
            if let id = c?.active, let v = c?.versions[id] {
                do {
                    let m = try CellManifest.parse(bytes: v.manifestBytes, path: v.manifestPath, manifestSHA256: id)
                    row["label"] = .string(v.label)
                    row["description"] = .string(Self.clip(m.description, 500))
                    row["tools"] = .array(m.tools.map { .string($0.name) })
                    row["executable"] = .string(m.executable.path)
                    row["permissions"] = Self.permissions(m)
                } catch {
                    row["error"] = .string("the active manifest does not parse: \(error)")
                }
            }
            rows.append(.object(row))
        }
        return .object(
            JSONObject([
                ("ledger", .string(path)), ("damaged", st.damaged.map { .string($0) } ?? .null),
                ("entries", .int(Int64(st.entries.count))), ("cells", .array(rows)),
            ]))
    }

    static func permissions(_ m: CellManifest) -> JSONValue {
        func strings(_ a: [String]) -> JSONValue { .array(a.map { .string($0) }) }
        let l = m.limits
        return .object(
            JSONObject([
                (
                    "filesystem",
                    .object(
                        JSONObject([
                            ("read", strings(m.filesystem.read)), ("write", strings(m.filesystem.write)),
                            ("execute", strings(m.filesystem.execute)),
                        ]))
                ),
                ("network", strings(m.network.hosts.map(\.description))),
                ("syscallGroups", strings(m.syscallGroups)), ("syscallAllow", strings(m.syscallAllow)),
                ("processes", .string(l.processes.rawValue)), ("sideEffects", .string(m.sideEffects.rawValue)),
                ("phases", strings(m.phases)), ("resources", strings(m.resources)),
                ("environment", strings(m.environmentPass + m.environmentSet.map(\.0))),
                (
                    "limits",
                    .object(
                        JSONObject([
                            ("timeoutMilliseconds", .int(Int64(l.timeoutMilliseconds))),
                            ("cpuSeconds", .int(Int64(l.cpuSeconds))), ("memoryMiB", .int(Int64(l.memoryMiB))),
                            ("openFiles", .int(Int64(l.openFiles))), ("fileSizeMiB", .int(Int64(l.fileSizeMiB))),
                            ("outputKiB", .int(Int64(l.outputKiB))), ("scratchMiB", .int(Int64(l.scratchMiB))),
                            ("maxProcesses", .int(Int64(l.maxProcesses))),
                        ]))
                ),
            ]))
    }

    /// The metrics file's per-tool rows and gauges (as `top` shows them),
    /// or why it cannot be read; null without `--metrics-file`.
    private func metrics(now: Date) -> JSONValue {
        guard let path = options.metricsFile else { return .null }
        var o = JSONObject([("file", .string(path))])
        do {
            let snap = try MetricsSnapshot(text: String(decoding: try readFile(path), as: UTF8.self))
            if let st = try? Sys.stat(path) {
                o["ageSeconds"] = .double(max(0, now.timeIntervalSince1970 - Double(st.mtimeNanoseconds) / 1e9))
            }
            let p = SupervisorMetrics.prefix
            o["tools"] = .array(
                snap.tools.map { r in
                    .object(
                        JSONObject([
                            ("tool", .string(r.tool)), ("calls", .double(r.calls)),
                            ("p50Seconds", r.p50Seconds.map { .double($0) } ?? .null),
                            ("p99Seconds", r.p99Seconds.map { .double($0) } ?? .null),
                        ]))
                })
            o["workersAlive"] = .double(snap.value(p + "workers_alive"))
            o["prespawnHits"] = .double(snap.value(p + "prespawn_hits_total"))
            o["prespawnMisses"] = .double(snap.value(p + "prespawn_misses_total"))
            o["logSyncP99Seconds"] =
                snap.quantile(0.99, histogram: p + "security_log_sync_seconds", [:])
                .map { .double($0) } ?? .null
        } catch {
            o["error"] = .string("\(error)")
        }
        return .object(o)
    }

    static func clip(_ s: String, _ n: Int) -> String { s.count > n ? String(s.prefix(n)) + "…" : s }

    /// RFC 3339 UTC, as the log writes times.
    static func time(_ d: Date) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f.string(from: d)
    }
}
