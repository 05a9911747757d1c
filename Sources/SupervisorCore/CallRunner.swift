import Logging
import StrictJSON
import SupervisorPlatform
import Synchronization

/// Lets another thread end a call in flight (client cancellation, shutdown,
/// revocation). The running call polls the pipe's read end.
public final class CallCancellation: Sendable {
    let read: FileDescriptor
    let write: FileDescriptor
    private let fired = Mutex(false)

    public init() throws(SystemError) {
        (read, write) = try Sys.pipe()
    }

    deinit {
        read.close()
        write.close()
    }

    public func cancel() {
        fired.withLock { fired in
            if !fired {
                fired = true
                try? write.writeAll([1])
            }
        }
    }

    public var isCancelled: Bool { fired.withLock { $0 } }
}

/// Bytes of worker output held in memory by all calls together (frames being
/// assembled, command stdout), bounded: a call that would go past the total
/// ends with `limitExceeded(.bufferedOutput)` instead of growing the
/// supervisor.
public final class OutputBudget: Sendable {
    public let totalBytes: Int
    private let used = Mutex(0)

    public init(totalBytes: Int) { self.totalBytes = totalBytes }

    /// Takes `bytes` more; false (and nothing taken) if the total would pass.
    func reserve(_ bytes: Int) -> Bool {
        used.withLock { used in
            guard used + bytes <= totalBytes else { return false }
            used += bytes
            return true
        }
    }

    func release(_ bytes: Int) { used.withLock { $0 -= bytes } }

    /// Bytes reserved right now (0 when no call holds output).
    public var usedBytes: Int { used.withLock { $0 } }
}

/// Runs one tool call in one fresh worker, start to finish, on the calling
/// thread. The worker is always gone and its scratch wiped when this returns.
public final class CallRunner: @unchecked Sendable {
    // @unchecked: `prespawner`, `egress` and `egressCredentials` are set once, by `enablePrespawn` and
    // `enableEgress` before the first call; the rest is immutable.
    /// The most of one call's output the supervisor holds in memory at a
    /// time, whatever the manifest declares: one frame being assembled, or
    /// a command tool's stdout. Frames are refused from their length
    /// prefix above it, before anything is allocated; parsing and replying
    /// multiply it a few times (docs/manifest.md, "Output and memory").
    public static let bufferedOutputCap = 8 << 20
    /// The default for all calls together: eight calls at the cap.
    public static let defaultOutputBudget = 64 << 20
    /// Output held by all this runner's calls together.
    public let outputBudget: OutputBudget
    public let host: HostSandbox
    /// Where the values of the cells' secrets come from (docs/secrets.md).
    public let secrets: SecretSources
    let logger: Logger
    /// Starts the next worker of a recently called cell ahead of its call
    /// (nil: every call spawns its own worker when it arrives).
    public private(set) var prespawner: Prespawner? = nil
    /// The egress proxy for cells with `network.egress: "proxy"` (nil: such
    /// cells cannot run, `cannotRun(.unsupported)`).
    public private(set) var egress: (any EgressProxy)? = nil
    /// What the proxy adds to a cell's requests (the secret store's
    /// bindings); none unless set.
    public private(set) var egressCredentials: @Sendable (PreparedCell) -> EgressCredentialSet = { _ in .none }
    private let devNull: FileDescriptor
    private let counter = Mutex<UInt64>(0)
    /// The servers of `session`-lifecycle server cells, one per client
    /// session and cell.
    let sessionServers = SessionServers()

    public init(
        host: HostSandbox, logger: Logger,
        outputBudgetBytes: Int = CallRunner.defaultOutputBudget, secrets: SecretSources = .none
    ) throws(SystemError) {
        self.host = host
        self.logger = logger
        self.secrets = secrets
        outputBudget = OutputBudget(totalBytes: outputBudgetBytes)
        devNull = try Sys.open("/dev/null", OpenFlags.readOnly)
        try host.prepareScratchRoot()
        // A worker may exit before reading all of its input: the write
        // must fail with EPIPE, not kill the supervisor with SIGPIPE.
        Sys.ignoreSignal(Signal.pipe)
    }

    deinit { devNull.close() }

    /// Keeps up to `perCell` started workers ready for each recently
    /// called cell; an idle one is ended after `idleSeconds`.
    public func enablePrespawn(perCell: Int, idleSeconds: Int) {
        guard perCell > 0, prespawner == nil else { return }
        prespawner = Prespawner(runner: self, perCell: perCell, idleSeconds: idleSeconds)
    }

    /// Serves the workers of `network.egress: "proxy"` cells through
    /// `proxy`; `credentials` gives each cell's header injections and
    /// interception authority (docs/egress.md, docs/secrets.md). Call
    /// before the first call.
    public func enableEgress(
        _ proxy: any EgressProxy,
        credentials: @escaping @Sendable (PreparedCell) -> EgressCredentialSet = { _ in .none }
    ) {
        egress = proxy
        egressCredentials = credentials
    }

    private func nextScratchName(_ callID: String) -> String {
        let n = counter.withLock { counter -> UInt64 in
            counter += 1
            return counter
        }
        let safe = String(callID.unicodeScalars.filter { CellManifest.isValidName(String($0)) }.prefix(32))
        return "\(host.scratchRoot)/\(Sys.getpid())-\(n)-\(safe.isEmpty ? "call" : safe)"
    }

    /// Runs `tool` of `cell` with already-validated `arguments`.
    /// `limits` replaces the manifest's (a policy may tighten them).
    /// `learn` (development only): syscalls outside the allowlist are
    /// recorded and let through instead of killing the worker.
    /// `onNetwork` sees each answer of the connection broker as it is given.
    /// `answered`, if given, receives the report of a frame cell's call as
    /// soon as its final frame arrives with nothing ending the call before
    /// it: the answer does not wait for the worker's teardown (the worker
    /// is killed at its final frame; `exit` is nil and `reapNanoseconds` 0
    /// in that report). `deliver`, if given, receives the whole report as
    /// soon as the worker is reaped, before its scratch directory is wiped
    /// and the cell's next worker is asked for (both still happen before
    /// this returns).
    /// `profileSyscalls`: the worker runs under the syscall profiler and the
    /// report's `syscallProfile` lists what it used (docs/resilience.md,
    /// "Syscall profiler"); not for a session server, nor with `learn`.
    public func run(
        cell: PreparedCell, tool: String, arguments: JSONObject, callID: String,
        cancellation: CallCancellation? = nil, limits: CellManifest.Limits? = nil, learn: Bool = false,
        profileSyscalls: Bool = false, session: ObjectIdentifier? = nil,
        answered: ((CallReport) -> Void)? = nil,
        deliver: ((CallReport) -> Void)? = nil,
        onNetwork: (NetworkDecision) -> Void = { _ in },
        onMessage: (WorkerMessage) -> Void = { _ in }
    ) -> CallReport {
        let start = monotonicNanoseconds()
        var report = CallReport(
            outcome: .cancelled, exit: nil, durationNanoseconds: 0, cpuNanoseconds: 0,
            peakMemoryBytes: nil, bytesFromWorker: 0, diagnostics: "", spawnNanoseconds: 0,
            firstFrameNanoseconds: 0, reapNanoseconds: 0)
        var cleanup: (() -> Void)? = nil
        // The cell's secrets as they are now: a missing one ends the call
        // before any worker is taken or started. Everything the call hands
        // back or records passes the redactor first.
        let resolved: ResolvedSecrets
        switch secrets.resolve(cell.manifest) {
        case .success(let r): resolved = r
        case .failure(let e):
            report.outcome = .cannotRun(.secretUnavailable(e))
            resolved = .none
        }
        let redactor = resolved.redactor
        let answered = answered.map { answered in { (r: CallReport) in answered(redactor.redact(r)) } }
        if case .cannotRun = report.outcome {
        } else if cancellation?.isCancelled != true, cell.manifest.server?.lifecycle == .session, !learn {
            runSessionCall(
                cell: cell, tool: tool, arguments: arguments, callID: callID, cancellation: cancellation,
                limits: limits ?? cell.manifest.limits, secrets: resolved, session: session, start: start,
                report: &report, onNetwork: { d in onNetwork(redactor.redact(d)) },
                onMessage: { m in onMessage(redactor.redact(m)) })
        } else if cancellation?.isCancelled != true {
            cleanup = run(
                cell: cell, tool: tool, arguments: arguments, callID: callID, cancellation: cancellation,
                limits: limits ?? cell.manifest.limits, secrets: resolved, learn: learn,
                profile: profileSyscalls && !learn, start: start, report: &report, answered: answered,
                onNetwork: { d in onNetwork(redactor.redact(d)) }, onMessage: { m in onMessage(redactor.redact(m)) })
        }
        report.durationNanoseconds = monotonicNanoseconds() - start
        report = redactor.redact(report)
        deliver?(report)
        cleanup?()
        return report
    }

