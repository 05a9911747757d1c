import ArgumentParser
import Dispatch
import Foundation
import Logging
import SupervisorCore
import SupervisorPlatform
import StrictJSON
import SupervisorServer
#if canImport(Glibc)
import Glibc
#endif

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve MCP over stdio. Stdout carries only MCP messages; diagnostics go to stderr.",
        discussion: """
            Settings come from the configuration file (--config, else $XDG_CONFIG_HOME/mcp-supervisor/config.json \
            or ~/.config/mcp-supervisor/config.json if present), then from these flags. Without either, manifests/ \
            and policies/ are taken from the working directory or the checkout the binary was built in. \
            SIGHUP reloads the manifests; SIGTERM, SIGINT or the end of stdin stop the server after killing \
            every worker in flight.
            """)

    @Option(name: .long, help: "Configuration file (JSON; see docs/configuration.md).")
    var config: String?

    @Option(name: .long, help: "Directory of cell manifests.")
    var manifests: String?

    @Option(name: .long, help: "Directory of policies (syscall-groups.json).")
    var policies: String?

    @Option(name: .long, help: "State directory (logs, keys, ledger).")
    var stateDir: String?

    @Option(name: .long, help: "Parent of the per-call scratch directories.")
    var scratchDir: String?

    @Option(name: .long, help: "uid of workers when run as root (default 65534).")
    var workerUid: UInt32?

    @Option(name: .long, help: "gid of workers when run as root (default 65534).")
    var workerGid: UInt32?

    @Option(name: .long, help: "Calls run in parallel at most (default 4).")
    var maxConcurrentCalls: Int?

    @Option(name: .long, help: "Calls that may wait for a free slot before new ones are refused (default 32).")
    var maxQueuedCalls: Int?

    @Option(name: .long, help: "Tools per tools/list page (default 50).")
    var toolsPageSize: Int?

    @Option(name: .long, help: "Longest accepted client message in bytes (default 4194304).")
    var maxMessageBytes: Int?

    @Option(name: .long, help: "Workers started ahead of the call per recently called cell (default 1; 0: every call spawns on arrival).")
    var prespawn: Int?

    @Option(name: .long, help: "Seconds a prespawned worker may wait for a call before it is ended (default 60).")
    var prespawnIdleSeconds: Int?

    @Flag(name: .long, help: "Development only: serve the manifests in --manifests without signatures or ledger. Announced on stderr and in the security log, at start and on every call.")
    var allowUnsigned = false

    @Option(name: .long, help: "Diagnostics on stderr: trace, debug, info, notice, warning, error, critical (default info).")
    var logLevel: String?

    func validate() throws {
        if let l = logLevel, !ConfigurationFile.logLevels.contains(l) {
            throw ValidationError("--log-level must be one of \(ConfigurationFile.logLevels.joined(separator: ", "))")
        }
        if let n = maxConcurrentCalls, !(1...256).contains(n) { throw ValidationError("--max-concurrent-calls must be 1...256") }
        if let n = maxQueuedCalls, n < 0 { throw ValidationError("--max-queued-calls must be >= 0") }
        if let n = toolsPageSize, !(1...1000).contains(n) { throw ValidationError("--tools-page-size must be 1...1000") }
        if let n = prespawn, !(0...16).contains(n) { throw ValidationError("--prespawn must be 0...16") }
        if let n = prespawnIdleSeconds, !(1...86400).contains(n) { throw ValidationError("--prespawn-idle-seconds must be 1...86400") }
    }

    func run() async throws {
        var file = ConfigurationFile()
        if let path = config ?? ConfigurationFile.defaultPath() {
            do { file = try ConfigurationFile.load(path: SupervisorSettings.absolute(path)) } catch {
                printError("mcp-supervisor: configuration error: \(error)")
                throw ExitCode(2)
            }
        }
        var s = SupervisorSettings()
        s.manifestsDirectory = manifests.map(SupervisorSettings.absolute) ?? file.manifests ?? SupervisorSettings.defaultDirectory("manifests")
        s.policiesDirectory = policies.map(SupervisorSettings.absolute) ?? file.policies ?? SupervisorSettings.defaultDirectory("policies")
        if let d = stateDir.map(SupervisorSettings.absolute) ?? file.stateDirectory { s.stateDirectory = d }
        if let d = scratchDir.map(SupervisorSettings.absolute) ?? file.scratchDirectory { s.scratchRoot = d }
        s.workerUID = workerUid ?? file.workerUID
        s.workerGID = workerGid ?? file.workerGID
        var options = ServiceOptions()
        options.maxConcurrentCalls = maxConcurrentCalls ?? file.maxConcurrentCalls ?? options.maxConcurrentCalls
        options.maxQueuedCalls = maxQueuedCalls ?? file.maxQueuedCalls ?? options.maxQueuedCalls
        options.toolsPageSize = toolsPageSize ?? file.toolsPageSize ?? options.toolsPageSize
        options.maxMessageBytes = maxMessageBytes ?? file.maxMessageBytes ?? options.maxMessageBytes

        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var logger = Logger(label: "mcp-supervisor")
        logger.logLevel = Logger.Level(rawValue: logLevel ?? file.logLevel ?? "info") ?? .info

        // The supervisor holds keys and the log: no core dumps, no ptrace by
        // same-uid processes.
        Sys.setNonDumpable()
        signal(SIGPIPE, SIG_IGN)

        // Refused, not repaired: a state directory others could write may
        // already hold their keys, ledger entries or log records.
        let unsafe = StatePermissions.problems(stateDirectory: s.stateDirectory)
        if !unsafe.isEmpty {
            for p in unsafe { printError("mcp-supervisor: refusing to start: \(p)") }
            throw ExitCode(2)
        }
        do { try s.prepareStateDirectory() } catch {
            printError("mcp-supervisor: cannot create the state directory: \(error)")
            throw ExitCode(2)
        }
        let groupsPath = s.syscallGroupsPath
        let groups: SyscallGroups
        do { groups = try SyscallGroups.load(path: groupsPath) } catch {
            printError("mcp-supervisor: \(error)")
            throw ExitCode(2)
        }
        let features = KernelFeatures.probe()
        let host = HostSandbox(features: features, workerUID: s.workerUID, workerGID: s.workerGID,
                               scratchRoot: s.scratchRoot, protectedPaths: [s.stateDirectory])
        let runner: CallRunner
        do { runner = try CallRunner(host: host, logger: logger) } catch {
            printError("mcp-supervisor: cannot prepare the scratch directory \(s.scratchRoot): \(error)")
            throw ExitCode(2)
        }
        options.prespawn = prespawn ?? file.prespawn ?? options.prespawn
        options.prespawnIdleSeconds = prespawnIdleSeconds ?? file.prespawnIdleSeconds ?? options.prespawnIdleSeconds
        runner.enablePrespawn(perCell: options.prespawn, idleSeconds: options.prespawnIdleSeconds)
        let manifestsDir = s.manifestsDirectory
        let ledgerPath = Ledger.path(stateDirectory: s.stateDirectory)
        // The one trust rule every command that executes a cell follows.
        let source = CellSource(allowUnsigned: allowUnsigned, manifestsDirectory: manifestsDir,
                                stateDirectory: s.stateDirectory)
        let log: SecurityLog
        do { log = try SecurityLog(stateDirectory: s.stateDirectory) } catch {
            printError("mcp-supervisor: cannot open the security log in \(s.stateDirectory)/security: \(error)")
            throw ExitCode(2)
        }
        // A supervisor that cannot record does not start (it would have to
        // refuse every call); the reason goes to stderr.
        if let e = log.appendAndWait([SecurityEvent(.supervisorStart, JSONObject([
            ("version", .string(SupervisorInfo.version)), ("pid", .int(Int64(getpid()))), ("uid", .int(Int64(geteuid()))),
            ("configSha256", .string(sha256Hex(settingsDigest(s, options, file)))),
            ("manifests", .string(s.manifestsDirectory)), ("policies", .string(s.policiesDirectory)),
            ("features", featureSummary(features, host)),
        ]))]) {
            printError("mcp-supervisor: cannot start: \(e)")
            log.close()
            throw ExitCode(2)
        }
        // The ledger may only grow: each load is checked against the last
        // length and head the security log recorded, and anchored in turn.
        let ledgerGuard = LedgerGuard(path: ledgerPath, log: log, anchor: log.ledgerAnchorAtOpen)
        if !source.isUnsigned, let why = ledgerGuard.refusal(Ledger.load(path: ledgerPath)) {
            printError("mcp-supervisor: refusing to start: \(why)")
            log.close(finalEvent: SecurityEvent(.supervisorStop, JSONObject([("reason", "trust ledger refused")])))
            throw ExitCode(2)
        }
        let loader: RegistryLoader = { source.registry(groups: groups, host: host, ledgerGuard: ledgerGuard) }
        options.unsignedMode = allowUnsigned
        options.policyPath = s.policiesDirectory + "/policy.json"
        if allowUnsigned {
            logger.warning("UNSIGNED DEVELOPMENT MODE: serving \(manifestsDir) without signatures or the trust ledger; never use this in a deployment")
            log.appendAndWait([SecurityEvent(.unsignedMode, JSONObject([("manifests", .string(manifestsDir))]))])
        }
        let service = SupervisorService(options: options, runner: runner, logger: logger, log: log, loadRegistry: loader)
        let watch = FileWatch(path: ledgerPath)
        if !allowUnsigned {
            service.pipeline.onLedgerChange { watch.changed() }
            // Revocation takes effect without waiting for the next call: a
            // thread blocks on inotify until the ledger file changes.
            do {
                let watcher = try FileChangeWatcher(path: ledgerPath)
                let t = Thread { [logger] in
                    while watcher.waitForChange() {
                        if watch.changed() { Task { await service.reload() } }
                    }
                    logger.warning("the trust ledger's directory can no longer be watched; changes apply at the next call")
                }
                t.name = "ledger-watch"
                t.start()
            } catch {
                logger.warning("cannot watch the trust ledger; changes apply at the next call", metadata: ["error": "\(error)"])
            }
        }
        logger.info("serving", metadata: [
            "manifests": "\(manifestsDir)", "tools": "\(service.currentRegistry.toolNames.count)",
            "landlock.abi": "\(features.landlockABI ?? 0)", "uid": "\(geteuid())",
        ])

        let signals = SignalHandlers()
        signals.on(SIGHUP) {
            Task {
                service.reloadPolicy()
                await service.reload()
            }
        }
        for sig in [SIGTERM, SIGINT] {
            signals.on(sig) {
                service.shutdown(reason: "signal \(sig)")
                // Give the killed workers' calls a moment to record their end.
                DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(200)) {
                    log.close(finalEvent: SecurityEvent(.supervisorStop, JSONObject([("reason", .string(signalName(sig)))])))
                    Glibc.exit(0)
                }
            }
        }
        // At most this many requests unanswered before the reader stops
        // reading stdin: every call that may run or wait, plus room for the
        // refusals of a full pool to be seen.
        let transport = BlockingStdioTransport(
            maxMessageBytes: options.maxMessageBytes,
            maxOutstanding: options.maxConcurrentCalls + options.maxQueuedCalls + 64, logger: logger)
        try await service.run(transport: transport)
        // What the client has not read yet gets a moment; a client that does
        // not read cannot hold the shutdown.
        _ = transport.flush(seconds: 2)
        log.close(finalEvent: SecurityEvent(.supervisorStop, JSONObject([("reason", "end of input")])))
        Glibc.exit(0)
    }
}

