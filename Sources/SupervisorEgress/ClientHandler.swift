import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import SupervisorCore
import SupervisorPlatform

/// One connection from a worker to the proxy. The first request decides
/// what the connection is: `CONNECT host:port` becomes an opaque tunnel (or,
/// for a host with credential injections, a TLS-terminated HTTP relay to
/// that one host); anything else is plain HTTP proxying, request by
/// request. Requests are served one at a time: the handler reads the next
/// one only once the previous response has ended (no pipelining), and
/// holds reads while the upstream cannot take more (bounded buffers).
final class ClientHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    static let decoderName = "egress-http-decoder"
    static let encoderName = "egress-http-encoder"

    enum Mode {
        /// Absolute-form requests, each to the host its URL names.
        case plain
        /// After a TLS-terminated CONNECT: origin-form requests, all to this host.
        case intercepted(RequestTarget)
        /// Switching to a tunnel or to TLS: raw bytes are held meanwhile.
        case switching
    }

    enum Phase {
        /// Waiting for a request head.
        case idle
        /// The upstream connection is being opened; the request's parts wait.
        case connecting
        /// Sending the request's head and body upstream.
        case sending
        /// The request is sent; its response is being relayed.
        case responding
        /// An answer of the proxy's own was written; the connection closes.
        case closing
    }

    let worker: WorkerEgress
    let overLimit: Bool
    var mode = Mode.plain
    var phase = Phase.idle
    var firstRequest = true
    /// Parts of the current request waiting for its upstream connection.
    var waiting: [HTTPClientRequestPart] = []
    /// Raw bytes that arrived while switching to a tunnel or to TLS.
    var held: [NIOAny] = []
    var upstream: Channel? = nil
    var upstreamTarget: RequestTarget? = nil
    /// The client asked to close after this request.
    var closeAfterResponse = false
    var requestEnded = false
    var responseEnded = false
    /// Whether the current response's head went to the worker: until then
    /// an upstream failure can still be answered with a 502 naming it.
    var responseStarted = false
    var pendingRead = false
    var context: ChannelHandlerContext? = nil

    init(worker: WorkerEgress, overLimit: Bool) {
        self.worker = worker
        self.overLimit = overLimit
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    // MARK: inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .switching = mode {
            held.append(data)
            return
        }
        switch unwrapInboundIn(data) {
        case .head(let head): requestHead(head, context: context)
        case .body(let b): requestPart(.body(.byteBuffer(b)), context: context)
        case .end(let trailers):
            requestEnded = true
            requestPart(.end(trailers), context: context)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        upstream?.close(promise: nil)
        upstream = nil
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
            return
        }
        // The worker closed its side (half-closure is allowed for tunnels):
        // between requests the connection is done; during one, it ends
        // with that response. Left open, it would hold one of the worker's
        // connections until the idle timeout.
        if let e = event as? ChannelEvent, case .inputClosed = e {
            closeAfterResponse = true
            if phase == .idle || phase == .closing { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // A malformed request: a clear answer if nothing else is being said.
        if phase == .idle || phase == .connecting {
            if let e = error as? HTTPParserError {
                if case .headerOverflow = e {
                    refuse(
                        .requestHeaderFieldsTooLarge,
                        "the request's headers exceed \(EgressProxyServer.maxHeaderBytes) bytes", context: context)
                } else {
                    refuse(.badRequest, "malformed HTTP request (\(e))", context: context)
                }
                return
            }
            if error is ByteToMessageDecoderError.PayloadTooLargeError {
                refuse(
                    .requestHeaderFieldsTooLarge,
                    "the request's head exceeds \(EgressProxyServer.maxBufferedBytes) bytes", context: context)
                return
            }
        }
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { upstream?.read() }
        context.fireChannelWritabilityChanged()
    }

    // MARK: outbound: reads are held while the request cannot go on

    func read(context: ChannelHandlerContext) {
        if mayRead {
            pendingRead = false
            context.read()
        } else {
            pendingRead = true
        }
    }

    var mayRead: Bool {
        switch phase {
        case .idle: return true
        case .sending: return upstream?.isWritable ?? false
        case .connecting, .responding, .closing: return false
        }
    }

    func resumeReading() {
        guard pendingRead, mayRead, let context else { return }
        pendingRead = false
        context.read()
    }

    // MARK: requests

    private func requestHead(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        guard phase == .idle else {
            // A new head before the previous response ended: no pipelining.
            refuse(.badRequest, "a request arrived before the previous response ended", context: context)
            return
        }
        requestEnded = false
        responseEnded = false
        responseStarted = false
        closeAfterResponse = !head.isKeepAlive
        let first = firstRequest
        firstRequest = false
        let target: RequestTarget
        switch mode {
        case .plain where head.method == .CONNECT:
            guard first else {
                refuse(.badRequest, "CONNECT must be the first request of a connection", context: context)
                return
            }
            do { target = try RequestTarget.connect(head.uri) } catch {
                refuse(.badRequest, error.message, context: context)
                return
            }
            connect(target, context: context)
            return
        case .plain:
            do { target = try RequestTarget.absolute(head.uri) } catch {
                refuse(.badRequest, error.message, context: context)
                return
            }
        case .intercepted(let host):
            guard head.method != .CONNECT, head.uri.hasPrefix("/") else {
                refuse(.badRequest, "inside a tunnel requests are origin-form (/path)", context: context)
                return
            }
            target = RequestTarget(host: host.host, port: host.port, originForm: head.uri)
        case .switching:
            return
        }
        var out = HTTPRequestHead(version: .http1_1, method: head.method, uri: target.originForm)
        out.headers = Self.forwardedHeaders(head.headers)
        let defaultPort = upstreamIsTLS ? 443 : 80
        out.headers.replaceOrAdd(
            name: "Host", value: target.port == defaultPort ? Self.hostText(target.host) : target.authority)
        // Credentials the cell never holds: set here, replacing whatever
        // the worker sent under the same name; each only over the scheme
        // the manifest gives it (an `https` one never in plain HTTP, where
        // a worker downgrading on purpose would have it cross in clear).
        let injections = worker.injections(for: target).filter { ($0.scheme == .https) == upstreamIsTLS }
        for i in injections { out.headers.replaceOrAdd(name: i.headerName, value: i.headerValue) }
        waiting = [.head(out)]
        if let up = upstream, let t = upstreamTarget, t.host == target.host, t.port == target.port, up.isActive {
            phase = .sending
            flushWaiting()
            return
        }
        upstream?.close(promise: nil)
        upstream = nil
        guard !overLimit else {
            refuseConnection(target, context: context)
            return
        }
        phase = .connecting
        let tls: Bool
        if case .intercepted = mode { tls = true } else { tls = false }
        worker.open(target, leaf: false, on: context.eventLoop).assumeIsolated().whenComplete { result in
            switch result {
            case .success(.granted(let fd, _)):
                self.attachUpstream(fd: fd, target: target, tls: tls, context: context)
            case .success(.refused(let why)):
                self.refuse(.forbidden, "mcp-supervisor refused \(target.authority): \(why)", context: context)
            case .failure(let e):
                self.refuse(.badGateway, "mcp-supervisor could not reach \(target.authority): \(e)", context: context)
            }
        }
    }

    private var upstreamIsTLS: Bool {
        if case .intercepted = mode { return true }
        return false
    }

    /// A connection past the worker's limit: refused, and recorded as such.
    private func refuseConnection(_ target: RequestTarget, context: ChannelHandlerContext) {
        let why = "the cell's limit of \(worker.access.maxConnections) connections open at once is reached"
        _ = worker.decisions.post(NetworkDecision(host: target.host, port: target.port, refusal: why))
        refuse(.serviceUnavailable, "mcp-supervisor refused \(target.authority): \(why)", context: context)
    }

    private func requestPart(_ part: HTTPClientRequestPart, context: ChannelHandlerContext) {
        switch phase {
        case .connecting:
            waiting.append(part)
        case .sending:
            waiting.append(part)
            flushWaiting()
        case .idle, .responding, .closing:
            // A CONNECT's end, or parts of a refused request.
            break
        }
    }

    private func flushWaiting() {
        if let up = upstream {
            let parts = waiting
            waiting = []
            for p in parts { up.write(p, promise: nil) }
            up.flush()
        } else if responseEnded {
            // Answered, and the upstream closed: the rest has nowhere to go.
            waiting = []
        } else {
            return
        }
        if requestEnded {
            // A server may answer before the request's body has all gone
            // (an early 413): then the request's end finishes the exchange.
            phase = responseEnded ? .idle : .responding
            if phase == .idle { resumeReading() }
        }
    }

    private func attachUpstream(fd: Int32, target: RequestTarget, tls: Bool, context: ChannelHandlerContext) {
        guard self.context != nil, context.channel.isActive else {
            _ = try? FileDescriptorCloser.close(fd)
            return
        }
        let host = target.host
        let tlsContext = worker.proxy.upstreamTLS
        ClientBootstrap(group: context.eventLoop)
            .channelOption(.autoRead, value: false)
            .withConnectedSocket(fd)
            .assumeIsolated()
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    do {
                        let sync = channel.pipeline.syncOperations
                        if tls {
                            let ip = IPAddress(literal: host) != nil
                            try sync.addHandler(
                                NIOSSLClientHandler(context: tlsContext, serverHostname: ip ? nil : host))
                        }
                        try sync.addHTTPClientHandlers()
                        try sync.addHandler(UpstreamHandler(client: self))
                        try channel.syncOptions?.setOption(.autoRead, value: true)
                    } catch {
                        channel.close(promise: nil)
                        self.refuse(
                            .badGateway, "mcp-supervisor could not set up \(target.authority): \(error)",
                            context: context)
                        return
                    }
                    self.upstream = channel
                    self.upstreamTarget = target
                    self.phase = .sending
                    self.flushWaiting()
                    self.resumeReading()
                case .failure(let e):
                    self.refuse(
                        .badGateway, "mcp-supervisor could not reach \(target.authority): \(e)", context: context)
                }
            }
    }

    // MARK: responses from upstream

    func upstreamResponse(_ part: HTTPClientResponsePart) {
        guard let context else { return }
        switch part {
        case .head(let head):
            responseStarted = true
            var out = HTTPResponseHead(version: .http1_1, status: head.status)
            out.headers = Self.forwardedHeaders(head.headers)
            if !head.isKeepAlive { upstreamWillClose = true }
            if closeAfterResponse { out.headers.replaceOrAdd(name: "Connection", value: "close") }
            context.write(wrapOutboundOut(.head(out)), promise: nil)
        case .body(let b):
            context.write(wrapOutboundOut(.body(.byteBuffer(b))), promise: nil)
        case .end(let trailers):
            responseEnded = true
            let close = closeAfterResponse
            context.writeAndFlush(wrapOutboundOut(.end(trailers))).assumeIsolated().whenComplete { _ in
                if close { context.close(promise: nil) }
            }
            if upstreamWillClose {
                upstream?.close(promise: nil)
                upstream = nil
                upstreamWillClose = false
            }
            if requestEnded {
                phase = .idle
                resumeReading()
            }
        }
    }

    var upstreamWillClose = false

    func upstreamFlush() { context?.flush() }

    func upstreamWritable() { resumeReading() }

    /// The upstream connection ended: mid-response the client's connection
    /// ends too; between requests the next request opens a new one.
    /// An error on the upstream connection (its TLS handshake failing, say
    /// the certificate not verifying) while a request waits for it and no
    /// response has started: answered with a 502 that names it, instead of
    /// a connection closed without a word. (The connection made at CONNECT
    /// before any request is only dropped: the request opens another.)
    func upstreamFailed(_ channel: Channel, _ error: Error) {
        guard upstream === channel, phase == .sending || phase == .responding, !responseStarted,
            let context, let target = upstreamTarget
        else { return }
        refuse(.badGateway, "mcp-supervisor's connection to \(target.authority) failed: \(error)", context: context)
    }

    func upstreamClosed(_ channel: Channel) {
        guard upstream === channel else { return }
        upstream = nil
        if (phase == .sending || phase == .responding) && !responseEnded { context?.close(promise: nil) }
    }

    // MARK: CONNECT

    private func connect(_ target: RequestTarget, context: ChannelHandlerContext) {
        guard !overLimit else {
            refuseConnection(target, context: context)
            return
        }
        phase = .connecting
        let intercept = worker.intercepts(target)
        worker.open(target, leaf: intercept, on: context.eventLoop).assumeIsolated().whenComplete { result in
            switch result {
            case .success(.granted(let fd, let leaf)):
                if let leaf {
                    self.terminateTLS(fd: fd, target: target, leaf: leaf, context: context)
                } else {
                    self.tunnel(fd: fd, target: target, context: context)
                }
            case .success(.refused(let why)):
                self.refuse(.forbidden, "mcp-supervisor refused \(target.authority): \(why)", context: context)
            case .failure(let e):
                self.refuse(.badGateway, "mcp-supervisor could not reach \(target.authority): \(e)", context: context)
            }
        }
    }

    private func established(context: ChannelHandlerContext) {
        let head = HTTPResponseHead(version: .http1_1, status: .ok)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }

    /// An opaque tunnel: bytes both ways, untouched.
    private func tunnel(fd: Int32, target: RequestTarget, context: ChannelHandlerContext) {
        guard self.context != nil, context.channel.isActive else {
            _ = try? FileDescriptorCloser.close(fd)
            return
        }
        ClientBootstrap(group: context.eventLoop)
            .channelOption(.autoRead, value: false)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .withConnectedSocket(fd)
            .assumeIsolated()
            .whenComplete { result in
                switch result {
                case .success(let peer):
                    self.established(context: context)
                    self.mode = .switching
                    let (local, remote) = GlueHandler.matchedPair()
                    do {
                        try peer.pipeline.syncOperations.addHandler(remote)
                        try context.pipeline.syncOperations.addHandler(local, position: .before(self))
                        context.pipeline.syncOperations.removeHandler(name: Self.encoderName, promise: nil)
                        context.pipeline.syncOperations.removeHandler(name: Self.decoderName, promise: nil)
                        try peer.syncOptions?.setOption(.autoRead, value: true)
                    } catch {
                        peer.close(promise: nil)
                        context.close(promise: nil)
                        return
                    }
                    let held = self.held
                    self.held = []
                    context.pipeline.syncOperations.removeHandler(self, promise: nil)
                    for h in held { local.channelReadHeld(h) }
                    // Reads were held while connecting: start them again.
                    context.channel.read()
                case .failure(let e):
                    self.refuse(
                        .badGateway, "mcp-supervisor could not reach \(target.authority): \(e)", context: context)
                }
            }
    }

    /// TLS terminated here with the authority's certificate for the host:
    /// the worker's requests are read, given their credentials and sent on
    /// over TLS verified against the system roots (and egressCaBundle).
    private func terminateTLS(fd: Int32, target: RequestTarget, leaf: NIOSSLContext, context: ChannelHandlerContext) {
        established(context: context)
        mode = .switching
        let sync = context.pipeline.syncOperations
        sync.removeHandler(name: Self.encoderName, promise: nil)
        sync.removeHandler(name: Self.decoderName, promise: nil)
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderListSize = EgressProxyServer.maxHeaderBytes
        limits.maxHeaderFieldSize = EgressProxyServer.maxHeaderBytes
        limits.maxHeaderFieldCount = 256
        do {
            try sync.addHandler(NIOSSLServerHandler(context: leaf), position: .before(self))
            try sync.addHandler(
                ByteToMessageHandler(
                    HTTPRequestDecoder(
                        leftOverBytesStrategy: .dropBytes, informationalResponseStrategy: .drop,
                        limitConfiguration: limits),
                    maximumBufferSize: EgressProxyServer.maxBufferedBytes),
                name: Self.decoderName, position: .before(self))
            try sync.addHandler(HTTPResponseEncoder(), name: Self.encoderName, position: .before(self))
        } catch {
            _ = try? FileDescriptorCloser.close(fd)
            context.close(promise: nil)
            return
        }
        mode = .intercepted(target)
        phase = .connecting
        requestEnded = false
        waiting = []
        // The connection made at CONNECT serves the first request.
        attachPreconnected(fd: fd, target: target, context: context)
        let held = self.held
        self.held = []
        for h in held { context.pipeline.syncOperations.fireChannelRead(h) }
    }

    private func attachPreconnected(fd: Int32, target: RequestTarget, context: ChannelHandlerContext) {
        let host = target.host
        let tlsContext = worker.proxy.upstreamTLS
        ClientBootstrap(group: context.eventLoop)
            .channelOption(.autoRead, value: false)
            .withConnectedSocket(fd)
            .assumeIsolated()
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    do {
                        let sync = channel.pipeline.syncOperations
                        let ip = IPAddress(literal: host) != nil
                        try sync.addHandler(NIOSSLClientHandler(context: tlsContext, serverHostname: ip ? nil : host))
                        try sync.addHTTPClientHandlers()
                        try sync.addHandler(UpstreamHandler(client: self))
                        try channel.syncOptions?.setOption(.autoRead, value: true)
                    } catch {
                        channel.close(promise: nil)
                        context.close(promise: nil)
                        return
                    }
                    self.upstream = channel
                    self.upstreamTarget = target
                    self.phase = .idle
                    self.resumeReading()
                case .failure:
                    context.close(promise: nil)
                }
            }
    }

    // MARK: answers of the proxy's own

    /// Answers with `status` and `message` (plain text) and closes.
    func refuse(_ status: HTTPResponseStatus, _ message: String, context: ChannelHandlerContext) {
        guard phase != .closing, context.channel.isActive else { return }
        phase = .closing
        upstream?.close(promise: nil)
        upstream = nil
        if case .switching = mode {
            context.close(promise: nil)
            return
        }
        var body = context.channel.allocator.buffer(capacity: message.utf8.count + 1)
        body.writeString(message + "\n")
        var head = HTTPResponseHead(version: .http1_1, status: status)
        head.headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
        head.headers.add(name: "Content-Length", value: "\(body.readableBytes)")
        head.headers.add(name: "Connection", value: "close")
        head.headers.add(name: "X-MCP-Supervisor", value: "egress-proxy")
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }

    // MARK: headers

    /// Hop-by-hop headers (RFC 9110 §7.6.1) and the proxy's own are not
    /// passed on, nor any header the Connection header names.
    static func forwardedHeaders(_ h: HTTPHeaders) -> HTTPHeaders {
        var drop: Set<String> = [
            "connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate", "te",
            "trailer", "upgrade",
        ]
        for v in h[canonicalForm: "connection"] { drop.insert(v.lowercased().trimmingSpaces) }
        var out = HTTPHeaders()
        for (name, value) in h where !drop.contains(name.lowercased()) { out.add(name: name, value: value) }
        return out
    }

    static func hostText(_ host: String) -> String { host.contains(":") ? "[\(host)]" : host }
}