    /// The per-install CA with which the egress proxy terminates TLS for
    /// hosts that have a credential injection, created on first need; its
    /// certificate (`caCertificatePath`) is published in the scratch root,
    /// which workers can traverse (they still need a Landlock read rule for
    /// that one file), since the state directory is closed to them.
    public func interceptionAuthority() throws(InterceptionCAError) -> PerInstallCA {
        try secrets.interceptionAuthority(publishIn: host.scratchRoot)
    }

    private func run(
        cell: PreparedCell, tool: String, arguments: JSONObject, callID: String,
        cancellation: CallCancellation?, limits: CellManifest.Limits, secrets: ResolvedSecrets, learn: Bool,
        profile: Bool, start: UInt64, report: inout CallReport, answered: ((CallReport) -> Void)?,
        onNetwork: (NetworkDecision) -> Void, onMessage: (WorkerMessage) -> Void
    ) -> (() -> Void)? {
        let m = cell.manifest
        // A command tool: argv from the arguments, stdin from one of them.
        var command: (template: CommandTemplate, argv: [String], stdin: [UInt8])? = nil
        if let t = m.tools.first(where: { $0.name == tool })?.command {
            do {
                let (argv, stdin) = try t.build(arguments: arguments)
                command = (t, argv, stdin)
            } catch {
                report.outcome = .refused(.arguments(error.message))
                return nil
            }
        }
        // A worker started ahead of the call for this cell, if one is ready
        // and still matches (same files, same limits); else a fresh one. A
        // profiled call starts its own: its worker's start-up is part of
        // what the profiler must see.
        let started: StartedWorker
        if command == nil, !learn, !profile,
            let w = prespawner?.take(cell, limits: limits, environmentDigest: secrets.environmentDigest)
        {
            started = w
            report.prespawned = true
        } else {
            switch startWorker(
                cell, limits: limits, argv: command?.argv, name: callID, profiled: profile, secrets: secrets)
            {
            case .success(let w): started = w
            case .failure(let why):
                report.outcome = .cannotRun(why)
                return nil
            }
            report.spawnNanoseconds = started.spawnNanoseconds
        }
        drive(
            started, tool: tool, arguments: arguments, callID: callID, cancellation: cancellation, learn: learn,
            command: command.map { ($0.template, $0.stdin) }, start: start, report: &report,
            answered: answered, onNetwork: onNetwork, onMessage: onMessage)
        let refill = command == nil && !learn && !profile && limits == m.limits
        return { [self] in
            release(started)
            // The next worker starts once this one is gone, so that its
            // setup does not compete with this call for the CPU.
            if refill { prespawner?.refill(cell) }
        }
    }

