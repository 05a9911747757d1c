import Foundation
import Logging
import MCP
import StrictJSON
import SupervisorCore
import SupervisorPlatform

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
    /// tools/call on the direct path (false: through the SDK's dispatch).
    public var directCalls = true
    /// Record tool arguments in call.start events (otherwise only their digest).
    public var recordArguments = false
    /// Serve manifests without signatures (development only; announced at
    /// start and on every call).
    public var unsignedMode = false
    /// The policy file; a missing file refuses every call (deny by default).
    public var policyPath: String?
    public init() {}
}

/// Loads the cells. Called at start and on SIGHUP.
public typealias RegistryLoader = @Sendable () -> CellRegistry

/// The MCP server: tools come only from the registered cells' manifests;
/// every tools/call runs in its own worker through the CallRunner.
public final class SupervisorService: @unchecked Sendable {
    let options: ServiceOptions
    let logger: Logger
    let runner: CallRunner
    let pool: CallPool
    let loadRegistry: RegistryLoader
    let server: Server
    let log: SecurityLog
    /// The local user; the client's name is an attribute of the session.
    let principal = "uid:\(geteuid())"
    private var clientName: String?
    private var policy: Policy?
    private var policyError: String?
    private var phase = "default"
    private var succeededTools = Set<String>()
    let policyState = PolicyState()
    public static let phaseTool = "set_phase"
    private let state = NSLock()
    private var registry: CellRegistry
    private var inFlight: [UInt64: (cancel: CallCancellation, cell: String, version: String)] = [:]
    /// Called before each call: true when the trust ledger changed on disk.
    public var ledgerChanged: (@Sendable () -> Bool)?
    private var nextCall: UInt64 = 0
    private var clientLogLevel: LogLevel = .info
    private var shuttingDown = false

    public init(options: ServiceOptions, runner: CallRunner, logger: Logger, log: SecurityLog,
                loadRegistry: @escaping RegistryLoader) {
        self.log = log
        self.options = options
        self.runner = runner
        self.logger = logger
        self.loadRegistry = loadRegistry
        self.pool = CallPool(threads: options.maxConcurrentCalls, queueLimit: options.maxQueuedCalls)
        self.registry = loadRegistry()
        runner.prespawner?.serve(only: registry.cells)
        self.server = Server(
            name: "mcp-supervisor", version: SupervisorInfo.version,
            instructions: "Every tool call runs in a fresh, kernel-sandboxed process.",
            capabilities: .init(logging: .init(), tools: .init(listChanged: true)),
            // Not .strict: the SDK's strict check races its own initialize
            // handler and drops a pipelined request without an answer. The
            // MessageGate enforces "initialize first" before the SDK.
            configuration: .default)
        for p in registry.problems { logger.error("cell refused", metadata: ["problem": "\(p)"]) }
        log.appendAndWait(Self.loadEvents(registry))
        warmUp(registry)
        _ = reloadPolicy()
        phase = policy?.initialPhase ?? "default"
    }

    /// Loads the policy file. A broken file keeps the previous policy.
    @discardableResult
    public func reloadPolicy() -> Bool {
        guard let path = options.policyPath else { return false }
        do {
            let p = try Policy.load(path: path)
            state.withLock {
                policy = p
                policyError = nil
            }
            logger.info("policy loaded", metadata: ["policy": "\(path)", "policy.sha256": "\(p.sha256)"])
            log.appendAndWait([SecurityEvent(.policyLoaded, JSONObject([("policy", .string(path)), ("policySha256", .string(p.sha256)), ("ok", true)]))])
            return true
        } catch {
            let kept = state.withLock { () -> Bool in
                if policy == nil { policyError = error.description }
                return policy != nil
            }
            logger.error("policy not loaded\(kept ? "; the previous policy stays in force" : "; every call is refused")", metadata: ["error": "\(error)"])
            log.appendAndWait([SecurityEvent(.policyLoaded, JSONObject([("policy", .string(path)), ("ok", false), ("error", .string(error.description)),
                                                                        ("keptPrevious", .bool(kept))]))])
            return false
        }
    }

