import Crypto
import Foundation
import StrictJSON
import SupervisorPlatform
import Synchronization

/// Why events could not be made durable: the operation that failed, the
/// file, and the errno (0 when there is none, e.g. the log is closed).
public struct SecurityLogError: Error, Sendable, Equatable, CustomStringConvertible {
    /// "write", "fdatasync", "ftruncate", "open", "flock", "read",
    /// "checkpoint" or "closed".
    public let operation: String
    public let path: String
    public let errno: Int32
    /// What was wrong when it is not an errno (a damaged last record).
    public let detail: String?

    public init(_ operation: String, path: String, errno: Int32, detail: String? = nil) {
        self.operation = operation
        self.path = path
        self.errno = errno
        self.detail = detail
    }

    static func closed(_ directory: String) -> SecurityLogError {
        SecurityLogError("closed", path: directory, errno: 0, detail: "the security log is closed")
    }

    var cause: String { detail ?? Errno.describe(errno) }

    /// Without the path, for answers to clients (error text names no paths).
    public var reason: String {
        operation == "closed"
            ? "the security log is closed" : "the security log cannot be written (\(operation): \(cause))"
    }

    public var description: String {
        if operation == "closed" { return "the security log \(path) is closed" }
        var s = "the security log cannot be written: \(operation) \(path): \(cause)"
        if errno == ENOSPC || errno == EDQUOT { s += "; free space on that filesystem" }
        return s
    }
}

/// The security event log: JSON Lines, append-only, one hash chain across
/// rotated files, with Ed25519-signed checkpoints kept in a separate file.
/// Layout and verification rules: docs/security-events.md.
///
/// Appends are group-committed: a writer thread takes every pending event,
/// writes them, fdatasyncs once, and only then releases the callers, so a
/// call's events are on disk before its result goes to the client.
///
/// The log fails closed. A batch that cannot be made durable (ENOSPC, EIO
/// on fdatasync) is cut back out of the file, so the chain never holds a
/// gap or a partial line; its durable callers are told, `writable` turns to
/// the error (callers refuse new work), and the writer retries every
/// `retryMilliseconds` until a write succeeds, then records `log.recovered`.
/// Events appended with `appendLater` are kept and written, in order, once
/// the log recovers: a durable append succeeds only when every event
/// appended before it is on disk.
public final class SecurityLog: @unchecked Sendable {
    // @unchecked: the queue and failure state are guarded by `cond` (an NSCondition: the writer thread sleeps
    // on it); the file and chain state is owned by the writer thread (and by init/close while it is not running).
    public static let genesis = String(repeating: "0", count: 64)
    public static let checkpointDomain = "mcp-supervisor security-log checkpoint v1\n"
    /// Events kept for a retry while the log cannot write; beyond this the
    /// oldest are dropped and counted in `log.recovered`.
    static let maxRetained = 65536

    public let directory: String
    let key: Curve25519.Signing.PrivateKey
    public let keyID: String
    let rotateBytes: Int
    let checkpointEvery: Int
    let checkpointIdle: TimeInterval
    let retryNanoseconds: UInt64

    private struct Pending {
        let event: SecurityEvent
        /// Set on the last event of an append.
        let done: (@Sendable (SecurityLogError?) -> Void)?
        let durable: Bool
        /// Set on the last event of an `append(_:recorded:)`, instead of
        /// `done`: also told the records the append's events became.
        var recorded: (@Sendable ([LogRecordID]?, SecurityLogError?) -> Void)? = nil
        /// The number of events of the append (on its last event).
        var count = 1
    }

    /// While the log cannot write: the last error, and what the
    /// `log.recovered` record will say about the gap.
    private struct Failure {
        var error: SecurityLogError
        var since: String
        var attempts = 1
        var refusedTypes: [String: Int] = [:]
        var refusedCallIDs: [String] = []
        var dropped = 0
    }

    private let cond = NSCondition()
    private var pending: [Pending] = []
    private var durablePending = false
    private var closed = false
    private var finished = false
    private var writerDone = false
    private var failure: Failure?
    private var retryAt: UInt64 = 0

    // Owned by the writer thread (and by init/close while it is not running).
    private var file: FileDescriptor
    private var fileIndex: Int
    private var fileSize: Int
    private var seq: UInt64
    private var head: String
    /// The last point of the current file known to be on disk (fdatasync).
    private var synced: (size: Int, seq: UInt64, head: String) = (0, 0, SecurityLog.genesis)
    /// Open calls and the ledger anchor as of the last record written, and
    /// as of `synced` (what a checkpoint saves).
    private var summary = LogSummary()
    private var syncedSummary = LogSummary()
    /// Events written without a data sync since `synced`.
    private var unsynced: [SecurityEvent] = []
    /// Unsynced events cut back out after a failed data sync, to be retried.
    private var rolledBack: [SecurityEvent] = []
    private var sinceCheckpoint = 0
    private var lastCheckpointSeq: UInt64 = 0
    /// The ledger anchor as found at open (`LedgerAnchor`).
    public private(set) var ledgerAnchorAtOpen: LedgerAnchor?
    private var lastWrite = Date()
    /// Descriptors of rotated-away files, closed once unlocked.
    private var retired: [FileDescriptor] = []
    /// The records the last `writeLocked` chained, in order.
    private var chained: [LogRecordID] = []
    private let checkpoints: FileDescriptor
    /// Held shared for the log's life: whoever can take it exclusively at
    /// open is alone, and recovers what a writer that died left behind.
    private let writers: FileDescriptor

