import Crypto
import Foundation
import StrictJSON
import SupervisorPlatform

/// The trust ledger: an append-only file of signed entries whose fold is the
/// set of trusted keys and, per cell, its immutable versions, their lineage,
/// revocations and the active version. Format and rules: docs/trust.md.
public struct LedgerState: Sendable {
    public struct Key: Sendable {
        public let id: String
        public let publicKey: Curve25519.Signing.PublicKey
        public let name: String
        public var revoked: Bool
    }

    public struct Version: Sendable {
        /// The version's identity: SHA-256 of the manifest's exact bytes
        /// (which pin the executable's SHA-256).
        public let id: String
        public let label: String
        public let manifestBytes: [UInt8]
        public let manifestPath: String
        public let executableSHA256: String
        public let parent: String?
        public let signedBy: String
        public let approvedWidening: Bool
        public let registeredAt: String
        public var revoked: Bool
        public var revokeReason: String?
    }

    public struct Cell: Sendable {
        public var versions: [String: Version] = [:]
        public var order: [String] = []
        public var active: String?
    }

    public var keys: [String: Key] = [:]
    public var cells: [String: Cell] = [:]
    /// Cells refused because an entry about them is invalid.
    public var refusedCells: [String: String] = [:]
    /// Set when the file itself is damaged: every cell is refused.
    public var damaged: String?
    public var entries: [JSONObject] = []
    public var head = SecurityLog.genesis
    /// SHA-256 of each line read, in order: `lineHashes[n - 1]` is the head
    /// after n entries (what an anchor in the security log is checked against).
    public var lineHashes: [String] = []

    public var trustedKeys: [String: Curve25519.Signing.PublicKey] {
        keys.filter { !$0.value.revoked }.mapValues(\.publicKey)
    }

    /// Why `cell` may not run now, or nil.
    public func refusal(cell: String) -> String? {
        if let d = damaged { return "the trust ledger is damaged: \(d)" }
        if let r = refusedCells[cell] { return r }
        guard let c = cells[cell] else { return "cell \(cell) is not registered" }
        guard let a = c.active, let v = c.versions[a] else { return "cell \(cell) has no active version" }
        if v.revoked { return "version \(a.prefix(12)) of \(cell) is revoked" }
        if keys[v.signedBy]?.revoked != false {
            return "the key \(v.signedBy) that signed \(cell) \(a.prefix(12)) is revoked"
        }
        return nil
    }
}

public enum Ledger {
    public static func path(stateDirectory: String) -> String { stateDirectory + "/trust/ledger.jsonl" }

    /// Reads and folds the ledger. A missing file is an empty ledger.
    public static func load(path: String) -> LedgerState {
        var st = LedgerState()
        guard let bytes = try? readFile(path, limit: 1 << 30) else { return st }
        let lines = bytes.split(separator: 0x0A, omittingEmptySubsequences: false)
        for (i, line) in lines.enumerated() {
            let loc = "\(path):\(i + 1)"
            if i == lines.count - 1 {
                if !line.isEmpty { st.damaged = "\(loc): the last entry is incomplete" }
                break
            }
            switch apply(Array(line), to: &st, location: loc) {
            case .success: break
            case .failure(let e):
                if e.cell == nil {
                    st.damaged = "\(loc): \(e.message)"
                    return st
                }
                st.refusedCells[e.cell!] = "\(loc): \(e.message)"
            }
            st.head = sha256Hex(line)
            st.lineHashes.append(st.head)
        }
        return st
    }

    struct EntryError: Error {
        let cell: String?
        let message: String
    }

