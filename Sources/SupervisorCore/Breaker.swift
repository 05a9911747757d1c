import Foundation
import StrictJSON
import SupervisorPlatform
import Synchronization

/// One cell version's circuit breaker (docs/resilience.md): closed → open
/// after `failures` consecutive failures within `windowSeconds`; open
/// refuses every call for `openSeconds`, then half-open admits one probe
/// call; the probe's success closes it, its failure opens it again. A value
/// with explicit times, so the state machine is unit-tested without a clock.
public struct BreakerState: Sendable, Equatable {
    public enum Phase: String, Sendable, Equatable {
        case closed
        case open
        case halfOpen = "half_open"
    }

    public private(set) var phase = Phase.closed
    /// Consecutive failures in the current run.
    public private(set) var failures = 0
    /// When the current run of failures began (ns, monotonic).
    var runStart: UInt64 = 0
    /// Open: when the breaker admits a probe call.
    public private(set) var openUntil: UInt64 = 0
    /// Half-open: when the probe call was admitted (a probe that never
    /// reports, because a later admission step refused it, frees the slot
    /// after `openSeconds`).
    var probeSince: UInt64 = 0
    /// The failure that opened it last (an outcome kind).
    public private(set) var cause = ""

    public init() {}

    public enum Admission: Sendable, Equatable {
        case pass
        /// Half-open: this call is the probe.
        case probe
        case refuse(retryAfterNanoseconds: UInt64)
    }

    /// Whether a call may start at `now`; moves open → half-open when due.
    public mutating func admit(now: UInt64, _ s: ResiliencePolicy.Breaker) -> Admission {
        let open = UInt64(s.openSeconds) * 1_000_000_000
        switch phase {
        case .closed: return .pass
        case .open:
            if now >= openUntil {
                phase = .halfOpen
                probeSince = now
                return .probe
            }
            return .refuse(retryAfterNanoseconds: openUntil - now)
        case .halfOpen:
            if now >= probeSince &+ open {
                probeSince = now
                return .probe
            }
            return .refuse(retryAfterNanoseconds: probeSince &+ open - now)
        }
    }

    /// A call's end: failed or not. Returns the new phase when it changed.
    public mutating func record(failed: Bool, cause: String, now: UInt64, _ s: ResiliencePolicy.Breaker) -> Phase? {
        let window = UInt64(s.windowSeconds) * 1_000_000_000
        guard failed else {
            failures = 0
            if phase != .closed {
                phase = .closed
                return .closed
            }
            return nil
        }
        if failures == 0 || now &- runStart > window {
            failures = 0
            runStart = now
        }
        failures += 1
        self.cause = cause
        switch phase {
        case .halfOpen:
            return reopen(now, s)
        case .closed where failures >= s.failures:
            return reopen(now, s)
        case .open, .closed:
            // Open: a call admitted before it opened ended late; the window
            // it opened for stands.
            return nil
        }
    }

    private mutating func reopen(_ now: UInt64, _ s: ResiliencePolicy.Breaker) -> Phase {
        phase = .open
        openUntil = now + UInt64(s.openSeconds) * 1_000_000_000
        return .open
    }
}

/// What counts as a failure for a breaker: the worker broke a rule, ran out
/// of time, crashed or could not run; not a cancellation, not a refusal of
/// its arguments, and the tool's own error answer only when the policy says.
public func breakerFailure(_ o: CallOutcome, refusedNetwork: Bool, countToolErrors: Bool) -> String? {
    if refusedNetwork { return "network_refused" }
    switch o {
    case .success, .cancelled, .refused, .definitionDrift: return nil
    case .toolError: return countToolErrors ? o.kind : nil
    case .timeout, .sandboxViolation, .killedBySignal, .limitExceeded, .protocolViolation, .cannotRun: return o.kind
    }
}

