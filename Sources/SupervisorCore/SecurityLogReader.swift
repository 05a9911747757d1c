import Crypto
import Foundation
import StrictJSON
import SupervisorPlatform

/// One record as read back from the log.
public struct LogRecord: Sendable {
    public let seq: Int64
    public let time: String
    public let type: String
    public let object: JSONObject
    public let file: String
    public let line: Int
    public let hash: String

    public subscript(_ key: String) -> JSONValue? { object[key] }
}

/// What `audit verify` found wrong first.
public struct LogProblem: Sendable, CustomStringConvertible, Equatable {
    public enum Kind: String, Sendable {
        case modified, missing, reordered, truncated
        case badSignature = "bad-signature"
        case malformed
        /// Records no signed checkpoint covers.
        case uncovered
        /// A file verification needs cannot be read (a checkpoint copy, a key).
        case unreadable
    }
    public let kind: Kind
    public let seq: Int64?
    public let location: String
    public let message: String

    public var description: String { "\(kind.rawValue): \(location): \(message)" }
}

public struct LogVerification: Sendable {
    public var records = 0
    public var files = 0
    public var checkpoints = 0
    public var lastSeq: Int64 = 0
    /// The highest record a valid checkpoint covers.
    public var coveredSeq: Int64 = 0
    /// Key ids that signed the valid checkpoints.
    public var keyIDs: Set<String> = []
    /// log.unsigned_tail records: (seq of the record, first, last record it
    /// names). Not a failure: those records were checkpointed at the next
    /// start, not by the writer that wrote them.
    public var unsignedTails: [(seq: Int64, from: Int64, to: Int64)] = []
    public var problem: LogProblem?
}

public enum SecurityLogReader {
    /// Every line of every event file, in chain order. Lines that do not
    /// parse are returned as `malformed` problems by `verify`; here they are
    /// skipped.
    public static func records(directory: String) throws -> [LogRecord] {
        var out: [LogRecord] = []
        for f in try SecurityLog.eventFiles(in: directory) {
            let bytes = try readFile(f.path, limit: 1 << 31)
            var lineNo = 0
            for line in bytes.split(separator: 0x0A, omittingEmptySubsequences: false) {
                lineNo += 1
                if line.isEmpty { continue }
                guard case .object(let o)? = try? JSONParser.parse(Array(line)),
                    let seq = o["seq"]?.intValue, let type = o["type"]?.stringValue
                else { continue }
                out.append(
                    LogRecord(
                        seq: seq, time: o["time"]?.stringValue ?? "", type: type, object: o,
                        file: f.path, line: lineNo, hash: sha256Hex(line)))
            }
        }
        return out
    }

    /// Checks the chain, the sequence, every checkpoint and its signature.
    /// `checkpointsPath` and `publicKeyPath` may point at copies kept
    /// elsewhere (the defaults are the ones beside the log).
    public static func verify(directory: String, publicKeyPath: String, checkpointsPath: String? = nil)
        -> LogVerification
    {
        do {
            let k = try LogSigningKey.loadPublic(path: publicKeyPath)
            return verify(
                directory: directory, publicKeys: [LogSigningKey.keyID(k): k], checkpointsPath: checkpointsPath)
        } catch {
            var v = LogVerification()
            v.problem = LogProblem(
                kind: .unreadable, seq: nil, location: publicKeyPath,
                message: "cannot load the log's public key: \(error)")
            return v
        }
    }

