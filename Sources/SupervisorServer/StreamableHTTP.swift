import Foundation
import Logging
import MCP
import StrictJSON
import SupervisorCore
import SupervisorPlatform
import Synchronization

/// Who sent an HTTP request, as the bearer token says (never the token
/// itself: it stays in the transport and reaches no worker).
public struct HTTPCaller: Sendable, Equatable {
    /// What the policy's `principals[].principal` globs match: `oauth:SUB`
    /// for a JWT's subject, `token:NAME` for a static token.
    public var principal: String
    public var subject: String
    /// `client_id` (or `azp`) of the token; the policy's `client` glob.
    public var clientID: String?
    public var scopes: [String]
    public var groups: [String]
    public var tenant: String?

    public init(
        principal: String, subject: String, clientID: String? = nil, scopes: [String] = [], groups: [String] = [],
        tenant: String? = nil
    ) {
        self.principal = principal
        self.subject = subject
        self.clientID = clientID
        self.scopes = scopes
        self.groups = groups
        self.tenant = tenant
    }

    /// The caller's fields of a security event.
    public var eventFields: JSONObject {
        var f = JSONObject([("principal", .string(principal))])
        if let c = clientID { f["clientId"] = .string(SecurityEvent.bounded(c)) }
        if let t = tenant { f["tenant"] = .string(SecurityEvent.bounded(t)) }
        if !scopes.isEmpty { f["scopes"] = .array(scopes.prefix(32).map { .string(SecurityEvent.bounded($0)) }) }
        if !groups.isEmpty { f["groups"] = .array(groups.prefix(32).map { .string(SecurityEvent.bounded($0)) }) }
        return f
    }
}

/// Header fields of a request, looked up without regard to case.
public struct HTTPFields: Sendable {
    public let fields: [(String, String)]
    public init(_ fields: [(String, String)]) { self.fields = fields }

    public subscript(_ name: String) -> String? {
        fields.first { $0.0.caseInsensitiveCompare(name) == .orderedSame }?.1
    }

    /// How many times `name` appears.
    public func count(_ name: String) -> Int {
        fields.reduce(0) { $0 + ($1.0.caseInsensitiveCompare(name) == .orderedSame ? 1 : 0) }
    }
}

/// What the HTTP transport sends back for one request.
public enum HTTPOutcome: Sendable {
    /// A complete answer: status, extra headers, JSON body (none for 202).
    case respond(status: Int, headers: [(String, String)], body: [UInt8]?)
    /// A tools/call now running: its notifications and its final response
    /// come through the `HTTPCallStream`.
    case stream(headers: [(String, String)], HTTPCallStream)
}

/// One tools/call over HTTP: the transport starts it with a sink for its
/// messages (notifications, then the response, `final` true; an empty final
/// message when the call was cancelled and has no answer) and cancels it
/// when the client goes away. Sendable: the sink is called on the call's
/// pool thread or task.
public final class HTTPCallStream: Sendable {
    public typealias Sink = @Sendable (_ message: [UInt8], _ final: Bool) -> Void
    private struct State {
        var task: Task<Void, Never>?
        var cancelled = false
    }
    private let state = Mutex(State())
    private let body: @Sendable (_ sink: @escaping Sink) async -> Void
    /// Run once the call has ended (answered, or cancelled).
    let onEnd: @Sendable () -> Void

    init(onEnd: @escaping @Sendable () -> Void = {}, body: @escaping @Sendable (_ sink: @escaping Sink) async -> Void) {
        self.body = body
        self.onEnd = onEnd
    }

    public func start(_ sink: @escaping Sink) {
        let task = Task { [body, onEnd] in
            await body(sink)
            onEnd()
        }
        let cancelled = state.withLock { s in
            s.task = task
            return s.cancelled
        }
        if cancelled { task.cancel() }
    }