extension StringProtocol {
    var trimmingSpaces: String {
        String(drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }
}

/// Closes a raw descriptor NIO never took.
enum FileDescriptorCloser {
    static func close(_ fd: Int32) throws {
        SupervisorPlatform.FileDescriptor(rawValue: fd).close()
    }
}

/// The upstream side of a relayed HTTP connection: responses go back to the
/// client's handler (same event loop).
final class UpstreamHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    weak var client: ClientHandler?
    var pendingRead = false

    init(client: ClientHandler) { self.client = client }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        client?.upstreamResponse(unwrapInboundIn(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) { client?.upstreamFlush() }

    func channelInactive(context: ChannelHandlerContext) {
        client?.upstreamClosed(context.channel)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        client?.upstreamFailed(context.channel, error)
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { client?.upstreamWritable() }
        context.fireChannelWritabilityChanged()
    }

    /// Reads from upstream only while the client can take more.
    func read(context: ChannelHandlerContext) {
        if client?.context?.channel.isWritable ?? true {
            context.read()
        } else {
            pendingRead = true
        }
    }
}

/// Two channels glued together: what one reads, the other writes, with
/// reads held while the other cannot take more (after SwiftNIO's
/// connect-proxy example).
final class GlueHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    typealias OutboundIn = NIOAny
    typealias OutboundOut = NIOAny

