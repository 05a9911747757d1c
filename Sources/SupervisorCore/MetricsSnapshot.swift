import StrictJSON

/// The metrics file read back (`mcp-supervisor top`): its samples, and per
/// tool the counts and latency quantiles estimated from the histogram
/// buckets as Prometheus's `histogram_quantile` does (linear within the
/// bucket the rank falls in).
public struct MetricsSnapshot: Sendable, Equatable {
    public struct Sample: Sendable, Equatable {
        public let name: String
        public let labels: [String: String]
        public let value: Double
    }

    public let samples: [Sample]

    /// Parses the Prometheus text format (comments skipped; label values
    /// with `\"`, `\\` and `\n` escapes). A line that is not a sample is an
    /// error naming its number: the file is written whole (renamed), so a
    /// bad line means it is not ours.
    public init(text: String) throws(ConfigError) {
        var out: [Sample] = []
        for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingPrefix(while: { $0 == " " })
            if line.isEmpty || line.hasPrefix("#") { continue }
            guard let s = Self.sample(Substring(line)) else {
                throw ConfigError(file: "metrics", field: "line \(i + 1)", message: "not a Prometheus sample: \(line)")
            }
            out.append(s)
        }
        samples = out
    }

    static func sample(_ line: Substring) -> Sample? {
        var name = ""
        var labels: [String: String] = [:]
        var i = line.startIndex
        while i < line.endIndex, line[i] != "{", line[i] != " " {
            name.append(line[i])
            i = line.index(after: i)
        }
        guard !name.isEmpty, i < line.endIndex else { return nil }
        if line[i] == "{" {
            i = line.index(after: i)
            while i < line.endIndex, line[i] != "}" {
                var key = ""
                while i < line.endIndex, line[i] != "=" {
                    if line[i] != "," && line[i] != " " { key.append(line[i]) }
                    i = line.index(after: i)
                }
                guard i < line.endIndex, line.index(after: i) < line.endIndex, line[line.index(after: i)] == "\""
                else { return nil }
                i = line.index(i, offsetBy: 2)
                var value = ""
                while i < line.endIndex, line[i] != "\"" {
                    if line[i] == "\\", line.index(after: i) < line.endIndex {
                        i = line.index(after: i)
                        value.append(line[i] == "n" ? "\n" : line[i])
                    } else {
                        value.append(line[i])
                    }
                    i = line.index(after: i)
                }
                guard i < line.endIndex else { return nil }
                i = line.index(after: i)
                labels[key] = value
            }
            guard i < line.endIndex else { return nil }
            i = line.index(after: i)
        }
        let rest = line[i...].split(separator: " ")
        guard let first = rest.first else { return nil }
        let value: Double?
        switch first {
        case "+Inf": value = .infinity
        case "-Inf": value = -.infinity
        case "NaN": value = .nan
        default: value = Double(first)
        }
        guard let value else { return nil }
        return Sample(name: name, labels: labels, value: value)
    }

    /// The value of the sample with exactly these labels (0 if absent).
    public func value(_ name: String, _ labels: [String: String] = [:]) -> Double {
        samples.first { $0.name == name && $0.labels == labels }?.value ?? 0
    }

    /// Sum of a metric over one label, by that label's values.
    public func sum(_ name: String, by label: String, where filter: [String: String] = [:]) -> [String: Double] {
        var out: [String: Double] = [:]
        for s in samples where s.name == name {
            guard let v = s.labels[label], filter.allSatisfy({ s.labels[$0.key] == $0.value }) else { continue }
            out[v, default: 0] += s.value
        }
        return out
    }

    /// The `q` quantile (0–1) of a histogram's series with `labels`, in the
    /// histogram's unit; nil without observations.
    public func quantile(_ q: Double, histogram name: String, _ labels: [String: String]) -> Double? {
        var buckets: [(le: Double, count: Double)] = []
        for s in samples where s.name == name + "_bucket" {
            var l = s.labels
            guard let le = l.removeValue(forKey: "le"), l == labels else { continue }
            buckets.append((le == "+Inf" ? .infinity : Double(le) ?? .infinity, s.value))
        }
        buckets.sort { $0.le < $1.le }
        guard let total = buckets.last?.count, total > 0 else { return nil }
        let rank = q * total
        var lower = (le: 0.0, count: 0.0)
        for b in buckets {
            if b.count >= rank {
                // Past the last finite bound Prometheus answers that bound.
                if b.le == .infinity { return lower.le }
                let inBucket = b.count - lower.count
                return inBucket > 0 ? lower.le + (b.le - lower.le) * (rank - lower.count) / inBucket : b.le
            }
            lower = b
        }
        return lower.le
    }

    /// The per-tool view of `mcp-supervisor top`.
    public struct ToolRow: Sendable, Equatable {
        public var tool: String
        public var calls: Double
        public var outcomes: [String: Double]
        public var p50Seconds: Double?
        public var p99Seconds: Double?
    }

    public var tools: [ToolRow] {
        let p = SupervisorMetrics.prefix
        var names = Set<String>()
        for s in samples where s.name == p + "calls_total" { if let t = s.labels["tool"] { names.insert(t) } }
        return names.sorted().map { t in
            let outcomes = sum(p + "calls_total", by: "outcome", where: ["tool": t])
            return ToolRow(
                tool: t, calls: outcomes.values.reduce(0, +), outcomes: outcomes,
                p50Seconds: quantile(0.5, histogram: p + "call_duration_seconds", ["tool": t]),
                p99Seconds: quantile(0.99, histogram: p + "call_duration_seconds", ["tool": t]))
        }
    }

    /// A terminal screen: per tool calls, calls per second since `previous`
    /// (taken `elapsedSeconds` earlier), p50/p99 and the other outcomes;
    /// then refusals, violations, workers, prespawn hits, log syncs.
    public func screen(previous: MetricsSnapshot?, elapsedSeconds: Double) -> String {
        let p = SupervisorMetrics.prefix
        func ms(_ s: Double?) -> String {
            guard let s else { return "-" }
            return "\((s * 1e5).rounded() / 100)"
        }
        func pad(_ s: String, _ w: Int, left: Bool = false) -> String {
            let fill = String(repeating: " ", count: max(0, w - s.count))
            return left ? s + fill : fill + s
        }
        let rows = tools
        let before = Dictionary(uniqueKeysWithValues: (previous?.tools ?? []).map { ($0.tool, $0.calls) })
        let width = max(4, rows.map(\.tool.count).max() ?? 4)
        var lines = [
            pad("tool", width, left: true) + "  " + pad("calls", 8) + "  " + pad("/s", 7) + "  " + pad("p50 ms", 8)
                + "  " + pad("p99 ms", 8) + "  not success"
        ]
        for r in rows {
            let rate =
                previous == nil || elapsedSeconds <= 0
                ? "-" : "\(((r.calls - (before[r.tool] ?? 0)) / elapsedSeconds * 10).rounded() / 10)"
            let other = r.outcomes.filter { $0.key != "success" && $0.value > 0 }.sorted { $0.key < $1.key }
                .map { "\($0.key) \(Int($0.value))" }.joined(separator: ", ")
            lines.append(
                pad(r.tool, width, left: true) + "  " + pad("\(Int(r.calls))", 8) + "  " + pad(rate, 7) + "  "
                    + pad(ms(r.p50Seconds), 8) + "  " + pad(ms(r.p99Seconds), 8) + "  " + other)
        }
        if rows.isEmpty { lines.append("(no calls yet)") }
        for (title, metric, label) in [
            ("refusals", "refusals_total", "reason"), ("sandbox violations", "sandbox_violations_total", "kind"),
        ] {
            let d = sum(p + metric, by: label).filter { $0.value > 0 }.sorted { $0.key < $1.key }
            lines.append(
                "\(title): " + (d.isEmpty ? "none" : d.map { "\($0.key) \(Int($0.value))" }.joined(separator: ", ")))
        }
        let hits = value(p + "prespawn_hits_total")
        let misses = value(p + "prespawn_misses_total")
        lines.append(
            "workers alive: \(Int(value(p + "workers_alive")))   prespawn hits: \(Int(hits))/\(Int(hits + misses))"
                + "   log sync p99: \(ms(quantile(0.99, histogram: p + "security_log_sync_seconds", [:]))) ms")
        return lines.joined(separator: "\n")
    }
}