    private let syncObserverState = Mutex<(@Sendable (UInt64) -> Void)?>(nil)
    /// Told the duration of each data sync of the event file, in
    /// nanoseconds, on the writer thread (metrics); it must only record.
    public var syncObserver: (@Sendable (UInt64) -> Void)? {
        get { syncObserverState.withLock { $0 } }
        set { syncObserverState.withLock { $0 = newValue } }
    }

    private let recordObserverState = Mutex<(@Sendable ([DurableRecord]) -> Void)?>(nil)
    /// Told of each record this log writes once it is durable, in order,
    /// on the writer thread (telemetry export); it must only queue.
    public var recordObserver: (@Sendable ([DurableRecord]) -> Void)? {
        get { recordObserverState.withLock { $0 } }
        set { recordObserverState.withLock { $0 = newValue } }
    }
    /// Records chained since the last data sync, for `recordObserver`.
    private var undelivered: [DurableRecord] = []

    private let faultInjectorState = Mutex<(@Sendable (LogOperation) -> LogFault?)?>(nil)
    /// Test seam: consulted before each write, data sync and checkpoint
    /// write; a returned fault makes that operation fail.
    var faultInjector: (@Sendable (LogOperation) -> LogFault?)? {
        get { faultInjectorState.withLock { $0 } }
        set { faultInjectorState.withLock { $0 = newValue } }
    }

    /// Opens (or creates) the log in `<state>/security`, with the signing
    /// key in `<state>/keys` (created only for a new log: docs/security-events.md).
    /// When no other process has the log open, what a writer that died left
    /// behind is recorded first: a torn last line (`log.torn_tail`), records
    /// no checkpoint covers (`log.unsigned_tail`, then a checkpoint), calls
    /// without an end (`call.interrupted`).
    ///
    /// `newKey`: only for `LogSigningKey.rotate`, which installs a key that
    /// did not sign the last checkpoint; any other open refuses such a key.
    public init(
        stateDirectory: String, rotateBytes: Int = 64 << 20, checkpointEvery: Int = 256,
        checkpointIdleMilliseconds: Int = 1000, retryMilliseconds: Int = 1000, newKey: Bool = false
    ) throws {
        directory = stateDirectory + "/security"
        self.rotateBytes = rotateBytes
        self.checkpointEvery = checkpointEvery
        checkpointIdle = TimeInterval(checkpointIdleMilliseconds) / 1000
        retryNanoseconds = UInt64(retryMilliseconds) * 1_000_000
        try Self.makeDirectory(directory)
        writers = try Sys.open(directory + "/writers.lock", O_RDWR | O_CREAT, mode: 0o600)
        var opened: [FileDescriptor] = [writers]
        do {
            let alone = try writers.lock(exclusive: true, nonBlocking: true)
            if !alone { _ = try writers.lock(exclusive: false) }
            key = try LogSigningKey.load(stateDirectory: stateDirectory, logDirectory: directory)
            keyID = LogSigningKey.keyID(key.publicKey)
            // A key swapped behind the log's back (a restored backup, another
            // state directory's key) is refused like a missing one.
            let last = Self.lastCheckpoint(directory + "/checkpoints.jsonl")
            if !newKey, let signer = last.keyID, signer != keyID {
                throw LogKeyError(
                    "the log's last checkpoint (record \(last.seq)) was signed by key \(signer), but the key in "
                        + "\(LogSigningKey.paths(stateDirectory: stateDirectory).privateKey) is \(keyID): the key was replaced "
                        + "without `mcp-supervisor audit rotate-key`. Restore key \(signer), or rotate explicitly: "
                        + "mcp-supervisor audit rotate-key --state-dir \(stateDirectory)")
            }
            let files = try Self.eventFiles(in: directory)
            fileIndex = files.last?.index ?? 1
            file = try Sys.open(Self.eventFilePath(directory, fileIndex), O_RDWR | O_CREAT | O_APPEND, mode: 0o600)
            opened.append(file)
            checkpoints = try Sys.open(directory + "/checkpoints.jsonl", O_RDWR | O_CREAT | O_APPEND, mode: 0o600)
            opened.append(checkpoints)
            fileSize = -1
            seq = 0
            head = Self.genesis
            // Find the chain head now (and recover a torn tail) under the lock.
            try withFileLock { () throws(SecurityLogError) in
                try syncWithFile()
                ledgerAnchorAtOpen = summary.ledger
                if alone { try recoverLocked() }
            }
            if alone { _ = try writers.lock(exclusive: false) }
        } catch {
            for f in opened { f.close() }
            throw error
        }
        // The thread holds the log until `close` ends its loop: a log dropped
        // without `close` (a command refusing to start) must not be freed
        // under a writer that may still wake (its checkpoint timer).
        let t = Thread { [self] in self.writerLoop() }
        t.name = "security-log"
        t.start()
    }

    // MARK: appending

