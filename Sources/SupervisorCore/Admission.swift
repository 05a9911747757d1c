import StrictJSON
import SupervisorPlatform
import Synchronization

/// Why a call was not admitted. Every case is a decision taken before any
/// worker exists: nothing ran. `reason` is the stable word of the
/// `call.refused` event (docs/security-events.md); `message` is what the
/// client reads; `detail` is what the operator reads in the log.
public enum Refusal: Error, Sendable, Equatable {
    /// No cell serves this tool name (answered as a JSON-RPC error).
    case unknownTool
    /// The arguments do not match the tool's inputSchema.
    case invalidArguments(SchemaViolation)
    /// No policy is loaded, so nothing may run (deny by default).
    case noPolicy(String)
    /// The policy's static decision: principal, allow/deny, phase.
    case policy(Policy.Decision)
    /// A token bucket is empty.
    case rateLimit(Policy.RateLimit, scope: RateScope, retryAfterSeconds: Double)
    /// A concurrency cap is reached.
    case concurrency(cap: Int, scope: CapScope)
    /// Another call holds a resource this call would change.
    case conflict(resources: [String])
    /// The call pool's running slots and queue are full.
    case busy(running: Int, queued: Int)
    /// The supervisor is stopping.
    case shuttingDown
    /// The security log cannot record calls; none runs until it can. The
    /// reason is `SecurityLogError.reason` (no path).
    case logUnavailable(String)
    /// A person declined (or dismissed) the approval the policy requires.
    case approvalDeclined(rule: String)
    /// The policy requires approval and the client offers no way to ask.
    case approvalUnavailable(rule: String, why: String)
    /// The client's approval answer is unusable (tampered, expired,
    /// replayed or foreign request state; no answer).
    case approvalInvalid(rule: String, why: String)
    /// The server cell's version is quarantined: its server listed other
    /// tools than the pinned ones (docs/gateway.md).
    case quarantined(cell: String, since: String, difference: String)
    /// The cell version's circuit breaker is open after repeated failures
    /// (docs/resilience.md); calls are refused until `retryAt`.
    case breakerOpen(cell: String, failures: Int, retryAt: String, retryAfterSeconds: Double)
    /// The cell version's behaviour departed from its profile and the
    /// policy quarantines it (docs/resilience.md).
    case anomalyQuarantine(cell: String, since: String, difference: String)
    /// The catalogue is on (docs/catalogue.md) and the tool, which the
    /// policy allows, is not in this session's tool list: the model calls
    /// only what it was shown.
    case notEnabled(tool: String)

    public enum RateScope: Sendable, Equatable {
        case tool, overall
    }

    public enum CapScope: Sendable, Equatable {
        case principal(rule: String)
        case cell(String)
    }

    public var reason: String {
        switch self {
        case .unknownTool: return "unknown_tool"
        case .invalidArguments: return "invalid_arguments"
        case .noPolicy: return "policy"
        case .policy(let d): return d.reason
        case .rateLimit: return "rate_limit"
        case .concurrency: return "concurrency"
        case .conflict: return "conflict"
        case .busy: return "busy"
        case .shuttingDown: return "shutting_down"
        case .logUnavailable: return "log_unavailable"
        case .approvalDeclined: return "approval_declined"
        case .approvalUnavailable: return "approval_unavailable"
        case .approvalInvalid: return "approval_invalid"
        case .quarantined: return "quarantined"
        case .breakerOpen: return "breaker_open"
        case .anomalyQuarantine: return "anomaly_quarantine"
        case .notEnabled: return "not_enabled"
        }
    }

    public var detail: String {
        switch self {
        case .unknownTool: return "no cell serves this tool"
        case .invalidArguments(let v): return v.description
        case .noPolicy(let why): return "no policy in force: \(why)"
        case .policy(let d): return d.rule
        case .rateLimit(let l, let scope, _):
            return "at most \(l.rate) calls per second \(scope == .tool ? "to this tool" : "in all") (burst \(l.burst))"
        case .concurrency(let cap, .principal(let rule)): return "\(cap) calls at once for \(rule)"
        case .concurrency(let cap, .cell(let cell)): return "\(cap) calls at once to cell \(cell)"
        case .conflict(let r): return "another call is changing \(r.joined(separator: ", "))"
        case .busy(let running, let queued): return "\(running) calls running, \(queued) waiting"
        case .shuttingDown: return "the supervisor is stopping"
        case .logUnavailable(let why): return why
        case .approvalDeclined(let rule): return "\(rule): declined"
        case .approvalUnavailable(let rule, let why), .approvalInvalid(let rule, let why): return "\(rule): \(why)"
        case .quarantined(let cell, let since, let d):
            return "cell \(cell) quarantined since \(since): \(d); release with `mcp-supervisor cell release \(cell)`"
        case .breakerOpen(let cell, let n, let at, _):
            return "cell \(cell)'s breaker is open after \(n) failures; next try at \(at)"
        case .anomalyQuarantine(let cell, let since, let d):
            return "cell \(cell) quarantined since \(since) for anomalous behaviour: \(d); release with "
                + "`mcp-supervisor cell release \(cell)`"
        case .notEnabled(let tool): return "\(tool) is not in this session's tool list (catalogue)"
        }
    }

