import ArgumentParser
import Foundation
import Logging
import StrictJSON
import SupervisorCore
import SupervisorPlatform
import SupervisorServer

/// What `run` (stdio) and `serve` (HTTP) share from their start up to a
/// pipeline with tools: the state directory checked, the security log open
/// and the start recorded, the ledger guarded, the runner with its secrets,
/// prespawn and egress proxy, the service with its first registry. Either
/// command stops here (exit 2, the reason on stderr) when any of it fails.
struct SupervisorStartup {
    let settings: SupervisorSettings
    let options: ServiceOptions
    let logger: Logger
    let features: KernelFeatures
    let host: HostSandbox
    let log: SecurityLog
    let telemetry: Telemetry?
    let ledgerPath: String
    let manifestsDir: String
    let loader: RegistryLoader
    let service: SupervisorService

    static func start(settings s: SupervisorSettings, allowUnsigned: Bool) throws -> SupervisorStartup {
        var options = ServiceOptions(settings: s)

        var logger = stderrLogger("mcp-supervisor")
        logger.logLevel = Logger.Level(rawValue: s.logLevel) ?? .info

        // The supervisor holds keys and the log: no core dumps, no ptrace by
        // same-uid processes.
        Sys.setNonDumpable()
        Sys.ignoreSignal(Signal.pipe)

        // Refused, not repaired: a state directory others could write may
        // already hold their keys, ledger entries or log records.
        // A ledger outside the state directory is held to the same rule.
        let unsafe =
            StatePermissions.problems(stateDirectory: s.stateDirectory)
            + (s.ledgerFile.flatMap { StatePermissions.problem(path: $0) }.map { [$0] } ?? [])
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
        let runner = try makeRunner(host: host, settings: s, options: options, logger: logger)
        let manifestsDir = s.manifestsDirectory
        let ledgerPath = s.ledgerPath
        // The one trust rule every command that executes a cell follows.
        let source = CellSource(
            allowUnsigned: allowUnsigned, manifestsDirectory: manifestsDir,
            stateDirectory: s.stateDirectory, ledgerPath: s.ledgerPath)
        let log: SecurityLog
        do { log = try SecurityLog(stateDirectory: s.stateDirectory) } catch {
            printError("mcp-supervisor: cannot open the security log in \(s.stateDirectory)/security: \(error)")
            throw ExitCode(2)
        }
        let telemetry: Telemetry?
        do { telemetry = try startTelemetry(s, log: log) } catch {
            log.close()
            throw error
        }
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
        return SupervisorStartup(
            settings: s, options: options, logger: logger, features: features, host: host, log: log,
            telemetry: telemetry, ledgerPath: ledgerPath, manifestsDir: manifestsDir, loader: loader, service: service)
    }

    /// A call runner on `host` as every serving command needs it: the secret
    /// store (and the supervisor's environment, taken now, once:
    /// docs/secrets.md), prespawn, and the egress proxy (docs/egress.md).
    static func makeRunner(
        host: HostSandbox, settings s: SupervisorSettings, options: ServiceOptions, logger: Logger
    ) throws -> CallRunner {
        let runner: CallRunner
        let secrets = SecretSources(store: SecretStore(stateDirectory: s.stateDirectory))
        do { runner = try CallRunner(host: host, logger: logger, secrets: secrets) } catch {
            printError("mcp-supervisor: cannot prepare the scratch directory \(host.scratchRoot): \(error)")
            throw ExitCode(2)
        }
        runner.enablePrespawn(perCell: options.prespawn, idleSeconds: options.prespawnIdleSeconds)
        try startEgress(runner, settings: s, logger: logger)
        return runner
    }

    /// Follows the trust ledger for `services` (signed mode): each call's
    /// look, the periodic recheck, and an inotify thread so a revocation
    /// applies without waiting for a call; then says on stderr where cells
    /// and state come from (`manifestsNamed`: --manifests was given).
    func followLedgerAndAnnounce(services: [SupervisorService], allowUnsigned: Bool, manifestsNamed: Bool) {
        let watch = FileWatch(path: ledgerPath)
        if !allowUnsigned {
            // Each pipeline looks before every call with a watch of its own:
            // a change seen first by another pipeline, the recheck or the
            // inotify thread (whose reloads run later, in a task) must still
            // make this pipeline reload before it admits the call.
            for sv in services {
                let own = FileWatch(path: ledgerPath)
                sv.pipeline.onLedgerChange { own.changed() }
            }
            startLedgerRecheck(seconds: settings.ledgerRecheckSeconds, watch: watch) {
                for sv in services { await sv.reload() }
            }
            // Revocation takes effect without waiting for the next call: a
            // thread blocks on inotify until the ledger file changes.
            do {
                let watcher = try FileChangeWatcher(path: ledgerPath)
                let t = Thread { [logger] in
                    while watcher.waitForChange() {
                        if watch.changed() { Task { for sv in services { await sv.reload() } } }
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
        if !allowUnsigned && manifestsNamed {
            logger.notice(
                """
                signed mode: cells come from the trust ledger \(ledgerPath); --manifests \(manifestsDir) is not \
                used to serve (only --allow-unsigned serves a manifests directory, for development)
                """)
        }
        logger.info("state directory \(settings.stateDirectory)\(stateDirectoryNote(settings))")
        logger.info(
            "serving",
            metadata: [
                "cells": "\(allowUnsigned ? "unsigned manifests \(manifestsDir)" : "trust ledger \(ledgerPath)")",
                "state": "\(settings.stateDirectory)",
                "tools": "\(services[0].currentRegistry.toolNames.count)",
                "landlock.abi": "\(features.landlockABI ?? 0)", "uid": "\(Sys.geteuid())",
            ])

    }
}
