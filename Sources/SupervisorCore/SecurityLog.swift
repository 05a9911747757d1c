import Crypto
import Foundation
import StrictJSON
import SupervisorPlatform

/// The security event log: JSON Lines, append-only, one hash chain across
/// rotated files, with Ed25519-signed checkpoints kept in a separate file.
/// Layout and verification rules: docs/security-events.md.
///
/// Appends are group-committed: a writer thread takes every pending event,
/// writes them, fsyncs once, and only then releases the callers, so a call's
/// events are on disk before its result goes to the client.
public final class SecurityLog: @unchecked Sendable {
    public static let genesis = String(repeating: "0", count: 64)
    public static let checkpointDomain = "mcp-supervisor security-log checkpoint v1\n"

    public let directory: String
    let key: Curve25519.Signing.PrivateKey
    public let keyID: String
    let rotateBytes: Int
    let checkpointEvery: Int

    private let cond = NSCondition()
    /// (event, completion, must be on disk before completion).
    private var pending: [(SecurityEvent, (() -> Void)?, Bool)] = []
    private var closed = false
    private var writerDone = false

    // Owned by the writer thread (and by init/close while it is not running).
    private var file: FileDescriptor
    private var fileIndex: Int
    private var fileSize: Int
    private var seq: UInt64
    private var head: String
    private var sinceCheckpoint = 0
    /// Descriptors of rotated-away files, closed once unlocked.
    private var retired: [FileDescriptor] = []
    private let checkpoints: FileDescriptor

    /// Opens (or creates) the log in `<state>/security`, with the signing
    /// key in `<state>/keys`. A torn last line left by a crash is cut off and
    /// recorded as a `log.torn_tail` event; the chain continues.
    public init(stateDirectory: String, rotateBytes: Int = 64 << 20, checkpointEvery: Int = 256) throws {
        directory = stateDirectory + "/security"
        self.rotateBytes = rotateBytes
        self.checkpointEvery = checkpointEvery
        try Self.makeDirectory(directory)
        key = try LogSigningKey.loadOrCreate(stateDirectory: stateDirectory)
        keyID = LogSigningKey.keyID(key.publicKey)

        let files = try Self.eventFiles(in: directory)
        fileIndex = files.last?.index ?? 1
        file = try Sys.open(Self.eventFilePath(directory, fileIndex), O_RDWR | O_CREAT | O_APPEND, mode: 0o600)
        checkpoints = try Sys.open(directory + "/checkpoints.jsonl", O_WRONLY | O_CREAT | O_APPEND, mode: 0o600)
        fileSize = -1
        seq = 0
        head = Self.genesis
        // Find the chain head now (and recover a torn tail) under the lock.
        try withFileLock { try syncWithFile() }
        let t = Thread { [unowned self] in self.writerLoop() }
        t.name = "security-log"
        t.start()
    }

    /// Whether the log can record calls now (a call is admitted only then).
    public var writable: Result<Void, SecurityLogError> { .success(()) }

    /// Appends events; returns once they are on disk.
    public func append(_ events: [SecurityEvent]) async throws(SecurityLogError) {
        guard !events.isEmpty else { return }
        await withCheckedContinuation { (k: CheckedContinuation<Void, Never>) in
            enqueue(events, durable: true) { k.resume() }
        }
    }

    /// Appends events and runs `done` on the log's writer thread once they
    /// are on disk (at once, on the caller's thread, if there are none).
    /// For work that must follow durability without another thread hop,
    /// such as writing the response of a call.
    public func append(_ events: [SecurityEvent], then done: @escaping @Sendable () -> Void) {
        guard !events.isEmpty else { return done() }
        enqueue(events, durable: true, done)
    }

    /// Appends events without waiting: they are written (so they survive the
    /// supervisor being killed) in order, and reach the disk with the next
    /// durable append — one data sync per call instead of two.
    public func appendLater(_ events: [SecurityEvent]) {
        guard !events.isEmpty else { return }
        enqueue(events, durable: false) {}
    }

