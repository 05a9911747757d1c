import StrictJSON

/// One suggestion of the improvement report (`mcp-supervisor insights`,
/// docs/resilience.md): what, the evidence it rests on, and the change that
/// would apply it. Nothing here applies anything: a tighter manifest is a
/// new, signed, reviewed version.
public struct Insight: Sendable, Equatable {
    /// `tighten_limit`, `unused_syscalls`, `rising_latency`, `rising_failures`,
    /// `unmatched_rule`, `breaker_opened`, `anomalies`, `never_called`.
    public let kind: String
    /// The cell, tool or policy rule concerned.
    public let subject: String
    public let summary: String
    public let evidence: String
    /// The command or manifest change that applies it.
    public let apply: String

    public var json: JSONValue {
        .object(
            JSONObject([
                ("kind", .string(kind)), ("subject", .string(subject)), ("summary", .string(summary)),
                ("evidence", .string(evidence)), ("apply", .string(apply)),
            ]))
    }
}

/// The improvement report's analysis: the security log's records, the
/// manifests and the policy in; suggestions out.
/// Pure, so it is tested on a prepared log.
public enum Insights {
    public struct Options: Sendable {
        /// Calls of a cell (or tool) before its numbers say anything.
        public var minCalls = 20
        /// A declared limit this many times what the cell used is "far above".
        public var limitFactor = 4.0
        /// Profiled calls of a cell version before its unused syscalls are
        /// suggested for removal (a path taken once in a while, an error
        /// path, may need a syscall that fewer calls would not show).
        public var minProfiledCalls = 50
        public init() {}
    }

    /// A record reduced to what the analysis reads.
    public struct Record: Sendable {
        public let type: String
        public let time: String
        public let fields: JSONObject
        public init(type: String, time: String, fields: JSONObject) {
            self.type = type
            self.time = time
            self.fields = fields
        }
    }

    /// `profiles` and `groups` feed `unused_syscalls` (the behaviour
    /// profiles of `<state>/profiles` and the syscall groups manifests name).
    public static func analyze(
        records: [Record], manifests: [CellManifest], policy: Policy?,
        options o: Options = Options(), profiles: [BehaviourProfile] = [], groups: SyscallGroups? = nil,
        profilesDirectory: String = "<state>/profiles"
    ) -> [Insight] {
        var out: [Insight] = []
        let ends = records.filter { $0.type == SecurityEventType.callEnd.rawValue }
        let byCell = Dictionary(grouping: ends) { $0.fields["cell"]?.stringValue ?? "?" }
        let manifestByName = Dictionary(manifests.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })

        // Limits far above use.
        for (cell, calls) in byCell.sorted(by: { $0.key < $1.key }) where calls.count >= o.minCalls {
            guard let m = manifestByName[cell] else { continue }
            func maxOf(_ k: String) -> Double? { calls.compactMap { $0.fields[k]?.doubleValue }.max() }
            let n = calls.count
            func suggest(_ field: String, declared: Int, unit: String, used: Double, usedText: String, value: Int) {
                guard Double(declared) >= o.limitFactor * max(used, 1), value < declared else { return }
                out.append(
                    Insight(
                        kind: "tighten_limit", subject: cell,
                        summary: "limits.\(field) is \(declared) \(unit); \(n) calls used at most \(usedText)",
                        evidence: "\(n) call.end records of \(cell) in the security log",
                        apply: "in a new version of \(m.sourcePath.isEmpty ? "\(cell)'s manifest" : m.sourcePath): "
                            + "\"limits\": {\"\(field)\": \(value)}, then sign and register it (`mcp-supervisor cell "
                            + "sign`, `cell register`); or at once, without re-signing, in the policy: "
                            + "\"cells\": {\"\(cell)\": {\"limits\": {\"\(field)\": \(value)}}}"))
            }
            if let d = maxOf("durationMicroseconds") {
                let ms = d / 1000
                let v = max(1000, Int((ms * 3 / 100).rounded(.up)) * 100)
                suggest(
                    "timeoutMilliseconds", declared: m.limits.timeoutMilliseconds, unit: "ms", used: ms,
                    usedText: "\(Int(ms.rounded(.up))) ms", value: v)
            }
            if let c = maxOf("cpuMicroseconds") {
                let sec = c / 1e6
                suggest(
                    "cpuSeconds", declared: m.limits.cpuSeconds, unit: "s", used: sec,
                    usedText: "\(String(format3(sec))) s of CPU", value: max(1, Int((sec * 3).rounded(.up))))
            }
            if let p = maxOf("peakMemoryBytes") {
                // The limit is address space (RLIMIT_AS), the measure is
                // resident memory: leave four times the peak, at least 64 MiB.
                let mib = p / Double(1 << 20)
                let v = max(64, Int((mib * 4 / 16).rounded(.up)) * 16)
                suggest(
                    "memoryMiB", declared: m.limits.memoryMiB, unit: "MiB (address space)", used: mib * 4,
                    usedText: "\(Int(mib.rounded(.up))) MiB resident", value: v)
            }
            if let b = maxOf("bytesReturned") {
                let kib = b / 1024
                let v = max(16, Int((kib * 4).rounded(.up)))
                suggest(
                    "outputKiB", declared: m.limits.outputKiB, unit: "KiB", used: kib,
                    usedText: "\(Int(kib.rounded(.up))) KiB returned", value: v)
            }
        }

