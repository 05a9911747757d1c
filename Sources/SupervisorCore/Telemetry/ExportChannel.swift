import Foundation
import SupervisorPlatform

/// A bounded queue in front of one telemetry sink, drained by a thread of
/// its own in batches. What calls and the security log's writer do is
/// `offer`: a lock, a count and an append, never a wait on the sink. When
/// the queue is full the item is dropped and counted; a batch the sink
/// refuses is tried again twice (after 250 ms and 1 s) and then dropped
/// and counted. Drops are said on stderr (at most every 10 s, and once more
/// at `stop`) and counted in the metrics, if any (docs/operations.md,
/// "Traces and security events").
final class ExportChannel<Item: Sendable>: @unchecked Sendable {
    // @unchecked: `queue`, `stopping`, `done`, `dropped`, `unreported`, `lastReport` and `lastError` are guarded by
    // `cond`; the other fields are set in init only.
    let name: String
    let capacity: Int
    let batchSize: Int
    let interval: TimeInterval
    /// Sends one batch; returns nil when the sink took it, else why not.
    let send: @Sendable ([Item]) -> String?
    let counted: @Sendable (_ sent: Int, _ dropped: Int) -> Void
    static var retryDelays: [TimeInterval] { [0.25, 1] }

    private let cond = NSCondition()
    private var queue: [Item] = []
    private var stopping = false
    private var done = false
    private var started = false
    private var dropped = 0
    private var unreported = 0
    private var lastReport = Date.distantPast
    private var lastError = ""
    /// The batch the thread is sending; counted as dropped by a `stop` that
    /// gives up waiting for it (the thread then counts it no more).
    private var inFlight = 0
    private var abandoned = false

    init(
        name: String, capacity: Int = 4096, batchSize: Int = 256, interval: TimeInterval = 1,
        send: @escaping @Sendable ([Item]) -> String?,
        counted: @escaping @Sendable (_ sent: Int, _ dropped: Int) -> Void = { _, _ in }
    ) {
        self.name = name
        self.capacity = capacity
        self.batchSize = batchSize
        self.interval = interval
        self.send = send
        self.counted = counted
    }

    func start() {
        cond.lock()
        started = true
        cond.unlock()
        let t = Thread { [self] in loop() }
        t.name = "export-" + name
        t.start()
    }

    /// Queues an item, or drops it (counted) when the queue is full.
    func offer(_ item: Item) { offer([item]) }

    func offer(_ items: [Item]) {
        cond.lock()
        let room = stopping ? 0 : max(0, capacity - queue.count)
        let taken = min(room, items.count)
        queue.append(contentsOf: items.prefix(taken))
        if taken < items.count {
            noteDropLocked(items.count - taken, why: stopping ? "offered after stop" : "queue full (\(capacity) items)")
        }
        if queue.count >= batchSize { cond.signal() }
        cond.unlock()
        if taken < items.count { counted(0, items.count - taken) }
    }

    /// Items dropped so far.
    var droppedCount: Int {
        cond.lock()
        defer { cond.unlock() }
        return dropped
    }

    /// Sends what is queued (one attempt per batch) within `seconds`, then
    /// stops the thread; what is left is dropped and counted. False when
    /// the thread is still inside `send` (it returns from it later and
    /// sends no more): whatever `send` uses must then stay open.
    @discardableResult
    func stop(seconds: TimeInterval = 2) -> Bool {
        cond.lock()
        stopping = true
        cond.broadcast()
        let deadline = Date(timeIntervalSinceNow: seconds)
        while started && !done && cond.wait(until: deadline) {}
        let left = queue.count + (done ? 0 : inFlight)
        abandoned = !done
        queue.removeAll()
        if left > 0 { noteDropLocked(left, why: "not sent before exit") }
        let total = dropped
        let error = lastError
        let finished = done || !started
        cond.unlock()
        if left > 0 { counted(0, left) }
        if total > 0 {
            Diagnostics.line(
                "mcp-supervisor: export to \(name): \(total) item(s) dropped in all"
                    + (error.isEmpty ? "" : " (last error: \(error))"))
        }
        return finished
    }

    private func noteDropLocked(_ n: Int, why: String) {
        dropped += n
        unreported += n
        lastError = why
        let now = Date()
        if now.timeIntervalSince(lastReport) >= 10 {
            Diagnostics.line(
                "mcp-supervisor: export to \(name): \(unreported) item(s) dropped (\(why)); \(dropped) in all; "
                    + "calls are not affected")
            unreported = 0
            lastReport = now
        }
    }

    private func loop() {
        cond.lock()
        while true {
            let deadline = Date(timeIntervalSinceNow: interval)
            while !stopping && queue.count < batchSize && cond.wait(until: deadline) {}
            if queue.isEmpty {
                if stopping { break }
                continue
            }
            let batch = Array(queue.prefix(batchSize))
            queue.removeFirst(batch.count)
            inFlight = batch.count
            let finalFlush = stopping
            cond.unlock()
            var error = send(batch)
            if !finalFlush {
                for delay in Self.retryDelays where error != nil {
                    cond.lock()
                    let until = Date(timeIntervalSinceNow: delay)
                    while !stopping && cond.wait(until: until) {}
                    cond.unlock()
                    error = send(batch)
                }
            }
            cond.lock()
            inFlight = 0
            if abandoned {
                break
            } else if let error {
                noteDropLocked(batch.count, why: error)
                cond.unlock()
                counted(0, batch.count)
            } else {
                cond.unlock()
                counted(batch.count, 0)
            }
            cond.lock()
        }
        done = true
        cond.broadcast()
        cond.unlock()
    }
}
