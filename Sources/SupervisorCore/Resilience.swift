import StrictJSON
import Synchronization

/// The pipeline's resilience state (docs/resilience.md): breakers, behaviour
/// profiles and the approvals owed after an anomaly. The pipeline asks it at
/// two points only: at admission (`admit`, `approvalRule`) and when a call's
/// report is recorded (`observe`), whose events are appended with call.end.
public final class Resilience: Sendable {
    public let breakers: Breakers
    public let profiles: BehaviourProfiles
    let quarantine: Quarantine
    /// Cell version key → calls that still need a person's approval.
    private let approvalsOwed = Mutex<[String: Int]>([:])

    public init(profiles: BehaviourProfiles, quarantine: Quarantine, breakers: Breakers = Breakers()) {
        self.profiles = profiles
        self.quarantine = quarantine
        self.breakers = breakers
    }

    static func key(_ cell: PreparedCell) -> String { "\(cell.name)@\(cell.manifest.manifestSHA256)" }

    /// The breaker's word on a call: a refusal, or go on (with the
    /// `cell.breaker` half-open event when this call is the probe).
    func admit(_ cell: PreparedCell, policy: Policy) -> (Refusal?, SecurityEvent?) {
        guard let s = policy.resilience.breaker(for: cell.name) else { return (nil, nil) }
        return breakers.admit(cell, settings: s)
    }

    /// The approval rule an earlier anomaly imposes on this call, if any
    /// (counted down per call asked about).
    func approvalRule(_ cell: PreparedCell) -> String? {
        let key = Self.key(cell)
        return approvalsOwed.withLock { owed -> String? in
            guard let n = owed[key], n > 0 else { return nil }
            owed[key] = n > 1 ? n - 1 : nil
            return "anomaly(\(cell.name))"
        }
    }

    /// A call's end: feeds its breaker and its profile, applies the
    /// policy's anomaly response, and returns the events to record with
    /// call.end (`cell.breaker`, `cell.anomaly`).
    func observe(
        callID: String, tool: String, cell: PreparedCell, report: CallReport, network: [NetworkDecision],
        policy: Policy
    ) -> [SecurityEvent] {
        var events: [SecurityEvent] = []
        let refusedNetwork = network.contains { $0.refusal != nil }
        if let b = policy.resilience.breaker(for: cell.name) {
            let failure = breakerFailure(
                report.outcome, refusedNetwork: refusedNetwork, countToolErrors: b.countToolErrors)
            if let e = breakers.record(cell, failure: failure, settings: b) { events.append(e) }
        }
        // A cancelled call or a refused one says nothing about the cell.
        switch report.outcome {
        case .cancelled, .refused, .definitionDrift, .cannotRun: return events
        default: break
        }
        let configured = policy.resilience.anomaly(for: cell.name)
        // Profiles are learned for every cell (insights read them); scores
        // count only where the policy asks for them.
        let deviations = profiles.observe(
            cell: cell.name, versionID: cell.manifest.manifestSHA256, label: cell.version,
            CallObservation(report: report, network: network), configured ?? ResiliencePolicy.Anomaly())
        guard let s = configured, !deviations.isEmpty else { return events }
        var f = JSONObject([
            ("callId", .string(callID)), ("tool", .string(tool)), ("cell", .string(cell.name)),
            ("cellVersion", .string(cell.version)), ("cellVersionId", .string(cell.manifest.manifestSHA256)),
            ("response", .string(s.response.rawValue)),
            ("score", .double((deviations.map(\.score).max()! * 100).rounded() / 100)),
            ("threshold", .double(s.threshold)),
            ("deviations", .array(deviations.map(\.json))),
        ])
        let summary = deviations.map(\.detail).joined(separator: "; ")
        switch s.response {
        case .record: break
        case .approve:
            approvalsOwed.withLock { $0[Self.key(cell)] = s.approvalCalls }
            f["approvalCalls"] = .int(Int64(s.approvalCalls))
        case .quarantine:
            do {
                try quarantine.add(
                    cell: cell.name, versionID: cell.manifest.manifestSHA256, label: cell.version,
                    difference: SecurityEvent.bounded(summary, maxBytes: 1024), reason: "anomaly")
                f["quarantined"] = true
            } catch {
                // Kept in memory by `add`: refused by this process either way.
                f["quarantined"] = true
                f["quarantineError"] = .string("\(error)")
            }
        }
        events.append(SecurityEvent(.cellAnomaly, f))
        return events
    }
}

extension Quarantine.Record {
    /// The refusal a call to a quarantined version gets.
    var refusal: Refusal {
        reason == "anomaly"
            ? .anomalyQuarantine(cell: cell, since: since, difference: difference)
            : .quarantined(cell: cell, since: since, difference: difference)
    }
}

/// A call's broker decisions, collected for its profile.
final class NetworkDecisions: Sendable {
    private let decisions = Mutex<[NetworkDecision]>([])
    func append(_ d: NetworkDecision) { decisions.withLock { $0.append(d) } }
    var all: [NetworkDecision] { decisions.withLock { $0 } }
}