    /// Applies one ledger line. An error with a cell refuses that cell; one
    /// without refuses the whole ledger (damaged file, broken chain).
    static func apply(_ line: [UInt8], to st: inout LedgerState, location: String) -> Result<Void, EntryError> {
        func fail(_ cell: String?, _ m: String) -> Result<Void, EntryError> {
            .failure(EntryError(cell: cell, message: m))
        }
        guard case .object(let env)? = try? JSONParser.parse(line) else {
            return fail(nil, "the entry is not valid JSON (damaged)")
        }
        guard env.keys.sorted() == ["payload", "payloadType", "signatures"],
            env["payloadType"]?.stringValue == PayloadType.ledgerEntry.rawValue,
            let p64 = env["payload"]?.stringValue, let payload = Data(base64Encoded: p64).map(Array.init),
            let sigs = env["signatures"]?.arrayValue, !sigs.isEmpty
        else { return fail(nil, "the entry is not a ledger envelope {payloadType, payload, signatures}") }
        guard case .object(let e)? = try? JSONParser.parse(payload) else {
            return fail(nil, "the payload is not valid JSON")
        }
        guard e["index"]?.intValue == Int64(st.entries.count + 1) else {
            return fail(nil, "entry index is not \(st.entries.count + 1): entries missing or reordered")
        }
        guard e["prev"]?.stringValue == st.head else {
            return fail(nil, "the entry does not follow the previous one (chain broken)")
        }
        guard let event = e["event"]?.stringValue else { return fail(nil, "no event") }
        let cell = e["cell"]?.stringValue
        st.entries.append(e)

        // Who signed: a trusted key; the very first entry adds its own signer.
        var keys = st.trustedKeys
        if st.entries.count == 1 {
            guard event == "key.add", let id = e["keyId"]?.stringValue, let pub = e["publicKey"]?.stringValue,
                let k = try? TrustKeys.parsePublic(pub, file: location), TrustKeys.keyID(k) == id
            else { return fail(nil, "the first entry must add the key that signs it") }
            keys = [id: k]
        }
        var signer: String? = nil
        var lastError: TrustError = .unsigned("no signature")
        for s in sigs {
            switch Envelope.verify(.ledgerEntry, payload, signature: s, keys: keys) {
            case .success(let id): signer = id
            case .failure(let err):
                if case .unknownKey(let id) = err, st.keys[id]?.revoked == true {
                    lastError = .revokedKey(id)
                } else {
                    lastError = err
                }
            }
            if signer != nil { break }
        }
        guard let signer else { return fail(cell ?? (event.hasPrefix("key.") ? nil : "?"), "\(event): \(lastError)") }

        switch event {
        case "key.add":
            guard let id = e["keyId"]?.stringValue, let pub = e["publicKey"]?.stringValue,
                let k = try? TrustKeys.parsePublic(pub, file: location), TrustKeys.keyID(k) == id
            else { return fail(nil, "key.add: keyId does not match publicKey") }
            st.keys[id] = LedgerState.Key(id: id, publicKey: k, name: e["name"]?.stringValue ?? "", revoked: false)
        case "key.revoke":
            guard let id = e["keyId"]?.stringValue, st.keys[id] != nil else {
                return fail(nil, "key.revoke: unknown key")
            }
            st.keys[id]!.revoked = true
        case "cell.register":
            guard let cell, let vid = e["version"]?.stringValue, let m64 = e["manifest"]?.stringValue,
                let mbytes = Data(base64Encoded: m64).map(Array.init), let mpath = e["manifestPath"]?.stringValue,
                let exe = e["executableSha256"]?.stringValue, let msig = e["manifestSignature"]
            else { return fail(cell ?? "?", "cell.register: missing fields") }
            guard sha256Hex(mbytes) == vid else {
                return fail(cell, "cell.register: version \(vid.prefix(12)) is not the manifest's SHA-256")
            }
            switch ManifestSignature.verify(
                sigBytes: msig.serializedBytes(), manifestBytes: mbytes, keys: st.trustedKeys,
                file: "manifest signature")
            {
            case .success: break
            case .failure(let err): return fail(cell, "cell.register: manifest signature: \(err)")
            }
            var c = st.cells[cell] ?? LedgerState.Cell()
            guard c.versions[vid] == nil else {
                return fail(
                    cell, "cell.register: version \(vid.prefix(12)) is already registered (versions are immutable)")
            }
            let parent = e["parent"]?.stringValue
            guard parent == c.active else {
                return fail(cell, "cell.register: parent \(parent?.prefix(12) ?? "none") is not the active version")
            }
            c.versions[vid] = LedgerState.Version(
                id: vid, label: e["label"]?.stringValue ?? "", manifestBytes: mbytes, manifestPath: mpath,
                executableSHA256: exe, parent: parent, signedBy: signer,
                approvedWidening: e["approvedWidening"]?.boolValue ?? false,
                registeredAt: e["time"]?.stringValue ?? "", revoked: false, revokeReason: nil)
            c.order.append(vid)
            st.cells[cell] = c
        case "cell.activate", "cell.rollback":
            guard let cell, let vid = e["version"]?.stringValue, var c = st.cells[cell], let v = c.versions[vid] else {
                return fail(cell ?? "?", "\(event): unknown cell or version")
            }
            guard !v.revoked else { return fail(cell, "\(event): version \(vid.prefix(12)) is revoked") }
            c.active = vid
            st.cells[cell] = c
        case "cell.revoke":
            guard let cell, let vid = e["version"]?.stringValue, var c = st.cells[cell], c.versions[vid] != nil else {
                return fail(cell ?? "?", "cell.revoke: unknown cell or version")
            }
            c.versions[vid]!.revoked = true
            c.versions[vid]!.revokeReason = e["reason"]?.stringValue
            st.cells[cell] = c
        default:
            return fail(nil, "unknown event \(event)")
        }
        // A cell refused by an earlier bad entry stays refused.
        return .success(())
    }

