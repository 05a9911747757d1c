import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import StrictJSON
import SupervisorCore
import SupervisorPlatform
import SupervisorServer
import Synchronization

/// Where a request goes, decided from its method, target and headers
/// before its token is looked at (docs/http.md, "Checks, in order").
struct HTTPRequestGuard: Sendable {
    /// `Host` values accepted (lowercased); empty: any (a non-loopback
    /// bind without `allowedHosts`).
    let hosts: Set<String>
    let origins: Set<String>
    /// The well-known path, alone and followed by the resource's path (RFC 9728 §3.1).
    let metadataPaths: Set<String>
    static let mcpPath = "/mcp"
    static let metadataPath = "/.well-known/oauth-protected-resource"
    /// Liveness and readiness for a balancer or Kubernetes: no token, and
    /// nothing in the answer but "ok" (no version, no cells, no counts).
    static let healthPath = "/healthz"

    enum Route: Equatable, Sendable {
        case mcp
        case metadata
        case health
    }

    enum Decision: Equatable, Sendable {
        case route(Route)
        case refuse(status: Int, reason: String, allow: String?)
    }

    init(listen: ListenAddress, loopback: Bool, config: HTTPConfiguration) {
        var hosts = Set(config.allowedHosts)
        if loopback {
            // A page of another site whose name resolves to 127.0.0.1 (DNS
            // rebinding) sends its own name: only these are this server.
            let port = ":\(listen.port)"
            hosts.formUnion([listen.hostForURL + port, "localhost" + port, "127.0.0.1" + port, "[::1]" + port])
        }
        self.hosts = Set(hosts.map { $0.lowercased() })
        self.origins = Set(config.allowedOrigins)
        var paths: Set<String> = [Self.metadataPath, Self.metadataPath + Self.mcpPath]
        if let r = config.resource, let path = MCPHTTPApp.resourcePath(r) { paths.insert(Self.metadataPath + path) }
        self.metadataPaths = paths
    }

    func decide(method: String, uri: String, fields: HTTPFields) -> Decision {
        if !hosts.isEmpty {
            guard fields.count("Host") == 1, let host = fields["Host"], hosts.contains(host.lowercased()) else {
                return .refuse(status: 421, reason: "Host is not this server", allow: nil)
            }
        }
        // A browser names the page's origin; anything not configured is
        // another site's page (CSRF, DNS rebinding). Non-browser clients send none.
        if let origin = fields["Origin"] {
            guard fields.count("Origin") == 1, origins.contains(origin.lowercased()) else {
                return .refuse(status: 403, reason: "Origin is not allowed", allow: nil)
            }
        }
        let path =
            uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        if metadataPaths.contains(path) {
            guard method == "GET" || method == "HEAD" else {
                return .refuse(status: 405, reason: "only GET", allow: "GET")
            }
            return .route(.metadata)
        }
        if path == Self.healthPath {
            guard method == "GET" || method == "HEAD" else {
                return .refuse(status: 405, reason: "only GET", allow: "GET")
            }
            return .route(.health)
        }
        guard path == Self.mcpPath else { return .refuse(status: 404, reason: "no such resource", allow: nil) }
        guard method == "POST" || method == "DELETE" else {
            // No server stream: every response comes on its request's stream.
            return .refuse(status: 405, reason: "POST or DELETE", allow: "POST, DELETE")
        }
        return .route(.mcp)
    }
}

/// Requests in progress, in all and per client address: bounded so that
/// no client, and no crowd of them, can hold every worker.
final class HTTPStreamSlots: Sendable {
    let total: Int
    let perClient: Int
    private struct State {
        var total = 0
        var byClient: [String: Int] = [:]
        var connections = 0
    }
    private let state = Mutex(State())
    let maxConnections: Int

    init(limits: HTTPConfiguration.Limits) {
        total = limits.maxStreams
        perClient = limits.maxStreamsPerClient
        maxConnections = limits.maxConnections
    }

    enum Refusal: Equatable {
        /// 429: this client has too many.
        case client
        /// 503: the server has too many.
        case server
    }

    func acquire(_ client: String) -> Refusal? {
        state.withLock { s in
            if s.byClient[client, default: 0] >= perClient { return .client }
            if s.total >= total { return .server }
            s.total += 1
            s.byClient[client, default: 0] += 1
            return nil
        }
    }