    /// Appends events; returns once they (and every event appended before
    /// them) are on disk: written and fdatasynced. Throws when they could not
    /// be made durable (ENOSPC, EIO on fdatasync, the log closed): then they
    /// are not in the log.
    public func append(_ events: [SecurityEvent]) async throws(SecurityLogError) {
        guard !events.isEmpty else { return }
        let error: SecurityLogError? = await withCheckedContinuation { k in
            enqueue(events, durable: true) { k.resume(returning: $0) }
        }
        if let error { throw error }
    }

    /// Appends events and runs `done` once they are on disk (nil) or could
    /// not be made durable (the error; they are then not in the log). With
    /// no events, `done(nil)` runs at once on the caller's thread.
    ///
    /// `done` usually runs on the log's writer thread, which every append
    /// waits on: it must only hand off (resume a continuation, signal a
    /// semaphore, enqueue work) and never block, wait for a client or do
    /// client I/O, and never call `appendAndWait`.
    public func append(_ events: [SecurityEvent], then done: @escaping @Sendable (SecurityLogError?) -> Void) {
        guard !events.isEmpty else { return done(nil) }
        enqueue(events, durable: true, done)
    }

    /// Appends events like `append(_:then:)` and tells `done` which records
    /// they became (sequence number and SHA-256 of each line, in the order
    /// of `events`) once they are on disk, or nil and the error when they
    /// could not be made durable. The same rules as for `append(_:then:)`
    /// apply to `done`.
    public func append(
        _ events: [SecurityEvent], recorded done: @escaping @Sendable ([LogRecordID]?, SecurityLogError?) -> Void
    ) {
        guard !events.isEmpty else { return done([], nil) }
        enqueue(events, durable: true, recorded: done, nil)
    }

    /// Appends events without waiting: they are written in order (so they
    /// survive the supervisor being killed) and reach the disk with the next
    /// durable append — one data sync per call instead of two. If they
    /// cannot be written they are kept and retried, and no later durable
    /// append succeeds before they are on disk.
    public func appendLater(_ events: [SecurityEvent]) {
        guard !events.isEmpty else { return }
        enqueue(events, durable: false, nil)
    }

    /// Appends events; blocks until they are on disk. Returns why they could
    /// not be made durable, or nil. Never call it from an append's `done`.
    @discardableResult
    public func appendAndWait(_ events: [SecurityEvent]) -> SecurityLogError? {
        guard !events.isEmpty else { return nil }
        let answer = Answer()
        enqueue(events, durable: true) { answer.give($0) }
        return answer.wait()
    }

    /// Whether the log can write now. Callers check it before admitting
    /// work whose record must be durable: while it is a failure, refuse with
    /// its `reason`. It turns back to success by itself once a write
    /// succeeds (the writer retries every `retryMilliseconds`).
    public var writable: Result<Void, SecurityLogError> {
        cond.lock()
        defer { cond.unlock() }
        if closed { return .failure(.closed(directory)) }
        if let f = failure { return .failure(f.error) }
        return .success(())
    }

    /// One append's answer, waited for by the appending thread.
    private final class Answer: @unchecked Sendable {
        // @unchecked: `given` is guarded by `cond` (an NSCondition: the appending thread sleeps on it).
        private let cond = NSCondition()
        private var given: SecurityLogError?? = nil

        func give(_ error: SecurityLogError?) {
            cond.lock()
            given = .some(error)
            cond.signal()
            cond.unlock()
        }

        func wait() -> SecurityLogError? {
            cond.lock()
            defer { cond.unlock() }
            while given == nil { cond.wait() }
            return given!
        }
    }

    private func enqueue(
        _ events: [SecurityEvent], durable: Bool,
        recorded: (@Sendable ([LogRecordID]?, SecurityLogError?) -> Void)? = nil,
        _ done: (@Sendable (SecurityLogError?) -> Void)?
    ) {
        cond.lock()
        if closed {
            cond.unlock()
            done?(.closed(directory))
            recorded?(nil, .closed(directory))
            return
        }
        for (i, e) in events.enumerated() {
            let last = i == events.count - 1
            pending.append(
                Pending(
                    event: e, done: last ? done : nil, durable: durable, recorded: last ? recorded : nil,
                    count: events.count))
        }
        if durable { durablePending = true }
        cond.signal()
        cond.unlock()
    }

    /// Writes a final event and a checkpoint, then stops the writer.
    public func close(finalEvent: SecurityEvent? = nil) {
        if let finalEvent { appendAndWait([finalEvent]) }
        cond.lock()
        if finished {
            cond.unlock()
            return
        }
        finished = true
        closed = true
        cond.broadcast()
        while !writerDone { cond.wait() }
        cond.unlock()
        do {
            try withFileLock { () throws(SecurityLogError) in
                try syncWithFile()
                try writeCheckpoint()
            }
        } catch {
            Diagnostics.line(
                "mcp-supervisor: the security log's final checkpoint could not be written (\(error)); "
                    + "the next start checkpoints the tail and records it as log.unsigned_tail")
        }
        file.close()
        for f in retired { f.close() }
        checkpoints.close()
        writers.close()
    }

    // MARK: the writer thread

