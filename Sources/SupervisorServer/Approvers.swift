import MCP
import StrictJSON
import SupervisorCore
import Synchronization

/// Handshake era: asks with `elicitation/create` through the SDK's
/// `Server`, when the client declared the elicitation capability (form
/// mode) in initialize. The SDK checks the capability only in strict mode,
/// so it is checked here.
struct ElicitationApprover: Approver {
    let server: Server
    /// The client's initialize declared form elicitation.
    let supported: Bool

    func approve(_ request: ApprovalRequest) async -> ApprovalAnswer {
        guard supported else {
            return .unavailable("the client did not declare the elicitation capability, so no person can be asked")
        }
        let server = self.server
        let answer = await FirstOf<ApprovalAnswer>.run(seconds: request.timeoutSeconds) {
            do {
                let result = try await server.requestElicitation(
                    message: request.message, requestedSchema: Elicitation.RequestSchema())
                switch result.action {
                case .accept: return .accepted(mechanism: "elicitation/create")
                case .decline: return .declined("declined")
                case .cancel: return .declined("cancelled")
                }
            } catch {
                return .unavailable("the client's elicitation failed (\(SecurityEvent.bounded("\(error)")))")
            }
        }
        return answer
            ?? .unavailable("no answer came within \(request.timeoutSeconds) s (approvalTimeoutSeconds)")
    }

    /// Form elicitation: `elicitation: {}` (form by default) or with `form`.
    static func supportsForm(_ c: Client.Capabilities) -> Bool {
        guard let e = c.elicitation else { return false }
        return e.form != nil || e.url == nil
    }
}

/// 2026-07-28: no server → client requests. The first tools/call is
/// answered with an `InputRequiredResult` (an `elicitation/create` input
/// request and a MACed `requestState`); the retry carries the person's
/// answer in `inputResponses` and the state, which must be this call's,
/// fresh and unused.
struct InputRequiredApprover: Approver {
    static let inputKey = "approval"

    let states: ApprovalStates
    let clientCapabilities: JSONObject
    let params: JSONObject

    func approve(_ request: ApprovalRequest) async -> ApprovalAnswer {
        if let raw = params["requestState"] {
            guard case .string(let state) = raw else { return .invalid("requestState must be a string") }
            if case .failure(let problem) = states.redeem(state, for: request) { return .invalid(problem.description) }
            guard case .object(let responses)? = params["inputResponses"],
                case .object(let answer)? = responses[Self.inputKey]
            else { return .invalid("inputResponses has no \"\(Self.inputKey)\" answer (an ElicitResult)") }
            switch answer["action"]?.stringValue {
            case "accept": return .accepted(mechanism: "input_required")
            case "decline": return .declined("declined")
            case "cancel": return .declined("cancelled")
            default: return .invalid("the \"\(Self.inputKey)\" answer needs action accept, decline or cancel")
            }
        }
        guard case .object(let e)? = clientCapabilities["elicitation"], e["form"] != nil || e["url"] == nil else {
            return .unavailable("the request's clientCapabilities has no elicitation, so no person can be asked")
        }
        let elicit = JSONObject([
            ("method", "elicitation/create"),
            (
                "params",
                .object(
                    JSONObject([
                        ("mode", "form"), ("message", .string(request.message)),
                        ("requestedSchema", .object(JSONObject([("type", "object"), ("properties", .object([:]))]))),
                    ]))
            ),
        ])
        return .inputRequired(
            JSONObject([
                ("inputRequests", .object(JSONObject([(Self.inputKey, .object(elicit))]))),
                ("requestState", .string(states.issue(for: request))),
            ]))
    }
}

/// The SDK's server → client requests cannot be cancelled and have no
/// deadline: the approval waits for the answer, the deadline or the call's
/// cancellation, whichever comes first (nil for the last two). A late
/// answer is dropped.
final class FirstOf<T: Sendable>: Sendable {
    private struct State {
        var continuation: CheckedContinuation<T?, Never>?
        var finished = false
        var early: T?? = nil
        var tasks: [Task<Void, Never>] = []
    }
    private let state = Mutex(State())

    static func run(seconds: Int, _ body: @escaping @Sendable () async -> T) async -> T? {
        let once = FirstOf<T>()
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (k: CheckedContinuation<T?, Never>) in
                let early: T?? = once.state.withLock { s in
                    if s.finished { return s.early }
                    s.continuation = k
                    return nil
                }
                if let early {
                    k.resume(returning: early)
                    return
                }
                let work = Task { once.finish(await body()) }
                let timer = Task {
                    do { try await Task.sleep(for: .seconds(seconds)) } catch { return }
                    once.finish(nil)
                }
                let done = once.state.withLock { s in
                    s.tasks = [work, timer]
                    return s.finished
                }
                if done { timer.cancel() }
            }
        } onCancel: {
            once.finish(nil)
        }
    }

    private func finish(_ value: T?) {
        let (k, tasks): (CheckedContinuation<T?, Never>?, [Task<Void, Never>]) = state.withLock { s in
            if s.finished { return (nil, []) }
            s.finished = true
            s.early = .some(value)
            defer {
                s.continuation = nil
                s.tasks = []
            }
            return (s.continuation, s.tasks)
        }
        for t in tasks { t.cancel() }
        k?.resume(returning: value)
    }
}