    /// Verifies every cell's files in the background so that the first
    /// calls do not pay for hashing; a mismatch is logged and recorded now
    /// (and every call to that cell is refused).
    func warmUp(_ r: CellRegistry) {
        let cells = r.cells
        let log = self.log
        let logger = self.logger
        Thread.detachNewThread {
            for c in cells {
                do { try c.verifyFiles() } catch {
                    logger.error("cell quarantined", metadata: ["cell.name": "\(c.name)", "error": "\(error)"])
                    log.appendAndWait([SecurityEvent(.cellRefused, JSONObject([
                        ("manifest", .string(c.manifest.sourcePath)), ("cell", .string(c.name)), ("reason", .string("\(error)")),
                    ]))])
                }
            }
        }
    }

    static func loadEvents(_ r: CellRegistry) -> [SecurityEvent] {
        var events = r.problems.map {
            SecurityEvent(.cellRefused, JSONObject([("manifest", .string($0.path)), ("reason", .string($0.message))]))
        }
        let cells: [JSONValue] = r.cells.map { c in
            .object(JSONObject([("cell", .string(c.name)), ("version", .string(c.version)),
                                ("manifestSha256", .string(c.manifest.manifestSHA256)),
                                ("executableSha256", .string(c.manifest.executable.sha256))]))
        }
        events.append(SecurityEvent(.cellsLoaded, JSONObject([("cells", .array(cells)), ("refused", .int(Int64(r.problems.count)))])))
        return events
    }

    public var currentRegistry: CellRegistry { state.withLock { registry } }

    /// Serves until stdin ends or `shutdown()` is called.
    public func run(transport: any Transport) async throws {
        await registerHandlers()
        try await server.start(transport: transport) { [self] client, _ in
            logger.info("client initialized", metadata: ["client.name": "\(client.name)", "client.version": "\(client.version)"])
            state.withLock { clientName = client.name }
            var f = JSONObject([("principal", .string(principal)), ("clientName", .string(client.name)),
                                ("clientVersion", .string(client.version))])
            if let v = initializeVersion?() { f["protocolVersion"] = .string(v) }
            await log.append([SecurityEvent(.clientInitialize, f)])
        }
        // The transport ends the stream after end of input once every request
        // received has been answered (calls in flight were killed first).
        await server.waitUntilCompleted()
        shutdown(reason: "end of input")
        await server.stop()
    }

    /// Stops accepting work and kills every worker in flight.
    public func shutdown(reason: String) {
        let pending: [CallCancellation] = state.withLock {
            shuttingDown = true
            return inFlight.values.map(\.cancel)
        }
        if !pending.isEmpty {
            logger.info("shutting down: killing calls in flight", metadata: ["calls": "\(pending.count)", "reason": "\(reason)"])
        }
        for c in pending { c.cancel() }
        runner.prespawner?.shutdown()
    }

    /// Reloads manifests; tells the client when the tool set changed.
    /// Reports the protocol version the client asked for in initialize.
    public var initializeVersion: (@Sendable () -> String?)?

    public func reload() async {
        let new = loadRegistry()
        await log.append(Self.loadEvents(new))
        warmUp(new)
        let (changed, stale): (Bool, [CallCancellation]) = state.withLock {
            let old = registry
            registry = new
            // Calls of versions no longer served (revoked, replaced) end now.
            let live = Set(new.cells.map { "\($0.name)\u{0}\($0.manifest.manifestSHA256)" })
            let stale = inFlight.values.filter { !live.contains("\($0.cell)\u{0}\($0.version)") }.map(\.cancel)
            return (Self.fingerprint(old) != Self.fingerprint(new), stale)
        }
        // Workers started ahead for the old registry's cells are ended: the
        // next call of each cell starts from the new registry.
        runner.prespawner?.serve(only: new.cells)
        if !stale.isEmpty { logger.warning("killing calls of cell versions no longer served", metadata: ["calls": "\(stale.count)"]) }
        for c in stale { c.cancel() }
        for p in new.problems { logger.error("cell refused", metadata: ["problem": "\(p)"]) }
        logger.info("manifests reloaded", metadata: ["cells": "\(new.cells.count)", "changed": "\(changed)"])
        if changed {
            try? await server.notify(ToolListChangedNotification.message())
        }
    }