    /// Appends events; blocks until they are on disk.
    public func appendAndWait(_ events: [SecurityEvent]) {
        guard !events.isEmpty else { return }
        let done = DispatchSemaphore(value: 0)
        enqueue(events, durable: true) { done.signal() }
        done.wait()
    }

    private func enqueue(_ events: [SecurityEvent], durable: Bool, _ done: @escaping () -> Void) {
        cond.lock()
        if closed {
            cond.unlock()
            done()
            return
        }
        for (i, e) in events.enumerated() { pending.append((e, i == events.count - 1 ? done : nil, durable)) }
        cond.signal()
        cond.unlock()
    }

    /// Writes a final event and a checkpoint, then stops the writer.
    public func close(finalEvent: SecurityEvent? = nil) {
        if let finalEvent { appendAndWait([finalEvent]) }
        cond.lock()
        closed = true
        cond.broadcast()
        while !writerDone { cond.wait() }
        cond.unlock()
        try? writeCheckpoint()
        file.close()
        checkpoints.close()
    }

    private func writerLoop() {
        while true {
            cond.lock()
            while pending.isEmpty && !closed { cond.wait() }
            if pending.isEmpty && closed {
                writerDone = true
                cond.broadcast()
                cond.unlock()
                return
            }
            let batch = pending
            pending.removeAll(keepingCapacity: true)
            cond.unlock()
            do {
                try writeNow(batch.map(\.0), sync: batch.contains { $0.2 })
            } catch {
                // Nothing can be recorded: say so on stderr and keep serving
                // the callers (they must not hang on a full disk).
                FileHandle.standardError.write(Data("mcp-supervisor: SECURITY LOG WRITE FAILED: \(error)\n".utf8))
            }
            for (_, done, _) in batch { done?() }
        }
    }

    /// Gives the event the next sequence number and chains it to the head.
    private func chain(_ e: SecurityEvent) -> [UInt8] {
        seq += 1
        var o = JSONObject([("seq", .int(Int64(seq))), ("time", .string(Self.timestamp())),
                            ("type", .string(e.type.rawValue)), ("prev", .string(head))])
        for (k, v) in e.fields where !o.contains(k) { o[k] = v }
        let line = JSONValue.object(o).serializedBytes()
        head = sha256Hex(line)
        return line + [0x0A]
    }

    private func writeDurably(_ bytes: [UInt8], sync: Bool = true) throws {
        try file.writeAll(bytes)
        fileSize += bytes.count
        if sync, fdatasync(file.rawValue) != 0 { throw SystemError("fdatasync security log", errno: errno) }
    }

    /// Sequences, chains, writes and fsyncs a batch, holding the file lock:
    /// other processes (the trust commands) append to the same chain.
    private func writeNow(_ events: [SecurityEvent], sync: Bool = true) throws {
        try withFileLock {
            try syncWithFile()
            try writeLocked(events, sync: sync)
        }
    }

    /// flock(2) on the current event file; re-taken if that file changes.
    private func withFileLock(_ body: () throws -> Void) throws {
        while true {
            guard flock(file.rawValue, LOCK_EX) == 0 else { throw SystemError("flock security log", errno: errno) }
            let locked = file
            // Another writer may have rotated between our open and our lock:
            // then the next file exists (one stat, not a directory listing).
            var newest = fileIndex
            while (try? Sys.stat(Self.eventFilePath(directory, newest + 1))) != nil { newest += 1 }
            if newest != fileIndex {
                _ = flock(locked.rawValue, LOCK_UN)
                file.close()
                fileIndex = newest
                file = try Sys.open(Self.eventFilePath(directory, fileIndex), O_RDWR | O_CREAT | O_APPEND, mode: 0o600)
                fileSize = -1
                continue
            }
            defer {
                _ = flock(locked.rawValue, LOCK_UN)
                for f in retired { f.close() }
                retired.removeAll()
            }
            try body()
            return
        }
    }