    private func writerLoop() {
        cond.lock()
        while true {
            var idle = false
            while !closed {
                if failure != nil {
                    let now = monotonicNanoseconds()
                    if durablePending || now >= retryAt { break }
                    // A deadline, not polling: the retry of a failed log (or a durable append) wakes it.
                    _ = cond.wait(until: Date(timeIntervalSinceNow: Double(retryAt - now) / 1e9))
                } else if !pending.isEmpty {
                    break
                } else if synced.seq > lastCheckpointSeq || seq > synced.seq {
                    // Quiet after writes: checkpoint them, so that a live
                    // log verifies and a crash leaves little uncovered.
                    if !cond.wait(until: lastWrite.addingTimeInterval(checkpointIdle)) && pending.isEmpty
                        && failure == nil
                    {
                        idle = true
                        break
                    }
                } else {
                    cond.wait()
                }
            }
            let batch = pending
            pending.removeAll(keepingCapacity: true)
            durablePending = false
            let recovering = failure
            let stopping = closed
            cond.unlock()

            if batch.isEmpty && recovering == nil {
                if stopping { return finishWriter(lost: 0) }
                if idle, let e = idleCheckpoint() {
                    let retained = rolledBack
                    rolledBack = []
                    enterFailure(e, retained: retained)
                }
                cond.lock()
                continue
            }
            var events = batch.map(\.event)
            if let r = recovering { events.insert(recoveredEvent(r), at: 0) }
            let sync = recovering != nil || batch.contains { $0.durable }
            var failed: SecurityLogError? = nil
            var housekeeping: SecurityLogError? = nil
            do throws(SecurityLogError) {
                housekeeping = try withFileLock { () throws(SecurityLogError) -> SecurityLogError? in
                    try syncWithFile()
                    var h = try writeLocked(events, sync: sync)
                    if recovering != nil, h == nil {
                        // Cover the records of the failure period at once.
                        do throws(SecurityLogError) { try writeCheckpoint() } catch { h = error }
                    }
                    return h
                }
            } catch {
                failed = error
            }
            if let error = failed {
                let retained = rolledBack + batch.filter { !$0.durable }.map(\.event)
                rolledBack = []
                enterFailure(error, retained: retained, refused: batch.filter(\.durable).map(\.event))
                for p in batch where p.durable {
                    p.done?(error)
                    p.recorded?(nil, error)
                }
            } else {
                lastWrite = Date()
                if recovering != nil {
                    cond.lock()
                    failure = nil
                    cond.unlock()
                    Diagnostics.line(
                        "mcp-supervisor: the security log is writable again (after \(recovering!.attempts) "
                            + "failed attempt(s) since \(recovering!.since)); tool calls are accepted again")
                }
                if let h = housekeeping { enterFailure(h, retained: []) }
                // `chained` holds the records of `events` in order (the
                // log.recovered record first when recovering).
                let offset = recovering != nil ? 1 : 0
                for (i, p) in batch.enumerated() {
                    if let r = p.recorded {
                        let end = offset + i + 1
                        r(end - p.count >= 0 && end <= chained.count ? Array(chained[(end - p.count)..<end]) : nil, nil)
                    }
                    p.done?(nil)
                }
            }
            cond.lock()
            if stopping && (failed != nil || pending.isEmpty) {
                let lost = pending.count
                pending.removeAll()
                cond.unlock()
                return finishWriter(lost: lost)
            }
        }
    }

    private func finishWriter(lost: Int) {
        cond.lock()
        let error = failure?.error.description ?? "unknown error"
        cond.unlock()
        if lost > 0 {
            Diagnostics.line(
                "mcp-supervisor: SECURITY LOG: \(lost) record(s) could not be written before the log closed "
                    + "and are lost: \(error)")
        }
        cond.lock()
        writerDone = true
        cond.broadcast()
        cond.unlock()
    }

    /// Records a failure: says so once on stderr, puts `retained` back at
    /// the head of the queue for the retry, counts what was refused.
    private func enterFailure(_ error: SecurityLogError, retained: [SecurityEvent], refused: [SecurityEvent] = []) {
        cond.lock()
        let first = failure == nil
        if first {
            failure = Failure(error: error, since: Self.timestamp())
        } else {
            failure!.error = error
            failure!.attempts += 1
        }
        for e in refused {
            failure!.refusedTypes[e.type.rawValue, default: 0] += 1
            if let id = e.fields["callId"]?.stringValue, failure!.refusedCallIDs.count < 100 {
                failure!.refusedCallIDs.append(id)
            }
        }
        pending.insert(contentsOf: retained.map { Pending(event: $0, done: nil, durable: false) }, at: 0)
        if pending.count > Self.maxRetained {
            // Drop the oldest events kept for a retry (never a durable
            // append: its caller waits for an answer).
            var excess = pending.count - Self.maxRetained
            pending.removeAll { p in
                guard excess > 0, !p.durable else { return false }
                excess -= 1
                failure!.dropped += 1
                return true
            }
        }
        retryAt = monotonicNanoseconds() + retryNanoseconds
        cond.unlock()
        if first {
            Diagnostics.line(
                "mcp-supervisor: SECURITY LOG FAILED: \(error). New tool calls are refused until it can be "
                    + "written again; retrying every \(retryNanoseconds / 1_000_000) ms")
        }
    }

