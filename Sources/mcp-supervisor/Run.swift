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
        let startup = try SupervisorStartup.start(settings: s, allowUnsigned: allowUnsigned)
        let (options, logger, log, telemetry, service) = (
            startup.options, startup.logger, startup.log, startup.telemetry, startup.service
        )
        let metricsFile = try startMetricsFile(s, pipeline: service.pipeline)
        telemetry?.attach(to: service.pipeline, metrics: metricsFile?.metrics)
        startup.followLedgerAndAnnounce(
            services: [service], allowUnsigned: allowUnsigned, manifestsNamed: cellOptions.manifests != nil)

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

/// The periodic look at the ledger (`ledgerRecheckSeconds`, 0: none). inotify
/// sees a change made in place on a local filesystem at once, but not one
/// made on another host (a network filesystem, a directory synchronised from
/// elsewhere); this bounds how long in-flight workers of a revoked version
/// and the tool list wait for such a change. New calls look before each call.
func startLedgerRecheck(seconds: Int, watch: FileWatch, reload: @escaping @Sendable () async -> Void) {
    guard seconds > 0 else { return }
    let t = Thread {
        while true {
            Thread.sleep(forTimeInterval: Double(seconds))
            if watch.changed() { Task { await reload() } }
        }
    }
    t.name = "ledger-recheck"
    t.start()
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