        // Syscalls allowed but never used by profiled calls.
        if let groups {
            for m in manifests.sorted(by: { $0.name < $1.name }) {
                guard let p = profiles.first(where: { $0.cell == m.name && $0.versionID == m.manifestSHA256 }),
                    p.profiledCalls >= o.minProfiledCalls,
                    let i = unusedSyscalls(m, profile: p, groups: groups, directory: profilesDirectory)
                else { continue }
                out.append(i)
            }
        }

        // Rising latency and failure rates, per tool: the older half of its
        // calls against the newer half.
        let byTool = Dictionary(grouping: ends) { $0.fields["tool"]?.stringValue ?? "?" }
        for (tool, calls) in byTool.sorted(by: { $0.key < $1.key }) where calls.count >= o.minCalls {
            let half = calls.count / 2
            let (old, new) = (Array(calls[..<half]), Array(calls[half...]))
            func med(_ c: [Record]) -> Double? {
                let v = c.filter { $0.fields["outcome"]?.stringValue == "success" }
                    .compactMap { $0.fields["durationMicroseconds"]?.doubleValue }
                return v.isEmpty ? nil : BehaviourProfile.median(v)
            }
            if let a = med(old), let b = med(new), b > 1.5 * a, b - a > 5000 {
                out.append(
                    Insight(
                        kind: "rising_latency", subject: tool,
                        summary: "median duration rose from \(Int(a / 1000)) ms to \(Int(b / 1000)) ms",
                        evidence: "\(old.count) older and \(new.count) newer call.end records (\(old.first!.time) "
                            + "to \(new.last!.time))",
                        apply: "look at the newer calls: `mcp-supervisor audit query --tool \(tool) --type call.end`"))
            }
            func failRate(_ c: [Record]) -> Double {
                let counted = c.filter { !["cancelled", "refused"].contains($0.fields["outcome"]?.stringValue ?? "") }
                guard !counted.isEmpty else { return 0 }
                return Double(counted.filter { $0.fields["outcome"]?.stringValue != "success" }.count)
                    / Double(counted.count)
            }
            let (fa, fb) = (failRate(old), failRate(new))
            if fb - fa >= 0.2, fb >= 0.25 {
                out.append(
                    Insight(
                        kind: "rising_failures", subject: tool,
                        summary: "failure rate rose from \(Int(fa * 100)) % to \(Int(fb * 100)) %",
                        evidence: "\(old.count) older and \(new.count) newer call.end records",
                        apply: "see the causes: `mcp-supervisor audit stats --tool \(tool) --type call.end`"))
            }
        }

