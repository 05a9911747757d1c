import SupervisorPlatform
import Synchronization

/// The supervisor's egress proxy as the call runner sees it (docs/egress.md).
/// A worker whose manifest says `network.egress: "proxy"` runs in a network
/// namespace of its own; its setup sends the supervisor a TCP listener made
/// inside that namespace, and the runner attaches it here. The proxy accepts
/// the worker's connections on it and applies the cell's allowlist
/// (`ConnectionBroker.open`, the broker's rules). Implemented by the
/// SupervisorEgress module; SupervisorCore only knows this seam.
public protocol EgressProxy: Sendable {
    /// The port of the listener inside every worker's namespace (the
    /// address is 127.0.0.1): what HTTP_PROXY names.
    var listenerPort: UInt16 { get }

    /// Starts serving the worker whose listener this is. The proxy owns
    /// `listener` from here on (it closes it at `detach`, or now if attaching
    /// fails). `injections` are the headers set on requests to their
    /// host:port; with `authority`, CONNECT to such a host is terminated with
    /// its leaf certificate. `cell` and `callID` name the worker in
    /// diagnostics only: events reach the security log through the
    /// attachment's `decisions`, with the call that drains them.
    func attach(
        listener: FileDescriptor, cell: String, callID: String, access: NetworkAccess,
        injections: [CredentialInjection], authority: (any InterceptionAuthority)?
    ) throws(SystemError) -> any EgressAttachment
}

/// One worker attached to the egress proxy.
public protocol EgressAttachment: AnyObject, Sendable {
    /// One decision per connection the worker asked for, in order.
    var decisions: EgressDecisions { get }
    /// Stops accepting and closes every connection of the worker (at once,
    /// from any thread). Called when the worker is gone or discarded.
    func detach()
}

/// The decisions the proxy made for one worker, waiting to be recorded by
/// the call that watches the worker: a bounded queue and a pipe that is
/// readable while it holds any (the call's poll loop watches the pipe, as
/// it watches the broker's socket). Full, it refuses to take more: the proxy
/// then refuses the connection rather than let it go unrecorded.
public final class EgressDecisions: Sendable {
    public static let capacity = 1024
    private let queue = Mutex<[NetworkDecision]>([])
    let read: FileDescriptor
    private let write: FileDescriptor

    public init() throws(SystemError) {
        (read, write) = try Sys.pipe()
        try read.setNonBlocking()
        try write.setNonBlocking()
    }

    deinit {
        read.close()
        write.close()
    }

    /// Queues `d`; false (nothing queued) when the queue is full.
    public func post(_ d: NetworkDecision) -> Bool {
        let wake = queue.withLock { q -> Bool? in
            guard q.count < Self.capacity else { return nil }
            q.append(d)
            return q.count == 1
        }
        guard let wake else { return false }
        // One byte while the queue is non-empty; `take` drains it.
        if wake { _ = [UInt8(1)].withUnsafeBytes { write.writeAvailable($0) } }
        return true
    }

    /// Everything queued so far, oldest first.
    public func take() -> [NetworkDecision] {
        let out = queue.withLock { q -> [NetworkDecision] in
            let all = q
            q.removeAll()
            var buf = [UInt8](repeating: 0, count: 64)
            while case .success(let n)? = buf.withUnsafeMutableBytes({ read.readAvailable(into: $0) }), n > 0 {}
            return all
        }
        return out
    }
}

/// What the egress proxy adds to one cell's requests (docs/secrets.md):
/// headers per host:port and the authority that terminates TLS for those
/// hosts. Supplied by the secret store through `CallRunner.egressCredentials`.
public struct EgressCredentialSet: Sendable {
    public var injections: [CredentialInjection]
    public var authority: (any InterceptionAuthority)?

    public init(injections: [CredentialInjection] = [], authority: (any InterceptionAuthority)? = nil) {
        self.injections = injections
        self.authority = authority
    }

    public static let none = EgressCredentialSet()
}

/// The variables that send a worker's HTTP clients to the egress proxy.
public enum EgressEnvironment {
    /// Both spellings of each proxy variable (curl reads only lower-case
    /// http_proxy; Python and Go read either), ALL_PROXY for clients that
    /// know only that one, and NO_PROXY empty: nothing bypasses the proxy
    /// (there is no other route anyway; an exempted host would fail).
    public static func proxy(port: UInt16) -> [(String, String)] {
        let url = "http://127.0.0.1:\(port)"
        return [
            ("HTTP_PROXY", url), ("HTTPS_PROXY", url), ("http_proxy", url), ("https_proxy", url),
            ("ALL_PROXY", url), ("all_proxy", url), ("NO_PROXY", ""), ("no_proxy", ""),
        ]
    }

    /// The CA bundle a worker trusts when the proxy terminates TLS for some
    /// of its hosts (OpenSSL and Python's ssl, requests, curl).
    public static func trust(caPath: String) -> [(String, String)] {
        [("SSL_CERT_FILE", caPath), ("REQUESTS_CA_BUNDLE", caPath), ("CURL_CA_BUNDLE", caPath)]
    }
}