    /// Starts a worker up to the point where it waits for its input: scratch
    /// directory, pipes, Landlock ruleset, the spawn (all setup stages and
    /// the exec), the seccomp listener. `argv` replaces the manifest's (a
    /// command tool). `profiled`: under the syscall profiler, where the host
    /// has seccomp user notification (`StartedWorker.profiled` says so).
    /// `secrets`: the cell's secrets resolved for the call (nil: resolved
    /// here, for a worker started ahead of its call or for registration).
    func startWorker(
        _ cell: PreparedCell, limits: CellManifest.Limits, argv: [String]?, name: String, profiled: Bool = false,
        secrets resolved: ResolvedSecrets? = nil
    ) -> Result<StartedWorker, CellCannotRun> {
        let m = cell.manifest
        let secrets: ResolvedSecrets
        switch resolved.map({ .success($0) }) ?? self.secrets.resolve(m) {
        case .success(let r): secrets = r
        case .failure(let e): return .failure(.secretUnavailable(e))
        }
        var filters: PreparedCell.ProfiledFilters? = nil
        if profiled {
            do { filters = try cell.profiledFilters() } catch { return .failure(error) }
        }
        let exe: FileDescriptor
        let script: FileDescriptor?
        let generations: [Int]
        do {
            (exe, script, generations) = try cell.filesForSpawn()
        } catch {
            return .failure(error)
        }

        let scratch = nextScratchName(name)
        var toClose: [FileDescriptor] = script.map { [$0] } ?? []
        func fail(_ why: CellCannotRun) -> Result<StartedWorker, CellCannotRun> {
            for fd in toClose { fd.close() }
            wipe(scratch)
            return .failure(why)
        }
        // Egress through the proxy: a network namespace of the worker's
        // own, whose only endpoint is the listener its setup sends back.
        var proxy: (server: any EgressProxy, credentials: EgressCredentialSet)? = nil
        if m.network.usesProxy {
            guard let egress else {
                return fail(
                    .unsupported(
                        "network.egress is \"proxy\" but this command runs no egress proxy (mcp-supervisor run and call do)"
                    ))
            }
            // The proxy adds the secrets bound to hosts (`inject`): it then
            // terminates TLS for those hosts with the per-install CA.
            var credentials = egressCredentials(cell)
            if secrets.injections.contains(where: { $0.scheme == .http }) {
                credentials = EgressCredentialSet(injections: secrets.injections)
            }
            if secrets.injections.contains(where: { $0.scheme == .https }) {
                do {
                    credentials = EgressCredentialSet(
                        injections: secrets.injections, authority: try interceptionAuthority())
                } catch {
                    return fail(.unsupported("the egress proxy's certificate authority: \(error)"))
                }
            }
            proxy = (egress, credentials)
        }

        let worker: WorkerProcess
        let requestWrite: FileDescriptor
        let responseRead: FileDescriptor
        let diagRead: FileDescriptor
        let notifyParent: FileDescriptor?
        var brokerParent: FileDescriptor? = nil
        var egressParent: FileDescriptor? = nil
        let spawnNanoseconds: UInt64
        do {
            try Sys.mkdir(scratch, mode: 0o700)
            if host.features.isRoot {
                let d = try Sys.open(scratch, OpenFlags.readOnly | OpenFlags.directory | OpenFlags.noFollow)
                defer { d.close() }
                try d.chown(uid: host.workerUID, gid: host.workerGID)
            }
            let req = try Sys.pipe()
            let resp = try Sys.pipe()
            let diag = try Sys.pipe()
            toClose += [req.read, req.write, resp.read, resp.write, diag.read, diag.write]
            requestWrite = req.write
            responseRead = resp.read
            diagRead = diag.read
            var notifyChild: FileDescriptor? = nil
            if host.features.seccompUserNotification {
                let (a, b) = try Sys.socketPair(type: SocketType.seqPacket)
                toClose += [a, b]
                notifyParent = a
                notifyChild = b
            } else {
                notifyParent = nil
            }
            var brokerChild: FileDescriptor? = nil
            var egressChild: FileDescriptor? = nil
            if proxy != nil {
                let (a, b) = try Sys.socketPair(type: SocketType.seqPacket)
                toClose += [a, b]
                egressParent = a
                egressChild = b
            } else if !m.network.isNone {
                let (a, b) = try Sys.socketPair(type: SocketType.seqPacket)
                toClose += [a, b]
                brokerParent = a
                brokerChild = b
            }
            let ruleset = try Landlock.Ruleset.create(abi: host.features.landlockABI ?? 1)
            toClose.append(ruleset.fd)
            for (fd, access, isDir) in cell.pathRules { try ruleset.allow(fd, access, isDirectory: isDir) }
            if let proxy {
                // Inside the namespace only the proxy's port may be
                // connected to (ABI 4), should anything else ever listen there.
                if ruleset.abi >= 4 { try ruleset.allowConnect(port: proxy.server.listenerPort) }
                // The interception CA, which the cell is told to trust.
                if let path = proxy.credentials.authority?.caCertificatePath {
                    let fd = try Landlock.openPath(path)
                    defer { fd.close() }
                    try ruleset.allow(fd, .read, isDirectory: false)
                }
            }
            // Scratch is a tmpfs the child mounts on this directory in its own
            // mount namespace, bounded by the kernel (limits.scratchMiB and
            // scratchFiles); the child adds its Landlock rule (the mount
            // hides the directory, so a rule on it would not apply). The
            // tmpfs and its contents go with the worker's namespace.
            let scratchMount = ScratchMount(
                directory: scratch, sizeBytes: UInt64(limits.scratchMiB) << 20, files: UInt64(limits.scratchFiles),
                uid: host.features.isRoot ? host.workerUID : Sys.geteuid(),
                gid: host.features.isRoot ? host.workerGID : Sys.getegid(),
                access: ruleset.rights(.readWrite, isDirectory: true))
            // The executable is a sealed memfd on the kernel's internal shmem
            // mount: Landlock takes no rules there (EBADFD) and does not
            // mediate it, so exec of it needs no rule. A worker's own memfds
            // are not executable: the filter allows memfd_create only with
            // MFD_NOEXEC_SEAL (SeccompConfinement), so this opens nothing.

            // A command tool's program reads its input on stdin and writes
            // its result to stdout; it gets no frame pipes. So does a server
            // cell's server (MCP over stdio).
            var r =
                argv == nil && m.server == nil
                ? SpawnRequest(
                    executable: exe, argv: m.argv,
                    environment: environment(
                        for: m, scratch: scratch, secrets: secrets, proxy: proxy.map(\.server.listenerPort),
                        authority: proxy?.credentials.authority),
                    stdin: script ?? devNull, stdout: diag.write, stderr: diag.write, request: req.read,
                    response: resp.write, workingDirectory: scratch)
                : SpawnRequest(
                    executable: exe, argv: argv ?? m.argv,
                    environment: environment(
                        for: m, scratch: scratch, secrets: secrets, proxy: proxy.map(\.server.listenerPort),
                        authority: proxy?.credentials.authority),
                    stdin: req.read, stdout: resp.write, stderr: diag.write, request: devNull,
                    response: devNull, workingDirectory: m.workingDirectory ?? scratch)
            r.broker = brokerChild
            r.rlimits = rlimits(limits)
            r.dropBoundingSet = host.features.canDropBoundingSet
            if host.features.isRoot { r.changeIDs = (host.workerUID, host.workerGID) }
            r.scratchMount = scratchMount
            // Every worker: its own mount namespace (the scratch tmpfs).
            // A forking cell: its own PID namespace. Unprivileged, both come
            // with a user namespace mapping only the supervisor's own ids.
            r.namespaceFlags = Namespaces.mount | (limits.processes == .processes ? Namespaces.pid : 0)
            if let proxy, let egressChild {
                r.namespaceFlags |= Namespaces.net
                r.egressListener = (egressChild, proxy.server.listenerPort)
            }
            if !host.features.isRoot {
                r.namespaceFlags |= Namespaces.user
                r.uidMap = "\(Sys.geteuid()) \(Sys.geteuid()) 1\n"
                r.gidMap = "\(Sys.getegid()) \(Sys.getegid()) 1\n"
                r.dropBoundingSet = true
            }
            r.landlockRuleset = ruleset.fd
            r.seccompProgram = filters?.allowlist ?? cell.seccomp
            r.seccompNotifySocket = notifyChild
            if notifyChild != nil { r.seccompProfilerProgram = filters?.profiler }
            let t0 = monotonicNanoseconds()
            do {
                worker = try WorkerProcess.spawn(r)
            } catch {
                return fail(.spawn(error))
            }
            spawnNanoseconds = monotonicNanoseconds() - t0
            // The child's ends are its own now.
            for fd in [req.read, resp.write, diag.write, ruleset.fd] + (notifyChild.map { [$0] } ?? [])
                + (brokerChild.map { [$0] } ?? []) + (egressChild.map { [$0] } ?? []) + (script.map { [$0] } ?? [])
            {
                fd.close()
                toClose.removeAll { $0 == fd }
            }
        } catch {
            return fail(.setup(error))
        }
        // The session owns the request pipe's write end (it closes it once
        // the request is written); a second close here could hit a
        // descriptor another call has reused meanwhile.
        toClose.removeAll { $0 == requestWrite }
        var listener: SeccompListener? = nil
        if let notifyParent {
            do {
                listener = try SeccompListener.receive(from: notifyParent)
            } catch {
                worker.signal(Signal.kill)
                _ = try? worker.wait()
                worker.close()
                requestWrite.close()
                return fail(.setup(error))
            }
            notifyParent.close()
            toClose.removeAll { $0 == notifyParent }
            if filters != nil { listener?.preferSynchronousWakeUp() }
        }
        var attachment: (any EgressAttachment)? = nil
        if let proxy, let egressParent {
            do {
                let fd = try Network.receiveDescriptor(egressParent)
                attachment = try proxy.server.attach(
                    listener: fd, cell: cell.name, callID: name, access: m.network,
                    injections: proxy.credentials.injections, authority: proxy.credentials.authority)
            } catch {
                listener?.fd.close()
                worker.signal(Signal.kill)
                _ = try? worker.wait()
                worker.close()
                requestWrite.close()
                return fail(.setup(error))
            }
            egressParent.close()
            toClose.removeAll { $0 == egressParent }
        }
        let started = StartedWorker(
            cell: cell, limits: limits, worker: worker, scratch: scratch, requestWrite: requestWrite,
            responseRead: responseRead, diagRead: diagRead, listener: listener, broker: brokerParent,
            toClose: toClose, spawnNanoseconds: spawnNanoseconds, generations: generations)
        started.profiled = filters != nil && listener != nil
        started.secrets = secrets
        started.egress = attachment
        return .success(started)
    }

    /// Removes a scratch directory without following links; logs a failure.
    func wipe(_ scratch: String) {
        do { try Sys.removeTree(scratch) } catch {
            logger.error("could not wipe scratch directory", metadata: ["path": "\(scratch)", "error": "\(error)"])
        }
    }

    /// Ends a started worker that will not serve a call (a prespawned one
    /// discarded): SIGKILL, reap, close, wipe.
    func discard(_ w: StartedWorker) {
        // Connections it made while waiting (a server's start-up) belong to
        // no call: said on stderr, since no call will record them.
        for d in w.egress?.decisions.take() ?? [] {
            logger.notice(
                "a discarded worker's connection through the egress proxy",
                metadata: [
                    "cell.name": "\(w.cell.name)", "host": "\(d.host)", "port": "\(d.port)",
                    "refusal": "\(d.refusal ?? "none")",
                ])
        }
        w.worker.signal(Signal.kill)
        _ = try? w.worker.wait()
        w.worker.close()
        w.requestWrite.close()
        release(w)
    }

    /// What a started worker leaves once it is gone: its remaining
    /// descriptors and its scratch directory.
    private func release(_ w: StartedWorker) {
        w.egress?.detach()
        w.listener?.fd.close()
        for fd in w.toClose { fd.close() }
        wipe(w.scratch)
    }