    /// The client closed the stream (or the connection): the call is
    /// cancelled, which kills its worker; nothing more is sent.
    public func cancel() {
        let task = state.withLock { s in
            s.cancelled = true
            return s.task
        }
        task?.cancel()
    }
}

/// MCP Streamable HTTP, both eras, over one `CallPipeline` (docs/http.md).
/// Transport-neutral: it sees header fields and a body, never sockets; the
/// HTTP server has checked Host, Origin, size limits and the token first.
///
/// - 2026-07-28: every POST stands alone. `MCP-Protocol-Version`,
///   `Mcp-Method` and `Mcp-Name` must match the body (HTTP 400 with -32020
///   otherwise); the body then passes the same `MessageGate` as a stdio line.
/// - Handshake era: `initialize` creates a session (`Mcp-Session-Id`, 128
///   random bits, bound to the principal that created it); every later
///   request names it; DELETE ends it.
public final class StreamableHTTPEndpoint: Sendable {
    public static let headerMismatch = -32020

    /// The pipeline of each tenant, or one under the key nil when no
    /// tenants are configured. A tenant's pipeline has its own cells, policy, workers and
    /// scratch: one tenant can neither see nor call another's tools.
    let pipelines: [String?: CallPipeline]
    let log: SecurityLog
    let logger: Logger
    let pageSize: Int
    let maxMessageBytes: Int
    let maxSessions: Int

    /// A session of the handshake era.
    final class Session: Sendable {
        let id: String
        let principal: String
        let callSession: CallSession
        let gate: Mutex<MessageGate>
        let logLevel = Mutex(LogLevel.info)
        let calls = Mutex<[String: HTTPCallStream]>([:])
        let negotiatedVersion = Mutex<String?>(nil)
        /// When a request last named it (monotonic ns): the least recently
        /// used of a principal's sessions is the one ended for a new one.
        let lastUsed = Mutex<UInt64>(monotonicNanoseconds())
        let pipeline: CallPipeline
        let tenant: String?

        init(id: String, caller: HTTPCaller, pipeline: CallPipeline, maxMessageBytes: Int) {
            self.id = id
            self.principal = caller.principal
            self.tenant = caller.tenant
            self.pipeline = pipeline
            self.callSession = CallSession(principal: caller.principal, groups: caller.groups, scopes: caller.scopes)
            self.gate = Mutex(MessageGate(maxMessageBytes: maxMessageBytes))
        }
    }

    let sessions = Mutex<[String: Session]>([:])
    /// The 2026-07-28 era keeps no connection: a principal's phase and
    /// taint live in one `CallSession` per principal.
    let modernSessions = Mutex<[String: CallSession]>([:])
    static let maxModernSessions = 4096

    public init(
        pipelines: [String?: CallPipeline], log: SecurityLog, logger: Logger, pageSize: Int, maxMessageBytes: Int,
        maxSessions: Int
    ) {
        self.pipelines = pipelines
        self.log = log
        self.logger = logger
        self.pageSize = max(1, pageSize)
        self.maxMessageBytes = maxMessageBytes
        self.maxSessions = max(1, maxSessions)
    }

    /// The pipeline that serves this caller: its tenant's, or nil when
    /// its tenant (or the lack of one) is not served here.
    /// Without tenants configured (one pipeline, under the key nil) every
    /// caller is served by it, whatever its token says of a tenant.
    public func pipeline(for caller: HTTPCaller) -> CallPipeline? {
        if pipelines.count == 1, let only = pipelines[nil] { return only }
        return pipelines[caller.tenant]
    }

    // MARK: answers

    static func json(_ status: Int, _ value: JSONValue, headers: [(String, String)] = []) -> HTTPOutcome {
        .respond(status: status, headers: headers, body: value.serializedBytes())
    }

    static func rpcError(_ status: Int, id: JSONValue = .null, code: Int, _ message: String) -> HTTPOutcome {
        json(status, MessageGate.error(id: id, code: code, message: message))
    }

