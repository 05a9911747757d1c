import Foundation
import SupervisorCore

/// Runs calls on a fixed set of long-lived threads (each keeps its child
/// stack for clone; PDEATHSIG is tied to the spawning thread, which lives as
/// long as the supervisor). At most `threads` calls run at once; up to
/// `queueLimit` more wait; beyond that submit refuses.
public final class CallPool: @unchecked Sendable {
    public let threads: Int
    public let queueLimit: Int
    private let cond = NSCondition()
    private var queue: [() -> Void] = []
    private var idle = 0
    private var started = 0
    private var running = 0

    public init(threads: Int, queueLimit: Int) {
        self.threads = max(1, threads)
        self.queueLimit = max(0, queueLimit)
    }

    /// Current load, for refusal messages.
    public var load: (running: Int, queued: Int) {
        cond.lock()
        defer { cond.unlock() }
        return (running, queue.count)
    }

    /// Enqueues `job`; false when the queue is full.
    public func submit(_ job: @escaping () -> Void) -> Bool {
        cond.lock()
        defer { cond.unlock() }
        let waiting = queue.count - idle
        if running >= threads && waiting >= queueLimit { return false }
        queue.append(job)
        if idle > 0 {
            cond.signal()
        } else if started < threads {
            started += 1
            let t = Thread { [weak self] in self?.loop() }
            t.name = "mcp-call-\(started)"
            t.stackSize = 1 << 20
            t.start()
        }
        return true
    }

    private func loop() {
        while true {
            cond.lock()
            while queue.isEmpty {
                idle += 1
                cond.wait()
                idle -= 1
            }
            let job = queue.removeFirst()
            running += 1
            cond.unlock()
            job()
            cond.lock()
            running -= 1
            cond.unlock()
        }
    }
}