    /// Feeds the call to a started worker, watches it to the end, reaps it
    /// and wipes its scratch directory.
    private func drive(
        _ w: StartedWorker, tool: String, arguments: JSONObject, callID: String,
        cancellation: CallCancellation?, learn: Bool, command: (CommandTemplate, [UInt8])?,
        start: UInt64, report: inout CallReport, answered: ((CallReport) -> Void)?,
        onNetwork: (NetworkDecision) -> Void, onMessage: (WorkerMessage) -> Void
    ) {
        // (The caller closes the remaining descriptors and wipes the scratch
        // directory once the report is delivered.)
        let worker = w.worker
        var session = WorkerSession(
            worker: worker, callID: callID, limits: w.limits, requestWrite: w.requestWrite,
            responseRead: w.responseRead,
            diagRead: w.diagRead, cancellation: cancellation, graceMilliseconds: host.terminationGraceMilliseconds)
        session.learning = learn
        session.profiling = w.profiled
        session.command = command?.0
        session.listener = w.listener
        session.budget = outputBudget
        defer { outputBudget.release(session.reserved) }
        if let b = w.broker {
            session.broker = ConnectionBroker(access: w.cell.manifest.network, socket: b, cancellation: cancellation)
        }
        session.egress = w.egress?.decisions
        let input: [UInt8]
        if let spec = w.cell.manifest.server {
            // A server started ahead of the call is initialized and its tools
            // checked already; otherwise that happens first, within the
            // start-up allowance on top of the call's own deadline.
            input = session.beginServerCall(
                w.conversation ?? Self.conversation(for: w.cell, limits: w.limits), cell: w.cell, spec: spec,
                tool: tool, arguments: arguments, start: start)
        } else {
            input =
                command?.1 ?? FrameCodec.encode(CellProtocol.request(callID: callID, tool: tool, arguments: arguments))
        }
        let base = report
        session.run(
            input: input, started: start, onNetwork: onNetwork, onMessage: onMessage,
            onAnswer: { a in
                guard let answered else { return }
                var early = base
                early.outcome = a.outcome
                early.durationNanoseconds = monotonicNanoseconds() - start
                early.cpuNanoseconds = a.cpuNanoseconds ?? 0
                early.peakMemoryBytes = a.peakMemoryBytes
                early.bytesFromWorker = a.bytesFromWorker
                early.refusedServerRequests = a.refusedServerRequests
                early.syscallProfile = a.syscallProfile
                early.firstFrameNanoseconds = a.firstFrameAt > 0 ? a.firstFrameAt - start - base.spawnNanoseconds : 0
                answered(early)
            })
        let reapStart = monotonicNanoseconds()
        let exit: ProcessExit
        do {
            exit = try worker.wait()
        } catch {
            worker.close()
            report.outcome = .protocolViolation("could not reap the worker: \(error)")
            return
        }
        worker.close()
        report.reapNanoseconds = monotonicNanoseconds() - reapStart
        report.exit = exit.status
        report.cpuNanoseconds = exit.userCPUNanoseconds + exit.systemCPUNanoseconds
        report.peakMemoryBytes = session.peakRSS
        report.bytesFromWorker = session.bytesFromWorker
        report.diagnostics = session.diagnosticsText
        report.firstFrameNanoseconds =
            session.firstFrameAt > 0 ? session.firstFrameAt - start - report.spawnNanoseconds : 0
        report.outcome = session.classify(exit: exit)
        report.deniedSyscall = session.seccompViolation.map { DeniedSyscall(syscall: $0.0, architecture: $0.1) }
        report.learnedSyscalls = session.learned
        if session.profiling { report.syscallProfile = session.profile.named() }
        report.pollWakeups = session.wakeups
        report.refusedServerRequests = session.server?.refusedRequests ?? []
    }

    /// A call to a `session`-lifecycle server cell: the client session's
    /// server (started and initialized by its first call, its tools checked
    /// then) takes the call and keeps running; calls of one session to it
    /// take turns. Anything that ends a call otherwise (deadline, violation,
    /// limit, cancellation, a broken message) ends the server too; the
    /// session's next call starts a new one.
    private func runSessionCall(
        cell: PreparedCell, tool: String, arguments: JSONObject, callID: String,
        cancellation: CallCancellation?, limits: CellManifest.Limits, secrets: ResolvedSecrets,
        session key: ObjectIdentifier?, start: UInt64, report: inout CallReport,
        onNetwork: (NetworkDecision) -> Void, onMessage: (WorkerMessage) -> Void
    ) {
        let slot = sessionServers.slot(session: key, cell: cell)
        slot.lock.lock()
        defer { slot.lock.unlock() }
        if let old = slot.worker,
            old.cell !== cell || old.limits != limits || !old.isAlive
                || (try? cell.fileGenerations()) != old.generations
                || old.secrets.environmentDigest != secrets.environmentDigest
        {
            slot.worker = nil
            discard(old)
        }
        let w: StartedWorker
        if let kept = slot.worker {
            w = kept
            report.prespawned = true
        } else {
            switch startWorker(cell, limits: limits, argv: nil, name: callID, secrets: secrets) {
            case .success(let started): w = started
            case .failure(let why):
                report.outcome = .cannotRun(why)
                return
            }
            report.spawnNanoseconds = w.spawnNanoseconds
            slot.worker = w
        }
        var session = WorkerSession(
            worker: w.worker, callID: callID, limits: limits, requestWrite: w.requestWrite,
            responseRead: w.responseRead, diagRead: w.diagRead, cancellation: cancellation,
            graceMilliseconds: host.terminationGraceMilliseconds)
        session.listener = w.listener
        session.budget = outputBudget
        session.keepAlive = true
        session.ownsRequest = false
        session.egress = w.egress?.decisions
        defer { outputBudget.release(session.reserved) }
        var conversation = w.conversation ?? Self.conversation(for: cell, limits: limits)
        conversation.reusable = true
        let input = session.beginServerCall(
            conversation, cell: cell, spec: cell.manifest.server!, tool: tool, arguments: arguments, start: start)
        let cpuBefore = w.worker.cpuNanoseconds() ?? 0
        session.run(input: input, started: start, onNetwork: onNetwork, onMessage: onMessage)
        report.refusedServerRequests = session.server?.refusedRequests ?? []
        report.bytesFromWorker = session.bytesFromWorker
        report.diagnostics = session.diagnosticsText
        if session.stoppedReady, let a = session.answer() {
            // Answered, and the server lives on for the session's next call.
            w.conversation = session.server
            report.outcome = a.outcome
            report.cpuNanoseconds = (w.worker.cpuNanoseconds() ?? cpuBefore) - cpuBefore
            report.peakMemoryBytes = a.peakMemoryBytes
            return
        }
        // The call ended otherwise: so does the server.
        slot.worker = nil
        w.worker.signal(Signal.kill)
        let reapStart = monotonicNanoseconds()
        let exit: ProcessExit
        do { exit = try w.worker.wait() } catch {
            w.worker.close()
            w.requestWrite.close()
            release(w)
            report.outcome = .protocolViolation("could not reap the worker: \(error)")
            return
        }
        w.worker.close()
        w.requestWrite.close()
        release(w)
        report.reapNanoseconds = monotonicNanoseconds() - reapStart
        report.exit = exit.status
        report.cpuNanoseconds = exit.userCPUNanoseconds + exit.systemCPUNanoseconds
        report.outcome = session.classify(exit: exit)
        report.deniedSyscall = session.seccompViolation.map { DeniedSyscall(syscall: $0.0, architecture: $0.1) }
    }

    /// Ends the servers of one client session (nil: of every session):
    /// killed, reaped, their scratch wiped.
    public func endSessions(_ session: ObjectIdentifier? = nil) {
        for slot in sessionServers.remove(session: session) {
            slot.lock.lock()
            if let w = slot.worker { discard(w) }
            slot.worker = nil
            slot.lock.unlock()
        }
    }

    /// A new conversation with one of a server cell's servers.
    static func conversation(for cell: PreparedCell, limits: CellManifest.Limits, discovering: Bool = false)
        -> ServerConversation
    {
        ServerConversation(
            pinned: discovering ? nil : cell.manifest.tools.compactMap(\.pinned),
            maxLine: min(limits.frameKiB << 10, CallRunner.bufferedOutputCap))
    }

    /// Runs a started server through `initialize` and `tools/list` within
    /// its start-up allowance and returns the session, stopped once the
    /// server is ready (its tools equal to the pinned ones) or has listed
    /// its tools (`discovering`), or ended otherwise. The server is left
    /// running and its stdin open either way: the caller ends it.
    private func handshake(_ w: StartedWorker, callID: String, discovering: Bool, learn: Bool = false)
        -> WorkerSession
    {
        var session = WorkerSession(
            worker: w.worker, callID: callID, limits: w.limits, requestWrite: w.requestWrite,
            responseRead: w.responseRead, diagRead: w.diagRead, cancellation: nil,
            graceMilliseconds: host.terminationGraceMilliseconds)
        session.listener = w.listener
        session.learning = learn
        session.stopWhenReady = true
        session.ownsRequest = false
        var conversation = Self.conversation(for: w.cell, limits: w.limits, discovering: discovering)
        let input = conversation.start()
        session.server = conversation
        let start = monotonicNanoseconds()
        session.deadlineOverride =
            start + UInt64(w.cell.manifest.server?.startupTimeoutMilliseconds ?? 15_000) * 1_000_000
        session.run(input: input, started: start, onNetwork: { _ in }, onMessage: { _ in })
        return session
    }