    static func result(_ id: JSONValue, _ result: JSONObject, headers: [(String, String)] = []) -> HTTPOutcome {
        json(200, .object(JSONObject([("jsonrpc", "2.0"), ("id", id), ("result", .object(result))])), headers: headers)
    }

    static let accepted = HTTPOutcome.respond(status: 202, headers: [], body: nil)

    // MARK: POST

    /// One POST to the MCP endpoint.
    public func post(fields: HTTPFields, body: [UInt8], caller: HTTPCaller) -> HTTPOutcome {
        guard let pipeline = pipeline(for: caller) else {
            return Self.rpcError(403, code: MessageGate.invalidRequest, "Forbidden: this tenant is not served here")
        }
        let versionHeader = fields["MCP-Protocol-Version"]
        if let v = versionHeader, ModernEnvelope.supportedVersions.contains(v) {
            return postModern(fields: fields, body: body, caller: caller, version: v, pipeline: pipeline)
        }
        if let v = versionHeader, !Version.supported.contains(v) {
            return Self.rpcError(
                400, code: MessageGate.invalidRequest,
                "Bad Request: unsupported MCP-Protocol-Version \(SecurityEvent.bounded(v, maxBytes: 64)); supported: "
                    + ModernEnvelope.allVersions.joined(separator: ", "))
        }
        return postHandshake(fields: fields, body: body, caller: caller, pipeline: pipeline)
    }

    /// The request object and its method, when the body is one.
    static func peek(_ body: [UInt8]) -> JSONObject? {
        guard case .object(let o)? = try? JSONParser.parse(body) else { return nil }
        return o
    }

    // MARK: 2026-07-28

    /// The headers that repeat the body must match it before the body is
    /// served: a proxy or gateway routes and authorizes on them.
    static func modernHeaderProblem(fields: HTTPFields, version: String, request o: JSONObject) -> String? {
        for name in ["MCP-Protocol-Version", "Mcp-Method", "Mcp-Name"] where fields.count(name) > 1 {
            return "\(name) given more than once"
        }
        guard let method = fields["Mcp-Method"] else { return "the Mcp-Method header is required" }
        guard case .string(let bodyMethod)? = o["method"], bodyMethod == method else {
            return "Mcp-Method \(SecurityEvent.bounded(method, maxBytes: 64)) does not match the body's method"
        }
        let params = o["params"]?.objectValue
        let bodyVersion = params?["_meta"]?[ModernEnvelope.protocolVersionKey]?.stringValue
        // server/discover may come without an envelope; anything else names its version in both places.
        if bodyVersion != nil || method != "server/discover" {
            guard bodyVersion == version else {
                return "MCP-Protocol-Version \(version) does not match the body's _meta "
                    + ModernEnvelope.protocolVersionKey
            }
        }
        let name = fields["Mcp-Name"]
        switch method {
        case "tools/call":
            guard let name else { return "the Mcp-Name header is required for tools/call" }
            guard case .string(let bodyName)? = params?["name"], bodyName == name else {
                return "Mcp-Name \(SecurityEvent.bounded(name, maxBytes: 128)) does not match the body's params.name"
            }
        default:
            if name != nil { return "Mcp-Name is only for a request that names something (tools/call)" }
        }
        return nil
    }

