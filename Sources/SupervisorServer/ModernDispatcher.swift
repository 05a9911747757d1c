import StrictJSON
import SupervisorCore
import Synchronization

/// Serves MCP 2026-07-28 on a stdio connection whose first request chose
/// that era (`ProtocolEra`). The MCP SDK has no such revision, so these
/// requests never reach it: tools/list is built from the pipeline's
/// registry, tools/call goes through the `CallPipeline` as in the handshake
/// era. Stateless: everything a request needs is in its envelope.
///
/// Runs on the stdin thread; nothing here blocks (a call runs in its task).
final class ModernDispatcher: Sendable {
    let pipeline: CallPipeline
    /// The connection's session: its catalogue view decides tools/list.
    let session: CallSession
    let transport: BlockingStdioTransport
    let pageSize: Int
    let instructions: String
    /// Open `subscriptions/listen` streams that asked for tool-list
    /// changes, by the canonical JSON of their request id.
    private let listeners = Mutex<[String: JSONValue]>([:])
    /// At most this many open subscriptions on one connection.
    static let maxListeners = 16

    /// How long a client may reuse a discover result: nothing in it
    /// changes while the process runs.
    static let discoverTTLMilliseconds: Int64 = 3_600_000
    /// tools/list is never reused without asking again (docs/architecture.md,
    /// "Protocol"): a SIGHUP reload, a ledger activation or a revocation
    /// changes it at any moment, and a cached list would go on offering a
    /// revoked tool. A client that wants to avoid re-listing subscribes.
    static let toolsTTLMilliseconds: Int64 = 0

    init(
        pipeline: CallPipeline, session: CallSession, transport: BlockingStdioTransport, pageSize: Int,
        instructions: String
    ) {
        self.pipeline = pipeline
        self.session = session
        self.transport = transport
        self.pageSize = max(1, pageSize)
        self.instructions = instructions
    }

    func handle(_ r: MessageGate.ModernRequest) {
        switch r.method {
        case "server/discover": answer(r.id, discover())
        case "tools/list": answer(r.id, listTools(cursor: r.params["cursor"]))
        case "tools/call": call(r)
        case "subscriptions/listen": listen(r)
        default:
            // The gate lets only the modern methods through.
            answer(r.id, .failure(.init(code: MessageGate.methodNotFound, message: "Method not found: \(r.method)")))
        }
    }

    struct Failure: Error {
        let code: Int
        let message: String
    }

    private func answer(_ id: JSONValue, _ result: Result<JSONObject, Failure>) {
        let reply: JSONValue
        switch result {
        case .success(var o):
            o["resultType"] = "complete"
            reply = .object(JSONObject([("jsonrpc", "2.0"), ("id", id), ("result", .object(o))]))
        case .failure(let f):
            reply = MessageGate.error(id: id, code: f.code, message: f.message)
        }
        transport.outbound.send(reply.serializedBytes())
    }

    // MARK: server/discover

    func discover() -> Result<JSONObject, Failure> { .success(Self.discoverResult(instructions: instructions)) }

    /// The server/discover result (without `resultType`), whatever the transport.
    static func discoverResult(instructions: String) -> JSONObject {
        let capabilities = JSONObject([
            ("tools", .object(JSONObject([("listChanged", true)]))),
            ("logging", .object(JSONObject())),
        ])
        let serverInfo = JSONObject([("name", "mcp-supervisor"), ("version", .string(SupervisorInfo.version))])
        return JSONObject([
            ("supportedVersions", .array(ModernEnvelope.allVersions.map { .string($0) })),
            ("capabilities", .object(capabilities)),
            ("instructions", .string(instructions)),
            ("ttlMs", .int(Self.discoverTTLMilliseconds)),
            // Nothing in it depends on who asks.
            ("cacheScope", "public"),
            ("_meta", .object(JSONObject([(ModernEnvelope.serverInfoKey, .object(serverInfo))]))),
        ])
    }

    // MARK: tools/list

    /// The tools by name (a stable order whatever order the manifests
    /// were loaded in; the catalogue's own first while it is on,
    /// docs/catalogue.md), then set_phase when a policy has phases; pages of
    /// `pageSize` with an opaque cursor.
    func listTools(cursor: JSONValue?) -> Result<JSONObject, Failure> {
        Self.listTools(pipeline: pipeline, session: session, pageSize: pageSize, cursor: cursor)
    }