    /// Brings a server started ahead of its call to the point where it
    /// takes the call: initialized, its tools listed and equal to the
    /// pinned ones. False if it did not get there (the caller discards it;
    /// the call that comes spawns its own server and reports why).
    func preinitialize(_ w: StartedWorker) -> Bool {
        guard w.cell.manifest.server != nil else { return true }
        let session = handshake(w, callID: "prespawn", discovering: false)
        guard session.stoppedReady, let ready = session.server, ready.phase == .ready else {
            if !session.diagnostics.isEmpty {
                logger.info(
                    "a server started ahead of its call did not get ready",
                    metadata: [
                        "cell.name": "\(w.cell.name)",
                        "worker.stderr": "\(w.secrets.redactor.redact(String(session.diagnosticsText.suffix(512))))",
                    ])
            }
            return false
        }
        w.conversation = ready
        return true
    }

    /// Registration of a server cell: runs the server once in its sandbox
    /// and returns the tools it lists (and its name and version), or why
    /// that failed. The server is ended before this returns.
    public func discoverTools(_ cell: PreparedCell) -> Result<
        (tools: [JSONObject], serverInfo: String?), DiscoveryError
    > {
        discoverTools(cell, learn: false).map { ($0.tools, $0.serverInfo) }
    }

    /// `discoverTools`, in learn mode when `learn` (development, and the
    /// starting profile of `server add`): syscalls outside the allowlist
    /// made up to the listing are recorded and let through (those no
    /// filter allows are refused even then), and returned as `learned`.
    public func discoverTools(_ cell: PreparedCell, learn: Bool) -> Result<
        (tools: [JSONObject], serverInfo: String?, learned: [String]), DiscoveryError
    > {
        guard cell.manifest.server != nil else { return .failure(DiscoveryError("not a server cell")) }
        // Its secrets if they are there; listing tools should not need them
        // (a cell may be registered before its secrets are set), and a server
        // without them has less, not more.
        var missing: SecretUnavailable? = nil
        let resolved: ResolvedSecrets
        switch secrets.resolve(cell.manifest) {
        case .success(let r): resolved = r
        case .failure(let e):
            missing = e
            resolved = .none
        }
        let w: StartedWorker
        switch startWorker(cell, limits: cell.manifest.limits, argv: nil, name: "register", secrets: resolved) {
        case .success(let started): w = started
        case .failure(let why): return .failure(DiscoveryError("the server cannot run: \(why)"))
        }
        let session = handshake(w, callID: "register", discovering: true, learn: learn)
        let listed = session.listedTools
        let info = session.server?.serverInfo
        w.worker.signal(Signal.kill)
        let exit = try? w.worker.wait()
        w.worker.close()
        w.requestWrite.close()
        release(w)
        if let listed { return .success((listed, info, session.learned)) }
        var why = exit.map { session.classify(exit: $0).detail } ?? "the server could not be reaped"
        let stderr = session.diagnosticsText.trimmingCharacters(in: .whitespacesAndNewlines)
        if !stderr.isEmpty { why += "\nthe server's stderr ends with:\n" + String(stderr.suffix(2000)) }
        if let missing { why += "\nit was started without its secrets (\(missing))" }
        return .failure(DiscoveryError(w.secrets.redactor.redact(why)))
    }

    /// The worker's environment: the manifest's variables, the roots, HOME
    /// and TMPDIR; behind the egress proxy (`proxy`: its port in the
    /// worker's namespace) the proxy variables, and with an interception
    /// authority the CA bundle variables, which replace any the manifest set.
    func environment(
        for m: CellManifest, scratch: String, secrets: ResolvedSecrets = .none, proxy: UInt16? = nil,
        authority: (any InterceptionAuthority)? = nil
    ) -> [String] {
        var env: [String] = []
        for name in m.environmentPass {
            if let v = Sys.getenv(name) { env.append("\(name)=\(v)") }
        }
        for (k, v) in m.environmentSet { env.append("\(k)=\(v)") }
        // The `env` fallback of docs/secrets.md: the manifest declares each
        // variable (and `cell show` and the permission diff name it).
        for (k, v) in secrets.environment { env.append("\(k)=\(v)") }
        // The roots a cell may use, so it can explain a refusal (Landlock
        // enforces them regardless).
        env.append("MCPS_READ_ROOTS=" + (m.filesystem.read + m.filesystem.write).joined(separator: ":"))
        env.append("MCPS_WRITE_ROOTS=" + m.filesystem.write.joined(separator: ":"))
        let declared = Set(m.environmentPass + m.environmentSet.map(\.0))
        for (k, v) in [("HOME", scratch), ("TMPDIR", scratch)] where !declared.contains(k) {
            env.append("\(k)=\(v)")
        }
        if let proxy {
            var forced = EgressEnvironment.proxy(port: proxy)
            if let authority { forced += EgressEnvironment.trust(caPath: authority.caCertificatePath) }
            let names = Set(forced.map(\.0))
            env.removeAll { e in names.contains(String(e.prefix { $0 != "=" })) }
            env += forced.map { "\($0.0)=\($0.1)" }
        }
        return env
    }

    func rlimits(_ l: CellManifest.Limits) -> [(resource: Int32, soft: UInt64, hard: UInt64)] {
        var out: [(resource: Int32, soft: UInt64, hard: UInt64)] = [
            (Resource.core, 0, 0),
            // SIGXCPU at the limit, SIGKILL one second later if it is ignored.
            (Resource.cpu, UInt64(l.cpuSeconds), UInt64(l.cpuSeconds) + 1),
            (Resource.addressSpace, UInt64(l.memoryMiB) << 20, UInt64(l.memoryMiB) << 20),
            (Resource.openFiles, UInt64(l.openFiles), UInt64(l.openFiles)),
            (Resource.fileSize, UInt64(l.fileSizeMiB) << 20, UInt64(l.fileSizeMiB) << 20),
        ]
        if l.processes == .processes {
            out.append((Resource.processes, UInt64(l.maxProcesses), UInt64(l.maxProcesses)))
        }
        return out
    }
}

/// The supervisor's side of one worker's lifetime: feed the request, read
/// frames and diagnostics, watch the seccomp listener, the deadline and the
/// cancellation, all in one poll loop with bounded buffers.
struct WorkerSession {
    let worker: WorkerProcess
    let callID: String
    let limits: CellManifest.Limits
    let requestWrite: FileDescriptor
    let responseRead: FileDescriptor
    let diagRead: FileDescriptor
    let cancellation: CallCancellation?
    let graceMilliseconds: Int
    var listener: SeccompListener? = nil
    var broker: ConnectionBroker? = nil
    /// A worker behind the egress proxy: the proxy's decisions for it,
    /// handed to `onNetwork` as they come.
    var egress: EgressDecisions? = nil
    /// Set for a command tool: stdout is the result, not frames.
    var command: CommandTemplate? = nil
    /// Set for a server cell: stdout is the server's JSON-RPC, spoken to by
    /// this conversation (ServerCell.swift).
    var server: ServerConversation? = nil
    /// The server's tool to call once the server is ready (a server not
    /// started ahead of its call is initialized first).
    var serverCall: (tool: String, arguments: JSONObject)? = nil
    /// Return once the server is ready (or has listed its tools when
    /// registering), leaving it running: pre-initialization, registration.
    var stopWhenReady = false
    private(set) var stoppedReady = false
    /// Registration: the tools the server listed.
    var listedTools: [JSONObject]? = nil
    /// Whether the session closes the request pipe (a pre-initialization
    /// leaves it to whoever ends the worker).
    var ownsRequest = true
    /// Replaces `started + limits.timeoutMilliseconds` (a server's start-up
    /// has its own allowance).
    var deadlineOverride: UInt64? = nil
    /// A session's server: its answer ends the call, not the server (the
    /// session returns at the answer and leaves it running).
    var keepAlive = false
    /// A per-call server is killed just after its answer is handed over,
    /// not before: an interpreter's teardown (tens of MiB unmapped, every
    /// thread woken) takes milliseconds of CPU that would otherwise delay
    /// the answer on a small machine.
    var killAfterAnswer = false
    var stdout: [UInt8] = []
    var learning = false
    var learned: [String] = []
    /// The syscall profiler is on: every notification is a call the
    /// allowlist let through, counted and let run.
    var profiling = false
    var profile = SyscallCounts()
    /// The supervisor-wide budget this call's held output is taken from,
    /// and how much it holds (its largest frame, or its command stdout).
    var budget: OutputBudget? = nil
    var reserved = 0
    var wakeups = 0