    static func fingerprint(_ r: CellRegistry) -> [String] {
        r.cells.map { "\($0.manifest.manifestSHA256):\($0.manifest.executable.sha256)" }
    }

    private func registerHandlers() async {
        await server.withMethodHandler(ListTools.self) { [self] params in
            try self.listTools(cursor: params.cursor)
        }
        await server.withMethodHandler(CallTool.self) { [self] params in
            try await self.callTool(params)
        }
        await server.withMethodHandler(SetLoggingLevel.self) { [self] params in
            self.state.withLock { self.clientLogLevel = params.level }
            return Empty()
        }
    }

    // MARK: tools/list

    func listTools(cursor: String?) throws -> ListTools.Result {
        let reg = currentRegistry
        var start = 0
        if let cursor {
            guard cursor.hasPrefix("o"), let n = Int(cursor.dropFirst()), n >= 0, n < reg.toolNames.count else {
                throw MCPError.invalidParams("Invalid cursor")
            }
            start = n
        }
        let end = min(start + options.toolsPageSize, reg.toolNames.count)
        var tools = reg.toolNames[start..<end].compactMap { reg.tool(named: $0) }.map(Self.mcpTool)
        let total = reg.toolNames.count + 1
        if end == reg.toolNames.count, let p = state.withLock({ policy }) {
            tools.append(phaseToolDefinition(p))
        }
        return ListTools.Result(tools: tools, nextCursor: end < total - 1 ? "o\(end)" : nil)
    }

    func phaseToolDefinition(_ p: Policy) -> Tool {
        Tool(name: Self.phaseTool, title: "Change the workflow phase",
             description: "Move this session to another workflow phase (\(p.phases.joined(separator: ", "))). Tools with side effects run only in the phases they declare; some changes require a verification tool to have succeeded first.",
             inputSchema: .object(["type": "object", "properties": .object(["phase": .object(["type": "string", "enum": .array(p.phases.map { .string($0) })])]),
                                   "required": .array(["phase"]), "additionalProperties": .bool(false)]),
             annotations: .init(readOnlyHint: false, openWorldHint: false))
    }

    func setPhase(_ params: CallTool.Parameters) async -> CallTool.Result {
        let (p, current) = state.withLock { (policy, phase) }
        guard let p else { return Self.errorResult("No policy is loaded, so there are no phases.") }
        var args = JSONObject()
        for (k, v) in (params.arguments ?? [:]).sorted(by: { $0.key < $1.key }) { args[k] = JSONValue(v) }
        let schema = JSONValue(phaseToolDefinition(p).inputSchema).objectValue ?? JSONObject()
        if let problem = SchemaValidator.validate(.object(args), against: schema) {
            await refused(Self.phaseTool, "invalid_arguments", problem)
            return Self.errorResult("Invalid arguments: \(problem)")
        }
        let target = args["phase"]!.stringValue!
        if target == current { return CallTool.Result(content: [.text("The session is already in phase \(current).")], isError: false) }
        guard let t = p.transition(from: current, to: target) else {
            let from = p.transitions.filter { $0.from == current || $0.from == "*" }.map(\.to)
            await refused(Self.phaseTool, "phase", "no transition \(current) → \(target)", policy: p)
            return Self.errorResult("The policy allows no change from phase \(current) to \(target); from \(current) the session may go to: \(from.isEmpty ? "nowhere" : from.joined(separator: ", ")).")
        }
        if let req = t.requires, !state.withLock({ succeededTools.contains(req) }) {
            await refused(Self.phaseTool, "phase", "\(current) → \(target) requires \(req) to have succeeded", policy: p)
            return Self.errorResult("Changing from phase \(current) to \(target) requires the tool \(req) to have succeeded earlier in this session.")
        }
        state.withLock { phase = target }
        await log.append([SecurityEvent(.phaseChange, JSONObject([("principal", .string(principal)), ("from", .string(current)),
                                                                  ("to", .string(target)), ("policySha256", .string(p.sha256)),
                                                                  ("requirement", t.requires.map { .string($0) } ?? .null)]))])
        return CallTool.Result(content: [.text("The session is now in phase \(target).")], isError: false)
    }