    /// For the model's context: plain, no paths.
    public var message: String {
        switch self {
        case .unknownTool: return "Unknown tool"
        case .invalidArguments(let p): return "Invalid arguments: \(p)"
        case .noPolicy: return "Refused: no policy is in force, so no tool may run (deny by default)."
        case .policy(let d): return "Refused: \(d.message)"
        case .rateLimit(_, _, let wait):
            let rounded = (wait * 100).rounded(.up) / 100
            return "Refused by the rate limit: \(detail); retry in \(rounded) s."
        case .concurrency: return "Refused by a concurrency cap: at most \(detail); retry when one finishes."
        case .conflict: return "Refused: \(detail); retry when it has finished."
        case .busy: return "The supervisor is busy (\(detail)); retry shortly."
        case .shuttingDown: return "The supervisor is shutting down."
        case .logUnavailable(let why): return "Refused: \(why), so no tool may run until it can; retry later."
        case .approvalDeclined: return "Refused: this call needs a person's approval, and it was declined."
        case .approvalUnavailable(_, let why):
            return "Refused: this call needs a person's approval, and \(why)."
        case .approvalInvalid(_, let why): return "Refused: the approval answer is not valid: \(why)."
        case .quarantined:
            return "Refused: this tool's server changed its tool definitions after they were approved, so it is "
                + "quarantined until an operator reviews it."
        case .breakerOpen(_, let n, _, let wait):
            return "Refused: this tool failed \(n) times in a row, so it is paused; it will be tried again in "
                + "\(Int(wait.rounded(.up))) s."
        case .anomalyQuarantine:
            return "Refused: this tool behaved unlike its history, so it is quarantined until an operator "
                + "reviews it."
        case .notEnabled(let tool):
            return "Refused: the tool \(tool) is not enabled in this session. Enable it with "
                + "\(Catalogue.enableTool) {\"tools\": [\"\(tool)\"]} (find tools with \(Catalogue.searchTool)), "
                + "then call it."
        }
    }
}

/// The call-time half of admission: token buckets, concurrency counters and
/// resource claims. The static half is `Policy.decide`. Thread-safe; nothing
/// here sleeps or polls: a call that must wait for a resource is queued and
/// resumed by the call that releases it.
public final class Admission: Sendable {
    enum BucketKey: Hashable {
        case tool(principal: String, tool: String)
        case principal(String)
    }

    enum CapKey: Hashable {
        case principal(String)
        case cell(String)
    }

    struct Bucket {
        var tokens: Double
        var at: UInt64
    }

    final class Waiter: @unchecked Sendable {
        // @unchecked: `continuation` and `outcome` are guarded by `Admission.state` (touched only inside its withLock).
        let id: UInt64
        let resources: [String]
        var continuation: CheckedContinuation<Bool, Never>?
        /// Set when the wait ends: granted (true) or ran out/cancelled (false).
        var outcome: Bool?
        init(id: UInt64, resources: [String]) {
            self.id = id
            self.resources = resources
        }
    }

    struct State {
        var buckets: [BucketKey: Bucket] = [:]
        var running: [CapKey: Int] = [:]
        var held: Set<String> = []
        /// Calls waiting for resources, in arrival order.
        var waiters: [Waiter] = []
        var nextWaiter: UInt64 = 0
    }

    private let state = Mutex(State())
    /// The clock (monotonic nanoseconds); replaceable in tests.
    let now: @Sendable () -> UInt64

    public init(clock: @escaping @Sendable () -> UInt64 = { monotonicNanoseconds() }) {
        now = clock
    }

    /// The concurrency slots a call holds until it ends.
    public final class Lease: Sendable {
        let admission: Admission
        let caps: [CapKey]
        private let released = Mutex(false)

        init(admission: Admission, caps: [CapKey]) {
            self.admission = admission
            self.caps = caps
        }

        /// Gives the slots back (idempotent).
        public func release() {
            let first = released.withLock { r -> Bool in
                defer { r = true }
                return !r
            }
            if first { admission.leave(caps) }
        }

        deinit { release() }
    }