    var decoder: FrameDecoder
    /// The first thing observed that ends the call (a denied syscall, the
    /// deadline, a broken frame, a limit, cancellation, the final frame),
    /// with the worker's CPU time at that moment. It names the outcome
    /// whatever the worker does after it (SIGTERM handlers, garbage on the
    /// way out); only the CPU limit can precede it unobserved (below).
    var first: (cause: Cause, cpuNanoseconds: UInt64?)? = nil
    var final: CellProtocol.Frame? = nil
    var violation: String? = nil
    var seccompViolation: (String, String)? = nil
    var limitHit: LimitKind? = nil
    var timedOut = false
    var cancelled = false
    var killedByUs = false
    var bytesFromWorker = 0
    var diagnostics: [UInt8] = []
    var firstFrameAt: UInt64 = 0
    var cpuAtExit: UInt64? = nil
    var peakRSS: UInt64? = nil
    static let diagnosticsKept = 8192

    enum Cause: Equatable {
        case seccomp(syscall: String, architecture: String)
        case cancelled
        case limit(LimitKind)
        case violation(String)
        case deadline
        case final
        case drift(String)
    }

    /// What a call's answer is made of when it is given at the final frame.
    struct Answer {
        let outcome: CallOutcome
        let cpuNanoseconds: UInt64?
        let peakMemoryBytes: UInt64?
        let bytesFromWorker: Int
        let firstFrameAt: UInt64
        /// A server cell: the requests its server made, refused.
        var refusedServerRequests: [String] = []
        /// Under the syscall profiler: the syscalls made up to the answer.
        var syscallProfile: [String: Int]? = nil
    }

    /// Set once the answer was handed over before the worker's reap.
    var answered = false

    /// The answer of a frame cell whose final frame came first (nothing
    /// ended the call before it), as `classify(exit:)` will name it whatever
    /// the killed worker's exit; nil otherwise (then the call is answered
    /// after the reap). Not when the CPU clock had reached the limit: the
    /// reap decides that case.
    func answer() -> Answer? {
        guard command == nil, let f = first, case .final = f.cause else { return nil }
        if let c = f.cpuNanoseconds, c >= UInt64(limits.cpuSeconds) * 1_000_000_000 { return nil }
        let outcome: CallOutcome
        switch final {
        case .result(let r)?: outcome = .success(r)
        case .error(let m)?: outcome = .toolError(m)
        case .message?, nil: return nil
        }
        return Answer(
            outcome: outcome, cpuNanoseconds: f.cpuNanoseconds, peakMemoryBytes: peakRSS,
            bytesFromWorker: bytesFromWorker, firstFrameAt: firstFrameAt,
            refusedServerRequests: server?.refusedRequests ?? [], syscallProfile: profiling ? profile.named() : nil)
    }

    /// Records `cause` if nothing ended the call before it.
    mutating func observe(_ cause: Cause) {
        guard first == nil else { return }
        first = (cause, worker.cpuNanoseconds())
    }