    /// Brings (seq, head) up to date with what is on disk if another writer
    /// appended, and cuts a torn last line (a writer killed mid-write) into a
    /// log.torn_tail event so the chain continues.
    private func syncWithFile() throws {
        let size = Int(try file.stat().size)
        if size == fileSize { return }
        let path = Self.eventFilePath(directory, fileIndex)
        var bytes = try readFile(path, limit: 1 << 30)
        var torn: [UInt8] = []
        if let lastNewline = bytes.lastIndex(of: 0x0A) {
            torn = Array(bytes[(lastNewline + 1)...])
            bytes = Array(bytes[...lastNewline])
        } else {
            torn = bytes
            bytes = []
        }
        if !torn.isEmpty, ftruncate(file.rawValue, off_t(bytes.count)) != 0 {
            throw SystemError("ftruncate \(path)", errno: errno)
        }
        fileSize = bytes.count
        var lastLine: ArraySlice<UInt8>? = nil
        if !bytes.isEmpty {
            let body = bytes.dropLast()
            lastLine = body[(body.lastIndex(of: 0x0A).map { $0 + 1 } ?? body.startIndex)...]
        } else if fileIndex > 1, let prev = try? readFile(Self.eventFilePath(directory, fileIndex - 1), limit: 1 << 30) {
            let body = prev.last == 0x0A ? prev.dropLast() : prev[...]
            lastLine = body[(body.lastIndex(of: 0x0A).map { $0 + 1 } ?? body.startIndex)...]
        }
        if let line = lastLine, !line.isEmpty {
            guard case .object(let o)? = try? JSONParser.parse(Array(line)), let s = o["seq"]?.intValue else {
                throw SystemError("\(path): the last record is not valid; run `mcp-supervisor audit verify`", errno: EINVAL)
            }
            seq = UInt64(s)
            head = sha256Hex(line)
        }
        if !torn.isEmpty {
            let sample = torn.prefix(65536)
            var f = JSONObject([("file", .string(path)), ("bytes", .int(Int64(torn.count))),
                                ("sha256", .string(sha256Hex(torn))),
                                ("dataBase64", .string(Data(sample).base64EncodedString()))])
            if sample.count < torn.count { f["dataTruncated"] = true }
            try writeLocked([SecurityEvent(.logTornTail, f)])
        }
    }

    private func writeLocked(_ events: [SecurityEvent], sync: Bool = true) throws {
        var out: [UInt8] = []
        for e in events { out.append(contentsOf: chain(e)) }
        try writeDurably(out, sync: sync)
        sinceCheckpoint += events.count
        if sinceCheckpoint >= checkpointEvery { try writeCheckpoint() }
        if fileSize >= rotateBytes { try rotate() }
    }

    /// A log.rotate record closes the old file; the chain continues in the next.
    private func rotate() throws {
        let next = fileIndex + 1
        let nextPath = Self.eventFilePath(directory, next)
        try writeDurably(chain(SecurityEvent(.logRotate, JSONObject([("next", .string(baseName(of: nextPath)))]))))
        // Create the next file before releasing the old one's lock (the
        // caller unlocks the old descriptor it locked).
        let old = file
        file = try Sys.open(nextPath, O_RDWR | O_CREAT | O_APPEND, mode: 0o600)
        _ = old  // closed below, after the caller's unlock
        retired.append(old)
        fileIndex = next
        fileSize = 0
        try writeCheckpoint()
    }

    /// Signs (seq, head) and appends it to checkpoints.jsonl.
    private func writeCheckpoint() throws {
        guard seq > 0 else { return }
        let message = Array((Self.checkpointDomain + "\(seq)\n\(head)\n").utf8)
        let sig = try key.signature(for: message)
        let line = JSONValue.object(JSONObject([
            ("seq", .int(Int64(seq))), ("head", .string(head)), ("time", .string(Self.timestamp())),
            ("keyId", .string(keyID)), ("signature", .string(Data(sig).base64EncodedString())),
        ])).serializedBytes()
        try checkpoints.writeAll(line + [0x0A])
        if fsync(checkpoints.rawValue) != 0 { throw SystemError("fsync checkpoints", errno: errno) }
        sinceCheckpoint = 0
    }

    // MARK: files

    public struct EventFile: Sendable {
        public let index: Int
        public let path: String
    }