    static func mcpTool(_ e: CellRegistry.ToolEntry) -> Tool {
        let t = e.tool
        var ann = Tool.Annotations()
        if let a = t.annotations {
            ann.title = a["title"]?.stringValue
            ann.readOnlyHint = a["readOnlyHint"]?.boolValue
            ann.destructiveHint = a["destructiveHint"]?.boolValue
            ann.idempotentHint = a["idempotentHint"]?.boolValue
            ann.openWorldHint = a["openWorldHint"]?.boolValue
        }
        return Tool(name: t.name, title: t.title, description: t.description,
                    inputSchema: JSONValue.object(t.inputSchema).mcpValue, annotations: ann,
                    outputSchema: t.outputSchema.map { JSONValue.object($0).mcpValue })
    }

    // MARK: tools/call

    static func errorResult(_ text: String) -> CallTool.Result {
        CallTool.Result(content: [.text(text)], isError: true)
    }

    /// The direct path for tools/call (`DirectCall`): the same `callTool`,
    /// with the parameters taken from the gate's parse.
    public func serveDirect(_ params: JSONObject, _ call: DirectCall) {
        var meta: Metadata? = nil
        if case .object(let m)? = params["_meta"] {
            var fields: [String: Value] = [:]
            for (k, v) in m where k != "progressToken" { fields[k] = v.mcpValue }
            var token: ProgressToken? = nil
            switch m["progressToken"] {
            case .string(let t)?: token = .string(t)
            case .int(let t)?: token = .integer(Int(t))
            default: break
            }
            // (Metadata's initializer drops a "progressToken" field unless
            // the token is passed as such.)
            meta = Metadata(progressToken: token, additionalFields: fields)
        }
        var arguments: [String: Value]? = nil
        if case .object(let a)? = params["arguments"] {
            var d: [String: Value] = [:]
            for (k, v) in a { d[k] = v.mcpValue }
            arguments = d
        }
        let p = CallTool.Parameters(name: params["name"]?.stringValue ?? "", arguments: arguments, meta: meta)
        let log = self.log
        let task = Task { [self] in
            do {
                let (result, events, cancelled) = try await self.performCall(p)
                let json = Self.json(result)
                // The response is written by the log's writer thread right
                // after the call's events are on disk: no hop back here.
                log.append(events) {
                    if cancelled { call.finishWithoutResponse() } else { call.respond(json) }
                }
            } catch is CancellationError {
                call.finishWithoutResponse()
            } catch let e as MCPError {
                var data: JSONValue? = nil
                if case .invalidParams(let d?) = e { data = .object(JSONObject([("detail", .string(d))])) }
                call.fail(code: e.code, message: e.errorDescription ?? "Unknown error", data: data)
            } catch {
                call.fail(code: -32603, message: "Internal error: \(error)")
            }
        }
        call.whenCancelled { task.cancel() }
    }

    /// A tools/call result as JSON, as the SDK would encode it.
    static func json(_ r: CallTool.Result) -> JSONValue {
        var content: [JSONValue] = []
        for c in r.content {
            switch c {
            case .text(let text, nil, nil):
                content.append(.object(JSONObject([("type", "text"), ("text", .string(text))])))
            case .image(let data, let mime, nil, nil):
                content.append(.object(JSONObject([("type", "image"), ("data", .string(data)), ("mimeType", .string(mime))])))
            default:
                // Never produced by the supervisor; encoded by the SDK.
                if let d = try? JSONEncoder().encode(c), let v = try? JSONParser.parse(Array(d)) { content.append(v) }
            }
        }
        var o = JSONObject([("content", .array(content))])
        if let sc = r.structuredContent { o["structuredContent"] = JSONValue(sc) }
        if let e = r.isError { o["isError"] = .bool(e) }
        return .object(o)
    }