        // Policy rules that never matched since the policy was loaded.
        if let policy {
            let loaded = records.firstIndex {
                $0.type == SecurityEventType.policyLoaded.rawValue
                    && $0.fields["policySha256"]?.stringValue == policy.sha256
            }
            if let loaded {
                let since = records[loaded...]
                var decisions: [String] = []
                for r in since {
                    if r.type == SecurityEventType.callStart.rawValue, let d = r.fields["decision"]?.stringValue {
                        decisions.append(d + " " + (r.fields["approval"]?.stringValue ?? ""))
                    } else if r.type == SecurityEventType.callApprovalRequested.rawValue,
                        let rule = r.fields["rule"]?.stringValue
                    {
                        decisions.append(rule)
                    } else if r.type == SecurityEventType.callRefused.rawValue,
                        let d = r.fields["detail"]?.stringValue
                    {
                        decisions.append(d)
                    }
                }
                if decisions.count >= o.minCalls {
                    for (i, p) in policy.principals.enumerated() {
                        for (kind, patterns) in [("allow", p.allow), ("deny", p.deny)] {
                            for (j, pat) in patterns.enumerated() {
                                let tag = "principals[\(i)] (\(p.name)) \(kind)[\(j)] "
                                if decisions.contains(where: { $0.contains(tag) }) { continue }
                                out.append(
                                    Insight(
                                        kind: "unmatched_rule", subject: "principals[\(i)].\(kind)[\(j)]",
                                        summary: "\(kind) pattern \"\(pat)\" of \(p.name) decided none of "
                                            + "\(decisions.count) calls",
                                        evidence: "call.start and call.refused records since policy "
                                            + "\(policy.sha256.prefix(16)) was loaded (\(records[loaded].time))",
                                        apply:
                                            "remove \"\(pat)\" from principals[\(i)].\(kind) in \(policy.sourcePath) "
                                            + "if nothing needs it (then `mcp-supervisor policy explain` to check)"))
                            }
                        }
                    }
                    for (i, rule) in policy.approval.enumerated()
                    where !decisions.contains(where: { $0.contains("approval[\(i)]") }) {
                        out.append(
                            Insight(
                                kind: "unmatched_rule", subject: "approval[\(i)]",
                                summary:
                                    "approval rule for \"\(rule.tool)\"\(rule.phase.map { " in phase \($0)" } ?? "") "
                                    + "asked about none of \(decisions.count) calls",
                                evidence: "call.start, call.refused and call.approval_requested records since policy "
                                    + "\(policy.sha256.prefix(16)) was loaded (\(records[loaded].time))",
                                apply: "remove approval[\(i)] from \(policy.sourcePath) if nothing needs it"))
                    }
                }
            }
        }

        // Breakers that opened, and anomalies.
        let opened = records.filter {
            $0.type == SecurityEventType.cellBreaker.rawValue && $0.fields["state"]?.stringValue == "open"
        }
        for (cell, events) in Dictionary(grouping: opened, by: { $0.fields["cell"]?.stringValue ?? "?" })
            .sorted(by: { $0.key < $1.key })
        {
            let causes = Set(events.compactMap { $0.fields["cause"]?.stringValue }).sorted()
            out.append(
                Insight(
                    kind: "breaker_opened", subject: cell,
                    summary: "its breaker opened \(events.count) time(s) (causes: \(causes.joined(separator: ", ")))",
                    evidence: "cell.breaker records, last at \(events.last!.time)",
                    apply: "find the failing calls: `mcp-supervisor audit query --cell \(cell) --type call.end`; "
                        + "fix the cell or its host, or add a fallback (resilience.fallback in the policy)"))
        }
        let anomalies = records.filter { $0.type == SecurityEventType.cellAnomaly.rawValue }
        for (cell, events) in Dictionary(grouping: anomalies, by: { $0.fields["cell"]?.stringValue ?? "?" })
            .sorted(by: { $0.key < $1.key })
        {
            var measures: Set<String> = []
            for e in events {
                for d in e.fields["deviations"]?.arrayValue ?? [] {
                    if let m = d["measure"]?.stringValue { measures.insert(m) }
                }
            }
            out.append(
                Insight(
                    kind: "anomalies", subject: cell,
                    summary: "\(events.count) anomalous call(s) (\(measures.sorted().joined(separator: ", ")))",
                    evidence: "cell.anomaly records, last at \(events.last!.time)",
                    apply: "review them: `mcp-supervisor audit query --cell \(cell) --type cell.anomaly`; if the "
                        + "cell is fine, `mcp-supervisor cell release \(cell)` ends a quarantine"))
        }