/// A stable digest of the effective settings (recorded at start, so a
/// configuration change shows in the log).
func settingsDigest(_ s: SupervisorSettings, _ o: ServiceOptions, _ f: ConfigurationFile) -> [UInt8] {
    JSONValue.object(JSONObject([
        ("manifests", .string(s.manifestsDirectory)), ("policies", .string(s.policiesDirectory)),
        ("state", .string(s.stateDirectory)), ("scratch", .string(s.scratchRoot)),
        ("workerUid", s.workerUID.map { .int(Int64($0)) } ?? .null), ("workerGid", s.workerGID.map { .int(Int64($0)) } ?? .null),
        ("maxConcurrentCalls", .int(Int64(o.maxConcurrentCalls))), ("maxQueuedCalls", .int(Int64(o.maxQueuedCalls))),
        ("toolsPageSize", .int(Int64(o.toolsPageSize))), ("maxMessageBytes", .int(Int64(o.maxMessageBytes))),
        ("prespawn", .int(Int64(o.prespawn))), ("prespawnIdleSeconds", .int(Int64(o.prespawnIdleSeconds))),
        ("configFile", f.path.map { .string($0) } ?? .null),
    ])).serializedBytes()
}

func featureSummary(_ f: KernelFeatures, _ h: HostSandbox) -> JSONValue {
    .object(JSONObject([
        ("landlockAbi", .int(Int64(f.landlockABI ?? 0))), ("seccompApiLevel", .int(Int64(f.seccompAPILevel))),
        ("seccompUserNotification", .bool(f.seccompUserNotification)), ("userNamespaces", .bool(f.userNamespaces)),
        ("pidNamespaces", .bool(f.pidNamespaces)), ("boundingSetDropped", .bool(f.canDropBoundingSet)),
        ("workerUid", .int(Int64(h.workerUID))), ("workerGid", .int(Int64(h.workerGID))),
    ]))
}

/// Tells whether a file changed since the last look (one stat).
final class FileWatch: @unchecked Sendable {
    let path: String
    private let lock = NSLock()
    private var last: FileIdentity?

    init(path: String) {
        self.path = path
        last = try? Sys.stat(path)
    }

    func changed() -> Bool {
        let now = try? Sys.stat(path)
        lock.lock()
        defer { lock.unlock() }
        if now == last { return false }
        last = now
        return true
    }
}

/// Signal handling through dispatch sources (never in a signal handler).
final class SignalHandlers: @unchecked Sendable {
    private var sources: [DispatchSourceSignal] = []

    func on(_ sig: Int32, _ body: @escaping @Sendable () -> Void) {
        signal(sig, SIG_IGN)
        let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
        s.setEventHandler(handler: body)
        s.resume()
        sources.append(s)
    }
}
