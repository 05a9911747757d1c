import Foundation
import Logging
import MCP
import StrictJSON
import SupervisorCore
import SupervisorPlatform
import Synchronization

/// Serving knobs; defaults in docs/configuration.md.
public struct ServiceOptions: Sendable {
    // Defaults from the settings table (SupervisorCore/Setting.swift).
    public var maxConcurrentCalls = Setting.maxConcurrentCalls.integerDefault
    public var maxQueuedCalls = Setting.maxQueuedCalls.integerDefault
    public var toolsPageSize = Setting.toolsPageSize.integerDefault
    public var maxMessageBytes = Setting.maxMessageBytes.integerDefault
    /// Workers started ahead of the call per recently called cell.
    public var prespawn = Setting.prespawn.integerDefault
    public var prespawnIdleSeconds = Setting.prespawnIdleSeconds.integerDefault
    /// What the call pipeline is given (policy, quarantine, profiles, …).
    public var pipeline = PipelineOptions()
    public init() {}
}

/// Loads the cells. Called at start and on SIGHUP.
public typealias RegistryLoader = @Sendable () -> CellRegistry

/// The MCP adapter of one stdio session: the SDK's `Server` answers
/// initialize, ping, tools/list and logging/setLevel; every tools/call goes
/// from the transport to the `CallPipeline` and back, as plain JSON.
public final class SupervisorService: Sendable {
    public let pipeline: CallPipeline
    let options: ServiceOptions
    let logger: Logger
    let log: SecurityLog
    let server: Server
    /// The local user; the client's name is an attribute of the session.
    public let session = CallSession(principal: "uid:\(geteuid())")
    /// The level set by logging/setLevel: cell logs below it are not sent.
    let clientLogLevel = Mutex(LogLevel.info)
    /// Reports the protocol version the client asked for in initialize.
    let initializeVersion = Mutex<(@Sendable () -> String?)?>(nil)
    /// The client declared form elicitation in initialize (approvals).
    let clientElicits = Mutex(false)

    public init(
        options: ServiceOptions, runner: CallRunner, logger: Logger, log: SecurityLog,
        loadRegistry: @escaping RegistryLoader
    ) {
        self.log = log
        self.options = options
        self.logger = logger
        let pool = CallPool(threads: options.maxConcurrentCalls, queueLimit: options.maxQueuedCalls)
        pipeline = CallPipeline(
            runner: runner, pool: pool, log: log, logger: logger, options: options.pipeline,
            loadRegistry: loadRegistry)
        server = Server(
            name: "mcp-supervisor", version: SupervisorInfo.version,
            instructions: Self.instructions(options),
            capabilities: .init(logging: .init(), tools: .init(listChanged: true)),
            // Not .strict: the SDK's strict check races its own initialize
            // handler and drops a pipelined request without an answer. The
            // MessageGate enforces "initialize first" before the SDK.
            configuration: .default)
    }

    static let instructions = "Every tool call runs in a fresh, kernel-sandboxed process."

    /// With the catalogue configured, the model learns that the list may not
    /// hold every tool and how to find the rest (docs/catalogue.md).
    static func instructions(_ options: ServiceOptions) -> String {
        guard options.pipeline.catalogue.visibleLimit > 0 else { return instructions }
        return instructions + " When many tools are available, tools/list holds only some of them: find the others "
            + "with \(Catalogue.searchTool) and enable them with \(Catalogue.enableTool) before calling them."
    }

    public var currentRegistry: CellRegistry { pipeline.registry }

    /// Serves until stdin ends (and every request received is answered).
    public func run(transport: BlockingStdioTransport) async throws {
        initializeVersion.withLock { $0 = { [transport] in transport.requestedProtocolVersion.value } }
        transport.callHandler.value = { [self] call, reply in serve(call, reply) }
        let modern = ModernDispatcher(
            pipeline: pipeline, session: session, transport: transport, pageSize: options.toolsPageSize,
            instructions: Self.instructions(options))
        transport.modern.value = modern
        // In the 2026-07-28 era a list change reaches only the clients that
        // subscribed to it; never unsolicited.
        let notify: @Sendable () -> Void = { [server, transport] in
            if transport.era.value == .modern {
                modern.toolsChanged()
            } else {
                Task { try? await server.notify(ToolListChangedNotification.message()) }
            }
        }
        pipeline.onToolsChanged(notify)
        // A catalogue enable changes this session's list alone.
        session.onToolListChanged(notify)
        await registerHandlers()
        try await server.start(transport: transport) { [self] client, capabilities in
            clientElicits.withLock { $0 = ElicitationApprover.supportsForm(capabilities) }
            // Client-supplied: bounded before it reaches the log or any call.start.
            let name = SecurityEvent.bounded(client.name)
            let version = SecurityEvent.bounded(client.version)
            logger.info("client initialized", metadata: ["client.name": "\(name)", "client.version": "\(version)"])
            session.clientName = name
            var f = JSONObject([
                ("principal", .string(session.principal)), ("clientName", .string(name)),
                ("clientVersion", .string(version)), ("protocolEra", "handshake"),
            ])
            if let v = initializeVersion.withLock({ $0 })?() { f["protocolVersion"] = .string(v) }
            do { try await log.append([SecurityEvent(.clientInitialize, f)]) } catch {
                logger.error("client.initialize not recorded", metadata: ["error": "\(error)"])
            }
        }
        await server.waitUntilCompleted()
        pipeline.shutdown(reason: "end of input")
        await server.stop()
    }

