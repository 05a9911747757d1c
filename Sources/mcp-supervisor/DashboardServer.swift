import Crypto
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix

/// The dashboard's HTTP server: SwiftNIO's HTTP/1.1 codec (`NIOHTTP1`, the
/// maintained parser behind many Swift servers, already built as part of
/// the MCP SDK's package graph) on one event-loop thread, and one worker
/// thread (`NIOThreadPool`) that reads the state directory, so that no
/// request ever blocks the event loop on a file. Requests pass
/// `DashboardAccess` before anything else.
final class DashboardApp: Sendable {
    let access: DashboardAccess
    let source: DashboardSource
    let pool: NIOThreadPool

    init(access: DashboardAccess, source: DashboardSource, pool: NIOThreadPool) {
        self.access = access
        self.source = source
        self.pool = pool
    }

    /// Sent with every response: nothing is cached, sniffed, framed, or
    /// readable from another origin (no `Access-Control-Allow-*` ever).
    static let commonHeaders: [(String, String)] = [
        ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"),
        ("X-Frame-Options", "DENY"), ("Cross-Origin-Opener-Policy", "same-origin"),
        ("Cross-Origin-Resource-Policy", "same-origin"),
    ]

    /// The page may run only its own script and style (by hash), talk only
    /// to this server, and load nothing else.
    static let pageCSP =
        "default-src 'none'; script-src '\(DashboardPage.scriptHash)'; style-src '\(DashboardPage.styleHash)'; "
        + "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    static let otherCSP = "default-src 'none'; frame-ancestors 'none'"

    /// Binds `listen` and returns the bound channel.
    static func bind(_ listen: ListenAddress, group: EventLoopGroup, slot: DashboardAppSlot) throws -> Channel {
        try ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 64)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let ops = channel.pipeline.syncOperations
                    // An idle connection (no request for 30 s) is closed:
                    // the page polls every 2 s on its keep-alive connection.
                    try ops.addHandler(IdleStateHandler(allTimeout: .seconds(30)))
                    try ops.configureHTTPServerPipeline(withErrorHandling: true)
                    try ops.addHandler(DashboardHTTPHandler(slot: slot))
                }
            }
            .bind(host: listen.host, port: listen.port)
            .wait()
    }
}

/// One connection: each complete request (head, any body ignored, end) is
/// decided by `DashboardAccess` and answered.
final class DashboardHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let slot: DashboardAppSlot
    private var head: HTTPRequestHead?

    init(slot: DashboardAppSlot) { self.slot = slot }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h): head = h
        case .body: break  // a GET has none; whatever comes is dropped, never kept
        case .end:
            guard let h = head else { return }
            head = nil
            handle(context, h)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    private func handle(_ context: ChannelHandlerContext, _ h: HTTPRequestHead) {
        let keepAlive = h.isKeepAlive
        guard let app = slot.app else {
            return respond(
                context, status: .serviceUnavailable, type: "text/plain; charset=utf-8", csp: DashboardApp.otherCSP,
                extra: [], body: Array("starting\n".utf8), keepAlive: false)
        }
        let decision = app.access.decide(
            method: h.method.rawValue, uri: h.uri, headers: h.headers.map { ($0.name, $0.value) })
        switch decision {
        case .refuse(let status, let reason):
            var extra: [(String, String)] = []
            if status == 405 { extra.append(("Allow", "GET")) }
            if status == 401 { extra.append(("WWW-Authenticate", "Bearer realm=\"mcp-supervisor dashboard\"")) }
            respond(
                context, status: HTTPResponseStatus(statusCode: status), type: "text/plain; charset=utf-8",
                csp: DashboardApp.otherCSP, extra: extra, body: Array((reason + "\n").utf8), keepAlive: keepAlive)
        case .redirectSettingCookie(let location):
            respond(
                context, status: .seeOther, type: "text/plain; charset=utf-8", csp: DashboardApp.otherCSP,
                extra: [("Location", location), ("Set-Cookie", app.access.cookie)], body: [], keepAlive: keepAlive)
        case .serve(let resource):
            // The state is read on the worker thread; the answer is
            // written back on this connection's event loop.
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            let source = app.source
            app.pool.runIfActive(eventLoop: context.eventLoop) { source.snapshot() }.whenComplete { result in
                let (handler, context) = bound.value
                switch result {
                case .success(let state) where resource == .page:
                    handler.respond(
                        context, status: .ok, type: "text/html; charset=utf-8", csp: DashboardApp.pageCSP,
                        extra: [], body: DashboardPage.html(state: state), keepAlive: keepAlive)
                case .success(let state):
                    handler.respond(
                        context, status: .ok, type: "application/json", csp: DashboardApp.otherCSP, extra: [],
                        body: state, keepAlive: keepAlive)
                case .failure:
                    handler.respond(
                        context, status: .serviceUnavailable, type: "text/plain; charset=utf-8",
                        csp: DashboardApp.otherCSP, extra: [], body: Array("stopping\n".utf8), keepAlive: false)
                }
            }
        }
    }

    private func respond(
        _ context: ChannelHandlerContext, status: HTTPResponseStatus, type: String, csp: String,
        extra: [(String, String)], body: [UInt8], keepAlive: Bool
    ) {
        var headers = HTTPHeaders(DashboardApp.commonHeaders + extra)
        headers.add(name: "Content-Type", value: type)
        headers.add(name: "Content-Security-Policy", value: csp)
        headers.add(name: "Content-Length", value: "\(body.count)")
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        var buffer = context.channel.allocator.buffer(capacity: body.count)
        buffer.writeBytes(body)
        context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        let done = context.eventLoop.makePromise(of: Void.self)
        if !keepAlive {
            let channel = context.channel
            done.futureResult.whenComplete { _ in channel.close(promise: nil) }
        }
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: done)
    }
}

extension DashboardPage {
    /// `'sha256-…'` of the exact text of the page's one script and one
    /// style element, for the Content-Security-Policy.
    static let scriptHash = cspHash(script)
    static let styleHash = cspHash(style)

    static func cspHash(_ text: String) -> String {
        "sha256-" + Data(SHA256.hash(data: Array(text.utf8))).base64EncodedString()
    }

    /// The page with the current state inside it (a JSON data block, which
    /// no policy lets run), so that it shows everything at its first paint;
    /// its script then polls `/api/state`. Every `<` of the JSON is written
    /// `\u003c`, so no string in the state can close the element.
    static func html(state: [UInt8]) -> [UInt8] {
        var escaped: [UInt8] = []
        escaped.reserveCapacity(state.count)
        for b in state {
            if b == UInt8(ascii: "<") {
                escaped.append(contentsOf: Array("\\u003c".utf8))
            } else {
                escaped.append(b)
            }
        }
        return Array(before.utf8) + escaped + Array(after.utf8)
    }

    static let before =
        """
        <!doctype html>
        <html lang="en"><head><meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>mcp-supervisor dashboard</title>
        <style>\(style)</style>
        </head><body>
        \(body)
        <script id="initial-state" type="application/json">
        """

    static let after =
        """
        </script>
        <script>\(script)</script>
        </body></html>

        """
}
