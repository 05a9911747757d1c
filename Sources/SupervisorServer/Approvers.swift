import MCP
import StrictJSON
import SupervisorCore

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