    static func eventFilePath(_ dir: String, _ i: Int) -> String {
        let n = String(i)
        return dir + "/events-" + String(repeating: "0", count: max(0, 6 - n.count)) + n + ".jsonl"
    }

    /// The event files of a log directory in chain order.
    public static func eventFiles(in dir: String) throws -> [EventFile] {
        let names = try FileManager.default.contentsOfDirectory(atPath: dir)
        return names.compactMap { n -> EventFile? in
            guard n.hasPrefix("events-"), n.hasSuffix(".jsonl"),
                  let i = Int(n.dropFirst(7).dropLast(6)) else { return nil }
            return EventFile(index: i, path: dir + "/" + n)
        }.sorted { $0.index < $1.index }
    }

    static func makeDirectory(_ path: String) throws {
        var p = ""
        for c in path.split(separator: "/") {
            p += "/" + c
            if (try? Sys.lstat(p)) == nil { try Sys.mkdir(p, mode: 0o700) }
        }
    }

    /// RFC 3339 UTC with microseconds.
    public static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var t = time_t(ts.tv_sec)
        var tmv = tm()
        gmtime_r(&t, &tmv)
        func pad(_ v: Int, _ w: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, w - s.count)) + s
        }
        return "\(pad(Int(tmv.tm_year) + 1900, 4))-\(pad(Int(tmv.tm_mon) + 1, 2))-\(pad(Int(tmv.tm_mday), 2))T"
            + "\(pad(Int(tmv.tm_hour), 2)):\(pad(Int(tmv.tm_min), 2)):\(pad(Int(tmv.tm_sec), 2)).\(pad(ts.tv_nsec / 1000, 6))Z"
    }
}

/// Events could not be made durable.
public struct SecurityLogError: Error, CustomStringConvertible, Sendable {
    public let description: String
}

/// The log's Ed25519 signing key: `<state>/keys/log-signing.key` (0600) and
/// its public half `log-signing.pub`.
public enum LogSigningKey {
    public static func paths(stateDirectory: String) -> (privateKey: String, publicKey: String) {
        (stateDirectory + "/keys/log-signing.key", stateDirectory + "/keys/log-signing.pub")
    }

    public static func keyID(_ k: Curve25519.Signing.PublicKey) -> String {
        String(sha256Hex(k.rawRepresentation).prefix(16))
    }

    static func loadOrCreate(stateDirectory: String) throws -> Curve25519.Signing.PrivateKey {
        let (priv, pub) = paths(stateDirectory: stateDirectory)
        try SecurityLog.makeDirectory(directoryName(of: priv))
        if let bytes = try? readFile(priv, limit: 4096) {
            let st = try Sys.stat(priv)
            guard st.mode & 0o077 == 0 else {
                throw SystemError("\(priv) is readable by others (mode \(String(st.mode & 0o777, radix: 8))); chmod 600 it", errno: EPERM)
            }
            let text = String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard text.hasPrefix("ed25519-private:"), let raw = Data(base64Encoded: String(text.dropFirst(16))),
                  let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: raw)
            else { throw SystemError("\(priv): not an ed25519-private key file", errno: EINVAL) }
            return key
        }
        let key = Curve25519.Signing.PrivateKey()
        let fd = try Sys.open(priv, O_WRONLY | O_CREAT | O_EXCL, mode: 0o600)
        try fd.writeAll(Array("ed25519-private:\(key.rawRepresentation.base64EncodedString())\n".utf8))
        _ = fsync(fd.rawValue)
        fd.close()
        let p = try Sys.open(pub, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o644)
        try p.writeAll(Array("ed25519-public:\(key.publicKey.rawRepresentation.base64EncodedString())\n".utf8))
        p.close()
        return key
    }

    public static func loadPublic(path: String) throws -> Curve25519.Signing.PublicKey {
        let text = String(decoding: try readFile(path, limit: 4096), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard text.hasPrefix("ed25519-public:"), let raw = Data(base64Encoded: String(text.dropFirst(15))),
              let key = try? Curve25519.Signing.PublicKey(rawRepresentation: raw)
        else { throw SystemError("\(path): not an ed25519-public key file", errno: EINVAL) }
        return key
    }
}