    /// The first record after a failure: what could not be written.
    private func recoveredEvent(_ f: Failure) -> SecurityEvent {
        SecurityEvent(
            .logRecovered,
            JSONObject([
                ("error", .string(f.error.description)), ("since", .string(f.since)),
                ("failedAttempts", .int(Int64(f.attempts))),
                (
                    "refusedEvents",
                    .object(
                        JSONObject(f.refusedTypes.sorted { $0.key < $1.key }.map { ($0.key, .int(Int64($0.value))) }))
                ),
                ("refusedCallIds", .array(f.refusedCallIDs.map { .string($0) })),
                ("droppedEvents", .int(Int64(f.dropped))),
            ]))
    }

    private func idleCheckpoint() -> SecurityLogError? {
        do throws(SecurityLogError) {
            try withFileLock { () throws(SecurityLogError) in
                try syncWithFile()
                if seq > synced.seq { try dataSyncLocked() }
                try writeCheckpoint()
            }
            return nil
        } catch {
            return error
        }
    }

    // MARK: writing

    /// Gives the event the next sequence number and chains it to the head.
    private func chain(_ e: SecurityEvent) -> [UInt8] {
        seq += 1
        var o = JSONObject([
            ("seq", .int(Int64(seq))), ("time", .string(Self.timestamp())),
            ("type", .string(e.type.rawValue)), ("prev", .string(head)),
        ])
        for (k, v) in e.fields where !o.contains(k) { o[k] = v }
        let line = JSONValue.object(o).serializedBytes()
        head = sha256Hex(line)
        chained.append(LogRecordID(seq: seq, sha256: head))
        if recordObserver != nil {
            undelivered.append(DurableRecord(seq: seq, type: e.type.rawValue, line: line, writtenUnixNanoseconds: 0))
        }
        return line + [0x0A]
    }

    private var currentPath: String { Self.eventFilePath(directory, fileIndex) }

    private func fault(_ op: LogOperation) -> LogFault? { faultInjector?(op) }

    private func rawWrite(_ bytes: [UInt8]) throws(SecurityLogError) {
        if let f = fault(.write) {
            _ = file.writePrefix(bytes, count: f.partialBytes)
            throw SecurityLogError("write", path: currentPath, errno: f.errno)
        }
        do { try file.writeAll(bytes) } catch { throw SecurityLogError("write", path: currentPath, errno: error.errno) }
    }

    private func rawDataSync() throws(SecurityLogError) {
        if let f = fault(.dataSync) { throw SecurityLogError("fdatasync", path: currentPath, errno: f.errno) }
        let started = monotonicNanoseconds()
        do { try file.dataSync() } catch { throw SecurityLogError("fdatasync", path: currentPath, errno: error.errno) }
        syncObserver?(monotonicNanoseconds() - started)
        if !undelivered.isEmpty {
            recordObserver?(DurableRecord.synced(undelivered))
            undelivered.removeAll(keepingCapacity: true)
        }
    }

    /// Cuts the file back to `size` and the chain back to (seq, head).
    private func rollBack(to point: (size: Int, seq: UInt64, head: String)) {
        if point.seq == synced.seq { summary = syncedSummary }
        undelivered.removeAll { $0.seq > point.seq }
        seq = point.seq
        head = point.head
        do {
            try file.truncate(to: point.size)
            fileSize = point.size
        } catch {
            // Unknown length: the next write re-reads the file first.
            fileSize = -1
        }
    }

    /// Syncs what was written without a sync; on failure everything since
    /// the last sync is cut back out and kept for a retry.
    private func dataSyncLocked() throws(SecurityLogError) {
        do {
            try rawDataSync()
        } catch {
            rolledBack += unsynced
            unsynced = []
            rollBack(to: synced)
            throw error
        }
        synced = (fileSize, seq, head)
        syncedSummary = summary
        unsynced = []
    }

    /// Sequences, chains and writes `events` (holding the file lock), and
    /// fdatasyncs when `sync`. Throws when they are not in the log: the
    /// file and the chain are then as before (or as at the last sync, when
    /// the sync failed). Returns a checkpoint or rotation failure after the
    /// events are durable.
    private func writeLocked(_ events: [SecurityEvent], sync: Bool = true) throws(SecurityLogError) -> SecurityLogError?
    {
        let before = (size: fileSize, seq: seq, head: head)
        var out: [UInt8] = []
        chained.removeAll(keepingCapacity: true)
        for e in events { out.append(contentsOf: chain(e)) }
        do {
            try rawWrite(out)
        } catch {
            rollBack(to: before)
            throw error
        }
        fileSize += out.count
        sinceCheckpoint += events.count
        for (i, e) in events.enumerated() {
            summary.apply(type: e.type.rawValue, seq: Int64(before.seq) + Int64(i) + 1, fields: e.fields)
        }
        guard sync else {
            unsynced += events
            return nil
        }
        // On failure this batch is cut out too (it follows the last sync);
        // the caller keeps its non-durable events for the retry.
        try dataSyncLocked()
        do throws(SecurityLogError) {
            if sinceCheckpoint >= checkpointEvery { try writeCheckpoint() }
            if fileSize >= rotateBytes { try rotate() }
        } catch {
            return error
        }
        return nil
    }