    func postModern(
        fields: HTTPFields, body: [UInt8], caller: HTTPCaller, version: String, pipeline: CallPipeline
    ) -> HTTPOutcome {
        guard let o = Self.peek(body) else {
            // Not one JSON object: the gate says precisely what is wrong.
            var gate = MessageGate(maxMessageBytes: maxMessageBytes)
            if case .reply(let e) = gate.check(body) { return Self.json(400, e) }
            return Self.rpcError(400, code: MessageGate.invalidRequest, "Invalid Request")
        }
        if let problem = Self.modernHeaderProblem(fields: fields, version: version, request: o) {
            return Self.rpcError(400, id: o["id"] ?? .null, code: Self.headerMismatch, "Header mismatch: \(problem)")
        }
        var gate = MessageGate(maxMessageBytes: maxMessageBytes)
        switch gate.check(body) {
        case .modern(let r):
            switch r.method {
            case "server/discover":
                var result = ModernDispatcher.discoverResult(instructions: SupervisorService.instructions)
                result["resultType"] = "complete"
                return Self.result(r.id, result)
            case "tools/list":
                switch ModernDispatcher.listTools(
                    pipeline: pipeline, session: modernSession(caller), pageSize: pageSize, cursor: r.params["cursor"])
                {
                case .success(var result):
                    result["resultType"] = "complete"
                    return Self.result(r.id, result)
                case .failure(let f):
                    return Self.rpcError(200, id: r.id, code: f.code, f.message)
                }
            case "tools/call":
                let client = CallClient(
                    era: ProtocolEra.modern.rawValue, protocolVersion: r.envelope.protocolVersion,
                    name: r.envelope.clientName, version: r.envelope.clientVersion)
                var call = LineReader.toolCall(r.params, client: client)
                call.approver = InputRequiredApprover(
                    states: pipeline.approvalStates, clientCapabilities: r.envelope.clientCapabilities,
                    params: r.params)
                return .stream(
                    headers: [],
                    callStream(
                        call, id: r.id, modern: true, pipeline: pipeline, session: modernSession(caller),
                        logLevel: { r.envelope.logLevel.flatMap(LogLevel.init(rawValue:)) }))
            case "subscriptions/listen":
                return listen(r, pipeline: pipeline)
            default:
                return Self.rpcError(
                    200, id: r.id, code: MessageGate.methodNotFound,
                    "Method not found: \(r.method) is not served over HTTP")
            }
        case .reply(let e):
            let status = e["id"] == .null ? 400 : 200
            return Self.json(status, e)
        case .cancel, .drop, .forward:
            // Closing the request's stream is how a call is cancelled here.
            return Self.accepted
        case .call(let id, _):
            // Only a handshake-era connection yields .call.
            return Self.rpcError(400, id: id, code: MessageGate.invalidRequest, "Invalid Request")
        }
    }

    /// The `CallSession` of a principal in 2026-07-28 (its phase, its taint).
    func modernSession(_ caller: HTTPCaller) -> CallSession {
        // By principal, tenant, groups and scopes: a token of another tenant,
        // or with other groups or scopes, is another session.
        let parts = [caller.principal, caller.tenant ?? ""] + caller.groups.sorted() + ["\u{1}"]
        let key = (parts + caller.scopes.sorted()).joined(separator: "\u{0}")
        return modernSessions.withLock { m in
            if let s = m[key] { return s }
            // A bound on memory: forgetting sessions resets phases to the initial one.
            if m.count >= Self.maxModernSessions { m.removeAll() }
            let s = CallSession(principal: caller.principal, groups: caller.groups, scopes: caller.scopes)
            s.clientName = caller.clientID
            s.tenant = caller.tenant
            m[key] = s
            return s
        }
    }

    // MARK: subscriptions/listen

    /// One open `subscriptions/listen` stream.
    final class Listener: Sendable {
        let id: JSONValue
        let pipeline: ObjectIdentifier
        let tools: Bool
        let sink: HTTPCallStream.Sink
        /// The listen's task waits here until the client closes the stream.
        let state = Mutex<(cancelled: Bool, waiting: CheckedContinuation<Void, Never>?)>((false, nil))

        init(id: JSONValue, pipeline: ObjectIdentifier, tools: Bool, sink: @escaping HTTPCallStream.Sink) {
            self.id = id
            self.pipeline = pipeline
            self.tools = tools
            self.sink = sink
        }

        func end() {
            let k = state.withLock { s in
                s.cancelled = true
                defer { s.waiting = nil }
                return s.waiting
            }
            k?.resume()
        }
    }

