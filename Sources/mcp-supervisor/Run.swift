import ArgumentParser
import Dispatch
import Foundation
import Logging
import StrictJSON
import SupervisorCore
import SupervisorPlatform
import SupervisorServer
import Synchronization

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve MCP over stdio. Stdout carries only MCP messages; diagnostics go to stderr.",
        discussion: """
            Settings come from the configuration file (--config, else $XDG_CONFIG_HOME/mcp-supervisor/config.json \
            or ~/.config/mcp-supervisor/config.json if present), then from these flags. Without either, manifests/ \
            and policies/ are taken from the working directory or the checkout the binary was built in. \
            SIGHUP reloads the manifests. At the end of stdin, requests already received are served and \
            answered (up to 30 s), then the server exits; SIGTERM or SIGINT stop it at once, killing every \
            worker in flight.
            """)

    @OptionGroup var cellOptions: CommonOptions

    @OptionGroup var serverOptions: ServerOptions

    @Flag(
        name: .long,
        help:
            "Development only: serve the manifests in --manifests without signatures or ledger. Announced on stderr and in the security log, at start and on every call."
    )
    var allowUnsigned = false

    func run() async throws {
        let s = try cellOptions.settings(more: serverOptions.flags)
        var options = ServiceOptions(settings: s)

        var logger = stderrLogger("mcp-supervisor")
        logger.logLevel = Logger.Level(rawValue: s.logLevel) ?? .info

        // The supervisor holds keys and the log: no core dumps, no ptrace by
        // same-uid processes.
        Sys.setNonDumpable()
        Sys.ignoreSignal(Signal.pipe)

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
        let groups = try loadSyscallGroups(s, prefix: "mcp-supervisor")
        let features = KernelFeatures.probe()
        let host = HostSandbox(
            features: features, workerUID: s.workerUID, workerGID: s.workerGID,
            scratchRoot: s.scratchRoot, protectedPaths: [s.stateDirectory])
        let runner: CallRunner
        do { runner = try CallRunner(host: host, logger: logger) } catch {
            printError("mcp-supervisor: cannot prepare the scratch directory \(s.scratchRoot): \(error)")
            throw ExitCode(2)
        }
        runner.enablePrespawn(perCell: options.prespawn, idleSeconds: options.prespawnIdleSeconds)
        try startEgress(runner, settings: s, logger: logger)
        let manifestsDir = s.manifestsDirectory
        let ledgerPath = Ledger.path(stateDirectory: s.stateDirectory)
        // The one trust rule every command that executes a cell follows.
        let source = CellSource(
            allowUnsigned: allowUnsigned, manifestsDirectory: manifestsDir,
            stateDirectory: s.stateDirectory)
        let log: SecurityLog
        do { log = try SecurityLog(stateDirectory: s.stateDirectory) } catch {
            printError("mcp-supervisor: cannot open the security log in \(s.stateDirectory)/security: \(error)")
            throw ExitCode(2)
        }
        let telemetry = try startTelemetry(s, log: log)
        // A supervisor that cannot record does not start (it would have to
        // refuse every call); the reason goes to stderr.
        if let e = log.appendAndWait([
            SecurityEvent(
                .supervisorStart,
                JSONObject([
                    ("version", .string(SupervisorInfo.version)), ("pid", .int(Int64(Sys.getpid()))),
                    ("uid", .int(Int64(Sys.geteuid()))),
                    ("configSha256", .string(sha256Hex(settingsDigest(s)))),
                    ("manifests", .string(s.manifestsDirectory)), ("policies", .string(s.policiesDirectory)),
                    ("features", featureSummary(features, host)),
                ]))
        ]) {
            printError("mcp-supervisor: cannot start: \(e)")
            log.close()
            telemetry?.stop()
            throw ExitCode(2)
        }
        // The ledger may only grow: each load is checked against the last
        // length and head the security log recorded, and anchored in turn.
        let ledgerGuard = LedgerGuard(path: ledgerPath, log: log, anchor: log.ledgerAnchorAtOpen)
        if !source.isUnsigned, let why = ledgerGuard.refusal(Ledger.load(path: ledgerPath)) {
            printError("mcp-supervisor: refusing to start: \(why)")
            log.close(finalEvent: SecurityEvent(.supervisorStop, JSONObject([("reason", "trust ledger refused")])))
            telemetry?.stop()
            throw ExitCode(2)
        }
        let loader: RegistryLoader = { source.registry(groups: groups, host: host, ledgerGuard: ledgerGuard) }
        options.pipeline.unsignedMode = allowUnsigned
        options.pipeline.policyPath = s.policiesDirectory + "/policy.json"
        options.pipeline.quarantineDirectory = Quarantine.directory(stateDirectory: s.stateDirectory)
        options.pipeline.profileDirectory = BehaviourProfiles.directory(stateDirectory: s.stateDirectory)
        if allowUnsigned {
            logger.warning(
                "UNSIGNED DEVELOPMENT MODE: serving \(manifestsDir) without signatures or the trust ledger; never use this in a deployment"
            )
            log.appendAndWait([SecurityEvent(.unsignedMode, JSONObject([("manifests", .string(manifestsDir))]))])
        }
        let service = SupervisorService(
            options: options, runner: runner, logger: logger, log: log, loadRegistry: loader)
        // No tool at all is a configuration mistake, never a server to run:
        // a stdio client would only see an empty tool list.
        if service.currentRegistry.toolNames.isEmpty {
            printError(
                "mcp-supervisor: refusing to start: "
                    + noToolsExplanation(
                        source: source, manifestsDirectory: manifestsDir, stateDirectory: s.stateDirectory,
                        registry: service.currentRegistry, stateNote: stateDirectoryNote(s)))
            service.shutdown(reason: "no usable tools")
            log.close(finalEvent: SecurityEvent(.supervisorStop, JSONObject([("reason", "no usable tools")])))
            telemetry?.stop()
            throw ExitCode(2)
        }
        let metricsFile = try startMetricsFile(s, pipeline: service.pipeline)
        telemetry?.attach(to: service.pipeline, metrics: metricsFile?.metrics)
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
                    logger.warning(
                        "the trust ledger's directory can no longer be watched; changes apply at the next call")
                }
                t.name = "ledger-watch"
                t.start()
            } catch {
                logger.warning(
                    "cannot watch the trust ledger; changes apply at the next call", metadata: ["error": "\(error)"])
            }
        }
        // Which cells and which state: a client that starts the server with
        // another environment learns here where they come from.
        if !allowUnsigned && cellOptions.manifests != nil {
            logger.notice(
                """
                signed mode: cells come from the trust ledger \(ledgerPath); --manifests \(manifestsDir) is not \
                used to serve (only --allow-unsigned serves a manifests directory, for development)
                """)
        }
        logger.info("state directory \(s.stateDirectory)\(stateDirectoryNote(s))")
        logger.info(
            "serving",
            metadata: [
                "cells": "\(allowUnsigned ? "unsigned manifests \(manifestsDir)" : "trust ledger \(ledgerPath)")",
                "state": "\(s.stateDirectory)",
                "tools": "\(service.currentRegistry.toolNames.count)",
                "landlock.abi": "\(features.landlockABI ?? 0)", "uid": "\(Sys.geteuid())",
            ])

        let signals = SignalHandlers()
        signals.on(Signal.hangUp) {
            Task {
                service.reloadPolicy()
                await service.reload()
            }
        }
        for sig in [Signal.terminate, Signal.interrupt] {
            signals.on(sig) {
                service.shutdown(reason: "signal \(sig)")
                // Give the killed workers' calls a moment to record their end.
                DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(200)) {
                    log.close(
                        finalEvent: SecurityEvent(.supervisorStop, JSONObject([("reason", .string(signalName(sig)))])))
                    telemetry?.stop(seconds: 0.5)
                    metricsFile?.stop()
                    Sys.exit(0)
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
        telemetry?.stop()
        metricsFile?.stop()
        Sys.exit(0)
    }
}

