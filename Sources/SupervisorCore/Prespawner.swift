import Foundation
import SupervisorPlatform
import Synchronization

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
    /// A server cell's server, initialized and checked ahead of its call.
    var conversation: ServerConversation? = nil
    /// Started under the syscall profiler (never prespawned).
    var profiled = false
    /// A worker behind the egress proxy: its listener's attachment,
    /// detached when the worker is released.
    var egress: (any EgressAttachment)? = nil

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
    /// Per server cell: how long a server takes to get ready and how often
    /// its calls come (moving averages), which size its pool.
    private var pace: [ObjectIdentifier: Pace] = [:]

    struct Pace {
        var startupNanoseconds: Double = 0
        var intervalNanoseconds: Double = 0
        var lastCall: UInt64 = 0
    }

    /// The most servers of one server cell kept ready at once (each is a
    /// whole interpreter with its memory).
    static let maxServersReady = 4
    static let serverStartDelaySeconds = 0.05

    /// How many ready workers `cell` should have. A frame cell starts in a
    /// millisecond: `perCell`. A server takes hundreds of milliseconds to get
    /// ready, so as many as arrive during one start-up wait ready (start-up
    /// time / time between calls, rounded up), at most `maxServersReady`.
    private func target(_ cell: PreparedCell) -> Int {
        guard cell.manifest.server != nil, let p = pace[ObjectIdentifier(cell)], p.intervalNanoseconds > 0 else {
            return perCell
        }
        let n = Int((p.startupNanoseconds / p.intervalNanoseconds).rounded(.up))
        return min(max(perCell, n), max(perCell, Self.maxServersReady))
    }

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
        if cell.manifest.server != nil {
            let now = monotonicNanoseconds()
            var p = pace[ObjectIdentifier(cell)] ?? Pace()
            if p.lastCall > 0 {
                let gap = Double(now - p.lastCall)
                p.intervalNanoseconds = p.intervalNanoseconds == 0 ? gap : 0.7 * p.intervalNanoseconds + 0.3 * gap
            }
            p.lastCall = now
            pace[ObjectIdentifier(cell)] = p
        }
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
        let want = target(cell)
        if have + asked < want {
            for _ in 0..<(want - have - asked) { wanted.append(cell) }
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
            // A server's start-up is hundreds of milliseconds of CPU: it waits
            // a moment so that the call that asked for it (answered, its
            // server being torn down) is not slowed by it on a small machine.
            if cell.manifest.server != nil { Thread.sleep(forTimeInterval: Self.serverStartDelaySeconds) }
            let startedAt = monotonicNanoseconds()
            var started = runner?.startWorker(cell, limits: cell.manifest.limits, argv: nil, name: "prespawn")
            // A server cell's server is initialized and its tools compared
            // before it counts as ready (start-up is most of its cost).
            if case .success(let w)? = started, let runner, !runner.preinitialize(w) {
                runner.discard(w)
                started = nil
            }
            lock.lock()
            if cell.manifest.server != nil, case .success? = started {
                let took = Double(monotonicNanoseconds() - startedAt)
                var p = pace[ObjectIdentifier(cell)] ?? Pace()
                p.startupNanoseconds = p.startupNanoseconds == 0 ? took : 0.7 * p.startupNanoseconds + 0.3 * took
                pace[ObjectIdentifier(cell)] = p
            }
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

/// The servers of `session`-lifecycle cells: one slot per (client session,
/// cell), whose lock makes one session's calls to the cell take turns.
final class SessionServers: Sendable {
    final class Slot: @unchecked Sendable {
        // @unchecked: `worker` is read and written only while `lock` is held.
        let lock = NSLock()
        var worker: StartedWorker? = nil
    }

    struct Key: Hashable {
        let session: ObjectIdentifier?
        let cell: ObjectIdentifier
    }

    private let slots = Mutex<[Key: Slot]>([:])

    func slot(session: ObjectIdentifier?, cell: PreparedCell) -> Slot {
        slots.withLock { s in
            let k = Key(session: session, cell: ObjectIdentifier(cell))
            if let existing = s[k] { return existing }
            let n = Slot()
            s[k] = n
            return n
        }
    }

    /// Takes the slots of `session` (nil: all) out of the table.
    func remove(session: ObjectIdentifier?) -> [Slot] {
        slots.withLock { s in
            let keys = s.keys.filter { session == nil || $0.session == session }
            return keys.compactMap { s.removeValue(forKey: $0) }
        }
    }
}