    let listeners = Mutex<[UInt64: Listener]>([:])
    let nextListener = Mutex<UInt64>(0)

    /// A stream that stays open: acknowledged at once with the
    /// notifications agreed to (only toolsListChanged exists here), then
    /// each change of the caller's pipeline's tool list, until the client
    /// closes it (it holds one of the client's stream slots meanwhile).
    func listen(_ r: MessageGate.ModernRequest, pipeline: CallPipeline) -> HTTPOutcome {
        guard case .object(let wanted)? = r.params["notifications"] else {
            return Self.rpcError(
                200, id: r.id, code: MessageGate.invalidParams,
                "Invalid params: subscriptions/listen needs \"notifications\", an object")
        }
        let tools = wanted["toolsListChanged"] == true
        let key = nextListener.withLock { n in
            n += 1
            return n
        }
        let pipelineKey = ObjectIdentifier(pipeline)
        let stream = HTTPCallStream { [self] sink in
            var agreed = JSONObject()
            if tools { agreed["toolsListChanged"] = true }
            let ack = JSONObject([
                ("notifications", .object(agreed)),
                ("_meta", .object(JSONObject([(ModernEnvelope.subscriptionIDKey, r.id)]))),
            ])
            sink(
                JSONValue.object(
                    JSONObject([
                        ("jsonrpc", "2.0"), ("method", "notifications/subscriptions/acknowledged"),
                        ("params", .object(ack)),
                    ])
                ).serializedBytes(), false)
            let listener = Listener(id: r.id, pipeline: pipelineKey, tools: tools, sink: sink)
            listeners.withLock { $0[key] = listener }
            await withTaskCancellationHandler {
                await withCheckedContinuation { (k: CheckedContinuation<Void, Never>) in
                    let now = listener.state.withLock { s -> Bool in
                        if s.cancelled { return true }
                        s.waiting = k
                        return false
                    }
                    if now { k.resume() }
                }
            } onCancel: {
                listener.end()
            }
            _ = listeners.withLock { $0.removeValue(forKey: key) }
            // Answered only by its end (MCP): the stream closes empty.
            sink([], true)
        }
        return .stream(headers: [], stream)
    }

    /// The tool list of `pipeline` changed: each of its listeners that
    /// asked hears of it.
    public func toolsChanged(in pipeline: CallPipeline) {
        let key = ObjectIdentifier(pipeline)
        for l in listeners.withLock({ Array($0.values) }) where l.pipeline == key && l.tools {
            let n = JSONValue.object(
                JSONObject([
                    ("jsonrpc", "2.0"), ("method", "notifications/tools/list_changed"),
                    (
                        "params",
                        .object(
                            JSONObject([("_meta", .object(JSONObject([(ModernEnvelope.subscriptionIDKey, l.id)])))]))
                    ),
                ]))
            l.sink(n.serializedBytes(), false)
        }
    }

    // MARK: handshake era

    public static let sessionHeader = "Mcp-Session-Id"
    /// Sessions one principal (of one tenant) may hold at once.
    public static let maxSessionsPerPrincipal = 32

    /// 128 random bits (T14), hex.
    static func newSessionID() -> String {
        var g = SystemRandomNumberGenerator()
        return (0..<2).map { _ in String(format: "%016llx", g.next() as UInt64) }.joined()
    }