    /// Stops accepting work and kills every worker in flight.
    public func shutdown(reason: String) { pipeline.shutdown(reason: reason) }

    public func reload() async { await pipeline.reload() }

    @discardableResult
    public func reloadPolicy() -> Bool { pipeline.reloadPolicy() }

    /// One tools/call: the pipeline's task, cancelled with the request.
    func serve(_ call: ToolCall, _ reply: DirectCall) {
        var call = call
        if reply.modern == nil {
            call.approver = ElicitationApprover(server: server, supported: clientElicits.withLock { $0 })
        }
        let onMessage = messageRelay(token: call.progressToken, reply)
        let task = Task { [pipeline, session] in
            reply.finish(await pipeline.call(call, session: session, onMessage: onMessage))
        }
        reply.whenCancelled { task.cancel() }
    }

    /// Progress and log messages of a call's worker, as MCP notifications.
    /// Runs on the call's pool thread; queuing never blocks.
    func messageRelay(token: JSONValue?, _ reply: DirectCall) -> @Sendable (WorkerMessage) -> Void {
        { [self] m in
            switch m {
            case .progress(let p, let total, let message):
                guard let token else { return }
                var params = JSONObject([("progressToken", token), ("progress", .double(p))])
                if let total { params["total"] = .double(total) }
                if let message { params["message"] = .string(message) }
                reply.notify("notifications/progress", params)
            case .log(let level, let message, let data):
                guard let l = LogLevel(rawValue: level) else { return }
                // A modern request asks for logs in its own envelope; none if it does not.
                let min: LogLevel
                if let envelope = reply.modern {
                    guard let asked = envelope.logLevel.flatMap(LogLevel.init(rawValue:)) else { return }
                    min = asked
                } else {
                    min = clientLogLevel.withLock { $0 }
                }
                guard (Self.levelOrder.firstIndex(of: l) ?? 0) >= (Self.levelOrder.firstIndex(of: min) ?? 0) else {
                    return
                }
                var payload = JSONObject([("message", .string(message))])
                if let data { payload["data"] = data }
                reply.notify(
                    "notifications/message",
                    JSONObject([
                        ("level", .string(level)), ("logger", "cell"),
                        ("data", .object(payload)),
                    ]))
            }
        }
    }

    static let levelOrder: [LogLevel] = [.debug, .info, .notice, .warning, .error, .critical, .alert, .emergency]

    private func registerHandlers() async {
        await server.withMethodHandler(ListTools.self) { [self] params in
            try self.listTools(cursor: params.cursor)
        }
        await server.withMethodHandler(SetLoggingLevel.self) { [self] params in
            clientLogLevel.withLock { $0 = params.level }
            return Empty()
        }
    }

    // MARK: tools/list

    /// The session's tools (all of them unless the catalogue is on,
    /// docs/catalogue.md) in registry order, then set_phase on the last page.
    func listTools(cursor: String?) throws -> ListTools.Result {
        let (catalogue, cells) = pipeline.toolList(session: session)
        let listed = catalogue + cells
        var start = 0
        if let cursor {
            guard cursor.hasPrefix("o"), let n = Int(cursor.dropFirst()), n >= 0, n < listed.count else {
                throw MCPError.invalidParams("Invalid cursor")
            }
            start = n
        }
        let end = min(start + options.toolsPageSize, listed.count)
        var tools = listed[start..<end].map(Self.mcpTool)
        if end == listed.count, let phase = pipeline.phaseToolDefinition() {
            tools.append(Self.mcpTool(phase))
        }
        return ListTools.Result(tools: tools, nextCursor: end < listed.count ? "o\(end)" : nil)
    }

    static func mcpTool(_ t: CellManifest.Tool) -> Tool {
        var ann = Tool.Annotations()
        if let a = t.annotations {
            ann.title = a["title"]?.stringValue
            ann.readOnlyHint = a["readOnlyHint"]?.boolValue
            ann.destructiveHint = a["destructiveHint"]?.boolValue
            ann.idempotentHint = a["idempotentHint"]?.boolValue
            ann.openWorldHint = a["openWorldHint"]?.boolValue
        }
        return Tool(
            name: t.name, title: t.title, description: t.description,
            inputSchema: JSONValue.object(t.inputSchema).mcpValue, annotations: ann,
            outputSchema: t.outputSchema.map { JSONValue.object($0).mcpValue })
    }
}

public enum SupervisorInfo {
    public static let version = "0.1.0"
}
