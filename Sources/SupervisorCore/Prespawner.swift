import Foundation
import SupervisorPlatform

/// A worker that has exec'd and waits for its input (blocked reading its
/// request); it serves exactly one call.
final class StartedWorker: @unchecked Sendable {
    // @unchecked: immutable; the worker and its descriptors belong to one thread at a time (the prespawner's,
    // then, handed over under the prespawner's lock, the call's that takes it).
    let cell: PreparedCell
    let limits: CellManifest.Limits
    let worker: WorkerProcess
    let scratch: String
    let requestWrite: FileDescriptor
    let responseRead: FileDescriptor
    let diagRead: FileDescriptor
    let listener: SeccompListener?
    let broker: FileDescriptor?
    /// Everything else to close when the call ends.
    let toClose: [FileDescriptor]
    let spawnNanoseconds: UInt64
    /// The generations of the cell's verified files when it was spawned.
    let generations: [Int]
    let bornAt = monotonicNanoseconds()

    init(
        cell: PreparedCell, limits: CellManifest.Limits, worker: WorkerProcess, scratch: String,
        requestWrite: FileDescriptor,
        responseRead: FileDescriptor, diagRead: FileDescriptor, listener: SeccompListener?, broker: FileDescriptor?,
        toClose: [FileDescriptor], spawnNanoseconds: UInt64, generations: [Int]
    ) {
        self.cell = cell
        self.limits = limits
        self.worker = worker
        self.scratch = scratch
        self.requestWrite = requestWrite
        self.responseRead = responseRead
        self.diagRead = diagRead
        self.listener = listener
        self.broker = broker
        self.toClose = toClose
        self.spawnNanoseconds = spawnNanoseconds
        self.generations = generations
    }

    /// Whether the worker still runs (it may have died waiting).
    var isAlive: Bool {
        var p = PollSet()
        p.add(worker.pidfd)
        return ((try? p.wait(timeoutMilliseconds: 0)) ?? 1) == 0
    }
}

/// Starts the next single-use worker of a recently called cell ahead of its
/// call, on one long-lived thread (the workers' parent-death signal is tied
/// to the spawning thread). A call takes a ready worker only if it is still
/// alive, was started for the same cell version with the same limits, and
/// the cell's files have not changed since (one stat each, as for a fresh
/// spawn); otherwise the call spawns its own. Nothing about the worker
/// differs from a fresh one: same setup, same filter, one call, then gone.
public final class Prespawner: @unchecked Sendable {
    // @unchecked: every mutable field below is guarded by `lock` (an NSCondition: the thread sleeps on it);
    // `runner` and `thread` are set in init only.
    private weak var runner: CallRunner?
    let perCell: Int
    let idleNanoseconds: UInt64
    private let lock = NSCondition()
    private var ready: [ObjectIdentifier: [StartedWorker]] = [:]
    private var wanted: [PreparedCell] = []
    /// Workers being started now, per cell (counted by `refill`, so that a
    /// call ending during a spawn does not ask for one more).
    private var starting: [ObjectIdentifier: Int] = [:]
    /// Bumped by `discardAll`: a spawn in flight from before is discarded.
    private var epoch = 0
    /// The cells currently served (nil: any); a refill for another cell (a
    /// call of a revoked or replaced version ending) is ignored.
    private var served: Set<ObjectIdentifier>? = nil
    private var stopped = false
    private var thread: Thread? = nil

    init(runner: CallRunner, perCell: Int, idleSeconds: Int) {
        self.runner = runner
        self.perCell = perCell
        idleNanoseconds = UInt64(max(1, idleSeconds)) * 1_000_000_000
        let t = Thread { [weak self] in self?.loop() }
        t.name = "prespawn"
        thread = t
        t.start()
    }

    /// Workers started ahead: ready for a call, or being started (metrics).
    public var workerCount: Int {
        lock.lock()
        defer { lock.unlock() }
        return ready.values.reduce(0) { $0 + $1.count } + starting.values.reduce(0, +)
    }