    func postHandshake(fields: HTTPFields, body: [UInt8], caller: HTTPCaller, pipeline: CallPipeline) -> HTTPOutcome {
        let o = Self.peek(body)
        let method = o?["method"]?.stringValue
        guard let sid = fields[Self.sessionHeader] else {
            if method == "initialize" {
                return initialize(body: body, request: o!, caller: caller, pipeline: pipeline)
            }
            if method == "server/discover" {
                // Answered without a session, as on a fresh stdio connection.
                var gate = MessageGate(maxMessageBytes: maxMessageBytes)
                if case .modern(let r) = gate.check(body) {
                    var result = ModernDispatcher.discoverResult(instructions: SupervisorService.instructions)
                    result["resultType"] = "complete"
                    return Self.result(r.id, result)
                }
            }
            if o == nil {
                var gate = MessageGate(maxMessageBytes: maxMessageBytes)
                if case .reply(let e) = gate.check(body) { return Self.json(400, e) }
            }
            return Self.rpcError(
                400, id: o?["id"] ?? .null, code: MessageGate.invalidRequest,
                "Bad Request: no Mcp-Session-Id; send initialize first, or MCP-Protocol-Version: "
                    + ModernEnvelope.supportedVersions[0] + " with its headers")
        }
        // A session belongs to the principal that created it: anyone else
        // is told it does not exist (T14), as for an unknown id. Its groups
        // and scopes are the policy's input: a token with others (fewer
        // scopes, say) is not let into a session made with more.
        guard let session = sessions.withLock({ $0[sid] }), session.principal == caller.principal,
            session.tenant == caller.tenant, Set(session.callSession.groups) == Set(caller.groups),
            Set(session.callSession.scopes) == Set(caller.scopes)
        else {
            return Self.rpcError(
                404, id: o?["id"] ?? .null, code: MessageGate.invalidRequest,
                "Not Found: no such session; initialize a new one")
        }
        session.lastUsed.withLock { $0 = monotonicNanoseconds() }
        let decision = session.gate.withLock { $0.check(body) }
        switch decision {
        case .reply(let e):
            return Self.json(e["id"] == .null ? 400 : 200, e)
        case .drop:
            return Self.accepted
        case .cancel(let key):
            cancel(session, key)
            return Self.accepted
        case .modern(let r):
            var result = ModernDispatcher.discoverResult(instructions: SupervisorService.instructions)
            result["resultType"] = "complete"
            return Self.result(r.id, result)
        case .forward(let request, let cancels):
            if let cancels { cancel(session, cancels) }
            guard request != nil, let o, let id = o["id"], let method else { return Self.accepted }
            return answer(session, id: id, method: method, params: o["params"]?.objectValue)
        case .call(let id, let params):
            let client = CallClient(
                era: ProtocolEra.handshake.rawValue, protocolVersion: session.negotiatedVersion.withLock { $0 })
            // No server-to-client request exists on this transport yet, so
            // a call that needs approval is refused (docs/http.md).
            let call = LineReader.toolCall(params, client: client)
            let key = id.serialized()
            let stream = callStream(
                call, id: id, modern: false, pipeline: session.pipeline, session: session.callSession,
                logLevel: { session.logLevel.withLock { $0 } },
                onEnd: { _ = session.calls.withLock { $0.removeValue(forKey: key) } })
            session.calls.withLock { $0[key] = stream }
            return .stream(headers: [(Self.sessionHeader, session.id)], stream)
        }
    }

    func cancel(_ session: Session, _ key: String) {
        session.calls.withLock { $0[key] }?.cancel()
    }

