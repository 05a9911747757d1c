import Foundation

/// The spawn world's threads: a fixed set of long-lived threads that run
/// calls (each keeps its clone stack; PDEATHSIG is tied to the thread that
/// spawned a worker, so these threads live as long as the supervisor).
///
/// At most `threads` calls run at once and at most `queueLimit` more wait;
/// `submit` refuses beyond that. A job is handed straight to an idle thread
/// (each thread sleeps on its own predicate, so one wake-up is one job and a
/// spurious wake-up is harmless); a thread that finishes a job takes the next
/// queued one before going idle.
public final class CallPool: @unchecked Sendable {
    // @unchecked: every mutable field below is guarded by `cond`.
    public let threads: Int
    public let queueLimit: Int
    private let cond = NSCondition()
    private var queue: [() -> Void] = []
    private var idle: [Slot] = []
    private var started = 0
    private var running = 0

    /// One pool thread's mailbox.
    private final class Slot: @unchecked Sendable {
        // @unchecked: `job` is guarded by the pool's `cond`.
        var job: (() -> Void)?
    }

    public init(threads: Int, queueLimit: Int) {
        self.threads = max(1, threads)
        self.queueLimit = max(0, queueLimit)
    }

    /// Calls running and calls waiting for a thread.
    public var load: (running: Int, queued: Int) {
        cond.lock()
        defer { cond.unlock() }
        return (running, queue.count)
    }

    /// Runs `job` on a pool thread, now or after the calls ahead of it;
    /// false (and `job` is dropped) when every thread is busy and the queue
    /// is full.
    public func submit(_ job: @escaping () -> Void) -> Bool {
        cond.lock()
        defer { cond.unlock() }
        if let slot = idle.popLast() {
            running += 1
            slot.job = job
            cond.broadcast()
            return true
        }
        if started < threads {
            started += 1
            running += 1
            let slot = Slot()
            slot.job = job
            let t = Thread { [self] in loop(slot) }
            t.name = "mcp-call-\(started)"
            t.stackSize = 1 << 20
            t.start()
            return true
        }
        guard queue.count < queueLimit else { return false }
        queue.append(job)
        return true
    }

    private func loop(_ slot: Slot) {
        while true {
            cond.lock()
            while slot.job == nil { cond.wait() }
            let job = slot.job!
            slot.job = nil
            cond.unlock()
            job()
            cond.lock()
            if queue.isEmpty {
                running -= 1
                idle.append(slot)
            } else {
                // Stays running: the next queued job is this thread's.
                slot.job = queue.removeFirst()
            }
            cond.unlock()
        }
    }
}