    func release(_ client: String) {
        state.withLock { s in
            s.total -= 1
            let n = s.byClient[client, default: 1] - 1
            s.byClient[client] = n > 0 ? n : nil
        }
    }

    func connect() -> Bool {
        state.withLock { s in
            guard s.connections < maxConnections else { return false }
            s.connections += 1
            return true
        }
    }

    func disconnect() { state.withLock { $0.connections -= 1 } }
}

/// Everything the connections share.
final class MCPHTTPApp: Sendable {
    let endpoint: StreamableHTTPEndpoint
    let auth: BearerAuthenticator
    let requestGuard: HTTPRequestGuard
    let limits: HTTPConfiguration.Limits
    let slots: HTTPStreamSlots
    let log: SecurityLog
    let logger: Logger
    /// The protected resource metadata document (RFC 9728).
    let metadata: [UInt8]
    /// Where `WWW-Authenticate` points.
    let metadataURL: String

    init(
        endpoint: StreamableHTTPEndpoint, auth: BearerAuthenticator, requestGuard: HTTPRequestGuard,
        config: HTTPConfiguration, listenURL: String, log: SecurityLog, logger: Logger
    ) {
        self.endpoint = endpoint
        self.auth = auth
        self.requestGuard = requestGuard
        self.limits = config.limits
        self.slots = HTTPStreamSlots(limits: config.limits)
        self.log = log
        self.logger = logger
        let resource = config.resource ?? listenURL + HTTPRequestGuard.mcpPath
        var doc = JSONObject([("resource", .string(resource))])
        if let o = config.oauth {
            doc["authorization_servers"] = .array([.string(o.issuer)])
            if !o.requiredScopes.isEmpty { doc["scopes_supported"] = .array(o.requiredScopes.map { .string($0) }) }
        }
        doc["bearer_methods_supported"] = .array(["header"])
        doc["resource_name"] = "mcp-supervisor"
        metadata = JSONValue.object(doc).serializedBytes()
        metadataURL = Self.metadataURL(resource: resource)
    }

    /// RFC 9728 §3.1: the well-known path goes between the host and the
    /// resource's path.
    static func metadataURL(resource: String) -> String {
        guard let schemeEnd = resource.range(of: "://") else { return resource }
        let afterScheme = resource[schemeEnd.upperBound...]
        let slash = afterScheme.firstIndex(of: "/") ?? afterScheme.endIndex
        return resource[..<slash] + HTTPRequestGuard.metadataPath + (resourcePath(resource) ?? "")
    }

    /// The path of a resource identifier (without query), nil for none or "/".
    static func resourcePath(_ resource: String) -> String? {
        guard let schemeEnd = resource.range(of: "://") else { return nil }
        let afterScheme = resource[schemeEnd.upperBound...]
        guard let slash = afterScheme.firstIndex(of: "/") else { return nil }
        let path = afterScheme[slash...].split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)[0]
        return path == "/" || path.isEmpty ? nil : String(path)
    }

    /// Bounds how many refusals one address can have recorded (each is a
    /// durable write), so that a flood of bad requests cannot fill the log.
    let refusalRecords = RefusalRecordLimiter()

    /// A refusal before any call, recorded (docs/security-events.md).
    func recordRefusal(status: Int, reason: String, client: String, caller: HTTPCaller?, method: String, uri: String) {
        guard let suppressed = refusalRecords.admit(client, now: monotonicNanoseconds()) else { return }
        var f = caller?.eventFields ?? JSONObject()
        if suppressed > 0 { f["suppressedBefore"] = .int(Int64(suppressed)) }
        f["status"] = .int(Int64(status))
        f["reason"] = .string(SecurityEvent.bounded(reason))
        f["remote"] = .string(client)
        f["method"] = .string(SecurityEvent.bounded(method, maxBytes: 16))
        f["target"] = .string(SecurityEvent.bounded(uri, maxBytes: 128))
        // Durable, without holding the event loop: the refusal is already decided.
        log.append([SecurityEvent(.httpRefused, f)]) { [logger] error in
            if let error { logger.error("http.refused not recorded", metadata: ["error": "\(error)"]) }
        }
    }

    /// A new connection's pipeline (on its event loop): the connection
    /// guard first (it must see the TLS handshake's bytes too), TLS, HTTP/1.1, MCP.
    func configure(_ channel: Channel, tls: (@Sendable (Channel) throws -> Void)?) throws {
        let ops = channel.pipeline.syncOperations
        let clock = ConnectionClock(limits: limits)
        try ops.addHandler(ConnectionGuardHandler(slots: slots, clock: clock))
        if let tls { try tls(channel) }
        try ops.configureHTTPServerPipeline(withErrorHandling: true)
        try ops.addHandler(MCPHTTPHandler(app: self, clock: clock))
    }
}

