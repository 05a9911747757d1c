import Crypto
import Foundation
import StrictJSON
import SupervisorPlatform
import Synchronization

/// What a person is asked to approve: one call, before any worker starts.
public struct ApprovalRequest: Sendable {
    public let tool: String
    public let arguments: JSONObject
    /// SHA-256 of the arguments' serialised JSON (as call.start records it).
    public let argumentsSHA256: String
    public let principal: String
    /// The caller's tenant (HTTP), bound into a 2026-07-28 request state so
    /// that instances sharing a key still keep tenants apart.
    public let tenant: String?
    public let phase: String
    /// The policy rule that asks for approval (`approval[0]`).
    public let rule: String
    /// How long the request stays answerable.
    public let timeoutSeconds: Int

    public init(
        tool: String, arguments: JSONObject, principal: String, phase: String, rule: String, timeoutSeconds: Int,
        tenant: String? = nil
    ) {
        self.tool = tool
        self.arguments = arguments
        self.argumentsSHA256 = sha256Hex(JSONValue.object(arguments).serializedBytes())
        self.principal = principal
        self.tenant = tenant
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

/// A shared approval key or used-state directory that cannot be used.
public struct ApprovalStateError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ d: String) { description = d }
}

/// Authenticated, call-bound, single-use request states for the
/// 2026-07-28 era's multi-round-trip approvals. The state travels through
/// the client, so it is MACed (HMAC-SHA256) and binds the tool, the
/// arguments' digest, the principal, the tenant and an expiry; a state is
/// accepted once, and remembered until it expires so that a replay is
/// refused.
///
/// By default the key is random per run (never written anywhere) and used
/// states are remembered in memory. Instances behind one load balancer
/// share both instead (docs/http.md, "Approvals across instances"): a key
/// file (`loadKey`) and a directory where each used state is a file
/// created with `O_EXCL`, so exactly one redemption of a state succeeds
/// whichever instance it reaches.
public final class ApprovalStates: Sendable {
    /// Why a request state is refused (the client reads `description`).
    public enum Problem: Error, Sendable, Equatable, CustomStringConvertible {
        case malformed, tampered, expired, replayed, otherCall, tooMany, unrecorded

        public var description: String {
            switch self {
            case .malformed: return "the request state is not one this supervisor issued"
            case .tampered: return "the request state failed its integrity check"
            case .expired: return "the approval request has expired; call the tool again to be asked anew"
            case .replayed: return "the request state was already used; call the tool again to be asked anew"
            case .otherCall: return "the request state belongs to another call (tool, arguments or principal)"
            case .tooMany: return "too many approvals are outstanding; retry later"
            case .unrecorded: return "the approval's use could not be recorded; retry later"
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
    /// Shared with other instances: one file per used state (nil: memory).
    let usedDirectory: String?
    /// When the used directory was last pruned (wall-clock seconds).
    private let lastPrune = Mutex<Int64>(0)
    /// How long a used record outlives its state's expiry: instances' clocks
    /// differ, and a record pruned while another instance still takes the
    /// state for unexpired would let it be replayed there.
    static let clockSkewAllowance: Int64 = 300

    public init(
        capacity: Int = 4096, key: SymmetricKey? = nil, usedDirectory: String? = nil,
        clock: @escaping @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970) }
    ) {
        self.key = key ?? SymmetricKey(size: .bits256)
        self.capacity = capacity
        self.usedDirectory = usedDirectory
        now = clock
    }

    static let keyPrefix = "approval-hmac-sha256:"

    /// The key shared by instances: a file of this user's, mode 0600 (no
    /// access for group or others), holding 32 random bytes. Created when
    /// absent, with `O_EXCL` so that instances starting together agree on one.
    public static func loadKey(path: String) throws(ApprovalStateError) -> SymmetricKey {
        guard path.hasPrefix("/") else {
            throw ApprovalStateError("approval key file \(path): expected an absolute path")
        }
        if (try? Sys.lstat(path)) == nil {
            let key = SymmetricKey(size: .bits256)
            let text = Array((keyPrefix + key.withUnsafeBytes { Data($0).base64EncodedString() } + "\n").utf8)
            do {
                let fd = try Sys.open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode: 0o600)
                defer { fd.close() }
                try fd.writeAll(text)
                try fd.sync()
            } catch {
                // EEXIST: another instance created it first; read theirs below.
                guard error.errno == EEXIST else {
                    throw ApprovalStateError("approval key file \(path): cannot create it: \(error)")
                }
            }
        }
        // A file being written by another instance is empty for a moment.
        var attempts = 0
        while true {
            let st: FileIdentity
            do { st = try Sys.stat(path) } catch {
                throw ApprovalStateError("approval key file \(path): \(error)")
            }
            guard st.mode & 0o170000 == 0o100000 else {
                throw ApprovalStateError("approval key file \(path) is not a regular file")
            }
            guard st.uid == geteuid() else {
                throw ApprovalStateError(
                    "approval key file \(path) is owned by uid \(st.uid), not by this user (uid \(geteuid())): "
                        + "whoever owns it can forge approvals; chown it")
            }
            guard st.mode & 0o077 == 0 else {
                throw ApprovalStateError(
                    "approval key file \(path) has mode \(String(st.mode & 0o777, radix: 8)): it must be 0600 "
                        + "(anyone who reads it can forge approvals); chmod 600 it")
            }
            let bytes: [UInt8]
            do { bytes = try readFile(path, limit: 4096) } catch {
                throw ApprovalStateError("approval key file \(path): cannot read: \(error)")
            }
            if bytes.isEmpty && attempts < 50 {
                attempts += 1
                usleep(20_000)
                continue
            }
            let text = String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard text.hasPrefix(keyPrefix), let raw = Data(base64Encoded: String(text.dropFirst(keyPrefix.count))),
                raw.count == 32
            else {
                throw ApprovalStateError(
                    "approval key file \(path): expected \(keyPrefix) and 32 bytes in base64; remove it to have "
                        + "a new one made")
            }
            return SymmetricKey(data: raw)
        }
    }