    /// As above with every public key the log may have been signed with, by
    /// key id (`LogSigningKey.publicKeys`). Every record must be covered by
    /// a valid checkpoint: records after the last one are a failure
    /// (`uncovered`), and so is a log with records but no checkpoints.
    public static func verify(
        directory: String, publicKeys: [String: Curve25519.Signing.PublicKey],
        checkpointsPath: String? = nil
    ) -> LogVerification {
        var v = LogVerification()
        func fail(_ k: LogProblem.Kind, _ seq: Int64?, _ loc: String, _ m: String) -> LogVerification {
            v.problem = LogProblem(kind: k, seq: seq, location: loc, message: m)
            return v
        }
        let files: [SecurityLog.EventFile]
        do { files = try SecurityLog.eventFiles(in: directory) } catch {
            return fail(.malformed, nil, directory, "cannot list the log: \(error)")
        }
        v.files = files.count
        struct Line {
            let seq: Int64
            let prev: String
            let hash: String
            let loc: String
        }
        /// Key id → the record that retired it (log.key_rotated).
        var retired: [String: Int64] = [:]
        var lines: [Line] = []
        for f in files {
            let bytes: [UInt8]
            do { bytes = try readFile(f.path, limit: 1 << 31) } catch {
                return fail(.malformed, nil, f.path, "\(error)")
            }
            let parts = bytes.split(separator: 0x0A, omittingEmptySubsequences: false)
            for (i, line) in parts.enumerated() {
                let loc = "\(f.path):\(i + 1)"
                if i == parts.count - 1 {
                    if !line.isEmpty {
                        return fail(.truncated, nil, loc, "the last line has no end (torn write or cut file)")
                    }
                    continue
                }
                guard case .object(let o)? = try? JSONParser.parse(Array(line)) else {
                    return fail(
                        .modified, lines.last.map { $0.seq + 1 }, loc, "the record is not valid JSON: it was modified")
                }
                guard let seq = o["seq"]?.intValue, let prev = o["prev"]?.stringValue,
                    let type = o["type"]?.stringValue,
                    SecurityEventType(rawValue: type) != nil, o["time"]?.stringValue != nil
                else {
                    return fail(
                        .modified, lines.last.map { $0.seq + 1 }, loc,
                        "the record lacks seq, time, a known type or prev: it was modified")
                }
                lines.append(Line(seq: seq, prev: prev, hash: sha256Hex(line), loc: loc))
                if type == SecurityEventType.logKeyRotated.rawValue, let old = o["previousKeyId"]?.stringValue {
                    retired[old] = min(retired[old] ?? seq, seq)
                }
                if type == SecurityEventType.logUnsignedTail.rawValue, let a = o["fromSeq"]?.intValue,
                    let b = o["toSeq"]?.intValue
                {
                    v.unsignedTails.append((seq, a, b))
                }
            }
        }
        // Sequence: 1, 2, 3, ... in file order.
        let present = Set(lines.map(\.seq))
        for (i, l) in lines.enumerated() where l.seq != Int64(i + 1) {
            let expected = Int64(i + 1)
            if present.contains(expected) {
                return fail(
                    .reordered, l.seq, l.loc,
                    "record \(l.seq) stands where record \(expected) belongs: records were reordered")
            }
            return fail(.missing, expected, l.loc, "record \(expected) is missing (the next record is \(l.seq))")
        }
        // Chain: each record names the hash of the one before.
        var prevHash = SecurityLog.genesis
        var hashes: [Int64: String] = [:]
        for (i, l) in lines.enumerated() {
            if l.prev != prevHash {
                if i == 0 { return fail(.modified, l.seq, l.loc, "the first record does not start the chain") }
                let before = lines[i - 1]
                return fail(
                    .modified, before.seq, before.loc,
                    "record \(before.seq) does not match the hash that record \(l.seq) names: it (or that link) was modified"
                )
            }
            prevHash = l.hash
            hashes[l.seq] = l.hash
        }
        v.records = lines.count
        v.lastSeq = lines.last?.seq ?? 0

        // Checkpoints: signed (seq, head) pairs kept outside the log.
        guard !publicKeys.isEmpty else {
            return fail(.unreadable, nil, directory, "no public key of the log was found (keys/log-signing.pub)")
        }
        let cpPath = checkpointsPath ?? directory + "/checkpoints.jsonl"
        let cpBytes: [UInt8]
        do { cpBytes = try readFile(cpPath, limit: 1 << 30) } catch {
            // Beside the log, a missing file is no checkpoints (caught
            // below if there are records); a copy named explicitly must exist.
            if checkpointsPath != nil || error.errno != ENOENT {
                return fail(.unreadable, nil, cpPath, "cannot read the checkpoints: \(error)")
            }
            cpBytes = []
        }
        let cpLines = cpBytes.split(separator: 0x0A, omittingEmptySubsequences: false)
        for (i, line) in cpLines.enumerated() where !line.isEmpty {
            let loc = "\(cpPath):\(i + 1)"
            guard case .object(let o)? = try? JSONParser.parse(Array(line)), let seq = o["seq"]?.intValue,
                let head = o["head"]?.stringValue, let sigText = o["signature"]?.stringValue,
                let sig = Data(base64Encoded: sigText)
            else {
                return fail(.badSignature, nil, loc, "the checkpoint is not a valid record: it was modified or forged")
            }
            let keyID = o["keyId"]?.stringValue ?? (publicKeys.count == 1 ? publicKeys.keys.first! : "")
            guard let key = publicKeys[keyID] else {
                return fail(
                    .badSignature, seq, loc,
                    "the checkpoint for record \(seq) names key \(keyID.isEmpty ? "(none)" : keyID), "
                        + "which is not one of the log's public keys (\(publicKeys.keys.sorted().joined(separator: ", "))): it was forged"
                )
            }
            let message = Array((SecurityLog.checkpointDomain + "\(seq)\n\(head)\n").utf8)
            guard key.isValidSignature(sig, for: message) else {
                return fail(
                    .badSignature, seq, loc,
                    "the checkpoint for record \(seq) has a bad signature: it was forged or altered")
            }
            if let r = retired[keyID], seq >= r {
                return fail(
                    .badSignature, seq, loc,
                    "the checkpoint for record \(seq) is signed by key \(keyID), "
                        + "which record \(r) retired (log.key_rotated): it was forged with the old key")
            }
            v.checkpoints += 1
            v.keyIDs.insert(keyID)
            v.coveredSeq = max(v.coveredSeq, seq)
            guard let h = hashes[seq] else {
                return fail(
                    .truncated, v.lastSeq + 1, loc,
                    "the log ends at record \(v.lastSeq) but a signed checkpoint covers record \(seq): records \(v.lastSeq + 1)...\(seq) were cut off"
                )
            }
            guard h == head else {
                let l = lines[Int(seq) - 1]
                return fail(
                    .modified, seq, l.loc,
                    "record \(seq) does not match its signed checkpoint (\(loc)): the log up to it was rewritten")
            }
        }
        // Coverage: every record under a signed checkpoint.
        if v.lastSeq > v.coveredSeq {
            let first = v.coveredSeq + 1
            let loc = lines[Int(first) - 1].loc
            let why =
                v.checkpoints == 0
                ? "no signed checkpoint covers any record (\(cpPath) has none)"
                : "no signed checkpoint covers them (the last one covers record \(v.coveredSeq))"
            return fail(
                .uncovered, first, loc,
                "records \(first)...\(v.lastSeq): \(why); they could have been added or "
                    + "rewritten without the key. A writer that stopped without closing leaves such a tail: the next start "
                    + "of the supervisor (or any trust command) checkpoints it")
        }
        return v
    }
}