extension ListenAddress {
    /// Parses `ADDRESS:PORT` with any IP literal; tells whether it is a
    /// loopback address (127.0.0.0/8, ::1).
    static func parseAny(_ text: String) throws(ListenError) -> (ListenAddress, loopback: Bool) {
        guard let colon = text.lastIndex(of: ":") else {
            throw ListenError("--http \(text): expected ADDRESS:PORT, e.g. 127.0.0.1:8765 or [::1]:8765")
        }
        var host = String(text[..<colon])
        guard let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else {
            throw ListenError("--http \(text): the port must be 0–65535 (0: any free port)")
        }
        var bracketed = false
        if host.hasPrefix("[") && host.hasSuffix("]") {
            host = String(host.dropFirst().dropLast())
            bracketed = true
        }
        guard let address = IPAddress(literal: host), address.isIPv6 == bracketed else {
            throw ListenError("--http \(text): expected an IP address (127.0.0.1, or [::1] for IPv6), not a host name")
        }
        let loopback =
            address.isIPv6 ? address.bytes == [UInt8](repeating: 0, count: 15) + [1] : address.bytes[0] == 127
        return (ListenAddress(host: address.description, port: port, isIPv6: address.isIPv6), loopback)
    }
}

/// A token bucket per client address for `http.refused` records: `burst`
/// at once, then `perSecond`. A refusal beyond it is still refused, only
/// not recorded; the next record of that address says how many were not
/// (`suppressedBefore`). At most `maxAddresses` are tracked (then the table
/// starts afresh: the bound holds per address, not for ever).
final class RefusalRecordLimiter: Sendable {
    let burst: Double
    let perSecond: Double
    let maxAddresses: Int
    private struct Bucket {
        var tokens: Double
        var last: UInt64
        var suppressed: Int
    }
    private let buckets = Mutex<[String: Bucket]>([:])

    init(burst: Int = 20, perSecond: Double = 2, maxAddresses: Int = 4096) {
        self.burst = Double(burst)
        self.perSecond = perSecond
        self.maxAddresses = maxAddresses
    }

    /// nil: do not record this one; else how many were not recorded before it.
    func admit(_ address: String, now: UInt64) -> Int? {
        buckets.withLock { b in
            if b[address] == nil && b.count >= maxAddresses { b.removeAll() }
            var bucket = b[address] ?? Bucket(tokens: burst, last: now, suppressed: 0)
            let elapsed = Double(now &- bucket.last) / 1e9
            bucket.tokens = min(burst, bucket.tokens + elapsed * perSecond)
            bucket.last = now
            defer { b[address] = bucket }
            guard bucket.tokens >= 1 else {
                bucket.suppressed += 1
                return nil
            }
            bucket.tokens -= 1
            let s = bucket.suppressed
            bucket.suppressed = 0
            return s
        }
    }
}

/// A connection's timers: `idleTimeout` while no request is in progress,
/// `requestTimeout` from a request's first byte to its last. A client that
/// sends its headers a byte at a time (slowloris) or never finishes its
/// body is closed, and holds no slot and no worker meanwhile: a request
/// takes a slot only once it is complete. Event-loop confined.
final class ConnectionClock {
    enum Phase {
        case idle
        case receiving
        case busy
    }
    let requestTimeout: TimeAmount
    let idleTimeout: TimeAmount
    var phase = Phase.idle
    var timer: Scheduled<Void>?
    var context: ChannelHandlerContext?

    init(limits: HTTPConfiguration.Limits) {
        requestTimeout = .milliseconds(Int64(limits.requestTimeoutMilliseconds))
        idleTimeout = .milliseconds(Int64(limits.idleTimeoutMilliseconds))
    }

    private func arm(_ after: TimeAmount) {
        timer?.cancel()
        guard let context else { return }
        let channel = context.channel
        timer = context.eventLoop.scheduleTask(in: after) { channel.close(promise: nil) }
    }