    /// Appends one entry signed by `key`, under an exclusive lock, after
    /// checking it against the current fold. Returns the new state.
    @discardableResult
    public static func append(path: String, event: String, fields: JSONObject, key: Curve25519.Signing.PrivateKey)
        throws -> LedgerState
    {
        try SecurityLog.makeDirectory(directoryName(of: path))
        if let p = StatePermissions.problem(path: directoryName(of: path)) ?? StatePermissions.problem(path: path) {
            throw TrustCommandError("refused: \(p)")
        }
        let fd = try Sys.open(path, O_RDWR | O_CREAT | O_APPEND, mode: 0o600)
        defer { fd.close() }
        guard flock(fd.rawValue, LOCK_EX) == 0 else { throw SystemError("flock \(path)", errno: errno) }
        defer { _ = flock(fd.rawValue, LOCK_UN) }
        var st = load(path: path)
        if let d = st.damaged { throw TrustCommandError("the ledger is damaged, nothing is appended: \(d)") }
        var p = JSONObject([
            ("index", .int(Int64(st.entries.count + 1))), ("prev", .string(st.head)),
            ("time", .string(SecurityLog.timestamp())), ("event", .string(event)),
        ])
        for (k, v) in fields { p[k] = v }
        let payload = JSONValue.object(p).serializedBytes()
        let env = JSONValue.object(
            JSONObject([
                ("payloadType", .string(PayloadType.ledgerEntry.rawValue)),
                ("payload", .string(Data(payload).base64EncodedString())),
                ("signatures", .array([try Envelope.sign(.ledgerEntry, payload, with: key)])),
            ])
        ).serializedBytes()
        let before = st
        if case .failure(let e) = apply(env, to: &st, location: path) {
            throw TrustCommandError("refused: \(e.message)")
        }
        if let c = fields["cell"]?.stringValue, st.refusedCells[c] != before.refusedCells[c] {
            throw TrustCommandError("refused: \(st.refusedCells[c]!)")
        }
        try fd.writeAll(env + [0x0A])
        guard fsync(fd.rawValue) == 0 else { throw SystemError("fsync \(path)", errno: errno) }
        st.head = sha256Hex(env)
        st.lineHashes.append(st.head)
        return st
    }
}

public struct TrustCommandError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}
