import Crypto
import Foundation
import StrictJSON
import SupervisorPlatform

/// Ed25519 keys in small text files: `ed25519-private:<base64>` (mode 0600)
/// and `ed25519-public:<base64>`. A key's id is the first 16 hex digits of
/// the SHA-256 of its raw public key.
public enum TrustKeys {
    public static func keyID(_ k: Curve25519.Signing.PublicKey) -> String {
        String(sha256Hex(k.rawRepresentation).prefix(16))
    }

    /// Writes a new key pair `<base>.key` and `<base>.pub`; refuses to
    /// overwrite.
    public static func generate(base: String) throws -> Curve25519.Signing.PrivateKey {
        let key = Curve25519.Signing.PrivateKey()
        let priv = try Sys.open(base + ".key", O_WRONLY | O_CREAT | O_EXCL, mode: 0o600)
        try priv.writeAll(Array("ed25519-private:\(key.rawRepresentation.base64EncodedString())\n".utf8))
        _ = fsync(priv.rawValue)
        priv.close()
        let pub = try Sys.open(base + ".pub", O_WRONLY | O_CREAT | O_EXCL, mode: 0o644)
        try pub.writeAll(Array(publicText(key.publicKey).utf8))
        pub.close()
        return key
    }

    public static func publicText(_ k: Curve25519.Signing.PublicKey) -> String {
        "ed25519-public:\(k.rawRepresentation.base64EncodedString())\n"
    }

    public static func loadPrivate(path: String) throws(ConfigError) -> Curve25519.Signing.PrivateKey {
        let bytes: [UInt8]
        do { bytes = try readFile(path, limit: 4096) } catch {
            throw ConfigError(file: path, field: "", message: "cannot read: \(error)")
        }
        if let st = try? Sys.stat(path), st.mode & 0o077 != 0 {
            throw ConfigError(
                file: path, field: "",
                message: "private key is readable by others (mode \(String(st.mode & 0o777, radix: 8))); chmod 600 it")
        }
        let text = String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard text.hasPrefix("ed25519-private:"), let raw = Data(base64Encoded: String(text.dropFirst(16))),
            let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: raw)
        else { throw ConfigError(file: path, field: "", message: "not an ed25519-private key file") }
        return key
    }

    public static func parsePublic(_ text: String, file: String) throws(ConfigError) -> Curve25519.Signing.PublicKey {
        let t = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard t.hasPrefix("ed25519-public:"), let raw = Data(base64Encoded: String(t.dropFirst(15))),
            let key = try? Curve25519.Signing.PublicKey(rawRepresentation: raw)
        else { throw ConfigError(file: file, field: "", message: "not an ed25519-public key") }
        return key
    }

    public static func loadPublic(path: String) throws(ConfigError) -> Curve25519.Signing.PublicKey {
        let bytes: [UInt8]
        do { bytes = try readFile(path, limit: 4096) } catch {
            throw ConfigError(file: path, field: "", message: "cannot read: \(error)")
        }
        return try parsePublic(String(decoding: bytes, as: UTF8.self), file: path)
    }
}

/// Signatures bound to the kind of document they sign: the signed message is
/// DSSE's pre-authentication encoding of (payload type, payload), so a
/// signature over a manifest can never be replayed as a ledger entry.
public enum PayloadType: String, Sendable {
    case manifest = "application/vnd.mcp-supervisor.manifest+json"
    case ledgerEntry = "application/vnd.mcp-supervisor.ledger-entry+json"
}

public enum Envelope {
    /// "DSSEv1" SP len(type) SP type SP len(payload) SP payload.
    public static func pae(_ type: PayloadType, _ payload: [UInt8]) -> [UInt8] {
        Array("DSSEv1 \(type.rawValue.utf8.count) \(type.rawValue) \(payload.count) ".utf8) + payload
    }