    /// The directory of used states shared by instances: created (0700)
    /// when absent; refused when another user owns it or others may write
    /// in it (they could remove a record and replay its approval).
    public static func checkUsedDirectory(_ path: String) throws(ApprovalStateError) {
        guard path.hasPrefix("/") else {
            throw ApprovalStateError("approval used-state directory \(path): expected an absolute path")
        }
        do { try Sys.makeDirectories(path, mode: 0o700) } catch {
            throw ApprovalStateError("approval used-state directory \(path): cannot create it: \(error)")
        }
        let st: FileIdentity
        do { st = try Sys.stat(path) } catch {
            throw ApprovalStateError("approval used-state directory \(path): \(error)")
        }
        guard st.mode & 0o170000 == 0o040000 else {
            throw ApprovalStateError("approval used-state directory \(path) is not a directory")
        }
        guard st.uid == geteuid(), st.mode & 0o022 == 0 else {
            throw ApprovalStateError(
                "approval used-state directory \(path) (uid \(st.uid), mode \(String(st.mode & 0o777, radix: 8))) "
                    + "must be this user's (uid \(geteuid())) and writable by no one else; chmod 700 it")
        }
    }

    /// A fresh state for this call, valid for `request.timeoutSeconds`.
    public func issue(for request: ApprovalRequest) -> String {
        let nonce = SymmetricKey(size: .bits128).withUnsafeBytes { Data($0).base64URL }
        let payload = JSONValue.object(
            JSONObject(
                [
                    ("v", 1), ("tool", .string(request.tool)), ("args", .string(request.argumentsSHA256)),
                    ("principal", .string(request.principal)), ("exp", .int(now() + Int64(request.timeoutSeconds))),
                    ("nonce", .string(nonce)),
                ] + (request.tenant.map { [("tenant", JSONValue.string($0))] } ?? []))
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
        guard tool == request.tool, args == request.argumentsSHA256, principal == request.principal,
            o["tenant"]?.stringValue == request.tenant
        else {
            return .failure(.otherCall)
        }
        let t = now()
        guard t < exp else { return .failure(.expired) }
        if let dir = usedDirectory { return redeemShared(nonce: nonce, exp: exp, now: t, directory: dir) }
        return used.withLock { u -> Result<Void, Problem> in
            if u[nonce] != nil { return .failure(.replayed) }
            if u.count >= capacity { u = u.filter { $0.value > t } }
            guard u.count < capacity else { return .failure(.tooMany) }
            u[nonce] = exp
            return .success(())
        }
    }

    /// Single use across instances: the first to create the nonce's file
    /// wins. The name carries the expiry, so pruning needs no reading.
    private func redeemShared(nonce: String, exp: Int64, now t: Int64, directory: String) -> Result<Void, Problem> {
        // The nonce is base64url (checked by the MAC: this instance or a
        // peer made it), so it is a safe file name.
        guard nonce.utf8.count <= 64, nonce.utf8.allSatisfy({ $0 != UInt8(ascii: "/") && $0 != 0 }) else {
            return .failure(.malformed)
        }
        prune(directory, now: t)
        let path = directory + "/\(exp)-\(nonce)"
        do {
            let fd = try Sys.open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode: 0o600)
            fd.close()
            return .success(())
        } catch {
            // Fail closed: a state whose use cannot be recorded is not accepted.
            return .failure(error.errno == EEXIST ? .replayed : .unrecorded)
        }
    }

    /// Removes records whose state expired (with the clock-skew allowance),
    /// at most once a minute per instance.
    private func prune(_ directory: String, now t: Int64) {
        let due = lastPrune.withLock { last -> Bool in
            guard t - last >= 60 else { return false }
            last = t
            return true
        }
        guard due, let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return }
        for name in names {
            guard let dash = name.firstIndex(of: "-"), let exp = Int64(name[..<dash]),
                exp + Self.clockSkewAllowance < t
            else { continue }
            try? Sys.unlink(directory + "/" + name)
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
