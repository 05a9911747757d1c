import Crypto
import Foundation
import StrictJSON
import Synchronization

/// What a person is asked to approve: one call, before any worker starts.
public struct ApprovalRequest: Sendable {
    public let tool: String
    public let arguments: JSONObject
    /// SHA-256 of the arguments' serialised JSON (as call.start records it).
    public let argumentsSHA256: String
    public let principal: String
    public let phase: String
    /// The policy rule that asks for approval (`approval[0]`).
    public let rule: String
    /// How long the request stays answerable.
    public let timeoutSeconds: Int

    public init(
        tool: String, arguments: JSONObject, principal: String, phase: String, rule: String, timeoutSeconds: Int
    ) {
        self.tool = tool
        self.arguments = arguments
        self.argumentsSHA256 = sha256Hex(JSONValue.object(arguments).serializedBytes())
        self.principal = principal
        self.phase = phase
        self.rule = rule
        self.timeoutSeconds = timeoutSeconds
    }

    /// The text shown to the person. The arguments are quoted, bounded:
    /// they are what the person approves.
    public var message: String {
        let args = SecurityEvent.bounded(
            String(decoding: JSONValue.object(arguments).serializedBytes(), as: UTF8.self), maxBytes: 1024)
        return "Allow the tool \(tool) to run in phase \(phase) with these arguments? \(args)"
    }
}

/// A person's answer, as the transport obtained it.
public enum ApprovalAnswer: Sendable, Equatable {
    /// Approved; `mechanism` names how (`elicitation/create`, `input_required`).
    case accepted(mechanism: String)
    /// The person declined or dismissed the request.
    case declined(String)
    /// The client offers no way to ask a person.
    case unavailable(String)
    /// The client's answer is unusable: a tampered, expired, replayed or
    /// foreign request state, or no answer where one was due.
    case invalid(String)
    /// 2026-07-28: the request must be retried with the person's answer;
    /// this is the `InputRequiredResult` to send (without `resultType`).
    case inputRequired(JSONObject)
}

/// How a transport asks a person. Protocol-neutral: the handshake era
/// sends `elicitation/create`, the 2026-07-28 era answers with an
/// `InputRequiredResult` and checks the retried request's state.
public protocol Approver: Sendable {
    func approve(_ request: ApprovalRequest) async -> ApprovalAnswer
}

/// Authenticated, call-bound, single-use request states for the
/// 2026-07-28 era's multi-round-trip approvals. The state travels through
/// the client, so it is MACed (HMAC-SHA256, a random key per run, never
/// written anywhere) and binds the tool, the arguments' digest, the
/// principal and an expiry; a state is accepted once, and remembered until
/// it expires so that a replay is refused.
public final class ApprovalStates: Sendable {
    /// Why a request state is refused (the client reads `description`).
    public enum Problem: Error, Sendable, Equatable, CustomStringConvertible {
        case malformed, tampered, expired, replayed, otherCall, tooMany

        public var description: String {
            switch self {
            case .malformed: return "the request state is not one this supervisor issued"
            case .tampered: return "the request state failed its integrity check"
            case .expired: return "the approval request has expired; call the tool again to be asked anew"
            case .replayed: return "the request state was already used; call the tool again to be asked anew"
            case .otherCall: return "the request state belongs to another call (tool, arguments or principal)"
            case .tooMany: return "too many approvals are outstanding; retry later"
            }
        }
    }

    private let key: SymmetricKey
    /// Wall-clock seconds; replaceable in tests.
    let now: @Sendable () -> Int64
    /// Used states (by nonce) until their expiry.
    private let used = Mutex<[String: Int64]>([:])
    /// Bound on remembered states: past it, new answers are refused rather
    /// than forgetting a state that could then be replayed.
    let capacity: Int

    public init(capacity: Int = 4096, clock: @escaping @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970) })
    {
        key = SymmetricKey(size: .bits256)
        self.capacity = capacity
        now = clock
    }

    /// A fresh state for this call, valid for `request.timeoutSeconds`.
    public func issue(for request: ApprovalRequest) -> String {
        let nonce = SymmetricKey(size: .bits128).withUnsafeBytes { Data($0).base64URL }
        let payload = JSONValue.object(
            JSONObject([
                ("v", 1), ("tool", .string(request.tool)), ("args", .string(request.argumentsSHA256)),
                ("principal", .string(request.principal)), ("exp", .int(now() + Int64(request.timeoutSeconds))),
                ("nonce", .string(nonce)),
            ])
        ).serializedBytes()
        let mac = HMAC<SHA256>.authenticationCode(for: payload, using: key)
        return Data(payload).base64URL + "." + Data(mac).base64URL
    }

    /// Checks a state returned by the client and uses it up.
    public func redeem(_ state: String, for request: ApprovalRequest) -> Result<Void, Problem> {
        let parts = state.split(separator: ".", omittingEmptySubsequences: false)
        guard state.utf8.count <= 4096, parts.count == 2, let payload = Data(base64URL: String(parts[0])),
            let mac = Data(base64URL: String(parts[1]))
        else { return .failure(.malformed) }
        guard HMAC<SHA256>.isValidAuthenticationCode(mac, authenticating: payload, using: key) else {
            return .failure(.tampered)
        }
        guard case .object(let o)? = try? JSONParser.parse(Array(payload)), o["v"] == 1,
            let tool = o["tool"]?.stringValue, let args = o["args"]?.stringValue,
            let principal = o["principal"]?.stringValue, case .int(let exp)? = o["exp"],
            let nonce = o["nonce"]?.stringValue
        else { return .failure(.malformed) }
        guard tool == request.tool, args == request.argumentsSHA256, principal == request.principal else {
            return .failure(.otherCall)
        }
        let t = now()
        guard t < exp else { return .failure(.expired) }
        return used.withLock { u -> Result<Void, Problem> in
            if u[nonce] != nil { return .failure(.replayed) }
            if u.count >= capacity { u = u.filter { $0.value > t } }
            guard u.count < capacity else { return .failure(.tooMany) }
            u[nonce] = exp
            return .success(())
        }
    }

    /// States remembered as used (for tests).
    var usedCount: Int { used.withLock { $0.count } }
}

extension Data {
    var base64URL: String {
        base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    init?(base64URL s: String) {
        guard s.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }), s.allSatisfy(\.isASCII) else {
            return nil
        }
        var b = s.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while b.count % 4 != 0 { b += "=" }
        self.init(base64Encoded: b)
    }
}