    public static func sign(_ type: PayloadType, _ payload: [UInt8], with key: Curve25519.Signing.PrivateKey) throws
        -> JSONValue
    {
        let sig = try key.signature(for: pae(type, payload))
        return .object(
            JSONObject([
                ("keyId", .string(TrustKeys.keyID(key.publicKey))),
                ("sig", .string(Data(sig).base64EncodedString())),
            ]))
    }

    /// Checks `signature` ({keyId, sig}) over (type, payload) against `keys`.
    /// Returns the signing key id, or why it fails.
    public static func verify(
        _ type: PayloadType, _ payload: [UInt8], signature: JSONValue,
        keys: [String: Curve25519.Signing.PublicKey]
    ) -> Result<String, TrustError> {
        guard case .object(let o) = signature, o.count == 2, let id = o["keyId"]?.stringValue,
            let s = o["sig"]?.stringValue, let sig = Data(base64Encoded: s)
        else { return .failure(.malformed("signature must be {keyId, sig}")) }
        guard let key = keys[id] else { return .failure(.unknownKey(id)) }
        guard key.isValidSignature(sig, for: pae(type, payload)) else { return .failure(.badSignature(id)) }
        return .success(id)
    }
}

public enum TrustError: Error, Equatable, Sendable, CustomStringConvertible {
    case malformed(String)
    case unknownKey(String)
    case revokedKey(String)
    case badSignature(String)
    case unsigned(String)

    public var description: String {
        switch self {
        case .malformed(let m): return "malformed: \(m)"
        case .unknownKey(let k):
            return
                "signed by unknown key \(k) (trust it first: mcp-supervisor keys add KEY.pub --key <a key the ledger already trusts>; `keys list` shows those)"
        case .revokedKey(let k): return "signed by revoked key \(k)"
        case .badSignature(let k): return "bad signature (claimed key \(k))"
        case .unsigned(let m): return "not signed: \(m)"
        }
    }
}

/// A manifest's detached signature file, `<manifest>.sig`:
/// `{"payloadType": …manifest+json, "payloadSha256": hex, "signatures": [{keyId, sig}]}`.
public enum ManifestSignature {
    public static func path(for manifest: String) -> String { manifest + ".sig" }

    public static func make(manifestBytes: [UInt8], key: Curve25519.Signing.PrivateKey) throws -> JSONValue {
        .object(
            JSONObject([
                ("payloadType", .string(PayloadType.manifest.rawValue)),
                ("payloadSha256", .string(sha256Hex(manifestBytes))),
                ("signatures", .array([try Envelope.sign(.manifest, manifestBytes, with: key)])),
            ]))
    }

    /// Verifies strictly; returns the id of a key in `keys` that signed.
    public static func verify(
        sigBytes: [UInt8], manifestBytes: [UInt8], keys: [String: Curve25519.Signing.PublicKey],
        file: String
    ) -> Result<String, TrustError> {
        guard let doc = try? JSONParser.parse(sigBytes), case .object(let o) = doc else {
            return .failure(.malformed("\(file) is not a JSON object (duplicate keys are refused)"))
        }
        for k in o.keys where !["payloadType", "payloadSha256", "signatures"].contains(k) {
            return .failure(.malformed("\(file): unknown field \(k)"))
        }
        guard o["payloadType"]?.stringValue == PayloadType.manifest.rawValue else {
            return .failure(.malformed("\(file): payloadType is not \(PayloadType.manifest.rawValue)"))
        }
        guard o["payloadSha256"]?.stringValue == sha256Hex(manifestBytes) else {
            return .failure(.badSignature("(manifest bytes differ from the signed ones)"))
        }
        guard let sigs = o["signatures"]?.arrayValue, !sigs.isEmpty else { return .failure(.unsigned(file)) }
        var last: TrustError = .unsigned(file)
        for s in sigs {
            switch Envelope.verify(.manifest, manifestBytes, signature: s, keys: keys) {
            case .success(let id): return .success(id)
            case .failure(let e): last = e
            }
        }
        return .failure(last)
    }
}
