import ArgumentParser
import Dispatch
import Foundation
import Logging
import NIOCore
import NIOPosix
import StrictJSON
import SupervisorCore
import SupervisorPlatform
import SupervisorServer
import Synchronization

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve MCP over Streamable HTTP (both eras), with bearer-token authorization (docs/http.md).",
        discussion: """
            Listens on --http (loopback by default); another address is served only when named, and without TLS \
            with a warning. Callers are authenticated from the file given with --http-config: OAuth 2.1 bearer \
            JWTs of a configured issuer, or static tokens stored as SHA-256 digests. Settings of the cells, the \
            pipeline and the state directory are those of `run`. SIGHUP reloads the manifests and the policy; \
            SIGTERM or SIGINT stop the server, killing every worker in flight.
            """)

    @OptionGroup var cellOptions: CommonOptions

    @OptionGroup var serverOptions: ServerOptions

    @Option(name: .customLong("http"), help: "ADDRESS:PORT to listen on (an IP literal; [::1]:PORT for IPv6).")
    var http = "127.0.0.1:8765"

    @Option(name: .customLong("http-config"), help: "The HTTP settings: authorization, origins, TLS, limits (JSON).")
    var httpConfig: String

    @Flag(
        name: .long,
        help:
            "Development only: serve the manifests in --manifests without signatures or ledger. Announced on stderr and in the security log, at start and on every call."
    )
    var allowUnsigned = false

    func run() async throws {
        let listen: ListenAddress
        let loopback: Bool
        do { (listen, loopback) = try ListenAddress.parseAny(http) } catch {
            printError("mcp-supervisor: \(error)")
            throw ExitCode(2)
        }
        let httpSettings: HTTPConfiguration
        do { httpSettings = try HTTPConfiguration.load(path: httpConfig) } catch {
            printError("mcp-supervisor: refusing to start: \(error)")
            throw ExitCode(2)
        }
        // Before anything starts: a key others could read is refused.
        var sharedApprovals: ApprovalStates? = nil
        if let a = httpSettings.approvalState {
            do {
                let key = try ApprovalStates.loadKey(path: a.keyFile)
                try ApprovalStates.checkUsedDirectory(a.usedDirectory)
                sharedApprovals = ApprovalStates(key: key, usedDirectory: a.usedDirectory)
            } catch {
                printError("mcp-supervisor: refusing to start: \(httpConfig): approvalState: \(error)")
                throw ExitCode(2)
            }
        }
        let s = try cellOptions.settings(more: serverOptions.flags)
        let startup = try SupervisorStartup.start(settings: s, allowUnsigned: allowUnsigned)
        let (options, logger, log, telemetry, service) = (
            startup.options, startup.logger, startup.log, startup.telemetry, startup.service
        )
        let (features, loader) = (startup.features, startup.loader)
        // Tenants (docs/http.md): a pipeline each, with its own cells,
        // policy, runner (workers, prespawned ones included) and scratch.
        var allServices = [service]
        var pipelines: [String?: CallPipeline] = [:]
        if httpSettings.tenants.isEmpty {
            pipelines[nil] = service.pipeline
        }
        for t in httpSettings.tenants {
            let tenantHost = HostSandbox(
                features: features, workerUID: s.workerUID, workerGID: s.workerGID,
                scratchRoot: s.scratchRoot + "/tenant-" + t.name, protectedPaths: [s.stateDirectory])
            let tenantRunner = try SupervisorStartup.makeRunner(
                host: tenantHost, settings: s, options: options, logger: logger)
            var tenantOptions = options
            if let p = t.policy { tenantOptions.pipeline.policyPath = p }
            let visible = Set(t.cells)
            let tenantLoader: RegistryLoader = {
                let all = loader()
                return CellRegistry(cells: all.cells.filter { visible.contains($0.name) }, problems: [])
            }
            let ts = SupervisorService(
                options: tenantOptions, runner: tenantRunner, logger: logger, log: log, loadRegistry: tenantLoader)
            allServices.append(ts)
            pipelines[t.name] = ts.pipeline
        }
        let services = allServices
        // One key and one used-state directory for every pipeline: a state
        // binds its tenant, so sharing them keeps tenants apart.
        if let sharedApprovals { for sv in services { sv.pipeline.approvalStates = sharedApprovals } }
        let metricsFile = try startMetricsFile(s, pipeline: service.pipeline)
        telemetry?.attach(to: service.pipeline, metrics: metricsFile?.metrics)
        // Tenant pipelines count their calls and trace them too (the worker
        // gauge counts the default pipeline's workers only).
        for sv in services.dropFirst() {
            if let m = metricsFile?.metrics { sv.pipeline.metrics = m }
            telemetry?.attach(to: sv.pipeline, metrics: nil)
        }
        startup.followLedgerAndAnnounce(
            services: services, allowUnsigned: allowUnsigned, manifestsNamed: cellOptions.manifests != nil)

        let signals = SignalHandlers()
        signals.on(Signal.hangUp) {
            Task {
                for sv in services {
                    sv.reloadPolicy()
                    await sv.reload()
                }
            }
        }
        for sig in [Signal.terminate, Signal.interrupt] {
            signals.on(sig) {
                for sv in services { sv.shutdown(reason: "signal \(sig)") }
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
        let endpoint = StreamableHTTPEndpoint(
            pipelines: pipelines, log: log, logger: logger, pageSize: options.toolsPageSize,
            maxMessageBytes: min(options.maxMessageBytes, httpSettings.limits.maxBodyBytes),
            maxSessions: httpSettings.limits.maxSessions)
        // 2026-07-28: a tool-list change reaches only the subscribed streams.
        for p in pipelines.values { p.onToolsChanged { [endpoint] in endpoint.toolsChanged(in: p) } }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let scheme = httpSettings.tls == nil ? "http" : "https"
        let tls: (@Sendable (Channel) throws -> Void)?
        do { tls = try HTTPTLS.handlerFactory(httpSettings.tls) } catch {
            printError("mcp-supervisor: refusing to start: \(error)")
            throw ExitCode(2)
        }
        if let o = httpSettings.oauth, o.jwksURL.hasPrefix("http://"),
            !["http://127.0.0.1", "http://localhost", "http://[::1]"].contains(where: { o.jwksURL.hasPrefix($0) })
        {
            printError(
                "mcp-supervisor: WARNING: oauth.jwksUrl \(o.jwksURL) is plain http: whoever can alter that traffic "
                    + "can make the server accept tokens it signed; use https")
        }
        if !loopback && tls == nil {
            printError(
                "mcp-supervisor: WARNING: serving \(listen.hostForURL):\(listen.port) without TLS: bearer tokens and "
                    + "tool results cross the network in clear text; configure tls in \(httpConfig) (docs/http.md)")
        }
        // Bound first, then the app: with port 0 (any free port) the Host
        // rule and the default resource URL need the port the kernel chose.
        // A connection accepted before the app is set is closed.
        let slot = HTTPAppSlot()
        let channel: Channel
        do {
            channel = try slot.bind(listen, group: group, tls: tls)
            let bound = listen.withPort(channel.localAddress?.port ?? listen.port)
            slot.app = MCPHTTPApp(
                endpoint: endpoint, auth: BearerAuthenticator(config: httpSettings),
                requestGuard: HTTPRequestGuard(listen: bound, loopback: loopback, config: httpSettings),
                config: httpSettings, listenURL: "\(scheme)://\(bound.hostForURL):\(bound.port)", log: log,
                logger: logger)
        } catch {
            printError("mcp-supervisor: cannot listen on \(http): \(error)")
            for sv in services { sv.shutdown(reason: "cannot listen") }
            log.close(finalEvent: SecurityEvent(.supervisorStop, JSONObject([("reason", "cannot listen")])))
            throw ExitCode(2)
        }
        let port = channel.localAddress?.port ?? listen.port
        // The one line a script waits for (stderr; stdout stays empty).
        printError("mcp-supervisor: serving MCP on \(scheme)://\(listen.hostForURL):\(port)/mcp")
        try await channel.closeFuture.get()
        endpoint.closeAll()
        Sys.exit(0)
    }
}

/// Lets the app be set once the real port is known (port 0).
final class HTTPAppSlot: Sendable {
    private let stored = Mutex<MCPHTTPApp?>(nil)
    var app: MCPHTTPApp? {
        get { stored.withLock { $0 } }
        set { stored.withLock { $0 = newValue } }
    }

    func bind(_ listen: ListenAddress, group: EventLoopGroup, tls: (@Sendable (Channel) throws -> Void)?) throws
        -> Channel
    {
        try ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 256)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    guard let app = self.app else { throw ChannelError.ioOnClosedChannel }
                    try app.configure(channel, tls: tls)
                }
            }
            .bind(host: listen.host, port: listen.port)
            .wait()
    }
}