    /// initialize: a new session, answered here (the MCP SDK's `Server` is
    /// bound to one stdio connection; over HTTP the same answers are given
    /// from the same registry).
    func initialize(body: [UInt8], request o: JSONObject, caller: HTTPCaller, pipeline: CallPipeline) -> HTTPOutcome {
        let session = Session(
            id: Self.newSessionID(), caller: caller, pipeline: pipeline, maxMessageBytes: maxMessageBytes)
        let decision = session.gate.withLock { $0.check(body) }
        guard case .forward = decision, let id = o["id"] else {
            if case .reply(let e) = decision { return Self.json(e["id"] == .null ? 400 : 200, e) }
            return Self.accepted
        }
        // A principal holds at most `maxSessionsPerPrincipal`: its least
        // recently used session ends for a new one, so that one caller
        // cannot take every session of the server.
        var evicted: Session? = nil
        let added = sessions.withLock { s -> Bool in
            let own = s.values.filter { $0.principal == caller.principal && $0.tenant == caller.tenant }
            if own.count >= Self.maxSessionsPerPrincipal,
                let oldest = own.min(by: { $0.lastUsed.withLock { $0 } < $1.lastUsed.withLock { $0 } })
            {
                evicted = s.removeValue(forKey: oldest.id)
            }
            guard s.count < maxSessions else { return false }
            s[session.id] = session
            return true
        }
        if let evicted { for c in evicted.calls.withLock({ Array($0.values) }) { c.cancel() } }
        guard added else {
            return Self.rpcError(
                503, id: id, code: -32000, "Service Unavailable: \(maxSessions) sessions are open; end one (DELETE)")
        }
        let params = o["params"]?.objectValue
        let requested = params?["protocolVersion"]?.stringValue ?? Version.latest
        let version = Version.supported.contains(requested) ? requested : Version.latest
        session.negotiatedVersion.withLock { $0 = version }
        let name = params?["clientInfo"]?["name"]?.stringValue.map { SecurityEvent.bounded($0) } ?? ""
        let clientVersion = params?["clientInfo"]?["version"]?.stringValue.map { SecurityEvent.bounded($0) } ?? ""
        // The token's client id, when it names one, is what the policy's
        // `client` glob sees: the clientInfo name is the client's own word.
        session.callSession.clientName = caller.clientID ?? name
        session.callSession.tenant = caller.tenant
        var f = caller.eventFields
        f["clientName"] = .string(name)
        f["clientVersion"] = .string(clientVersion)
        f["protocolEra"] = "handshake"
        f["protocolVersion"] = .string(SecurityEvent.bounded(requested, maxBytes: 64))
        f["transport"] = "http"
        log.append([SecurityEvent(.clientInitialize, f)]) { [logger] error in
            if let error { logger.error("client.initialize not recorded", metadata: ["error": "\(error)"]) }
        }
        let result = JSONObject([
            ("protocolVersion", .string(version)),
            (
                "capabilities",
                .object(
                    JSONObject([
                        // No server stream (GET is 405): nothing could carry a list change.
                        ("tools", .object(JSONObject([("listChanged", false)]))),
                        ("logging", .object(JSONObject())),
                    ]))
            ),
            (
                "serverInfo",
                .object(JSONObject([("name", "mcp-supervisor"), ("version", .string(SupervisorInfo.version))]))
            ),
            ("instructions", .string(SupervisorService.instructions)),
        ])
        return Self.result(id, result, headers: [(Self.sessionHeader, session.id)])
    }

    /// The requests of the handshake era other than initialize and tools/call.
    func answer(_ session: Session, id: JSONValue, method: String, params: JSONObject?) -> HTTPOutcome {
        let headers = [(Self.sessionHeader, session.id)]
        switch method {
        case "ping":
            return Self.result(id, JSONObject(), headers: headers)
        case "logging/setLevel":
            if let l = params?["level"]?.stringValue.flatMap(LogLevel.init(rawValue:)) {
                session.logLevel.withLock { $0 = l }
            }
            return Self.result(id, JSONObject(), headers: headers)
        case "tools/list":
            // The session's view (the catalogue's list while it is on,
            // docs/catalogue.md), in the handshake era's cursor form.
            let pipeline = session.pipeline
            let (catalogue, cells) = pipeline.toolList(session: session.callSession)
            var all = catalogue + cells.sorted { $0.name < $1.name }
            if let phase = pipeline.phaseToolDefinition() { all.append(phase) }
            var start = 0
            if let cursor = params?["cursor"]?.stringValue {
                guard cursor.hasPrefix("o"), let n = Int(cursor.dropFirst()), n >= 0, n < all.count else {
                    return Self.rpcError(200, id: id, code: MessageGate.invalidParams, "Invalid params: invalid cursor")
                }
                start = n
            }
            let end = min(start + pageSize, all.count)
            var result = JSONObject([("tools", .array(all[start..<end].map(ModernDispatcher.toolJSON)))])
            if end < all.count { result["nextCursor"] = .string("o\(end)") }
            return Self.result(id, result, headers: headers)
        default:
            return Self.rpcError(
                200, id: id, code: MessageGate.methodNotFound,
                "Method not found: \(SecurityEvent.bounded(method, maxBytes: 64))")
        }
    }