/// The breakers of every cell version this process served. In memory: a
/// restart closes them (a restart is an operator's act; quarantine is what
/// survives one).
public final class Breakers: Sendable {
    public struct Key: Hashable, Sendable {
        public let cell: String
        public let versionID: String
    }

    struct Entry {
        var state = BreakerState()
        var label: String
    }

    private let entries = Mutex<[Key: Entry]>([:])
    let now: @Sendable () -> UInt64

    public init(clock: @escaping @Sendable () -> UInt64 = { monotonicNanoseconds() }) { now = clock }

    /// Admission for a call to `cell`: nil to go on (with the half-open event
    /// to record, if this call is the probe), or the refusal.
    func admit(_ cell: PreparedCell, settings: ResiliencePolicy.Breaker) -> (Refusal?, SecurityEvent?) {
        let key = Key(cell: cell.name, versionID: cell.manifest.manifestSHA256)
        let t = now()
        let (a, failures) = entries.withLock { e -> (BreakerState.Admission, Int) in
            // A closed breaker with no entry needs none: no allocation on the common path.
            guard var entry = e[key] else { return (.pass, 0) }
            let a = entry.state.admit(now: t, settings)
            e[key] = entry
            return (a, entry.state.failures)
        }
        switch a {
        case .pass: return (nil, nil)
        case .probe:
            return (nil, Self.event(cell, phase: .halfOpen, failures: failures, cause: nil, retryAt: nil))
        case .refuse(let wait):
            let seconds = Double(wait) / 1e9
            return (
                .breakerOpen(
                    cell: cell.name, failures: failures, retryAt: Self.wallClock(after: seconds),
                    retryAfterSeconds: seconds), nil
            )
        }
    }

    /// A call's end; the `cell.breaker` event when the breaker changed.
    func record(_ cell: PreparedCell, failure: String?, settings: ResiliencePolicy.Breaker) -> SecurityEvent? {
        let key = Key(cell: cell.name, versionID: cell.manifest.manifestSHA256)
        let t = now()
        let change = entries.withLock { e -> (BreakerState.Phase, BreakerState)? in
            if failure == nil, e[key] == nil { return nil }
            var entry = e[key] ?? Entry(label: cell.version)
            let p = entry.state.record(failed: failure != nil, cause: failure ?? "", now: t, settings)
            // A closed breaker with no failures is the same as none.
            if entry.state.phase == .closed, entry.state.failures == 0 { e[key] = nil } else { e[key] = entry }
            return p.map { ($0, entry.state) }
        }
        guard let (phase, s) = change else { return nil }
        let retry = phase == .open ? Self.wallClock(after: Double(settings.openSeconds)) : nil
        return Self.event(
            cell, phase: phase, failures: s.failures, cause: phase == .open ? s.cause : nil, retryAt: retry)
    }

    /// Snapshot for diagnostics: every breaker not plainly closed.
    public func states() -> [(Key, String, BreakerState)] {
        entries.withLock { e in e.map { ($0.key, $0.value.label, $0.value.state) } }
            .sorted { ($0.0.cell, $0.0.versionID) < ($1.0.cell, $1.0.versionID) }
    }

    static func event(
        _ cell: PreparedCell, phase: BreakerState.Phase, failures: Int, cause: String?, retryAt: String?
    ) -> SecurityEvent {
        var f = JSONObject([
            ("cell", .string(cell.name)), ("cellVersion", .string(cell.version)),
            ("cellVersionId", .string(cell.manifest.manifestSHA256)), ("state", .string(phase.rawValue)),
            ("failures", .int(Int64(failures))),
        ])
        if let cause { f["cause"] = .string(cause) }
        if let retryAt { f["retryAt"] = .string(retryAt) }
        return SecurityEvent(.cellBreaker, f)
    }

    /// UTC time `seconds` from now, as the log writes times.
    static func wallClock(after seconds: Double) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        return f.string(from: Date(timeIntervalSinceNow: seconds.rounded(.up)))
    }
}