/// The metrics textfile of `--metrics-file`, written from now until exit.
/// A file that cannot be written at start is a configuration mistake: the
/// server does not start (later failures are said on stderr and retried).
func startMetricsFile(_ s: SupervisorSettings, pipeline: CallPipeline) throws -> MetricsTextfile? {
    guard let path = s.metricsFile else { return nil }
    let metrics = SupervisorMetrics()
    let file = MetricsTextfile(path: path, metrics: metrics, intervalSeconds: s.metricsIntervalSeconds)
    if let error = file.writeOnce() {
        printError("mcp-supervisor: refusing to start: --metrics-file \(path): \(error)")
        throw ExitCode(2)
    }
    metrics.attach(to: pipeline)
    file.start()
    return file
}

/// A stable digest of the effective settings (recorded at start, so a
/// configuration change shows in the log).
func settingsDigest(_ s: SupervisorSettings) -> [UInt8] {
    JSONValue.object(s.recorded).serializedBytes()
}

func featureSummary(_ f: KernelFeatures, _ h: HostSandbox) -> JSONValue {
    .object(
        JSONObject([
            ("landlockAbi", .int(Int64(f.landlockABI ?? 0))), ("seccompApiLevel", .int(Int64(f.seccompAPILevel))),
            ("seccompUserNotification", .bool(f.seccompUserNotification)), ("userNamespaces", .bool(f.userNamespaces)),
            ("pidNamespaces", .bool(f.pidNamespaces)), ("netNamespaces", .bool(f.netNamespaces)),
            ("boundingSetDropped", .bool(f.canDropBoundingSet)),
            ("workerUid", .int(Int64(h.workerUID))), ("workerGid", .int(Int64(h.workerGID))),
        ]))
}

/// Tells whether a file changed since the last look (one stat).
final class FileWatch: Sendable {
    let path: String
    private let last: Mutex<FileIdentity?>

    init(path: String) {
        self.path = path
        last = Mutex(try? Sys.stat(path))
    }

    func changed() -> Bool {
        let now = try? Sys.stat(path)
        return last.withLock { last in
            if now == last { return false }
            last = now
            return true
        }
    }
}

/// Signal handling through dispatch sources (never in a signal handler).
final class SignalHandlers: @unchecked Sendable {
    // @unchecked: `sources` (which keeps the sources alive) is appended to by the starting thread only;
    // no handler reads it.
    private var sources: [DispatchSourceSignal] = []

    func on(_ sig: Int32, _ body: @escaping @Sendable () -> Void) {
        Sys.ignoreSignal(sig)
        let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
        s.setEventHandler(handler: body)
        s.resume()
        sources.append(s)
    }
}
