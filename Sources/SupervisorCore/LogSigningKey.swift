import Crypto
import Foundation
import StrictJSON
import SupervisorPlatform

/// A problem with the log's signing key that an operator must resolve.
public struct LogKeyError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ d: String) { description = d }
}

/// The log's Ed25519 signing key: `<state>/keys/log-signing.key` (0600) and
/// its public half `log-signing.pub`. Every public key the log was ever
/// signed with is also kept as `log-signing-<keyId>.pub`, so checkpoints
/// made before a rotation still verify.
///
/// The key is created only together with a new log. If it is missing while
/// the log or a public key exists, opening the log fails: a replacement key
/// is an operator's decision (`audit rotate-key`), recorded as
/// `log.key_rotated`, never a side effect of starting.
public enum LogSigningKey {
    public static func paths(stateDirectory: String) -> (privateKey: String, publicKey: String) {
        (stateDirectory + "/keys/log-signing.key", stateDirectory + "/keys/log-signing.pub")
    }

    public static func archivePath(stateDirectory: String, keyID: String) -> String {
        stateDirectory + "/keys/log-signing-\(keyID).pub"
    }

    public static func keyID(_ k: Curve25519.Signing.PublicKey) -> String {
        String(sha256Hex(k.rawRepresentation).prefix(16))
    }

    static func exists(_ path: String) -> Bool { (try? Sys.lstat(path)) != nil }