    func start(_ context: ChannelHandlerContext) {
        self.context = context
        arm(idleTimeout)
    }

    /// Bytes arrived: a request has begun if none was in progress.
    func bytesArrived() {
        if phase == .idle {
            phase = .receiving
            arm(requestTimeout)
        }
    }

    /// The request is complete; what follows is bounded by the call.
    func requestComplete() {
        phase = .busy
        timer?.cancel()
        timer = nil
    }

    func responseDone() {
        phase = .idle
        arm(idleTimeout)
    }

    func stop() {
        timer?.cancel()
        timer = nil
        context = nil
    }
}

/// First in the pipeline: counts connections (over the limit: closed at
/// once) and tells the clock when bytes arrive.
final class ConnectionGuardHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    let slots: HTTPStreamSlots
    let clock: ConnectionClock
    var counted = false

    init(slots: HTTPStreamSlots, clock: ConnectionClock) {
        self.slots = slots
        self.clock = clock
    }

    func channelActive(context: ChannelHandlerContext) {
        guard slots.connect() else {
            context.close(promise: nil)
            return
        }
        counted = true
        clock.start(context)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        clock.bytesArrived()
        context.fireChannelRead(data)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if counted {
            counted = false
            slots.disconnect()
        }
        clock.stop()
        context.fireChannelInactive()
    }
}