        // Cells that are never called.
        let started = Set(
            records.filter { $0.type == SecurityEventType.callStart.rawValue }.compactMap {
                $0.fields["cell"]?.stringValue
            })
        if let lastLoad = records.last(where: { $0.type == SecurityEventType.cellsLoaded.rawValue }),
            started.count > 0
        {
            let firstLoad = records.first { $0.type == SecurityEventType.cellsLoaded.rawValue }!
            let calls = records.filter { $0.type == SecurityEventType.callStart.rawValue }.count
            for c in lastLoad.fields["cells"]?.arrayValue ?? [] {
                guard let name = c["cell"]?.stringValue, !started.contains(name), calls >= o.minCalls else { continue }
                out.append(
                    Insight(
                        kind: "never_called", subject: name,
                        summary: "served but never called in \(calls) calls to other cells",
                        evidence: "cells.loaded since \(firstLoad.time); no call.start names \(name)",
                        apply: "if nothing needs it, stop serving it: `mcp-supervisor cell revoke \(name) VERSION`"))
            }
        }
        return out
    }

    static func format3(_ x: Double) -> String { String((x * 1000).rounded() / 1000) }

    /// The `unused_syscalls` suggestion for a manifest whose current version
    /// was profiled: groups and `allow` entries none of whose syscalls any
    /// profiled call made, and groups only partly used. The calls the
    /// profiler cannot see (`PreparedCell.profilerPassing`, allowed in every
    /// filter anyway) count neither way.
    static func unusedSyscalls(
        _ m: CellManifest, profile p: BehaviourProfile, groups: SyscallGroups, directory: String
    ) -> Insight? {
        let unseen = Set(PreparedCell.profilerPassing)
        let used = Set(p.syscallsSeen.keys)
        // ioctl is counted per request ("ioctl(21505)"); plain "ioctl" is a
        // request past the profiler's bound, so any may have been made.
        var requests: Set<UInt64> = []
        for n in used where n.hasPrefix("ioctl(") {
            if let r = UInt64(n.dropFirst(6).dropLast()) { requests.insert(r) }
        }
        let anyIoctl = used.contains("ioctl")
        func isUsed(_ e: SyscallGroups.Entry) -> Bool {
            guard e.name == "ioctl" else { return used.contains(e.name) }
            if anyIoctl { return true }
            return e.argument == 1 ? !requests.isDisjoint(with: e.values) : !requests.isEmpty
        }
        var removeGroups: [(String, Int)] = []
        // Partly used groups without a used conditioned entry, which the
        // used names alone (an `allow` list) can replace.
        var narrowGroups: [(name: String, used: [String], unused: [String])] = []
        var partly: [String] = []
        for g in m.syscallGroups {
            let entries = (groups.groups[g] ?? []).filter { !unseen.contains($0.name) }
            guard !entries.isEmpty else { continue }
            let usedEntries = entries.filter(isUsed)
            let unusedNames = Self.unique(entries.filter { !isUsed($0) }.map(\.name))
            if usedEntries.isEmpty {
                removeGroups.append((g, Self.unique(entries.map(\.name)).count))
            } else if !unusedNames.isEmpty {
                partly.append("group \(g): \(unusedNames.count) of \(Self.unique(entries.map(\.name)).count) unused")
                if !usedEntries.contains(where: { $0.argument != nil }) {
                    narrowGroups.append((g, Self.unique(usedEntries.map(\.name)), unusedNames))
                }
            }
        }
        let removeAllow = m.syscallAllow.filter {
            !unseen.contains($0) && !isUsed(SyscallGroups.Entry(name: $0, argument: nil, values: []))
        }
        guard !removeGroups.isEmpty || !removeAllow.isEmpty || !narrowGroups.isEmpty else { return nil }

        var unusedText: [String] = removeGroups.map { "group \($0.0) (\($0.1) syscalls)" }
        if !removeAllow.isEmpty { unusedText.append("allow: " + removeAllow.joined(separator: ", ")) }
        let n = p.profiledCalls
        var summary =
            unusedText.isEmpty
            ? "\(n) profiled calls used every group and allowed syscall, but not all of some groups"
            : "\(n) profiled calls used none of: " + unusedText.joined(separator: "; ")
        if !partly.isEmpty {
            let detail = narrowGroups.map { g in
                let shown = g.unused.prefix(12).joined(separator: ", ")
                return "group \(g.name) never used \(shown)\(g.unused.count > 12 ? ", …" : "")"
            }
            summary += " (partly used: " + (detail.isEmpty ? partly : detail).joined(separator: "; ") + ")"
        }
        func section(_ groupsKept: [String], _ allow: [String]) -> String {
            var o = JSONObject([("groups", .array(groupsKept.map { .string($0) }))])
            if !allow.isEmpty { o["allow"] = .array(allow.map { .string($0) }) }
            return "\"syscalls\": " + JSONValue.object(o).serialized()
        }
        let keptGroups = m.syscallGroups.filter { g in !removeGroups.contains { $0.0 == g } }
        let keptAllow = m.syscallAllow.filter { !removeAllow.contains($0) }
        let file = m.sourcePath.isEmpty ? "\(m.name)'s manifest" : m.sourcePath
        var changes: [String] = []
        if !removeGroups.isEmpty || !removeAllow.isEmpty { changes.append(section(keptGroups, keptAllow)) }
        if !narrowGroups.isEmpty {
            // Narrower: the partly used groups replaced by the syscalls used
            // from them that no kept group allows already.
            let narrowKept = keptGroups.filter { g in !narrowGroups.contains { $0.name == g } }
            let covered = Set(narrowKept.flatMap { (groups.groups[$0] ?? []).map(\.name) })
            var allow = keptAllow
            for g in narrowGroups {
                for name in g.used where !covered.contains(name) && !allow.contains(name) { allow.append(name) }
            }
            changes.append(section(narrowKept, allow))
        }
        let apply =
            "in a new version of \(file): "
            + changes.joined(separator: ", or narrower still, ")
            + ", then sign and register it (`mcp-supervisor cell sign`, `cell register`); keep it profiled: a "
            + "syscall only a rare path makes shows as a sandbox.violation"
        return Insight(
            kind: "unused_syscalls", subject: m.name, summary: summary,
            evidence: "the behaviour profile \(directory)/\(m.name)@\(p.versionID).json (version \(p.label)): "
                + "\(n) profiled calls, \(p.syscallsSeen.count) distinct syscalls made",
            apply: apply)
    }

    static func unique(_ names: [String]) -> [String] {
        var seen: Set<String> = []
        return names.filter { seen.insert($0).inserted }
    }

    /// The last known state of each cell version's breaker, from the log
    /// (`audit stats`, `doctor`): "closed" when it never changed.
    public static func breakerStates(_ records: [Record])
        -> [(cell: String, version: String, state: String, time: String)]
    {
        var last: [String: (String, String, String, String)] = [:]
        for r in records where r.type == SecurityEventType.cellBreaker.rawValue {
            let cell = r.fields["cell"]?.stringValue ?? "?"
            let v = r.fields["cellVersion"]?.stringValue ?? "?"
            last["\(cell)@\(r.fields["cellVersionId"]?.stringValue ?? v)"] =
                (cell, v, r.fields["state"]?.stringValue ?? "?", r.time)
        }
        return last.values.sorted { ($0.0, $0.1) < ($1.0, $1.1) }.map {
            (cell: $0.0, version: $0.1, state: $0.2, time: $0.3)
        }
    }
}