    /// One page of tools/list in this era, whatever the transport: the
    /// session's view (the catalogue's list while it is on).
    static func listTools(
        pipeline: CallPipeline, session: CallSession, pageSize: Int, cursor: JSONValue?
    ) -> Result<JSONObject, Failure> {
        let (catalogue, cells) = pipeline.toolList(session: session)
        var tools = catalogue + cells.sorted { $0.name < $1.name }
        if let phase = pipeline.phaseToolDefinition() { tools.append(phase) }
        var start = 0
        if let cursor {
            guard case .string(let c) = cursor, c.hasPrefix("m"), let n = Int(c.dropFirst()), n >= 0, n < tools.count
            else {
                return .failure(Failure(code: MessageGate.invalidParams, message: "Invalid params: invalid cursor"))
            }
            start = n
        }
        let end = min(start + pageSize, tools.count)
        var result = JSONObject([
            ("tools", .array(tools[start..<end].map(Self.toolJSON))),
            ("ttlMs", .int(Self.toolsTTLMilliseconds)),
            // set_phase exists only under a policy with phases, the
            // catalogue's list depends on the session and the policy, and
            // the policy is the local user's: not to be shared across users.
            ("cacheScope", "private"),
        ])
        if end < tools.count { result["nextCursor"] = .string("m\(end)") }
        return .success(result)
    }

    static func toolJSON(_ t: CellManifest.Tool) -> JSONValue {
        var o = JSONObject([("name", .string(t.name))])
        if let title = t.title { o["title"] = .string(title) }
        o["description"] = .string(t.description)
        o["inputSchema"] = .object(t.inputSchema)
        if let s = t.outputSchema { o["outputSchema"] = .object(s) }
        if let a = t.annotations { o["annotations"] = .object(a) }
        return .object(o)
    }

    // MARK: tools/call

    private func call(_ r: MessageGate.ModernRequest) {
        let key = r.id.serialized()
        transport.outstanding.add(key)
        let reply = DirectCall(id: r.id, key: key, transport: transport, modern: r.envelope)
        transport.calls.add(reply)
        let client = CallClient(
            era: ProtocolEra.modern.rawValue, protocolVersion: r.envelope.protocolVersion,
            name: r.envelope.clientName, version: r.envelope.clientVersion)
        var call = LineReader.toolCall(r.params, client: client)
        call.approver = InputRequiredApprover(
            states: pipeline.approvalStates, clientCapabilities: r.envelope.clientCapabilities, params: r.params)
        transport.callHandler.value!(call, reply)
    }

    // MARK: subscriptions/listen

    /// Opens a stream: acknowledged at once with the notifications agreed
    /// to (only toolsListChanged exists here), answered only when the
    /// client cancels it (no answer then) or the connection ends.
    private func listen(_ r: MessageGate.ModernRequest) {
        guard case .object(let wanted)? = r.params["notifications"] else {
            answer(
                r.id,
                .failure(
                    Failure(
                        code: MessageGate.invalidParams,
                        message: "Invalid params: subscriptions/listen needs \"notifications\", an object")))
            return
        }
        let key = r.id.serialized()
        let tools = wanted["toolsListChanged"] == true
        let added = listeners.withLock { l -> Bool in
            guard l[key] == nil, l.count < Self.maxListeners else { return false }
            if tools { l[key] = r.id }
            return true
        }
        guard added else {
            answer(
                r.id,
                .failure(
                    Failure(
                        code: MessageGate.invalidParams,
                        message: "Invalid params: at most \(Self.maxListeners) subscriptions, each with its own id")))
            return
        }
        var agreed = JSONObject()
        if tools { agreed["toolsListChanged"] = true }
        let ack = JSONObject([
            ("notifications", .object(agreed)),
            ("_meta", .object(JSONObject([(ModernEnvelope.subscriptionIDKey, r.id)]))),
        ])
        // Not droppable: the client waits for it before it listens.
        transport.outbound.send(
            JSONValue.object(
                JSONObject([
                    ("jsonrpc", "2.0"), ("method", "notifications/subscriptions/acknowledged"),
                    ("params", .object(ack)),
                ])
            ).serializedBytes())
    }

    /// notifications/cancelled for a subscription: it ends, unanswered.
    func cancel(_ key: String) { _ = listeners.withLock { $0.removeValue(forKey: key) } }

    /// The tool list changed: each subscription that asked hears of it.
    func toolsChanged() {
        for id in listeners.withLock({ Array($0.values) }) {
            transport.notify(
                "notifications/tools/list_changed",
                JSONObject([("_meta", .object(JSONObject([(ModernEnvelope.subscriptionIDKey, id)])))]))
        }
    }
}
