import StrictJSON

/// Per-tool call statistics from security log records (`audit stats`,
/// `audit top`): counts by outcome and latency percentiles from `call.end`,
/// refusals by reason from `call.refused`, sandbox violations by kind from
/// `sandbox.violation`. The log is the source: these are the numbers a
/// verified log proves, whatever the metrics file says.
public struct CallStats: Sendable, Equatable {
    public struct Tool: Sendable, Equatable {
        public var calls = 0
        public var outcomes: [String: Int] = [:]
        /// `durationMicroseconds` of each call.end (the worker's part of
        /// the call: start or take of the worker to its answer).
        public var durations: [Int64] = []

        /// The nearest-rank percentile `p` (0–100) of the durations, in µs.
        public func percentile(_ p: Double) -> Int64? {
            guard !durations.isEmpty else { return nil }
            let sorted = durations.sorted()
            let rank = Int((p / 100 * Double(sorted.count)).rounded(.up))
            return sorted[min(max(rank, 1), sorted.count) - 1]
        }
    }

    public var tools: [String: Tool] = [:]
    public var refusals: [String: Int] = [:]
    public var violations: [String: Int] = [:]

    public init() {}

    /// Adds one record (any type; only the three above count).
    public mutating func add(type: String, _ record: JSONObject) {
        switch type {
        case SecurityEventType.callEnd.rawValue:
            let tool = record["tool"]?.stringValue ?? "?"
            var t = tools[tool] ?? Tool()
            t.calls += 1
            t.outcomes[record["outcome"]?.stringValue ?? "?", default: 0] += 1
            if let d = record["durationMicroseconds"]?.intValue { t.durations.append(d) }
            tools[tool] = t
        case SecurityEventType.callRefused.rawValue:
            refusals[record["reason"]?.stringValue ?? "?", default: 0] += 1
        case SecurityEventType.sandboxViolation.rawValue:
            violations[record["kind"]?.stringValue ?? "?", default: 0] += 1
        default:
            break
        }
    }

    /// `{tools: {name: {calls, outcomes, p50Microseconds, p99Microseconds,
    /// maxMicroseconds}}, refusals, violations}` with sorted keys.
    public var json: JSONObject {
        func counts(_ d: [String: Int]) -> JSONValue {
            .object(JSONObject(d.sorted { $0.key < $1.key }.map { ($0.key, .int(Int64($0.value))) }))
        }
        let t: [(String, JSONValue)] = tools.sorted { $0.key < $1.key }.map { name, tool in
            var o = JSONObject([("calls", .int(Int64(tool.calls))), ("outcomes", counts(tool.outcomes))])
            o["p50Microseconds"] = tool.percentile(50).map { .int($0) } ?? .null
            o["p99Microseconds"] = tool.percentile(99).map { .int($0) } ?? .null
            o["maxMicroseconds"] = tool.durations.max().map { .int($0) } ?? .null
            return (name, .object(o))
        }
        return JSONObject([
            ("tools", .object(JSONObject(t))), ("refusals", counts(refusals)), ("violations", counts(violations)),
        ])
    }

    /// A fixed-width table for a terminal.
    public var table: String {
        func ms(_ us: Int64?) -> String {
            guard let us else { return "-" }
            let v = Double(us) / 1000
            let r = (v * 100).rounded() / 100
            return "\(r)"
        }
        func pad(_ s: String, _ w: Int, left: Bool = false) -> String {
            let fill = String(repeating: " ", count: max(0, w - s.count))
            return left ? s + fill : fill + s
        }
        let width = max(4, tools.keys.map(\.count).max() ?? 4)
        var lines = [
            pad("tool", width, left: true) + "  " + pad("calls", 7) + "  " + pad("ok", 7) + "  " + pad("p50 ms", 9)
                + "  " + pad("p99 ms", 9) + "  " + pad("max ms", 9) + "  other outcomes"
        ]
        for (name, t) in tools.sorted(by: { $0.key < $1.key }) {
            let other = t.outcomes.filter { $0.key != "success" }.sorted { $0.key < $1.key }
                .map { "\($0.key) \($0.value)" }.joined(separator: ", ")
            lines.append(
                pad(name, width, left: true) + "  " + pad("\(t.calls)", 7) + "  "
                    + pad("\(t.outcomes["success"] ?? 0)", 7) + "  " + pad(ms(t.percentile(50)), 9) + "  "
                    + pad(ms(t.percentile(99)), 9) + "  " + pad(ms(t.durations.max()), 9) + "  " + other)
        }
        if tools.isEmpty { lines.append("(no calls)") }
        for (title, d) in [("refusals", refusals), ("sandbox violations", violations)] {
            let items = d.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }
            lines.append("\(title): \(items.isEmpty ? "none" : items.joined(separator: ", "))")
        }
        return lines.joined(separator: "\n")
    }
}