    /// A ready worker for `cell` with `limits`, or nil.
    func take(_ cell: PreparedCell, limits: CellManifest.Limits) -> StartedWorker? {
        lock.lock()
        let w = ready[ObjectIdentifier(cell)]?.first
        if w != nil { ready[ObjectIdentifier(cell)]!.removeFirst() }
        lock.unlock()
        guard let w else { return nil }
        let current = try? cell.fileGenerations()
        guard w.cell === cell, w.limits == limits, current == w.generations, w.isAlive else {
            runner?.discard(w)
            return nil
        }
        return w
    }

    /// Asks for `cell`'s next worker to be started (no-op when enough are
    /// ready or asked for).
    func refill(_ cell: PreparedCell) {
        lock.lock()
        defer { lock.unlock() }
        guard !stopped, served?.contains(ObjectIdentifier(cell)) != false else { return }
        let have = ready[ObjectIdentifier(cell)]?.count ?? 0
        let asked = wanted.filter { $0 === cell }.count + starting[ObjectIdentifier(cell), default: 0]
        if have + asked < perCell {
            wanted.append(cell)
            lock.signal()
        }
    }

    /// Ends every ready worker and serves only `cells` from now on (start,
    /// reload, revocation).
    public func serve(only cells: [PreparedCell]) {
        lock.lock()
        served = Set(cells.map { ObjectIdentifier($0) })
        lock.unlock()
        discardAll()
    }

    /// Ends every ready worker (reload, revocation, shutdown).
    public func discardAll() {
        lock.lock()
        let all = ready.values.flatMap { $0 }
        ready = [:]
        wanted = []
        epoch += 1
        lock.unlock()
        for w in all { runner?.discard(w) }
    }

    /// Stops the thread and ends every ready worker.
    public func shutdown() {
        lock.lock()
        stopped = true
        lock.signal()
        lock.unlock()
        discardAll()
    }

    private func loop() {
        while true {
            lock.lock()
            // Sleep until asked for a worker or until the oldest ready one
            // expires; with none ready, until asked (nothing runs when idle).
            while wanted.isEmpty && !stopped {
                let oldest = ready.values.flatMap { $0 }.map(\.bornAt).min()
                guard let oldest else {
                    lock.wait()
                    continue
                }
                let now = monotonicNanoseconds()
                let expiry = oldest + idleNanoseconds
                if now >= expiry { break }
                if !lock.wait(until: Date(timeIntervalSinceNow: Double(expiry - now) / 1e9 + 0.001)) { break }
            }
            if stopped {
                lock.unlock()
                return
            }
            let cell = wanted.isEmpty ? nil : wanted.removeFirst()
            if let cell { starting[ObjectIdentifier(cell), default: 0] += 1 }
            let startEpoch = epoch
            // Idle workers are ended: a cell not called for a while should
            // not keep a process (and its memory) around.
            let now = monotonicNanoseconds()
            var expired: [StartedWorker] = []
            for (k, ws) in ready {
                let (old, young) = (
                    ws.filter { now - $0.bornAt > idleNanoseconds }, ws.filter { now - $0.bornAt <= idleNanoseconds }
                )
                expired += old
                ready[k] = young.isEmpty ? nil : young
            }
            lock.unlock()
            for w in expired { runner?.discard(w) }
            guard let cell else { continue }
            let started = runner?.startWorker(cell, limits: cell.manifest.limits, argv: nil, name: "prespawn")
            lock.lock()
            starting[ObjectIdentifier(cell), default: 1] -= 1
            if starting[ObjectIdentifier(cell)] == 0 { starting[ObjectIdentifier(cell)] = nil }
            guard case .success(let w)? = started, let runner else {
                lock.unlock()
                continue  // the call that comes will spawn, and report, on its own
            }
            if epoch == startEpoch && !stopped {
                ready[ObjectIdentifier(cell), default: []].append(w)
                lock.unlock()
            } else {
                lock.unlock()
                runner.discard(w)
            }
        }
    }
}