    private var partner: GlueHandler?
    private var context: ChannelHandlerContext?
    private var pendingRead = false

    static func matchedPair() -> (GlueHandler, GlueHandler) {
        let a = GlueHandler()
        let b = GlueHandler()
        a.partner = b
        b.partner = a
        return (a, b)
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        partner = nil
    }

    /// Bytes that arrived before the glue was in place.
    func channelReadHeld(_ data: NIOAny) { partner?.partnerWrite(data) }

    private func partnerWrite(_ data: NIOAny) { context?.write(data, promise: nil) }
    private func partnerFlush() { context?.flush() }
    private func partnerWriteEOF() { context?.close(mode: .output, promise: nil) }
    private func partnerCloseFull() { context?.close(promise: nil) }
    private func partnerBecameWritable() {
        if pendingRead {
            pendingRead = false
            context?.read()
        }
    }
    private var partnerWritable: Bool { context?.channel.isWritable ?? false }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) { partner?.partnerWrite(data) }
    func channelReadComplete(context: ChannelHandlerContext) { partner?.partnerFlush() }
    func channelInactive(context: ChannelHandlerContext) { partner?.partnerCloseFull() }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? ChannelEvent, case .inputClosed = e {
            partner?.partnerWriteEOF()
        } else if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { partner?.partnerBecameWritable() }
    }

    func read(context: ChannelHandlerContext) {
        if let partner, partner.partnerWritable {
            context.read()
        } else {
            pendingRead = true
        }
    }
}