    /// tools/call through the SDK's dispatch.
    func callTool(_ params: CallTool.Parameters) async throws -> CallTool.Result {
        let (result, events, cancelled) = try await performCall(params)
        // The call's events are on disk before the client sees its result.
        await log.append(events)
        // notifications/cancelled: the worker is gone; no response is sent.
        if cancelled { throw CancellationError() }
        return result
    }

    /// One tools/call up to its result: the events still to be made durable
    /// before the result may be sent (call.end), and whether the client
    /// cancelled it (then no response is sent). Refusals are already on disk.
    func performCall(_ params: CallTool.Parameters) async throws -> (CallTool.Result, [SecurityEvent], cancelled: Bool) {
        let tail = CallTail()
        let result = try await performCall(params, tail)
        return (result, tail.events, tail.cancelled)
    }

    /// What a call leaves for its caller to finish (see `performCall`).
    final class CallTail: @unchecked Sendable {
        var events: [SecurityEvent] = []
        var cancelled = false
    }

    private func performCall(_ params: CallTool.Parameters, _ tail: CallTail) async throws -> CallTool.Result {
        if ledgerChanged?() == true { await reload() }
        let toolName = CellProtocol.sanitize(String(params.name.prefix(128)))
        if params.name == Self.phaseTool, state.withLock({ policy != nil }) { return await setPhase(params) }
        guard let entry = currentRegistry.tool(named: params.name) else {
            await refused(toolName, "unknown_tool", "no cell serves this tool")
            throw MCPError.invalidParams("Unknown tool: \(toolName)")
        }
        var arguments = JSONObject()
        for (k, v) in (params.arguments ?? [:]).sorted(by: { $0.key < $1.key }) { arguments[k] = JSONValue(v) }
        if let problem = SchemaValidator.validate(.object(arguments), against: entry.tool.inputSchema) {
            logger.info("call refused: invalid arguments", metadata: ["tool": "\(entry.tool.name)", "problem": "\(problem)"])
            await refused(toolName, "invalid_arguments", problem, cell: entry.cell)
            return Self.errorResult("Invalid arguments: \(problem)")
        }
        // Policy: who, which tool, which phase; then rate, concurrency, arbitration.
        let (pol, polErr, client0, currentPhase) = state.withLock { (policy, policyError, clientName, phase) }
        guard let pol else {
            await refused(toolName, "policy", "no policy in force: \(polErr ?? "no policy file")", cell: entry.cell)
            return Self.errorResult("Refused: no policy is in force, so no tool may run (deny by default).")
        }
        let decision = pol.decide(principal: principal, client: client0, tool: entry.tool.name, manifest: entry.cell.manifest, phase: currentPhase)
        guard decision.allowed else {
            await refused(toolName, decision.reason, decision.rule, cell: entry.cell, policy: pol)
            return Self.errorResult("Refused: \(decision.message)")
        }
        let rule = pol.rule(for: principal, client: client0)!.1
        for (key, limit, what) in [("t:\(principal)|\(entry.tool.name)", rule.perToolRate, "to this tool"), ("a:\(principal)", rule.overallRate, "in all")] {
            guard let limit else { continue }
            if let wait = policyState.take(key, limit) {
                let detail = "at most \(limit.rate) calls per second \(what) (burst \(limit.burst))"
                await refused(toolName, "rate_limit", detail, cell: entry.cell, policy: pol)
                return Self.errorResult("Refused by the rate limit: \(detail); retry in \(String(format: "%.2f", wait)) s.")
            }
        }
        var caps: [(String, Int)] = []
        if let c = rule.maxConcurrent { caps.append(("p:\(principal)", c)) }
        if let c = pol.cells[entry.cell.name]?.maxConcurrent { caps.append(("c:\(entry.cell.name)", c)) }
        if let full = policyState.enter(caps) {
            let cap = caps.first { $0.0 == full }!.1
            let what = full.hasPrefix("p:") ? "calls at once for \(rule.name)" : "calls at once to cell \(entry.cell.name)"
            await refused(toolName, "concurrency", "\(cap) \(what)", cell: entry.cell, policy: pol)
            return Self.errorResult("Refused by a concurrency cap: at most \(cap) \(what); retry when one finishes.")
        }
        defer { policyState.leave(caps.map(\.0)) }
        let resources = entry.cell.manifest.resources(for: arguments)
        if !resources.isEmpty {
            let until = monotonicNanoseconds() + UInt64(pol.onConflict == .wait ? pol.conflictWaitMilliseconds : 0) * 1_000_000
            while !policyState.claim(resources) {
                if monotonicNanoseconds() >= until {
                    let detail = "another call is changing \(resources.joined(separator: ", "))"
                    await refused(toolName, "conflict", detail, cell: entry.cell, policy: pol)
                    return Self.errorResult("Refused: \(detail); retry when it has finished.")
                }
                try? await Task.sleep(for: .milliseconds(2))
            }
        }
        defer { if !resources.isEmpty { policyState.release(resources) } }
        let limits = pol.effectiveLimits(entry.cell.manifest)

        let cancellation = try CallCancellation()
        let id: UInt64? = state.withLock {
            if shuttingDown { return nil }
            nextCall += 1
            inFlight[nextCall] = (cancellation, entry.cell.name, entry.cell.manifest.manifestSHA256)
            return nextCall
        }
        guard let id else {
            await refused(toolName, "shutting_down", "the supervisor is stopping", cell: entry.cell)
            return Self.errorResult("The supervisor is shutting down.")
        }
        defer { _ = state.withLock { inFlight.removeValue(forKey: id) } }
        let callID = "c\(id)"
        let client = state.withLock { clientName }
        // Written now, synced with call.end below (the log writes in order).
        let startEvent = SecurityEvent.callStart(callID: callID, principal: principal, client: client, tool: entry.tool.name,
                                                 cell: entry.cell, decision: (options.unsignedMode
                                                    ? "allow (UNSIGNED development mode): " : "allow: ") + decision.rule
                                                    + " in phase \(currentPhase), policy \(pol.sha256.prefix(16))",
                                                 arguments: arguments, recordArguments: options.recordArguments)
        log.appendLater([startEvent])
        if options.unsignedMode {
            logger.warning("UNSIGNED development mode: running a cell without a verified signature", metadata: ["cell.name": "\(entry.cell.name)"])
        }

        let token = params._meta?.progressToken
        let (messages, sink) = AsyncStream<WorkerMessage>.makeStream()
        let relay = Task { [self] in
            for await m in messages { await self.relay(m, token: token) }
        }
        let runner = self.runner
        let pool = self.pool
        let log = self.log
        let principal = self.principal
        let report: CallReport? = await withTaskCancellationHandler {
            await withCheckedContinuation { (k: CheckedContinuation<CallReport?, Never>) in
                let accepted = pool.submit {
                    _ = runner.run(cell: entry.cell, tool: entry.tool.name, arguments: arguments,
                                       callID: callID, cancellation: cancellation, limits: limits,
                                       deliver: { r in
                                           k.resume(returning: r)
                                       },
                                       onNetwork: { d in
                                           // In order with call.start/call.end; synced with call.end.
                                           log.appendLater([SecurityEvent.network(callID: callID, principal: principal,
                                                                                  tool: entry.tool.name, cell: entry.cell, decision: d)])
                                       }) { sink.yield($0) }
                }
                if !accepted { k.resume(returning: nil) }
            }
        } onCancel: {
            cancellation.cancel()
        }
        sink.finish()
        await relay.value

        guard let report else {
            let load = pool.load
            logger.warning("call refused: queue full", metadata: ["tool": "\(entry.tool.name)"])
            await refused(toolName, "busy", "\(load.running) calls running, \(load.queued) waiting", cell: entry.cell)
            return Self.errorResult("The supervisor is busy (\(load.running) calls running, \(load.queued) waiting); retry shortly.")
        }
        var meta: Logger.Metadata = [
            "tool": "\(entry.tool.name)", "cell.name": "\(entry.cell.name)", "cell.version": "\(entry.cell.version)",
            "outcome": "\(report.outcome.detail)", "duration_us": "\(report.durationNanoseconds / 1000)",
        ]
        if case .success = report.outcome {} else if !report.diagnostics.isEmpty {
            meta["worker.stderr"] = "\(report.diagnostics.suffix(512))"
        }
        logger.info("call ended", metadata: meta)
        let result = result(for: report, tool: entry.tool)
        if result.isError != true { state.withLock { _ = succeededTools.insert(entry.tool.name) } }
        let returned = result.content.reduce(0) { n, c in
            if case .text(let t, _, _) = c { return n + t.utf8.count }
            return n
        }
        if case .cancelled = report.outcome, Task.isCancelled { tail.cancelled = true }
        tail.events = SecurityEvent.callEnd(callID: callID, principal: principal, tool: entry.tool.name,
                                            cell: entry.cell, report: report, bytesReturned: returned)
        return result
    }