    static func loadPrivate(_ path: String) throws -> Curve25519.Signing.PrivateKey {
        let st = try Sys.stat(path)
        guard st.mode & 0o077 == 0 else {
            throw LogKeyError("\(path) is readable by others (mode \(String(st.mode & 0o777, radix: 8))); chmod 600 it")
        }
        let text = String(decoding: try readFile(path, limit: 4096), as: UTF8.self).trimmingCharacters(
            in: .whitespacesAndNewlines)
        guard text.hasPrefix("ed25519-private:"), let raw = Data(base64Encoded: String(text.dropFirst(16))),
            let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: raw)
        else { throw LogKeyError("\(path): not an ed25519-private key file") }
        return key
    }

    static func publicText(_ k: Curve25519.Signing.PublicKey) -> [UInt8] {
        Array("ed25519-public:\(k.rawRepresentation.base64EncodedString())\n".utf8)
    }

    /// Writes a file whole or not at all: a temporary file, fsynced, renamed.
    static func writeAtomically(_ path: String, _ bytes: [UInt8], mode: UInt32) throws {
        let tmp = path + ".tmp"
        try? Sys.unlink(tmp)
        let fd = try Sys.open(tmp, O_WRONLY | O_CREAT | O_EXCL, mode: mode)
        do {
            try fd.writeAll(bytes)
            try fd.sync()
        } catch {
            fd.close()
            try? Sys.unlink(tmp)
            throw error
        }
        fd.close()
        try Sys.rename(tmp, path)
    }

    /// Keeps `log-signing-<id>.pub` for a key (written once, never changed).
    static func archive(_ k: Curve25519.Signing.PublicKey, stateDirectory: String) throws {
        let path = archivePath(stateDirectory: stateDirectory, keyID: keyID(k))
        if !exists(path) { try writeAtomically(path, publicText(k), mode: 0o644) }
    }

    /// Loads the key; creates one only for a log that does not exist yet.
    static func load(stateDirectory: String, logDirectory: String) throws -> Curve25519.Signing.PrivateKey {
        let (priv, pub) = paths(stateDirectory: stateDirectory)
        try SecurityLog.makeDirectory(directoryName(of: priv))
        if exists(priv) {
            let key = try loadPrivate(priv)
            if exists(pub) {
                let p = try loadPublic(path: pub)
                guard p.rawRepresentation == key.publicKey.rawRepresentation else {
                    throw LogKeyError(
                        "\(pub) (key \(keyID(p))) is not the public half of \(priv) (key \(keyID(key.publicKey))): "
                            + "checkpoints would not verify. Restore the matching public key file, or replace the key "
                            + "explicitly: mcp-supervisor audit rotate-key --state-dir \(stateDirectory)")
                }
            } else {
                try writeAtomically(pub, publicText(key.publicKey), mode: 0o644)
            }
            try archive(key.publicKey, stateDirectory: stateDirectory)
            return key
        }
        var found: [String] = []
        if exists(pub) { found.append(pub) }
        found += archivedKeyFiles(stateDirectory: stateDirectory)
        if logHasRecords(logDirectory) { found.append(logDirectory) }
        guard found.isEmpty else {
            throw LogKeyError(
                "the security log's signing key \(priv) is missing, but \(found.joined(separator: ", ")) "
                    + "exist(s): a new key is never created silently (the log's earlier checkpoints were signed with the "
                    + "lost key). To continue with a new key, run: mcp-supervisor audit rotate-key --state-dir \(stateDirectory) "
                    + "(the old public keys are kept for `audit verify`; the change is recorded as a log.key_rotated event)"
            )
        }
        let key = Curve25519.Signing.PrivateKey()
        try writeAtomically(
            priv, Array("ed25519-private:\(key.rawRepresentation.base64EncodedString())\n".utf8), mode: 0o600)
        try writeAtomically(pub, publicText(key.publicKey), mode: 0o644)
        try archive(key.publicKey, stateDirectory: stateDirectory)
        return key
    }

    static func archivedKeyFiles(stateDirectory: String) -> [String] {
        let dir = stateDirectory + "/keys"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return names.filter { $0.hasPrefix("log-signing-") && $0.hasSuffix(".pub") }.sorted().map { dir + "/" + $0 }
    }

    static func logHasRecords(_ dir: String) -> Bool {
        let files = (try? SecurityLog.eventFiles(in: dir)) ?? []
        if files.contains(where: { ((try? Sys.stat($0.path).size) ?? 0) > 0 }) { return true }
        return ((try? Sys.stat(dir + "/checkpoints.jsonl").size) ?? 0) > 0
    }

    public static func loadPublic(path: String) throws -> Curve25519.Signing.PublicKey {
        let text = String(decoding: try readFile(path, limit: 4096), as: UTF8.self).trimmingCharacters(
            in: .whitespacesAndNewlines)
        guard text.hasPrefix("ed25519-public:"), let raw = Data(base64Encoded: String(text.dropFirst(15))),
            let key = try? Curve25519.Signing.PublicKey(rawRepresentation: raw)
        else { throw LogKeyError("\(path): not an ed25519-public key file") }
        return key
    }

    /// Every public key of the log by key id: the current one and the
    /// archived ones of earlier rotations.
    public static func publicKeys(stateDirectory: String) throws -> [String: Curve25519.Signing.PublicKey] {
        var keys: [String: Curve25519.Signing.PublicKey] = [:]
        let pub = paths(stateDirectory: stateDirectory).publicKey
        for path in (exists(pub) ? [pub] : []) + archivedKeyFiles(stateDirectory: stateDirectory) {
            let k = try loadPublic(path: path)
            keys[keyID(k)] = k
        }
        return keys
    }

    /// Replaces the log's signing key, as an operator's explicit action:
    /// - refuses while another process has the log open;
    /// - if the old private key is still there, it signs a last checkpoint
    ///   over the log as it stands;
    /// - the new key is installed, every old public key stays archived;
    /// - a `log.key_rotated` record names both keys and the reason, and the
    ///   new key checkpoints it.
    /// Returns the previous key id (nil if unknown) and the new one.
    public static func rotate(stateDirectory: String, reason: String) throws -> (previous: String?, new: String) {
        let logDirectory = stateDirectory + "/security"
        try SecurityLog.makeDirectory(logDirectory)
        try SecurityLog.makeDirectory(stateDirectory + "/keys")
        let (priv, pub) = paths(stateDirectory: stateDirectory)
        func requireAlone() throws -> FileDescriptor {
            let lock = try Sys.open(logDirectory + "/writers.lock", O_RDWR | O_CREAT, mode: 0o600)
            guard try lock.lock(exclusive: true, nonBlocking: true) else {
                lock.close()
                throw LogKeyError(
                    "the security log in \(logDirectory) is open in another process (a running supervisor "
                        + "or trust command); stop it, then rotate the key")
            }
            return lock
        }
        try requireAlone().close()
        var previous: String? = nil
        var previousAvailable = false
        if exists(priv) {
            // The old key's last word: a checkpoint over everything so far.
            let old = try SecurityLog(stateDirectory: stateDirectory)
            previous = old.keyID
            previousAvailable = true
            old.close()
        } else if exists(pub), let p = try? loadPublic(path: pub) {
            previous = keyID(p)
            try archive(p, stateDirectory: stateDirectory)
        }
        let lock = try requireAlone()
        let key = Curve25519.Signing.PrivateKey()
        do {
            try archive(key.publicKey, stateDirectory: stateDirectory)
            try writeAtomically(
                priv, Array("ed25519-private:\(key.rawRepresentation.base64EncodedString())\n".utf8), mode: 0o600)
            try writeAtomically(pub, publicText(key.publicKey), mode: 0o644)
        } catch {
            lock.close()
            throw error
        }
        lock.close()
        let log = try SecurityLog(stateDirectory: stateDirectory, newKey: true)
        let error = log.appendAndWait([
            SecurityEvent(
                .logKeyRotated,
                JSONObject([
                    ("previousKeyId", previous.map { .string($0) } ?? .null), ("newKeyId", .string(log.keyID)),
                    ("previousKeyAvailable", .bool(previousAvailable)), ("reason", .string(reason)),
                    ("uid", .int(Int64(Sys.uid))),
                ]))
        ])
        log.close()
        if let error { throw error }
        return (previous, log.keyID)
    }
}

extension FileDescriptor {
    /// flock(2). `nonBlocking`: returns false instead of waiting when
    /// another open file description holds a conflicting lock. (Here, not in
    /// SupervisorPlatform: Swift's Glibc module does not expose the function.)
    func lock(exclusive: Bool, nonBlocking: Bool = false) throws(SystemError) -> Bool {
        let op = (exclusive ? LOCK_EX : LOCK_SH) | (nonBlocking ? LOCK_NB : 0)
        while flock(rawValue, op) != 0 {
            let e = Errno.current
            if e == EINTR { continue }
            if e == EWOULDBLOCK && nonBlocking { return false }
            throw SystemError("flock", errno: e)
        }
        return true
    }
}
