import StrictJSON
import SupervisorPlatform

/// Who may call what, how often, and in which phase (docs/policy.md).
/// Plain data, deny by default, validated strictly.
public struct Policy: Sendable {
    public struct RateLimit: Sendable, Equatable {
        /// Tokens added per second.
        public let rate: Double
        /// Bucket size: calls allowed at once after a quiet period.
        public let burst: Int
    }

    public struct PrincipalRule: Sendable {
        public let name: String
        /// Glob over the principal (`uid:1000`); `*` matches all.
        public let principal: String
        /// Glob over the client name from initialize.
        public let client: String
        /// Globs over the caller's groups (HTTP tokens): the rule matches when
        /// any group matches any of them; nil: every caller, with or without groups.
        public let groups: [String]?
        /// Globs over the caller's scopes (HTTP tokens): the rule matches when
        /// each of them matches one of the caller's scopes; nil: no scope needed.
        public let scopes: [String]?
        public let allow: [String]
        public let deny: [String]
        public let perToolRate: RateLimit?
        public let overallRate: RateLimit?
        public let maxConcurrent: Int?

        /// Why a caller with these groups and scopes is not covered, in the
        /// policy's own terms (`groups ["ops"]: the caller has none of them`);
        /// nil when it is.
        func missing(groups callerGroups: [String], scopes callerScopes: [String]) -> String? {
            if let groups, !callerGroups.contains(where: { g in groups.contains { glob($0, g) } }) {
                return "groups [\(groups.map { "\"\($0)\"" }.joined(separator: ", "))]: the caller has none of them"
            }
            if let scopes, let lacking = scopes.first(where: { s in !callerScopes.contains { glob(s, $0) } }) {
                return "scopes [\(scopes.map { "\"\($0)\"" }.joined(separator: ", "))]: the caller lacks \"\(lacking)\""
            }
            return nil
        }
    }

    public struct Transition: Sendable {
        public let from: String
        public let to: String
        /// A tool that must have succeeded earlier in the session.
        public let requires: String?
    }

    public struct CellRule: Sendable {
        public let maxConcurrent: Int?
        /// Tightened limits (never wider than the manifest's).
        public let limits: [String: Int]
    }

    public enum ConflictAction: String, Sendable, CaseIterable { case wait, refuse }

    /// A call a person must approve before any worker starts (docs/policy.md).
    public struct ApprovalRule: Sendable, Equatable {
        /// Glob over the tool name.
        public let tool: String
        /// The phase it applies in; nil: every phase.
        public let phase: String?
        /// Glob over the principal (`uid:1000`); nil: every principal.
        public let principal: String?
    }

    public let principals: [PrincipalRule]
    public let phases: [String]
    public let initialPhase: String
    public let transitions: [Transition]
    public let cells: [String: CellRule]
    public let onConflict: ConflictAction
    public let conflictWaitMilliseconds: Int
    public let approval: [ApprovalRule]
    /// How long an approval request stays answerable, in seconds.
    public let approvalTimeoutSeconds: Int
    /// Breakers, anomaly responses, retries and fallbacks (docs/resilience.md).
    public let resilience: ResiliencePolicy
    public let sourcePath: String
    /// SHA-256 of the policy file's exact bytes, recorded with each decision.
    public let sha256: String

    public static let tightenable = [
        "timeoutMilliseconds", "cpuSeconds", "memoryMiB", "openFiles", "fileSizeMiB", "outputKiB",
        "scratchMiB", "scratchFiles",
    ]

    public static func load(path: String) throws(ConfigError) -> Policy {
        let bytes: [UInt8]
        do { bytes = try readFile(path, limit: 1 << 20) } catch {
            throw ConfigError(file: path, field: "", message: "cannot read: \(error)")
        }
        return try parse(bytes: bytes, path: path)
    }

    public static func parse(bytes: [UInt8], path: String) throws(ConfigError) -> Policy {
        let doc: JSONValue
        do { doc = try JSONParser.parse(bytes) } catch {
            throw ConfigError(file: path, field: "", message: "not valid JSON: \(error)")
        }
        let r = try FieldReader(file: path, path: "", value: doc)
        _ = try r.optionalString("description")

        var phases = ["default"]
        var initial = "default"
        var transitions: [Transition] = []
        if let p = try r.object("phases") {
            phases = try p.stringArray("states")
            guard !phases.isEmpty else { throw p.error("states", "at least one phase") }
            for (i, s) in phases.enumerated() where !CellManifest.isValidName(s) {
                throw ConfigError(
                    file: path, field: "phases.states[\(i)]", message: "must match \(CellManifest.namePattern)")
            }
            initial = try p.string("initial")
            guard phases.contains(initial) else {
                throw p.error("initial", "\"\(initial)\" is not one of phases.states")
            }
            for (i, t) in (try p.array("transitions") ?? []).enumerated() {
                let tr = try FieldReader(file: path, path: "phases.transitions[\(i)]", value: t)
                let from = try tr.string("from")
                let to = try tr.string("to")
                guard phases.contains(from) || from == "*" else { throw tr.error("from", "\"\(from)\" is not a phase") }
                guard phases.contains(to) else { throw tr.error("to", "\"\(to)\" is not a phase") }
                let req = try tr.optionalString("requires")
                try tr.finish()
                transitions.append(Transition(from: from, to: to, requires: req))
            }
            try p.finish()
        }

        var principals: [PrincipalRule] = []
        guard let ps = try r.array("principals") else {
            throw r.error("principals", "required: who may call (deny by default)")
        }
        for (i, v) in ps.enumerated() {
            let p = try FieldReader(file: path, path: "principals[\(i)]", value: v)
            let name = try p.string("name")
            let principal = try p.optionalString("principal") ?? "*"
            let client = try p.optionalString("client") ?? "*"
            // Absent and empty differ: an empty list would match no caller
            // (groups) or every caller (scopes), either way not what was meant.
            func patterns(_ key: String, _ what: String) throws(ConfigError) -> [String]? {
                guard p.has(key) else { return nil }
                let list = try p.stringArray(key)
                guard !list.isEmpty else {
                    throw p.error(key, "an empty list; give at least one \(what) pattern or leave the field out")
                }
                for (k, g) in list.enumerated() where g.isEmpty {
                    throw ConfigError(file: path, field: "principals[\(i)].\(key)[\(k)]", message: "an empty pattern")
                }
                return list
            }
            let groups = try patterns("groups", "group")
            let scopes = try patterns("scopes", "scope")
            let allow = try p.stringArray("allow", default: [])
            let deny = try p.stringArray("deny", default: [])
            func rate(_ key: String) throws(ConfigError) -> RateLimit? {
                guard let rr = try p.object(key) else { return nil }
                guard let rv = rr.raw("perSecond"), let rate = rv.doubleValue, rate > 0, rate <= 1_000_000 else {
                    throw rr.error("perSecond", "required: a number of calls per second > 0")
                }
                let burst = try rr.int("burst", default: max(1, Int(rate.rounded(.up))), range: 1...1_000_000)
                try rr.finish()
                return RateLimit(rate: rate, burst: burst)
            }
            let perTool = try rate("ratePerTool")
            let overall = try rate("rateOverall")
            let maxC = p.has("maxConcurrent") ? try p.int("maxConcurrent", default: 1, range: 1...10_000) : nil
            try p.finish()
            principals.append(
                PrincipalRule(
                    name: name, principal: principal, client: client, groups: groups, scopes: scopes,
                    allow: allow, deny: deny,
                    perToolRate: perTool, overallRate: overall, maxConcurrent: maxC))
        }

        var cells: [String: CellRule] = [:]
        if let c = try r.object("cells") {
            for (name, v) in c.object {
                _ = c.raw(name)
                let cr = try FieldReader(file: path, path: "cells.\(name)", value: v)
                let maxC = cr.has("maxConcurrent") ? try cr.int("maxConcurrent", default: 1, range: 1...10_000) : nil
                var limits: [String: Int] = [:]
                if let l = try cr.object("limits") {
                    for k in tightenable where l.has(k) {
                        limits[k] = try l.int(k, default: 0, range: 1...Int(Int32.max))
                    }
                    try l.finish()
                }
                try cr.finish()
                cells[name] = CellRule(maxConcurrent: maxC, limits: limits)
            }
        }
        var onConflict = ConflictAction.wait
        var wait = 5000
        if let a = try r.object("arbitration") {
            onConflict = try a.choice("onConflict", default: .wait)
            wait = try a.int("waitMilliseconds", default: 5000, range: 0...600_000, unit: "ms")
            try a.finish()
        }
        var approval: [ApprovalRule] = []
        for (i, v) in (try r.array("approval") ?? []).enumerated() {
            let a = try FieldReader(file: path, path: "approval[\(i)]", value: v)
            let tool = try a.string("tool")
            let phase = try a.optionalString("phase")
            if let phase, !phases.contains(phase) {
                throw a.error("phase", "\"\(phase)\" is not one of phases.states")
            }
            let principal = try a.optionalString("principal")
            try a.finish()
            approval.append(ApprovalRule(tool: tool, phase: phase, principal: principal))
        }
        let approvalTimeout = try r.int(
            "approvalTimeoutSeconds", default: 300, range: 1...3600, unit: "s")
        var resilience = ResiliencePolicy()
        if let x = try r.object("resilience") { resilience = try ResiliencePolicy.parse(x) }
        try r.finish()
        return Policy(
            principals: principals, phases: phases, initialPhase: initial, transitions: transitions, cells: cells,
            onConflict: onConflict, conflictWaitMilliseconds: wait, approval: approval,
            approvalTimeoutSeconds: approvalTimeout, resilience: resilience, sourcePath: path,
            sha256: sha256Hex(bytes))
    }

    public func rule(for principal: String, client: String?, groups: [String] = [], scopes: [String] = [])
        -> (Int, PrincipalRule)?
    {
        principals.enumerated().first {
            glob($0.element.principal, principal) && glob($0.element.client, client ?? "")
                && $0.element.missing(groups: groups, scopes: scopes) == nil
        }
    }

    /// The static part of a decision: who, which tool, which phase. Rate
    /// limits, concurrency and arbitration are decided at call time.
    public func decide(
        principal: String, client: String?, groups: [String] = [], scopes: [String] = [], tool: String,
        manifest: CellManifest?, phase: String
    ) -> Decision {
        guard let (i, p) = rule(for: principal, client: client, groups: groups, scopes: scopes) else {
            // Name the first rule that would have matched but for the
            // token's groups or scopes: that is the rule the operator looks for.
            for (k, r) in principals.enumerated()
            where glob(r.principal, principal) && glob(r.client, client ?? "") {
                if let why = r.missing(groups: groups, scopes: scopes) {
                    return Decision(
                        allowed: false, rule: "principals[\(k)] (\(r.name)) \(why)", reason: "policy",
                        message: "No policy rule covers this caller: the rule for \(r.name) needs \(why).")
                }
            }
            return Decision(
                allowed: false, rule: "no principals[] entry matches \(principal)", reason: "policy",
                message: "No policy rule covers this caller.")
        }
        if let (j, pat) = p.deny.enumerated().first(where: { glob($0.element, tool) }) {
            return Decision(
                allowed: false, rule: "principals[\(i)] (\(p.name)) deny[\(j)] \"\(pat)\"", reason: "policy",
                message: "The policy denies this tool to \(p.name).")
        }
        guard let (j, pat) = p.allow.enumerated().first(where: { glob($0.element, tool) }) else {
            return Decision(
                allowed: false, rule: "principals[\(i)] (\(p.name)): no allow[] pattern matches", reason: "policy",
                message: "The policy does not allow this tool to \(p.name).")
        }
        if let m = manifest, !m.phases.isEmpty, !m.phases.contains(phase) {
            let ways = m.phases.map { routes(from: phase, to: $0) }.filter { !$0.isEmpty }
            let hint =
                ways.isEmpty
                ? "no transition leads there" : "change the phase with set_phase: " + ways.joined(separator: " or ")
            return Decision(
                allowed: false, rule: "manifest phases [\(m.phases.joined(separator: ", "))]", reason: "phase",
                message:
                    "This tool runs only in phase \(m.phases.joined(separator: " or ")); the session is in phase \(phase). To allow it, \(hint)."
            )
        }
        return Decision(
            allowed: true, rule: "principals[\(i)] (\(p.name)) allow[\(j)] \"\(pat)\"", reason: "allow", message: "")
    }

    /// Whether the principal's rule lets it see the tool at all (its allow
    /// and deny globs): what the catalogue lists and finds. Phases, rates and
    /// approval decide at call time.
    public func mayList(
        principal: String, client: String?, groups: [String] = [], scopes: [String] = [], tool: String
    ) -> Bool {
        decide(
            principal: principal, client: client, groups: groups, scopes: scopes, tool: tool, manifest: nil,
            phase: ""
        ).allowed
    }

    /// How to get from one phase to another (one or two steps), for hints.
    func routes(from: String, to: String) -> String {
        func step(_ a: String, _ b: String) -> Transition? {
            transitions.first { ($0.from == a || $0.from == "*") && $0.to == b }
        }
        func text(_ t: Transition, _ to: String) -> String {
            "\"\(to)\"" + (t.requires.map { " (after \($0) succeeds)" } ?? "")
        }
        if let t = step(from, to) { return text(t, to) }
        for mid in phases where mid != from && mid != to {
            if let a = step(from, mid), let b = step(mid, to) { return text(a, mid) + " then " + text(b, to) }
        }
        return ""
    }

    /// The first approval rule covering this call, with its index.
    public func approvalRule(tool: String, phase: String, principal: String) -> (Int, ApprovalRule)? {
        approval.enumerated().first { _, a in
            glob(a.tool, tool) && (a.phase.map { $0 == phase } ?? true)
                && (a.principal.map { glob($0, principal) } ?? true)
        }
    }

    public func transition(from: String, to: String) -> Transition? {
        transitions.first { ($0.from == from || $0.from == "*") && $0.to == to }
    }

    /// The manifest's limits, tightened by the policy (never widened).
    public func effectiveLimits(_ m: CellManifest) -> CellManifest.Limits {
        var l = m.limits
        guard let c = cells[m.name] else { return l }
        if let v = c.limits["timeoutMilliseconds"] { l.timeoutMilliseconds = min(l.timeoutMilliseconds, v) }
        if let v = c.limits["cpuSeconds"] { l.cpuSeconds = min(l.cpuSeconds, v) }
        if let v = c.limits["memoryMiB"] { l.memoryMiB = min(l.memoryMiB, v) }
        if let v = c.limits["openFiles"] { l.openFiles = min(l.openFiles, v) }
        if let v = c.limits["fileSizeMiB"] { l.fileSizeMiB = min(l.fileSizeMiB, v) }
        if let v = c.limits["scratchMiB"] { l.scratchMiB = min(l.scratchMiB, v) }
        if let v = c.limits["scratchFiles"] { l.scratchFiles = min(l.scratchFiles, v) }
        if let v = c.limits["outputKiB"] {
            l.outputKiB = min(l.outputKiB, v)
            l.frameKiB = min(l.frameKiB, l.outputKiB)
        }
        return l
    }

    public struct Decision: Sendable, Equatable {
        public let allowed: Bool
        public let rule: String
        /// `allow`, `policy`, `phase`, `rate_limit`, `concurrency`, `conflict`.
        public let reason: String
        public let message: String
    }
}

/// Shell-style glob: `*` any run, `?` one character.
public func glob(_ pattern: String, _ s: String) -> Bool {
    let p = Array(pattern.unicodeScalars)
    let t = Array(s.unicodeScalars)
    var pi = 0
    var ti = 0
    var star = -1
    var mark = 0
    while ti < t.count {
        if pi < p.count && (p[pi] == "?" || p[pi] == t[ti]) {
            pi += 1
            ti += 1
        } else if pi < p.count && p[pi] == "*" {
            star = pi
            mark = ti
            pi += 1
        } else if star >= 0 {
            pi = star + 1
            mark += 1
            ti = mark
        } else {
            return false
        }
    }
    while pi < p.count && p[pi] == "*" { pi += 1 }
    return pi == p.count
}