    /// Rate buckets and concurrency caps for a call the policy allows, in
    /// one step: either every slot is taken and a lease returned, or nothing
    /// is taken and the refusal says which limit.
    public func admit(
        principal: String, tool: String, cell: String, rule: Policy.PrincipalRule,
        cellRule: Policy.CellRule?
    ) -> Result<Lease, Refusal> {
        var caps: [(CapKey, Int, Refusal.CapScope)] = []
        if let c = rule.maxConcurrent { caps.append((.principal(principal), c, .principal(rule: rule.name))) }
        if let c = cellRule?.maxConcurrent { caps.append((.cell(cell), c, .cell(cell))) }
        var buckets: [(BucketKey, Policy.RateLimit, Refusal.RateScope)] = []
        if let l = rule.perToolRate { buckets.append((.tool(principal: principal, tool: tool), l, .tool)) }
        if let l = rule.overallRate { buckets.append((.principal(principal), l, .overall)) }
        let t = now()
        return state.withLock { s -> Result<Lease, Refusal> in
            for (key, cap, scope) in caps where s.running[key, default: 0] >= cap {
                return .failure(.concurrency(cap: cap, scope: scope))
            }
            // Refill every bucket first; take a token only if all have one,
            // so a refusal by one bucket does not drain another.
            var refilled: [(BucketKey, Bucket)] = []
            for (key, limit, scope) in buckets {
                var b = s.buckets[key] ?? Bucket(tokens: Double(limit.burst), at: t)
                b.tokens = min(Double(limit.burst), b.tokens + Double(t &- b.at) / 1e9 * limit.rate)
                b.at = t
                s.buckets[key] = b
                if b.tokens < 1 {
                    return .failure(.rateLimit(limit, scope: scope, retryAfterSeconds: (1 - b.tokens) / limit.rate))
                }
                refilled.append((key, b))
            }
            for (key, var b) in refilled {
                b.tokens -= 1
                s.buckets[key] = b
            }
            for (key, _, _) in caps { s.running[key, default: 0] += 1 }
            return .success(Lease(admission: self, caps: caps.map(\.0)))
        }
    }

    private func leave(_ caps: [CapKey]) {
        state.withLock { s in
            for k in caps {
                let n = s.running[k, default: 1] - 1
                s.running[k] = n > 0 ? n : nil
            }
        }
    }

    /// Claims every resource or none. If another call holds one, waits in
    /// arrival order up to `waitNanoseconds` (0: do not wait); false when the
    /// wait ran out or the task was cancelled. Release with `release`.
    public func claim(_ resources: [String], waitNanoseconds: UInt64) async -> Bool {
        if resources.isEmpty { return true }
        let waiter: Waiter? = state.withLock { s in
            // Arrival order: a call may not overtake one already waiting for
            // any of the same resources.
            let overtakes = s.waiters.contains { !Set($0.resources).isDisjoint(with: resources) }
            if !overtakes, s.held.isDisjoint(with: resources) {
                s.held.formUnion(resources)
                return nil
            }
            if waitNanoseconds == 0 { return Waiter(id: 0, resources: []) }
            s.nextWaiter += 1
            let w = Waiter(id: s.nextWaiter, resources: resources)
            s.waiters.append(w)
            return w
        }
        guard let waiter else { return true }
        if waiter.id == 0 { return false }
        let timer = Task { [weak self] in
            // A deadline, not polling: one sleep for the whole wait, cancelled when the wait ends first.
            do { try await Task.sleep(nanoseconds: waitNanoseconds) } catch { return }
            self?.expire(waiter.id)
        }
        defer { timer.cancel() }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (k: CheckedContinuation<Bool, Never>) in
                // Granted or expired before the continuation existed?
                let resume: Bool? = state.withLock { _ in
                    if waiter.outcome == nil { waiter.continuation = k }
                    return waiter.outcome
                }
                if let resume { k.resume(returning: resume) }
            }
        } onCancel: {
            expire(waiter.id)
        }
    }

    /// Ends a wait that ran out or was cancelled.
    private func expire(_ id: UInt64) {
        let k: CheckedContinuation<Bool, Never>?? = state.withLock { s in
            guard let i = s.waiters.firstIndex(where: { $0.id == id }) else { return nil }
            let w = s.waiters.remove(at: i)
            defer { w.continuation = nil }
            w.outcome = false
            return .some(w.continuation)
        }
        if case .some(let cont?) = k { cont.resume(returning: false) }
        // A removed waiter may have been blocking later ones.
        grant()
    }

    /// Gives resources back and wakes the waiters that can now proceed.
    public func release(_ resources: [String]) {
        guard !resources.isEmpty else { return }
        state.withLock { s in s.held.subtract(resources) }
        grant()
    }

    private func grant() {
        let ready: [CheckedContinuation<Bool, Never>] = state.withLock { s in
            var out: [CheckedContinuation<Bool, Never>] = []
            var blocked = Set<String>()
            var i = 0
            while i < s.waiters.count {
                let w = s.waiters[i]
                let wants = Set(w.resources)
                if wants.isDisjoint(with: blocked), s.held.isDisjoint(with: wants) {
                    s.held.formUnion(wants)
                    s.waiters.remove(at: i)
                    w.outcome = true
                    if let k = w.continuation { out.append(k) }
                    w.continuation = nil
                    continue
                }
                // Later waiters may not take what this one waits for.
                blocked.formUnion(wants)
                i += 1
            }
            return out
        }
        for k in ready { k.resume(returning: true) }
    }

    /// Calls holding slots under each key (for tests and diagnostics).
    var runningCounts: Int { state.withLock { s in s.running.values.reduce(0, +) } }
    var heldResources: Set<String> { state.withLock { s in s.held } }
}