    /// flock(2) on the current event file; re-taken if that file changes.
    private func withFileLock<T>(_ body: () throws(SecurityLogError) -> T) throws(SecurityLogError) -> T {
        while true {
            do { _ = try file.lock(exclusive: true) } catch {
                throw SecurityLogError("flock", path: currentPath, errno: error.errno)
            }
            let locked = file
            // Another writer may have rotated between our open and our lock:
            // then the next file exists (one stat, not a directory listing).
            var newest = fileIndex
            while (try? Sys.stat(Self.eventFilePath(directory, newest + 1))) != nil { newest += 1 }
            if newest != fileIndex {
                _ = flock(locked.rawValue, LOCK_UN)
                file.close()
                fileIndex = newest
                do { file = try Sys.open(currentPath, O_RDWR | O_CREAT | O_APPEND, mode: 0o600) } catch {
                    throw SecurityLogError("open", path: currentPath, errno: error.errno)
                }
                fileSize = -1
                continue
            }
            defer {
                _ = flock(locked.rawValue, LOCK_UN)
                for f in retired { f.close() }
                retired.removeAll()
            }
            return try body()
        }
    }

    /// Brings (seq, head) up to date with what is on disk if another writer
    /// appended, and cuts a torn last line (a writer killed mid-write) into a
    /// log.torn_tail event so the chain continues.
    private func syncWithFile() throws(SecurityLogError) {
        let path = currentPath
        let size: Int
        do { size = Int(try file.stat().size) } catch { throw SecurityLogError("read", path: path, errno: error.errno) }
        if size == fileSize { return }
        let known = fileSize
        var bytes: [UInt8]
        do { bytes = try readFile(path, limit: 1 << 30) } catch {
            throw SecurityLogError("read", path: path, errno: error.errno)
        }
        var torn: [UInt8] = []
        if let lastNewline = bytes.lastIndex(of: 0x0A) {
            torn = Array(bytes[(lastNewline + 1)...])
            bytes = Array(bytes[...lastNewline])
        } else {
            torn = bytes
            bytes = []
        }
        if !torn.isEmpty {
            do { try file.truncate(to: bytes.count) } catch {
                throw SecurityLogError("ftruncate", path: path, errno: error.errno)
            }
        }
        fileSize = bytes.count
        var lastLine: ArraySlice<UInt8>? = nil
        if !bytes.isEmpty {
            lastLine = Self.lastLine(bytes[...])
        } else if fileIndex > 1, let prev = try? readFile(Self.eventFilePath(directory, fileIndex - 1), limit: 1 << 30)
        {
            lastLine = Self.lastLine(prev[...])
        } else {
            seq = 0
            head = Self.genesis
        }
        if let line = lastLine, !line.isEmpty {
            guard case .object(let o)? = try? JSONParser.parse(Array(line)), let s = o["seq"]?.intValue else {
                throw SecurityLogError(
                    "read", path: path, errno: EINVAL,
                    detail: "the last record is not valid; run `mcp-supervisor audit verify`")
            }
            seq = UInt64(s)
            head = sha256Hex(line)
        }
        if known >= 0 && bytes.count >= known {
            // Only the records another writer appended are new.
            for line in bytes[known...].split(separator: 0x0A) { summary.apply(line: line) }
        } else {
            summary = loadSummary(bytes)
        }
        // Whatever another writer appended was synced by it (every writer
        // syncs its batches), and so was everything before it.
        synced = (fileSize, seq, head)
        syncedSummary = summary
        unsynced = []
        if !torn.isEmpty {
            let sample = torn.prefix(65536)
            var f = JSONObject([
                ("file", .string(path)), ("bytes", .int(Int64(torn.count))),
                ("sha256", .string(sha256Hex(torn))),
                ("dataBase64", .string(Data(sample).base64EncodedString())),
            ])
            if sample.count < torn.count { f["dataTruncated"] = true }
            _ = try writeLocked([SecurityEvent(.logTornTail, f)])
        }
    }

    static func lastLine(_ bytes: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        let body = bytes.last == 0x0A ? bytes.dropLast() : bytes
        return body[(body.lastIndex(of: 0x0A).map { $0 + 1 } ?? body.startIndex)...]
    }

    /// A log.rotate record closes the old file; the chain continues in the
    /// next. The record lists the calls still open (started, not ended), so
    /// that finding interrupted calls never reads more than one file.
    private func rotate() throws(SecurityLogError) {
        let next = fileIndex + 1
        let nextPath = Self.eventFilePath(directory, next)
        let newFile: FileDescriptor
        do { newFile = try Sys.open(nextPath, O_RDWR | O_CREAT | O_APPEND, mode: 0o600) } catch {
            throw SecurityLogError("open", path: nextPath, errno: error.errno)
        }
        let before = (size: fileSize, seq: seq, head: head)
        do {
            var f = JSONObject([("next", .string(baseName(of: nextPath)))])
            for (k, v) in summary.json { f[k] = v }
            let line = chain(SecurityEvent(.logRotate, f))
            try rawWrite(line)
            fileSize += line.count
            try rawDataSync()
        } catch {
            rollBack(to: before)
            newFile.close()
            try? Sys.unlink(nextPath)
            throw error
        }
        // The caller unlocks the old descriptor it locked; it is closed then.
        retired.append(file)
        file = newFile
        fileIndex = next
        fileSize = 0
        synced = (0, seq, head)
        syncedSummary = summary
        unsynced = []
        try writeCheckpoint()
    }