    func refused(_ tool: String, _ reason: String, _ detail: String, cell: PreparedCell? = nil, policy: Policy? = nil) async {
        var f = JSONObject([("principal", .string(principal)), ("tool", .string(tool)), ("reason", .string(reason)),
                            ("detail", .string(detail))])
        if let policy {
            f["policySha256"] = .string(policy.sha256)
            f["rule"] = .string(detail)
            f["phase"] = .string(state.withLock { phase })
        }
        if let cell {
            f["cell"] = .string(cell.name)
            f["cellVersion"] = .string(cell.version)
        }
        await log.append([SecurityEvent(.callRefused, f)])
    }

    func result(for report: CallReport, tool: CellManifest.Tool) -> CallTool.Result {
        switch report.outcome {
        case .success(let r):
            var structured: Value? = nil
            if let s = r.structuredContent {
                if let schema = tool.outputSchema, let problem = SchemaValidator.validate(s, against: schema, path: "structuredContent") {
                    logger.warning("tool output does not match its outputSchema", metadata: ["tool": "\(tool.name)", "problem": "\(problem)"])
                    return Self.errorResult("The tool returned output that does not match its declared schema.")
                }
                structured = s.mcpValue
            } else if tool.outputSchema != nil {
                return Self.errorResult("The tool returned no structured content although it declares an output schema.")
            }
            let content: [Tool.Content] = r.content.map { c in
                if c["type"] == "image", let d = c["data"]?.stringValue, let m = c["mimeType"]?.stringValue {
                    return .image(d, m)
                }
                return .text(c["text"]?.stringValue ?? "")
            }
            return CallTool.Result(content: content, structuredContent: structured, isError: false)
        default:
            return Self.errorResult(report.outcome.shortCause)
        }
    }

    static let levelOrder: [LogLevel] = [.debug, .info, .notice, .warning, .error, .critical, .alert, .emergency]

    func relay(_ m: WorkerMessage, token: ProgressToken?) async {
        switch m {
        case .progress(let p, let total, let message):
            guard let token else { return }
            try? await server.notify(ProgressNotification.message(.init(progressToken: token, progress: p, total: total, message: message)))
        case .log(let level, let message, let data):
            guard let l = LogLevel(rawValue: level) else { return }
            let min = state.withLock { clientLogLevel }
            guard (Self.levelOrder.firstIndex(of: l) ?? 0) >= (Self.levelOrder.firstIndex(of: min) ?? 0) else { return }
            var payload: [String: Value] = ["message": .string(message)]
            if let data { payload["data"] = data.mcpValue }
            try? await server.log(level: l, logger: "cell", data: .object(payload))
        }
    }
}

public enum SupervisorInfo {
    public static let version = "0.1.0"
}

extension NSLock {
    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock()
        defer { unlock() }
        return try body()
    }
}