    /// VmHWM of a live (not yet reaped) worker, from /proc/<pid>/status.
    static func highWaterRSS(pid: Int32) -> UInt64? {
        guard let bytes = try? readFile("/proc/\(pid)/status", limit: 1 << 16) else { return nil }
        let text = String(decoding: bytes, as: UTF8.self)
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }) else { return nil }
        let digits = line.filter { $0.isNumber }
        return UInt64(digits).map { $0 * 1024 }
    }

    init(
        worker: WorkerProcess, callID: String, limits: CellManifest.Limits, requestWrite: FileDescriptor,
        responseRead: FileDescriptor, diagRead: FileDescriptor, cancellation: CallCancellation?, graceMilliseconds: Int
    ) {
        self.worker = worker
        self.callID = callID
        self.limits = limits
        self.requestWrite = requestWrite
        self.responseRead = responseRead
        self.diagRead = diagRead
        self.cancellation = cancellation
        self.graceMilliseconds = graceMilliseconds
        decoder = FrameDecoder(maxFrame: min(limits.frameKiB << 10, CallRunner.bufferedOutputCap))
    }

    var diagnosticsText: String { CellProtocol.sanitize(String(decoding: diagnostics, as: UTF8.self)) }

    /// One read of a non-blocking pipe: bytes read, 0 at end of file or on
    /// an error (the pipe is done either way), -1 when nothing is ready.
    static func readSome(_ fd: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        switch fd.readAvailable(into: buffer) {
        case .success(let n)?: return n
        case .failure?: return 0
        case nil: return -1
        }
    }

    /// Ends the worker now: SIGKILL through the pidfd (never a pid).
    mutating func kill() {
        killedByUs = true
        worker.signal(Signal.kill)
    }

    mutating func run(
        input: [UInt8], started: UInt64, onNetwork: (NetworkDecision) -> Void,
        onMessage: (WorkerMessage) -> Void, onAnswer: (Answer) -> Void = { _ in }
    ) {
        var pending = input
        var pendingOffset = 0
        try? requestWrite.setNonBlocking()
        try? responseRead.setNonBlocking()
        try? diagRead.setNonBlocking()
        var requestOpen = true
        // The listener reports POLLHUP once no task uses the filter (the
        // worker has exited) and keeps reporting it: it must leave the poll
        // set then, or the loop spins until the pipes and the pidfd catch up
        // (measured: thousands of wake-ups per call under load).
        var listenerOpen = listener != nil
        var brokerOpen = broker != nil
        var responseOpen = true
        var diagOpen = true
        let deadline = deadlineOverride ?? started + UInt64(limits.timeoutMilliseconds) * 1_000_000
        var killAt: UInt64? = nil
        let outputCap = limits.outputKiB << 10
        var buf = [UInt8](repeating: 0, count: 65536)
        var exited = false
        var exitedAt: UInt64 = 0
        var poll = PollSet()

        let ownsRequest = self.ownsRequest
        func closeRequest() {
            if requestOpen {
                if ownsRequest { requestWrite.close() }
                requestOpen = false
            }
        }
        defer { if !stoppedReady { closeRequest() } }

        while true {
            // Try to push the request without blocking: a worker that never
            // reads its input cannot stall the supervisor.
            if requestOpen && pendingOffset < pending.count {
                let written = pending.withUnsafeBytes { raw in
                    requestWrite.writeAvailable(UnsafeRawBufferPointer(rebasing: raw[pendingOffset...]))
                }
                switch written {
                case .success(let n): pendingOffset += n
                case .failure: closeRequest()
                }
                if pendingOffset == pending.count {
                    // A server keeps its stdin: closing it ends the server.
                    if server == nil { closeRequest() }
                    pending = []
                    pendingOffset = 0
                }
            }
            if exited && !responseOpen && !diagOpen { break }

            poll.removeAll()
            let iResp = responseOpen ? poll.add(responseRead) : -1
            let iDiag = diagOpen ? poll.add(diagRead) : -1
            let iExit = exited ? -1 : poll.add(worker.pidfd)
            let iCancel = cancelled ? -1 : (cancellation.map { poll.add($0.read) } ?? -1)
            let iNotify = listenerOpen ? poll.add(listener!.fd) : -1
            // Writability matters only while there is something to write (a
            // server's stdin stays open, and always writable, between requests).
            let iReq =
                requestOpen && (pendingOffset < pending.count || server == nil)
                ? poll.add(requestWrite, events: .writable) : -1
            let iBroker = brokerOpen && !exited && !killedByUs ? poll.add(broker!.socket) : -1
            let iEgress = egress.map { poll.add($0.read) } ?? -1

            // The next timer: the deadline, then the SIGKILL after the grace;
            // once killed, only the pidfd matters; after exit, a bounded
            // wait for the pipes to drain.
            let wake: UInt64?
            if exited {
                wake = max(deadline, exitedAt) + 1_000_000_000
            } else if let k = killAt {
                wake = k
            } else if !timedOut && !killedByUs {
                wake = deadline
            } else {
                wake = nil
            }
            let now = monotonicNanoseconds()
            let timeout: Int32 = wake.map { $0 > now ? Int32(min(($0 - now) / 1_000_000 + 1, 60_000)) : 0 } ?? -1
            do { _ = try poll.wait(timeoutMilliseconds: timeout) } catch {
                kill()
                break
            }
            wakeups += 1

            let t = monotonicNanoseconds()
            if let w = wake, t >= w {
                if exited {
                    // A descendant holds a pipe open after the worker died
                    // (impossible with a PID namespace or without fork).
                    break
                } else if killAt != nil {
                    kill()
                    killAt = nil
                } else if final == nil {
                    timedOut = true
                    observe(.deadline)
                    worker.signal(Signal.terminate)
                    killAt = t + UInt64(graceMilliseconds) * 1_000_000
                } else {
                    // It answered but did not exit in time.
                    kill()
                }
            }
            if iNotify >= 0 && !poll.events(iNotify).isDisjoint(with: [.hangUp, .error])
                && !poll.events(iNotify).contains(.readable)
            {
                listenerOpen = false
            } else if iNotify >= 0 && poll.isReadable(iNotify), let l = listener {
                if let n = try? l.receive() {
                    if profiling && n.isNative
                        && (SeccompConfinement.reason(number: n.number) == nil
                            || egress != nil && SeccompConfinement.reason(number: n.number) == .network)
                    {
                        // The allowlist under the profiler kills what it
                        // refuses, so only allowed calls arrive here (the
                        // check above is a second guard, never true).
                        profile.add(n)
                        l.allowOnce(n)
                    } else if learning && n.isNative {
                        var name = n.syscallName
                        // ioctl is allowed per request number: name it.
                        if name == "ioctl" { name = "ioctl(\(n.arguments[1] & 0xFFFF_FFFF))" }
                        if !learned.contains(name) { learned.append(name) }
                        // What no filter allows (network, IPC, escapes) is
                        // refused even here: it is recorded, never run.
                        if SeccompConfinement.reason(number: n.number) != nil {
                            l.deny(n, errno: Errno.notPermitted)
                        } else {
                            l.allowOnce(n)
                        }
                    } else {
                        // ioctl is allowed per request: name the request refused.
                        let name =
                            n.syscallName == "ioctl" && n.isNative
                            ? "ioctl(0x\(String(n.arguments[1] & 0xFFFF_FFFF, radix: 16)))" : n.syscallName
                        let denied = (name, n.architectureName)
                        if seccompViolation == nil { seccompViolation = denied }
                        observe(.seccomp(syscall: denied.0, architecture: denied.1))
                        kill()
                    }
                } else if !poll.events(iNotify).isDisjoint(with: [.hangUp, .error]) {
                    listenerOpen = false
                }
            }
            if iBroker >= 0 && poll.isReadable(iBroker) {
                switch broker!.serveOne(deadline: deadline) {
                case .closed: brokerOpen = false
                case .idle: break
                case .handled(let d): onNetwork(d)
                }
            }
            if iEgress >= 0 && poll.isReadable(iEgress), let egress {
                for d in egress.take() { onNetwork(d) }
            }
            if iCancel >= 0 && poll.isReadable(iCancel) && !cancelled && !exited {
                cancelled = true
                observe(.cancelled)
                kill()
            }
            if iResp >= 0 && poll.isReadable(iResp) {
                let n = buf.withUnsafeMutableBytes { Self.readSome(responseRead, into: $0) }
                if n == 0 {
                    responseOpen = false
                    if let server, violation == nil && final == nil {
                        do { try server.finish() } catch {
                            violation = error.description
                            observe(.violation(error.description))
                        }
                    } else if violation == nil && final == nil && !decoder.isAtBoundary {
                        do { try decoder.finish() } catch {
                            violation = error.description
                            observe(.violation(error.description))
                        }
                    }
                } else if n > 0 {
                    if firstFrameAt == 0 { firstFrameAt = monotonicNanoseconds() }
                    bytesFromWorker += n
                    if bytesFromWorker > outputCap {
                        limitHit = .output
                        observe(.limit(.output))
                        kill()
                    } else if command != nil {
                        if stdout.count + n > CallRunner.bufferedOutputCap || !hold(stdout.count + n) {
                            limitHit = .bufferedOutput
                            observe(.limit(.bufferedOutput))
                            kill()
                        } else {
                            stdout.append(contentsOf: buf[0..<n])
                        }
                    } else if server != nil {
                        if violation == nil && limitHit == nil {
                            let out = handleServer(buf[0..<n], onMessage: onMessage)
                            if !out.isEmpty && requestOpen { pending += out }
                            if !answered, let a = answer() {
                                answered = true
                                onAnswer(a)
                            }
                            if killAfterAnswer {
                                killAfterAnswer = false
                                kill()
                            }
                            if stoppedReady { break }
                        }
                    } else if violation == nil && limitHit == nil {
                        handle(buf[0..<n], onMessage: onMessage)
                        if !answered, let a = answer() {
                            answered = true
                            onAnswer(a)
                        }
                    }
                }
            }
            if iDiag >= 0 && poll.isReadable(iDiag) {
                let n = buf.withUnsafeMutableBytes { Self.readSome(diagRead, into: $0) }
                if n == 0 {
                    diagOpen = false
                } else if n > 0 {
                    bytesFromWorker += n
                    diagnostics.append(contentsOf: buf[0..<n])
                    if diagnostics.count > Self.diagnosticsKept {
                        diagnostics.removeFirst(diagnostics.count - Self.diagnosticsKept)
                    }
                    if bytesFromWorker > outputCap && limitHit == nil {
                        limitHit = .output
                        observe(.limit(.output))
                        kill()
                    }
                }
            }
            if iReq >= 0 && !poll.events(iReq).isDisjoint(with: [.hangUp, .error]) {
                closeRequest()
            }
            if iExit >= 0 && poll.isReadable(iExit) {
                exited = true
                // The zombie still has its CPU clock: the one the kernel
                // checked RLIMIT_CPU against, unlike rusage after the reap.
                cpuAtExit = worker.cpuNanoseconds()
                exitedAt = monotonicNanoseconds()
                closeRequest()
            }
        }
        // Connections decided while the loop was ending.
        if let egress { for d in egress.take() { onNetwork(d) } }
    }

    /// A command tool: its exit status decides, its stdout is the result.
    func classifyCommand(_ command: CommandTemplate, exit: ProcessExit) -> CallOutcome {
        switch exit.status {
        case .signaled(let sig):
            return classify(signal: sig)
        case .exited(let code):
            let out = CellProtocol.sanitize(String(decoding: stdout, as: UTF8.self))
            guard command.successExitCodes.contains(code) else {
                let err = diagnosticsText.isEmpty ? out : diagnosticsText
                let tail = String(err.suffix(2000)).trimmingCharacters(in: .whitespacesAndNewlines)
                return .toolError("exit status \(code)" + (tail.isEmpty ? "" : ": \(tail)"))
            }
            let text = JSONValue.object(
                JSONObject([("type", "text"), ("text", .string(out.isEmpty ? "(no output)" : out))]))
            return .success(CellResult(content: [text], structuredContent: nil))
        }
    }

    /// A death by a signal the supervisor did not send.
    func classify(signal sig: Int32) -> CallOutcome {
        switch sig {
        case Signal.cpuLimit: return .limitExceeded(.cpu)
        case Signal.fileSizeLimit: return .limitExceeded(.fileSize)
        // Under the profiler the allowlist kills what it refuses itself,
        // without naming it (the one listener is the profiler's).
        case Signal.badSystemCall where profiling:
            return .sandboxViolation(syscall: "unnamed", architecture: "profiled")
        // The filter kills a non-native architecture (i386 int 0x80, x32)
        // itself, without the listener: SIGSYS is the only trace.
        case Signal.badSystemCall: return .sandboxViolation(syscall: "non-native system call", architecture: "foreign")
        default: return .killedBySignal(sig)
        }
    }

    /// The outcome: the first cause observed wins (`first`), except that
    /// the CPU limit, which the kernel enforces with a signal the worker may
    /// catch, wins when the worker's CPU time had reached it by then.
    func classify(exit: ProcessExit) -> CallOutcome {
        let cpuLimit = UInt64(limits.cpuSeconds) * 1_000_000_000
        if let f = first {
            // The clock sampled is the one the kernel checks the limit
            // against: at or past it, SIGXCPU had been sent.
            if let c = f.cpuNanoseconds, c >= cpuLimit { return .limitExceeded(.cpu) }
            switch f.cause {
            case .seccomp(let s, let a): return .sandboxViolation(syscall: s, architecture: a)
            case .cancelled: return .cancelled
            case .limit(let l): return .limitExceeded(l)
            case .violation(let v): return .protocolViolation(v)
            case .deadline: return .timeout
            case .drift(let d): return .definitionDrift(d)
            case .final: break
            }
        } else {
            // SIGXCPU comes at the soft limit, SIGKILL one second later; a
            // worker that catches SIGXCPU can end any way it likes, so its
            // CPU time is the evidence, not how it ended. The clock read at
            // exit is the one the kernel checks; rusage (the scheduler's
            // precise runtime) reads up to several percent lower, so it only
            // stands in when the exit was not seen.
            if let c = cpuAtExit {
                if c >= cpuLimit { return .limitExceeded(.cpu) }
            } else if exit.userCPUNanoseconds + exit.systemCPUNanoseconds >= cpuLimit {
                return .limitExceeded(.cpu)
            }
            if case .signaled(Signal.cpuLimit) = exit.status { return .limitExceeded(.cpu) }
        }
        if let command { return classifyCommand(command, exit: exit) }
        switch final {
        case .result(let r)?: return .success(r)
        case .error(let m)?: return .toolError(m)
        case .message?, nil: break
        }
        switch exit.status {
        case .signaled(let sig):
            return classify(signal: sig)
        case .exited(let code):
            return .protocolViolation("worker exited with status \(code) without sending a result")
        }
    }

    /// Grows this call's share of the budget to `bytes`; false if the
    /// supervisor-wide total would pass.
    mutating func hold(_ bytes: Int) -> Bool {
        guard bytes > reserved, let budget else { return true }
        // In 1 MiB steps (never past the per-call cap), so a command's
        // stdout does not take the lock at every read.
        let step = min(max(bytes, reserved + (1 << 20)), CallRunner.bufferedOutputCap)
        if budget.reserve(step - reserved) {
            reserved = step
            return true
        }
        if step > bytes, budget.reserve(bytes - reserved) {
            reserved = bytes
            return true
        }
        return false
    }

    /// Starts a server cell's call on `conversation`: the `tools/call` at
    /// once for a server that is ready (started ahead, or a session's),
    /// else `initialize` first, the call following once the server is ready,
    /// within the start-up allowance on top of the call's own deadline.
    /// Returns the first bytes to write to the server.
    mutating func beginServerCall(
        _ conversation: ServerConversation, cell: PreparedCell, spec: ServerSpec, tool: String,
        arguments: JSONObject, start: UInt64
    ) -> [UInt8] {
        var conversation = conversation
        let serverName = cell.manifest.tools.first { $0.name == tool }?.serverName ?? tool
        let input: [UInt8]
        if conversation.phase == .ready {
            input = conversation.call(tool: serverName, arguments: arguments, token: callID)
        } else {
            input = conversation.start()
            serverCall = (serverName, arguments)
            deadlineOverride =
                start + UInt64(limits.timeoutMilliseconds + spec.startupTimeoutMilliseconds) * 1_000_000
        }
        server = conversation
        return input
    }

    /// Bytes from a server cell's stdout: what the conversation makes of
    /// them is acted on here; returns what to write to the server next.
    mutating func handleServer(_ bytes: ArraySlice<UInt8>, onMessage: (WorkerMessage) -> Void) -> [UInt8] {
        var out: [UInt8] = []
        let events: [ServerConversation.Event]
        do { events = try server!.feed(bytes) } catch {
            violation = error.message
            observe(.violation(error.message))
            kill()
            return []
        }
        for e in events {
            switch e {
            case .send(let b): out += b
            case .message(let m): onMessage(m)
            case .ready:
                if stopWhenReady {
                    stoppedReady = true
                } else if let c = serverCall {
                    out += server!.call(tool: c.tool, arguments: c.arguments, token: callID)
                }
            case .listed(let tools):
                listedTools = tools
                stoppedReady = true
            case .drift(let d):
                // Not handed the call: a server that changed what it claims
                // to be gets no arguments.
                observe(.drift(d))
                kill()
            case .final(let f):
                final = f
                observe(.final)
                peakRSS = Self.highWaterRSS(pid: worker.pid)
                if keepAlive { stoppedReady = true } else { killAfterAnswer = true }
            }
        }
        if final == nil && !hold(server!.pendingLineLength) {
            limitHit = .bufferedOutput
            observe(.limit(.bufferedOutput))
            kill()
        }
        return out
    }

    mutating func handle(_ bytes: ArraySlice<UInt8>, onMessage: (WorkerMessage) -> Void) {
        let frames: [JSONValue]
        do {
            frames = try decoder.feed(Array(bytes))
        } catch {
            if case .frameTooLarge(let declared, _) = error {
                // Within the manifest's frameKiB: the supervisor's cap refused it.
                if Int(declared) <= limits.frameKiB << 10 {
                    limitHit = .bufferedOutput
                    observe(.limit(.bufferedOutput))
                }
            }
            violation = error.description
            observe(.violation(error.description))
            kill()
            return
        }
        for f in frames {
            if final != nil {
                violation = "a frame arrived after the final result"
                // Not a later cause but a broken answer: a worker that
                // keeps the protocol writes nothing after its final frame.
                if case .final? = first?.cause { first = (.violation(violation!), first?.cpuNanoseconds) }
                kill()
                return
            }
            do {
                let frame = try CellProtocol.decode(f, callID: callID)
                switch frame {
                case .message(let m): onMessage(m)
                case .result, .error:
                    final = frame
                    observe(.final)
                    // Read the peak RSS now, while the worker still has its
                    // memory: after exit only rusage is left, and with
                    // CLONE_VM it also counts the supervisor's pages at exec.
                    peakRSS = Self.highWaterRSS(pid: worker.pid)
                    // The worker has nothing left to do: end it now rather
                    // than wait for its runtime's exit path.
                    kill()
                }
            } catch {
                violation = error.message
                observe(.violation(error.message))
                kill()
                return
            }
        }
        // The frame being assembled is held until it is complete: it must
        // fit in what all calls together may hold.
        if final == nil && !hold(decoder.pendingFrameLength) {
            limitHit = .bufferedOutput
            observe(.limit(.bufferedOutput))
            kill()
        }
    }
}