    /// Signs the last synced (seq, head) and appends it to checkpoints.jsonl.
    private func writeCheckpoint() throws(SecurityLogError) {
        let (_, cpSeq, cpHead) = synced
        guard cpSeq > 0 else { return }
        let path = directory + "/checkpoints.jsonl"
        let sig: Data
        do { sig = try key.signature(for: Array((Self.checkpointDomain + "\(cpSeq)\n\(cpHead)\n").utf8)) } catch {
            throw SecurityLogError("checkpoint", path: path, errno: EINVAL, detail: "signing failed: \(error)")
        }
        var o = JSONObject([
            ("seq", .int(Int64(cpSeq))), ("head", .string(cpHead)), ("time", .string(Self.timestamp())),
            ("keyId", .string(keyID)), ("signature", .string(sig.base64EncodedString())),
        ])
        // Not signed: what the next start needs, so that it reads only the
        // records after this checkpoint (`LogSummary`).
        for (k, v) in syncedSummary.json { o[k] = v }
        let line = JSONValue.object(o).serializedBytes() + [0x0A]
        let size = (try? checkpoints.stat().size).map(Int.init) ?? -1
        do throws(SystemError) {
            if let f = fault(.checkpoint) {
                _ = checkpoints.writePrefix(line, count: f.partialBytes)
                throw SystemError("write", errno: f.errno)
            }
            try checkpoints.writeAll(line)
            try checkpoints.sync()
        } catch {
            // Never leave a partial checkpoint line behind.
            if size >= 0 { try? checkpoints.truncate(to: size) }
            throw SecurityLogError("write", path: path, errno: error.errno)
        }
        sinceCheckpoint = 0
        lastCheckpointSeq = cpSeq
    }

    // MARK: recovery after a writer died

    /// Run under the file lock by the only process that has the log open:
    /// records the calls left without an end, and checkpoints records that
    /// no checkpoint covers (a writer killed before its next checkpoint).
    private func recoverLocked() throws(SecurityLogError) {
        let lastCovered = UInt64(max(0, Self.lastCheckpoint(directory + "/checkpoints.jsonl").seq))
        lastCheckpointSeq = lastCovered
        var events: [SecurityEvent] = []
        if seq > lastCovered {
            events.append(
                SecurityEvent(
                    .logUnsignedTail,
                    JSONObject([
                        ("fromSeq", .int(Int64(lastCovered + 1))), ("toSeq", .int(Int64(seq))),
                        ("lastCheckpointSeq", .int(Int64(lastCovered))),
                    ])))
        }
        for c in summary.openCalls {
            var f = c.fields
            f["callId"] = .string(c.callID)
            f["startSeq"] = .int(c.startSeq)
            f["reason"] = "no call.end was recorded: the supervisor stopped (or could not write it) while the call ran"
            events.append(SecurityEvent(.callInterrupted, f))
        }
        guard !events.isEmpty else { return }
        if let e = try writeLocked(events) { throw e }
        try writeCheckpoint()
    }

    /// The summary at the end of `bytes` (the current file, read whole):
    /// the newest checkpoint's, plus the records after it — normally the
    /// last few. Without one (a log written before checkpoints carried it),
    /// the previous file's log.rotate record (or that whole file) plus this
    /// whole file: never more than two files.
    private func loadSummary(_ bytes: [UInt8]) -> LogSummary {
        let lines = bytes.split(separator: 0x0A)
        let cp = Self.lastCheckpoint(directory + "/checkpoints.jsonl")
        if var s = cp.summary {
            // The saved anchor is not signed: when its record is in this
            // file, it must be that record, or the file is searched instead.
            if let l = s.ledger, let first = lines.first.flatMap(Self.seqPrefix), l.seq >= first {
                var i = lines.endIndex
                while i > lines.startIndex, let n = Self.seqPrefix(lines[i - 1]), n > l.seq { i -= 1 }
                var real = LogSummary()
                if i > lines.startIndex { real.apply(line: lines[i - 1]) }
                if real.ledger != l {
                    Diagnostics.line(
                        "mcp-supervisor: the ledger anchor saved with the last checkpoint does not match "
                            + "record \(l.seq) of the security log; the log is searched for the anchor instead")
                    s.ledger = nil
                    for line in lines.reversed() {
                        var one = LogSummary()
                        one.apply(line: line)
                        if let found = one.ledger {
                            s.ledger = found
                            break
                        }
                    }
                }
            }
            // Records after the checkpoint, found from the end.
            var start = lines.endIndex
            while start > lines.startIndex, let n = Self.seqPrefix(lines[start - 1]), n > cp.seq { start -= 1 }
            for line in lines[start...] { s.apply(line: line) }
            return s
        }
        let prev: [UInt8]? =
            fileIndex > 1 ? try? readFile(Self.eventFilePath(directory, fileIndex - 1), limit: 1 << 30) : nil
        var s = LogSummary()
        if let prev, case .object(let o)? = try? JSONParser.parse(Array(Self.lastLine(prev[...]))),
            o["type"]?.stringValue == SecurityEventType.logRotate.rawValue, let seed = LogSummary(json: o)
        {
            s = seed
        } else if let prev {
            for line in prev.split(separator: 0x0A) { s.apply(line: line) }
        }
        for line in lines { s.apply(line: line) }
        return s
    }

