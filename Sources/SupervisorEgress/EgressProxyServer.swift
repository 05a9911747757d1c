import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import SupervisorCore
import SupervisorPlatform
import Synchronization

/// The supervisor's egress proxy (docs/egress.md): one SwiftNIO event loop
/// serving the listeners that workers in network namespaces of their own
/// sent back from their setup. HTTP CONNECT (an opaque tunnel, or TLS
/// terminated for a host with credential injections) and plain HTTP
/// proxying (absolute-form requests, keep-alive, one upstream connection at
/// a time per client connection). Every upstream connection goes through
/// the connection broker's rules (`ConnectionBroker.open`), run on a small
/// thread pool since resolving and connecting block.
public final class EgressProxyServer: EgressProxy {
    /// The listener's port inside every worker's namespace.
    public static let defaultListenerPort: UInt16 = 3128
    /// A request's header section, all fields together (bytes): larger is
    /// answered 431.
    public static let maxHeaderBytes = 16 * 1024
    /// Unparsed bytes held for one client connection.
    static let maxBufferedBytes = 64 * 1024
    /// A connection with no traffic either way for this long is closed.
    public static let idleTimeout = TimeAmount.seconds(120)
    /// Connections accepted per worker beyond its `maxConnections`, only to
    /// be refused with a recorded decision; past that they are closed unread.
    static let refusalHeadroom = 8

    public let listenerPort: UInt16
    let group: MultiThreadedEventLoopGroup
    /// Runs `ConnectionBroker.open` (resolving, connecting) and leaf
    /// certificate requests: they block.
    let pool: NIOThreadPool
    /// TLS towards upstream servers of intercepted connections: the system
    /// roots plus `upstreamCABundle`.
    let upstreamTLS: NIOSSLContext
    let logger: Logger

    /// `upstreamCABundle`: a PEM file of CA certificates trusted for
    /// upstream servers besides the system roots (setting `egressCaBundle`).
    public init(
        listenerPort: UInt16 = EgressProxyServer.defaultListenerPort, upstreamCABundle: String? = nil,
        logger: Logger
    ) throws {
        var tls = TLSConfiguration.makeClientConfiguration()
        if let upstreamCABundle { tls.additionalTrustRoots = [.file(upstreamCABundle)] }
        upstreamTLS = try NIOSSLContext(configuration: tls)
        self.listenerPort = listenerPort
        self.logger = logger
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        pool = NIOThreadPool(numberOfThreads: 4)
        pool.start()
    }

    /// Ends the event loop and the pool (at shutdown, after every worker).
    public func shutdown() {
        try? group.syncShutdownGracefully()
        try? pool.syncShutdownGracefully()
    }

    public func attach(
        listener: SupervisorPlatform.FileDescriptor, cell: String, callID: String, access: NetworkAccess,
        injections: [CredentialInjection], authority: (any InterceptionAuthority)?
    ) throws(SystemError) -> any EgressAttachment {
        let worker: WorkerEgress
        do {
            worker = try WorkerEgress(
                proxy: self, cell: cell, callID: callID, access: access, injections: injections, authority: authority)
        } catch {
            listener.close()
            throw error
        }
        let bootstrap = ServerBootstrap(group: group)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            // A response relayed in pieces must not wait for the worker's
            // delayed ACK (Nagle): 40 ms per response otherwise.
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in worker.initialize(channel) }
        do {
            // NIO owns the descriptor from here, failing or not.
            let server = try bootstrap.withBoundSocket(listener.rawValue).wait()
            worker.serving(server)
        } catch {
            worker.detach()
            throw SystemError("egress proxy: serving the worker's listener: \(error)", errno: 5 /* EIO */)
        }
        return worker
    }
}

/// One worker's side of the proxy: its listener, its connections, its rules.
final class WorkerEgress: EgressAttachment, Sendable {
    let proxy: EgressProxyServer
    let cell: String
    let callID: String
    let access: NetworkAccess
    let injections: [CredentialInjection]
    let authority: (any InterceptionAuthority)?
    let decisions: EgressDecisions
    /// Fired at detach: a resolution or connection in progress gives up.
    let cancellation: CallCancellation

    private struct State {
        var server: Channel? = nil
        var connections: [ObjectIdentifier: Channel] = [:]
        var detached = false
        /// TLS server contexts for intercepted hosts, by host.
        var leaves: [String: NIOSSLContext] = [:]
    }
    private let state = Mutex(State())

    init(
        proxy: EgressProxyServer, cell: String, callID: String, access: NetworkAccess,
        injections: [CredentialInjection], authority: (any InterceptionAuthority)?
    ) throws(SystemError) {
        self.proxy = proxy
        self.cell = cell
        self.callID = callID
        self.access = access
        self.injections = injections
        self.authority = authority
        decisions = try EgressDecisions()
        cancellation = try CallCancellation()
    }

    func serving(_ server: Channel) {
        let late = state.withLock { s -> Bool in
            s.server = server
            return s.detached
        }
        if late { server.close(promise: nil) }
    }

