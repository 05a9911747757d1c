import StrictJSON
import SupervisorPlatform
import Synchronization

/// How one attempt ended: the `call.refused` reason or the `call.end`
/// outcome kind. Set by `callOnce` through a task-local, so the pipeline's
/// single path needs no second return value.
final class AttemptOutcome: Sendable {
    private let kind = Mutex<String?>(nil)
    func ended(_ k: String) { kind.withLock { $0 = k } }
    var value: String? { kind.withLock { $0 } }
}

extension CallPipeline {
    @TaskLocal static var attempt: AttemptOutcome?

    /// The cell's timeout, tightened to what is left of a retried call's deadline.
    static func limits(_ l: CellManifest.Limits, _ call: ToolCall) -> CellManifest.Limits {
        guard let left = call.remainingMilliseconds else { return l }
        var out = l
        out.timeoutMilliseconds = max(1, min(l.timeoutMilliseconds, left))
        return out
    }

    /// Admits, executes and records a call, with the policy's retries (only
    /// for tools the manifest marks idempotent) and fallbacks. Each attempt
    /// and each alternative is a full call of its own — admitted by the
    /// policy, confined by its own manifest, recorded — and the result says
    /// which tool answered (docs/resilience.md). `onMessage` receives the
    /// worker's progress and log messages while it runs (on a pool thread).
    public func call(
        _ call: ToolCall, session: CallSession,
        onMessage: @escaping @Sendable (WorkerMessage) -> Void = { _ in }
    ) async -> CallResponse {
        guard call.name != Self.phaseTool, !Catalogue.isReserved(call.name), let policy,
            policy.resilience.retry(for: call.name) != nil || policy.resilience.fallback(for: call.name) != nil
        else { return await callOnce(call, session: session, onMessage: onMessage) }

        let (first, firstKind) = await attempts(call, session: session, policy: policy, onMessage: onMessage)
        guard let rule = policy.resilience.fallback(for: call.name), let k = firstKind, rule.on.contains(k),
            Self.isFailure(first)
        else { return first }
        var tried: [String] = ["\(call.name) (\(k))"]
        for alt in rule.alternatives {
            var c = call
            c.name = alt
            c.remainingMilliseconds = nil
            c.isFallback = true
            let (r, kind) = await attempts(c, session: session, policy: policy, onMessage: onMessage)
            if case .none = r { return r }
            if case .inputRequired = r { return r }
            if !Self.isFailure(r) {
                return Self.annotate(r, "Answered by \(alt), a fallback for \(call.name) (\(k)).")
            }
            tried.append("\(alt) (\(kind ?? "error"))")
        }
        return Self.annotate(first, "Fallbacks tried, none answered: \(tried.joined(separator: ", ")).")
    }

    /// One tool's attempts: the first, then retries while the outcome is
    /// one the policy retries, the tool is idempotent, and the next attempt
    /// (after its backoff) still fits in the call's deadline.
    func attempts(
        _ call: ToolCall, session: CallSession, policy: Policy,
        onMessage: @escaping @Sendable (WorkerMessage) -> Void
    ) async -> (CallResponse, String?) {
        let retry = policy.resilience.retry(for: call.name)
        let entry = registry.tool(named: call.name)
        let idempotent = entry?.tool.annotations?["idempotentHint"] == .bool(true)
        let deadline = entry.map { policy.effectiveLimits($0.cell.manifest).timeoutMilliseconds } ?? 0
        let started = monotonicNanoseconds()
        var attempt = 1
        var c = call
        while true {
            let outcome = AttemptOutcome()
            let r = await Self.$attempt.withValue(outcome) {
                await callOnce(c, session: session, onMessage: onMessage)
            }
            let kind = outcome.value
            guard let retry, idempotent, attempt < retry.attempts, let k = kind, retry.on.contains(k),
                Self.isFailure(r), !Task.isCancelled
            else {
                return (
                    attempt > 1 && !Self.isFailure(r) ? Self.annotate(r, "Answered on attempt \(attempt).") : r, kind
                )
            }
            let backoff = retry.backoffMilliseconds << (attempt - 1)
            let elapsed = Int((monotonicNanoseconds() - started) / 1_000_000)
            let left = deadline - elapsed - backoff
            // At least a tenth of the deadline for the attempt, or it is not worth starting.
            guard left >= max(1, deadline / 10) else { return (r, kind) }
            if backoff > 0 {
                do { try await Task.sleep(nanoseconds: UInt64(backoff) * 1_000_000) } catch { return (r, kind) }
            }
            attempt += 1
            c.remainingMilliseconds = left
        }
    }

    static func isFailure(_ r: CallResponse) -> Bool {
        switch r {
        case .result(let t): return t.isError
        case .error: return true
        case .none, .inputRequired: return false
        }
    }

    /// Adds a line saying who answered, so a fallback is never a silent substitution.
    static func annotate(_ r: CallResponse, _ note: String) -> CallResponse {
        guard case .result(var t) = r else { return r }
        t.content.append(.object(JSONObject([("type", "text"), ("text", .string(note))])))
        return .result(t)
    }
}