    // MARK: DELETE

    /// Ends a session of the handshake era: its calls are cancelled.
    public func delete(fields: HTTPFields, caller: HTTPCaller) -> HTTPOutcome {
        guard let sid = fields[Self.sessionHeader] else {
            return Self.rpcError(400, code: MessageGate.invalidRequest, "Bad Request: DELETE needs Mcp-Session-Id")
        }
        let session = sessions.withLock { s -> Session? in
            guard let found = s[sid], found.principal == caller.principal, found.tenant == caller.tenant else {
                return nil
            }
            return s.removeValue(forKey: sid)
        }
        guard let session else {
            return Self.rpcError(404, code: MessageGate.invalidRequest, "Not Found: no such session")
        }
        for c in session.calls.withLock({ Array($0.values) }) { c.cancel() }
        return .respond(status: 204, headers: [], body: nil)
    }

    /// Ends every session and call (shutdown).
    public func closeAll() {
        for l in listeners.withLock({ Array($0.values) }) { l.end() }
        let all = sessions.withLock { s in
            defer { s.removeAll() }
            return Array(s.values)
        }
        for session in all {
            for c in session.calls.withLock({ Array($0.values) }) { c.cancel() }
        }
    }

    // MARK: the call

    func callStream(
        _ call: ToolCall, id: JSONValue, modern: Bool, pipeline: CallPipeline, session: CallSession,
        logLevel: @escaping @Sendable () -> LogLevel?, onEnd: @escaping @Sendable () -> Void = {}
    ) -> HTTPCallStream {
        HTTPCallStream(onEnd: onEnd) { sink in
            let relay = Self.relay(token: call.progressToken, logLevel: logLevel, sink: sink)
            let response = await pipeline.call(call, session: session, onMessage: relay)
            // A cancelled call gets no answer (MCP): its stream ends empty
            // (a closed stream is gone already; a notifications/cancelled or
            // a DELETE of the session leaves one open to end).
            sink(DirectCall.message(for: response, id: id, modern: modern) ?? [], true)
        }
    }

    /// A worker's progress and log messages as notifications on the call's
    /// own stream (the same rules as stdio: progress only with a token,
    /// logs at or above the level asked for, none when none was asked for
    /// in 2026-07-28).
    static func relay(
        token: JSONValue?, logLevel: @escaping @Sendable () -> LogLevel?, sink: @escaping HTTPCallStream.Sink
    ) -> @Sendable (WorkerMessage) -> Void {
        { m in
            let params: JSONObject
            let method: String
            switch m {
            case .progress(let p, let total, let message):
                guard let token else { return }
                var o = JSONObject([("progressToken", token), ("progress", .double(p))])
                if let total { o["total"] = .double(total) }
                if let message { o["message"] = .string(message) }
                params = o
                method = "notifications/progress"
            case .log(let level, let message, let data):
                guard let l = LogLevel(rawValue: level), let min = logLevel() else { return }
                let order = SupervisorService.levelOrder
                guard (order.firstIndex(of: l) ?? 0) >= (order.firstIndex(of: min) ?? 0) else { return }
                var payload = JSONObject([("message", .string(message))])
                if let data { payload["data"] = data }
                params = JSONObject([("level", .string(level)), ("logger", "cell"), ("data", .object(payload))])
                method = "notifications/message"
            }
            let n = JSONValue.object(
                JSONObject([("jsonrpc", "2.0"), ("method", .string(method)), ("params", .object(params))]))
            sink(n.serializedBytes(), false)
        }
    }
}
