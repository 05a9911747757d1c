import StrictJSON

/// The policy's `resilience` section (docs/resilience.md): circuit breakers,
/// behaviour-profile anomaly responses, retries and fallbacks. Each setting
/// is declared once here with its default and unit; the parser, `policy
/// explain` and the docs take them from here.
public struct ResiliencePolicy: Sendable {
    /// A cell version's circuit breaker.
    public struct Breaker: Sendable, Equatable {
        /// Consecutive failures that open the breaker (default 5).
        public var failures = 5
        /// The failures must fall within this many seconds of the first (default 60 s).
        public var windowSeconds = 60
        /// How long an open breaker refuses calls before it admits one probe call (default 30 s).
        public var openSeconds = 30
        /// Whether the tool's own error answers count as failures (default false: only timeouts,
        /// sandbox violations, limits, crashes, protocol violations and cells that cannot run).
        public var countToolErrors = false
        public init() {}
    }

    /// What an anomalous call leads to.
    public enum AnomalyResponse: String, Sendable, CaseIterable {
        /// A `cell.anomaly` event only.
        case record
        /// The next calls to the cell version need a person's approval.
        case approve
        /// The version is refused until `mcp-supervisor cell release`.
        case quarantine
    }

    /// Scoring calls against a cell version's behaviour profile.
    public struct Anomaly: Sendable, Equatable {
        public var response = AnomalyResponse.record
        /// Successful calls learned before statistical scores count (default 20).
        public var warmupCalls = 20
        /// Robust z-score (deviations above the median, in scaled MADs) that makes a measure anomalous
        /// (default 8).
        public var threshold = 8.0
        /// With response `approve`: how many calls need approval after an anomaly (default 10).
        public var approvalCalls = 10
        public init() {}
    }

    /// Retries for an idempotent tool.
    public struct Retry: Sendable, Equatable {
        /// Glob over the tool name.
        public let tool: String
        /// Attempts in all, the first included (default 2, at most 5).
        public let attempts: Int
        /// Wait before the second attempt, doubled before each later one (default 100 ms).
        public let backoffMilliseconds: Int
        /// Outcomes that are retried (`CallOutcome.kind`).
        public let on: [String]
    }

    /// Alternatives for a tool.
    public struct Fallback: Sendable, Equatable {
        /// Glob over the tool name.
        public let tool: String
        /// Tools tried in order, each a full call of its own.
        public let alternatives: [String]
        /// Refusal reasons (`call.refused`) and outcomes (`call.end`) that move on to the next tool.
        public let on: [String]
    }

    /// Applies to every cell unless `cells` overrides it; nil: off.
    public var breaker: Breaker?
    public var anomaly: Anomaly?
    /// Per cell: a setting, or nil to turn it off for that cell.
    public var cellBreakers: [String: Breaker?] = [:]
    public var cellAnomaly: [String: Anomaly?] = [:]
    public var retry: [Retry] = []
    public var fallback: [Fallback] = []
    /// Globs over cell names whose calls run under the syscall profiler (default none). Each syscall such a
    /// worker makes is a round trip to the supervisor: see docs/resilience.md for the cost.
    public var profileSyscalls: [String] = []

    public init() {}

    /// Whether calls to `cell` run under the syscall profiler.
    public func profilesSyscalls(_ cell: String) -> Bool { profileSyscalls.contains { glob($0, cell) } }

    public func breaker(for cell: String) -> Breaker? {
        if let c = cellBreakers[cell] { return c }
        return breaker
    }

    public func anomaly(for cell: String) -> Anomaly? {
        if let c = cellAnomaly[cell] { return c }
        return anomaly
    }

    public func retry(for tool: String) -> Retry? { retry.first { glob($0.tool, tool) } }
    public func fallback(for tool: String) -> Fallback? { fallback.first { glob($0.tool, tool) } }

    /// Outcomes retried when a rule names none.
    public static let defaultRetryOn = ["timeout", "killed_by_signal", "cannot_run"]
    /// Outcomes never retried: a violation is not transient, and retrying it would give an attacker
    /// more attempts.
    public static let neverRetried = ["sandbox_violation", "protocol_violation", "limit_exceeded", "cancelled"]
    /// What moves a call on to its next alternative when a rule names nothing.
    public static let defaultFallbackOn = [
        "breaker_open", "quarantined", "anomaly_quarantine", "timeout", "killed_by_signal", "cannot_run",
    ]