    /// The number in a record's leading `{"seq":N,` without parsing the rest.
    static func seqPrefix(_ line: ArraySlice<UInt8>) -> Int64? {
        let prefix = Array(#"{"seq":"#.utf8)
        guard line.count > prefix.count, line.prefix(prefix.count).elementsEqual(prefix) else { return nil }
        var n: Int64 = 0
        var any = false
        for b in line.dropFirst(prefix.count) {
            guard b >= 0x30 && b <= 0x39 else { break }
            n = n &* 10 &+ Int64(b - 0x30)
            any = true
        }
        return any ? n : nil
    }

    /// The checkpoint with the highest seq among the last lines of the file
    /// (0 and nil when there is none), with the summary it carries.
    static func lastCheckpoint(_ path: String) -> (seq: Int64, summary: LogSummary?, keyID: String?) {
        guard let fd = try? Sys.open(path, O_RDONLY) else { return (0, nil, nil) }
        defer { fd.close() }
        guard let size = try? fd.stat().size, size > 0 else { return (0, nil, nil) }
        // A checkpoint line with many open calls can be long: read more of
        // the tail until it holds a complete line.
        var tail = 65536
        while true {
            let start = max(0, Int(size) - tail)
            var buf = [UInt8](repeating: 0, count: Int(size) - start)
            guard let n = try? fd.pread(&buf, offset: start) else { return (0, nil, nil) }
            var lines = buf[..<n].split(separator: 0x0A)[...]
            if start > 0 { lines = lines.dropFirst() }  // may be cut
            var best: (seq: Int64, summary: LogSummary?, keyID: String?) = (0, nil, nil)
            for line in lines {
                if case .object(let o)? = try? JSONParser.parse(Array(line)), let s = o["seq"]?.intValue, s >= best.seq
                {
                    best = (s, LogSummary(json: o), o["keyId"]?.stringValue)
                }
            }
            if best.seq > 0 || start == 0 || tail >= 16 << 20 { return best }
            tail *= 4
        }
    }

    /// A call.start without its call.end (or call.interrupted).
    struct OpenCall: Equatable, Sendable {
        let callID: String
        let startSeq: Int64
        /// principal, tool, cell, cellVersion of the call.start.
        let fields: JSONObject

        static let kept = ["principal", "tool", "cell", "cellVersion"]

        init(callID: String, startSeq: Int64, fields: JSONObject) {
            self.callID = callID
            self.startSeq = startSeq
            self.fields = fields
        }

        init?(json: JSONValue) {
            guard case .object(let o) = json, let id = o["callId"]?.stringValue, let s = o["startSeq"]?.intValue else {
                return nil
            }
            var f = JSONObject()
            for k in Self.kept { if let v = o[k] { f[k] = v } }
            self.init(callID: id, startSeq: s, fields: f)
        }

        var json: JSONValue {
            var o = JSONObject([("callId", .string(callID)), ("startSeq", .int(startSeq))])
            for (k, v) in fields { o[k] = v }
            return .object(o)
        }

        static func == (a: OpenCall, b: OpenCall) -> Bool { a.callID == b.callID && a.startSeq == b.startSeq }
    }

    static func contains(_ hay: ArraySlice<UInt8>, _ needle: [UInt8]) -> Bool {
        guard let first = needle.first, hay.count >= needle.count else { return false }
        var i = hay.startIndex
        let last = hay.endIndex - needle.count
        while i <= last {
            if hay[i] == first && hay[i..<(i + needle.count)].elementsEqual(needle) { return true }
            i += 1
        }
        return false
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
    public static func eventFiles(in dir: String) throws(SystemError) -> [EventFile] {
        let names = try Sys.readdirNames(dir)
        return names.compactMap { n -> EventFile? in
            guard n.hasPrefix("events-"), n.hasSuffix(".jsonl"),
                let i = Int(n.dropFirst(7).dropLast(6))
            else { return nil }
            return EventFile(index: i, path: dir + "/" + n)
        }.sorted { $0.index < $1.index }
    }

    static func makeDirectory(_ path: String) throws {
        try Sys.makeDirectories(path, mode: 0o700)
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

/// What the test seam can make fail.
/// Where an event landed in the security log: its sequence number and the
/// SHA-256 of its line (the next record's `prev`), which `audit verify`
/// chains and checkpoints sign.
public struct LogRecordID: Sendable, Equatable {
    public let seq: UInt64
    public let sha256: String
}

enum LogOperation: Sendable {
    case write, dataSync, checkpoint
}

/// An injected failure: the errno, and for a write how many bytes land
/// before it fails (a write cut short by a full disk).
struct LogFault: Sendable {
    var errno: Int32
    var partialBytes = 0
}