    func detach() {
        cancellation.cancel()
        let channels = state.withLock { s -> [Channel] in
            s.detached = true
            let all = Array(s.connections.values) + (s.server.map { [$0] } ?? [])
            s.connections = [:]
            s.server = nil
            return all
        }
        for c in channels { c.close(mode: .all, promise: nil) }
    }

    /// A new connection from the worker: the HTTP decoder (bounded), the
    /// encoder, the idle timer and the proxy's handler.
    func initialize(_ channel: Channel) -> EventLoopFuture<Void> {
        let id = ObjectIdentifier(channel)
        let open = state.withLock { s -> Int? in
            guard !s.detached else { return nil }
            s.connections[id] = channel
            return s.connections.count
        }
        guard let open, open <= access.maxConnections + EgressProxyServer.refusalHeadroom else {
            state.withLock { _ = $0.connections.removeValue(forKey: id) }
            return channel.close()
        }
        channel.closeFuture.whenComplete { [self] _ in
            state.withLock { _ = $0.connections.removeValue(forKey: id) }
        }
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderListSize = EgressProxyServer.maxHeaderBytes
        limits.maxHeaderFieldSize = EgressProxyServer.maxHeaderBytes
        limits.maxHeaderFieldCount = 256
        do {
            let sync = channel.pipeline.syncOperations
            try sync.addHandler(IdleStateHandler(allTimeout: EgressProxyServer.idleTimeout))
            try sync.addHandler(
                ByteToMessageHandler(
                    HTTPRequestDecoder(
                        leftOverBytesStrategy: .forwardBytes, informationalResponseStrategy: .drop,
                        limitConfiguration: limits),
                    maximumBufferSize: EgressProxyServer.maxBufferedBytes),
                name: ClientHandler.decoderName)
            try sync.addHandler(HTTPResponseEncoder(), name: ClientHandler.encoderName)
            try sync.addHandler(ClientHandler(worker: self, overLimit: open > access.maxConnections))
            return channel.eventLoop.makeSucceededVoidFuture()
        } catch {
            return channel.eventLoop.makeFailedFuture(error)
        }
    }

    /// The headers to set on requests to `target`.
    func injections(for target: RequestTarget) -> [CredentialInjection] {
        injections.filter { $0.host == target.host && $0.port == target.port }
    }

    /// Whether CONNECT to `target` is terminated here (it has injections and
    /// there is an authority to make its certificate).
    func intercepts(_ target: RequestTarget) -> Bool {
        authority != nil && injections(for: target).contains { $0.scheme == .https }
    }

    /// The outcome of one upstream connection request.
    enum Opened: Sendable {
        case granted(fd: Int32, leaf: NIOSSLContext?)
        case refused(String)
    }

    /// Applies the cell's rules to `target` and connects (on the pool), and
    /// for an intercepted host makes its TLS server context; records the
    /// decision (one per connection). A decision the queue cannot take
    /// refuses the connection: nothing goes unrecorded.
    func open(_ target: RequestTarget, leaf: Bool, on loop: EventLoop) -> EventLoopFuture<Opened> {
        proxy.pool.runIfActive(eventLoop: loop) { [self] () -> Opened in
            var d = NetworkDecision(host: target.host, port: target.port)
            var context: NIOSSLContext? = nil
            let fd: SupervisorPlatform.FileDescriptor
            do throws(ConnectionBroker.Refusal) {
                let deadline = monotonicNanoseconds() + UInt64(access.connectTimeoutMilliseconds) * 1_000_000
                fd = try ConnectionBroker.open(
                    host: target.host, port: target.port, access: access, deadline: deadline,
                    cancellation: cancellation, decision: &d)
            } catch {
                d.refusal = error.message
                _ = decisions.post(d)
                return .refused(error.message)
            }
            if leaf {
                do { context = try leafContext(for: target.host) } catch {
                    fd.close()
                    d.address = nil
                    d.refusal = "no certificate for \(target.host) from the interception authority: \(error)"
                    _ = decisions.post(d)
                    return .refused(d.refusal!)
                }
            }
            guard decisions.post(d) else {
                fd.close()
                return .refused("too many connection decisions wait to be recorded")
            }
            return .granted(fd: fd.rawValue, leaf: context)
        }
    }

    private func leafContext(for host: String) throws -> NIOSSLContext {
        if let c = state.withLock({ $0.leaves[host] }) { return c }
        guard let authority else { throw ProxyError("no interception authority") }
        let (chainPEM, keyPEM) = try authority.leafCertificate(forHost: host)
        let chain = try NIOSSLCertificate.fromPEMBytes(Array(chainPEM.utf8))
        let key = try NIOSSLPrivateKey(bytes: Array(keyPEM.utf8), format: .pem)
        let config = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        let c = try NIOSSLContext(configuration: config)
        state.withLock { $0.leaves[host] = c }
        return c
    }
}

struct ProxyError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