/// One connection's requests, one at a time (HTTP/1.1; NIO's pipelining
/// handler holds back a pipelined request until the previous response
/// ended).
final class MCPHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let app: MCPHTTPApp
    let clock: ConnectionClock
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    /// Set once the request is refused while its body still arrives.
    private var discarding = false
    /// The call whose stream this connection carries, if any.
    private var running: HTTPCallStream?
    /// The slot this connection holds (released with the response's end).
    private var slotClient: String?
    private var closed = false

    init(app: MCPHTTPApp, clock: ConnectionClock) {
        self.app = app
        self.clock = clock
    }

    var client: String = "unknown"

    func channelActive(context: ChannelHandlerContext) {
        client = context.channel.remoteAddress?.ipAddress ?? "unknown"
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed = true
        // The client went away: its call is cancelled, which kills the worker.
        running?.cancel()
        running = nil
        releaseSlot()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            clock.bytesArrived()
            head = h
            body = []
            discarding = false
            if let length = h.headers.first(name: "Content-Length").flatMap(Int.init), length > app.limits.maxBodyBytes
            {
                refuse(context, h, status: 413, reason: "body of \(length) bytes over \(app.limits.maxBodyBytes)")
            }
        case .body(var chunk):
            guard !discarding, head != nil else { return }
            if body.count + chunk.readableBytes > app.limits.maxBodyBytes {
                refuse(context, head!, status: 413, reason: "body over \(app.limits.maxBodyBytes) bytes")
                return
            }
            body += chunk.readBytes(length: chunk.readableBytes) ?? []
        case .end:
            clock.requestComplete()
            guard !discarding, let h = head else { return }
            head = nil
            handle(context, h)
        }
    }

    private func refuse(_ context: ChannelHandlerContext, _ h: HTTPRequestHead, status: Int, reason: String) {
        discarding = true
        head = nil
        body = []
        app.recordRefusal(
            status: status, reason: reason, client: client, caller: nil, method: h.method.rawValue, uri: h.uri)
        // The rest of the body is not read: the connection ends with the answer.
        respond(context, status: status, headers: [], body: Self.text(reason), keepAlive: false)
    }

    /// The reason as the content of an HTTP quoted-string: it may quote a
    /// token's header (an `alg`), so only printable ASCII other than `"`
    /// and `\` is kept (no header splitting, no broken quoting).
    static func quotable(_ s: String) -> String {
        String(
            String.UnicodeScalarView(
                s.unicodeScalars.filter { $0.value >= 0x20 && $0.value < 0x7F && $0 != "\"" && $0 != "\\" }))
    }

    static func text(_ s: String) -> [UInt8] {
        HTTPErrorBody.json(s)
    }

    private func handle(_ context: ChannelHandlerContext, _ h: HTTPRequestHead) {
        let fields = HTTPFields(h.headers.map { ($0.name, $0.value) })
        let keepAlive = h.isKeepAlive
        switch app.requestGuard.decide(method: h.method.rawValue, uri: h.uri, fields: fields) {
        case .refuse(let status, let reason, let allow):
            if status != 404 && status != 405 {
                app.recordRefusal(
                    status: status, reason: reason, client: client, caller: nil, method: h.method.rawValue, uri: h.uri)
            }
            respond(
                context, status: status, headers: allow.map { [("Allow", $0)] } ?? [], body: Self.text(reason),
                keepAlive: keepAlive)
        case .route(.metadata):
            respond(
                context, status: 200, headers: [("Content-Type", "application/json")],
                body: h.method == .HEAD ? [] : app.metadata, keepAlive: keepAlive)
        case .route(.health):
            respond(
                context, status: 200, headers: [("Content-Type", "text/plain"), ("Cache-Control", "no-store")],
                body: h.method == .HEAD ? [] : Array("ok\n".utf8), keepAlive: keepAlive)
        case .route(.mcp):
            let body = self.body
            self.body = []
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            let auth = app.auth
            let authorization = fields["Authorization"]
            Task {
                let result = await auth.authenticate(authorization: authorization)
                bound.eventLoop.execute {
                    let (handler, context) = bound.value
                    handler.authenticated(context, h, fields, body, result)
                }
            }
        }
    }

    private func authenticated(
        _ context: ChannelHandlerContext, _ h: HTTPRequestHead, _ fields: HTTPFields, _ body: [UInt8],
        _ result: Result<HTTPCaller, AuthFailure>
    ) {
        guard !closed else { return }
        let keepAlive = h.isKeepAlive
        var caller: HTTPCaller
        switch result {
        case .failure(let f):
            return authRefusal(context, h, f, caller: nil)
        case .success(let c): caller = c
        }
        if let f = app.auth.scopeProblem(caller) { return authRefusal(context, h, f, caller: caller) }
        guard app.endpoint.pipeline(for: caller) != nil else {
            let reason =
                caller.tenant.map { "tenant \(SecurityEvent.bounded($0, maxBytes: 64)) is not served here" }
                ?? "a caller without a tenant is not served here (tenants are configured)"
            app.recordRefusal(
                status: 403, reason: reason, client: client, caller: caller, method: h.method.rawValue, uri: h.uri)
            return respond(context, status: 403, headers: [], body: Self.text(reason), keepAlive: keepAlive)
        }
        if let refusal = app.slots.acquire(client) {
            let status = refusal == .client ? 429 : 503
            let reason =
                refusal == .client
                ? "more than \(app.slots.perClient) requests in progress from this address"
                : "more than \(app.slots.total) requests in progress"
            app.recordRefusal(
                status: status, reason: reason, client: client, caller: caller, method: h.method.rawValue, uri: h.uri)
            return respond(
                context, status: status, headers: [("Retry-After", "1")], body: Self.text(reason), keepAlive: keepAlive)
        }
        slotClient = client
        caller.subject = SecurityEvent.bounded(caller.subject)
        let outcome: HTTPOutcome
        if h.method == .DELETE {
            outcome = app.endpoint.delete(fields: fields, caller: caller)
        } else {
            let type = fields["Content-Type"]?.lowercased() ?? ""
            guard type.hasPrefix("application/json") else {
                releaseSlot()
                return respond(
                    context, status: 415, headers: [], body: Self.text("Content-Type must be application/json"),
                    keepAlive: keepAlive)
            }
            outcome = app.endpoint.post(fields: fields, body: body, caller: caller)
        }
        switch outcome {
        case .respond(let status, let headers, let body):
            var hs = headers
            if body != nil { hs.append(("Content-Type", "application/json")) }
            respond(context, status: status, headers: hs, body: body ?? [], keepAlive: keepAlive)
        case .stream(let headers, let stream):
            let accept = fields["Accept"]?.lowercased() ?? ""
            let sse = accept.contains("text/event-stream")
            running = stream
            if sse {
                var hs = HTTPHeaders(headers)
                hs.add(name: "Content-Type", value: "text/event-stream")
                hs.add(name: "Cache-Control", value: "no-store")
                if !keepAlive { hs.add(name: "Connection", value: "close") }
                context.writeAndFlush(
                    wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: hs))), promise: nil)
            }
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            stream.start { message, final in
                bound.eventLoop.execute {
                    let (handler, context) = bound.value
                    handler.streamed(context, message, final: final, sse: sse, headers: headers, keepAlive: keepAlive)
                }
            }
        }
    }

    /// One message of a running call, on the event loop.
    private func streamed(
        _ context: ChannelHandlerContext, _ message: [UInt8], final: Bool, sse: Bool, headers: [(String, String)],
        keepAlive: Bool
    ) {
        guard !closed, running != nil else { return }
        if !sse {
            // A client that takes only JSON gets the response alone.
            guard final else { return }
            running = nil
            if message.isEmpty {
                // Cancelled (notifications/cancelled, DELETE): no answer exists.
                return respond(context, status: 202, headers: headers, body: [], keepAlive: keepAlive)
            }
            return respond(
                context, status: 200, headers: headers + [("Content-Type", "application/json")], body: message,
                keepAlive: keepAlive)
        }
        if !message.isEmpty {
            var buffer = context.channel.allocator.buffer(capacity: message.count + 24)
            buffer.writeString("event: message\ndata: ")
            buffer.writeBytes(message)
            buffer.writeString("\n\n")
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        }
        guard final else {
            context.flush()
            return
        }
        running = nil
        end(context, keepAlive: keepAlive)
    }

    private func authRefusal(
        _ context: ChannelHandlerContext, _ h: HTTPRequestHead, _ f: AuthFailure, caller: HTTPCaller?
    ) {
        app.recordRefusal(
            status: f == .missing ? 401 : (caller == nil ? 401 : 403), reason: f.reason, client: client,
            caller: caller, method: h.method.rawValue, uri: h.uri)
        let meta = "resource_metadata=\"\(app.metadataURL)\""
        switch f {
        case .missing:
            respond(
                context, status: 401, headers: [("WWW-Authenticate", "Bearer \(meta)")],
                body: Self.text("a bearer token is required"), keepAlive: h.isKeepAlive)
        case .invalidToken(let why):
            respond(
                context, status: 401,
                headers: [
                    (
                        "WWW-Authenticate",
                        "Bearer error=\"invalid_token\", error_description=\"\(Self.quotable(why))\", \(meta)"
                    )
                ],
                body: Self.text("invalid token: \(why)"), keepAlive: h.isKeepAlive)
        case .insufficientScope(let required):
            let scope = required.joined(separator: " ")
            respond(
                context, status: 403,
                headers: [("WWW-Authenticate", "Bearer error=\"insufficient_scope\", scope=\"\(scope)\", \(meta)")],
                body: Self.text("insufficient scope: needs \(scope)"), keepAlive: h.isKeepAlive)
        }
    }

    private func releaseSlot() {
        if let c = slotClient {
            slotClient = nil
            app.slots.release(c)
        }
    }

    private func respond(
        _ context: ChannelHandlerContext, status: Int, headers: [(String, String)], body: [UInt8], keepAlive: Bool
    ) {
        var hs = HTTPHeaders(headers)
        if hs["Content-Type"].isEmpty && !body.isEmpty { hs.add(name: "Content-Type", value: "application/json") }
        hs.add(name: "Content-Length", value: "\(body.count)")
        hs.add(name: "Cache-Control", value: "no-store")
        if !keepAlive { hs.add(name: "Connection", value: "close") }
        context.write(
            wrapOutboundOut(
                .head(HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: status), headers: hs))),
            promise: nil)
        if !body.isEmpty {
            var buffer = context.channel.allocator.buffer(capacity: body.count)
            buffer.writeBytes(body)
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        }
        end(context, keepAlive: keepAlive)
    }

    private func end(_ context: ChannelHandlerContext, keepAlive: Bool) {
        releaseSlot()
        // Before the write: writing the end lets NIO's pipelining handler
        // hand over a request the client already sent, whose first byte
        // must find the clock idle.
        if keepAlive { clock.responseDone() }
        let done = context.eventLoop.makePromise(of: Void.self)
        let channel = context.channel
        done.futureResult.whenComplete { _ in
            if !keepAlive { channel.close(promise: nil) }
        }
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: done)
    }
}

/// Plain-text refusals as a small JSON object (`{"error": "…"}`), so every
/// body this endpoint sends is JSON.
enum HTTPErrorBody {
    static func json(_ s: String) -> [UInt8] {
        JSONValue.object(JSONObject([("error", .string(s))])).serializedBytes()
    }
}