    /// Parses `resilience`; `r` is the section's reader.
    static func parse(_ r: FieldReader) throws(ConfigError) -> ResiliencePolicy {
        var p = ResiliencePolicy()
        if let b = try r.object("breaker") { p.breaker = try parseBreaker(b, base: Breaker()) }
        if let a = try r.object("anomaly") { p.anomaly = try parseAnomaly(a, base: Anomaly()) }
        if let c = try r.object("cells") {
            for name in c.object.keys {
                let v = c.raw(name)!
                let cr = try FieldReader(file: r.file, path: c.field(name), value: v)
                if let v = cr.raw("breaker") {
                    if v == .bool(false) {
                        p.cellBreakers[name] = .some(nil)
                    } else {
                        let br = try FieldReader(file: r.file, path: cr.field("breaker"), value: v)
                        p.cellBreakers[name] = try parseBreaker(br, base: p.breaker ?? Breaker())
                    }
                }
                if let v = cr.raw("anomaly") {
                    if v == .bool(false) {
                        p.cellAnomaly[name] = .some(nil)
                    } else {
                        let ar = try FieldReader(file: r.file, path: cr.field("anomaly"), value: v)
                        p.cellAnomaly[name] = try parseAnomaly(ar, base: p.anomaly ?? Anomaly())
                    }
                }
                try cr.finish()
            }
        }
        p.profileSyscalls = try r.stringArray("profileSyscalls", default: [])
        for (i, g) in p.profileSyscalls.enumerated() where g.isEmpty {
            throw ConfigError(file: r.file, field: r.field("profileSyscalls[\(i)]"), message: "empty cell name or glob")
        }
        for (i, v) in (try r.array("retry") ?? []).enumerated() {
            let t = try FieldReader(file: r.file, path: r.field("retry[\(i)]"), value: v)
            let tool = try t.string("tool")
            let attempts = try t.int("attempts", default: 2, range: 2...5)
            let backoff = try t.int("backoffMilliseconds", default: 100, range: 0...60_000, unit: "ms")
            let on = try t.stringArray("on", default: defaultRetryOn)
            for (j, o) in on.enumerated() {
                if neverRetried.contains(o) {
                    throw ConfigError(
                        file: r.file, field: t.field("on[\(j)]"),
                        message: "\(o) is never retried (a violation is not transient)")
                }
                if !retryable.contains(o) {
                    throw ConfigError(
                        file: r.file, field: t.field("on[\(j)]"),
                        message: "expected one of \(retryable.joined(separator: ", "))")
                }
            }
            try t.finish()
            p.retry.append(Retry(tool: tool, attempts: attempts, backoffMilliseconds: backoff, on: on))
        }
        for (i, v) in (try r.array("fallback") ?? []).enumerated() {
            let f = try FieldReader(file: r.file, path: r.field("fallback[\(i)]"), value: v)
            let tool = try f.string("tool")
            let alternatives = try f.stringArray("alternatives")
            guard !alternatives.isEmpty, alternatives.count <= 4 else {
                throw f.error("alternatives", "one to four tool names")
            }
            if alternatives.contains(where: { glob(tool, $0) }) {
                throw f.error("alternatives", "a tool cannot be its own alternative")
            }
            let on = try f.stringArray("on", default: defaultFallbackOn)
            for (j, o) in on.enumerated() where !fallbackTriggers.contains(o) {
                throw ConfigError(
                    file: r.file, field: f.field("on[\(j)]"),
                    message: "expected one of \(fallbackTriggers.joined(separator: ", "))")
            }
            try f.finish()
            p.fallback.append(Fallback(tool: tool, alternatives: alternatives, on: on))
        }
        try r.finish()
        return p
    }

    static let retryable = ["timeout", "killed_by_signal", "cannot_run", "tool_error"]
    static let fallbackTriggers =
        retryable + [
            "breaker_open", "quarantined", "anomaly_quarantine", "sandbox_violation", "limit_exceeded",
            "protocol_violation", "concurrency", "rate_limit", "busy",
        ]

    static func parseBreaker(_ b: FieldReader, base: Breaker) throws(ConfigError) -> Breaker {
        var s = base
        s.failures = try b.int("failures", default: base.failures, range: 1...1000)
        s.windowSeconds = try b.int("windowSeconds", default: base.windowSeconds, range: 1...86_400, unit: "s")
        s.openSeconds = try b.int("openSeconds", default: base.openSeconds, range: 1...86_400, unit: "s")
        s.countToolErrors = try b.bool("countToolErrors", default: base.countToolErrors)
        try b.finish()
        return s
    }

    static func parseAnomaly(_ a: FieldReader, base: Anomaly) throws(ConfigError) -> Anomaly {
        var s = base
        s.response = try a.choice("response", default: base.response)
        s.warmupCalls = try a.int("warmupCalls", default: base.warmupCalls, range: 5...10_000)
        if let v = a.raw("threshold") {
            guard let d = v.doubleValue, d >= 3, d <= 1000 else {
                throw a.error("threshold", "expected a number from 3 to 1000 (scaled MADs)")
            }
            s.threshold = d
        }
        s.approvalCalls = try a.int("approvalCalls", default: base.approvalCalls, range: 1...1000)
        try a.finish()
        return s
    }
}