/// The syscalls one profiled call made, counted as they are notified: by
/// number in a flat table (no allocation per call), ioctl by request.
/// Bounded: at most `maxIoctlRequests` distinct requests are kept apart.
struct SyscallCounts {
    static let tableSize = 512
    static let maxIoctlRequests = 64
    private var byNumber = [Int](repeating: 0, count: tableSize)
    private var ioctl: [UInt64: Int] = [:]
    private var other = 0
    private static let ioctlNumber = Seccomp.number(of: "ioctl") ?? -1
    private static let names = Mutex<[Int32: String]>([:])

    mutating func add(_ n: SeccompNotification) {
        if n.number == Self.ioctlNumber {
            // ioctl is allowed per request number: count the request.
            let request = n.arguments[1] & 0xFFFF_FFFF
            if ioctl[request] != nil || ioctl.count < Self.maxIoctlRequests {
                ioctl[request, default: 0] += 1
                return
            }
        }
        if n.number >= 0 && Int(n.number) < Self.tableSize {
            byNumber[Int(n.number)] += 1
        } else {
            other += 1
        }
    }

    /// Name → calls made ("ioctl(21505)" per request, as learn mode names
    /// them; "ioctl" for requests past the bound).
    func named() -> [String: Int] {
        var out: [String: Int] = [:]
        for (nr, c) in byNumber.enumerated() where c > 0 {
            out[Self.name(Int32(nr)), default: 0] += c
        }
        for (request, c) in ioctl { out["ioctl(\(request))"] = c }
        if other > 0 { out["other", default: 0] += other }
        return out
    }

    static func name(_ nr: Int32) -> String {
        if let n = names.withLock({ $0[nr] }) { return n }
        let n = Seccomp.name(of: nr)
        names.withLock { $0[nr] = n }
        return n
    }
}
