import Foundation
import StrictJSON
import SupervisorPlatform
import Synchronization

/// The network a cell may reach: TCP connections to the hosts on its
/// allowlist, made by the supervisor's connection broker and handed to the
/// worker as connected sockets (docs/manifest.md, "network"). The worker
/// itself never has `socket` or `connect`.
public struct NetworkAccess: Sendable, Equatable {
    /// One allowlist entry, `host:port`: a DNS name (`example.org`), every
    /// name below a domain (`*.example.org`), or an IP literal
    /// (`127.0.0.1`, `[::1]`).
    public struct Host: Sendable, Equatable, CustomStringConvertible {
        public let pattern: String
        public let port: Int
        /// Set when the entry is an IP literal.
        public let address: IPAddress?

        public var description: String {
            (address?.isIPv6 == true ? "[\(pattern)]" : pattern) + ":\(port)"
        }

        /// Parses `entry`; nil with the reason otherwise.
        static func parse(_ entry: String) -> Result<Host, ParseFailure> {
            guard let colon = entry.lastIndex(of: ":") else {
                return .failure(.init("expected host:port, found \"\(entry)\""))
            }
            var host = String(entry[..<colon])
            let portText = entry[entry.index(after: colon)...]
            guard let port = Int(portText), (1...65535).contains(port) else {
                return .failure(.init("port must be 1-65535, found \"\(portText)\""))
            }
            if host.hasPrefix("[") && host.hasSuffix("]") {
                host = String(host.dropFirst().dropLast())
                guard let a = IPAddress(literal: host), a.isIPv6 else {
                    return .failure(.init("\"\(host)\" is not an IPv6 address"))
                }
                return .success(Host(pattern: a.description, port: port, address: a))
            }
            if let a = IPAddress(literal: host), !a.isIPv6 {
                return .success(Host(pattern: a.description, port: port, address: a))
            }
            host = host.lowercased()
            let name = host.hasPrefix("*.") ? String(host.dropFirst(2)) : host
            guard NetworkAccess.isHostName(name), name.contains(".") || !host.hasPrefix("*.") else {
                return .failure(.init("\"\(host)\" is not a host name, *.domain, IPv4 address or [IPv6] address"))
            }
            return .success(Host(pattern: host, port: port, address: nil))
        }

        /// Whether a request for `host` (normalized) and `port` falls under
        /// this entry. IP literals only match the same literal; names only
        /// names.
        func matches(host: String, literal: IPAddress?, port: Int) -> Bool {
            guard port == self.port else { return false }
            if let address { return literal == address }
            guard literal == nil else { return false }
            if pattern.hasPrefix("*.") { return host.hasSuffix(pattern.dropFirst(1)) && host.count > pattern.count - 1 }
            return host == pattern
        }
    }

    public struct ParseFailure: Error, Sendable {
        public let message: String
        init(_ m: String) { message = m }
    }

    /// How the worker reaches the hosts (docs/egress.md).
    public enum Egress: String, Sendable, CaseIterable {
        /// The connection broker: connected sockets passed over fd 5; the
        /// worker has no `socket` or `connect` (frame and command cells'
        /// default).
        case broker
        /// The egress proxy: the worker runs in a network namespace of its
        /// own whose only endpoint is the supervisor's HTTP proxy, named in
        /// HTTP_PROXY/HTTPS_PROXY (server cells: the default and the only
        /// choice).
        case proxy
    }

    public var hosts: [Host] = []
    /// broker: connections per call; proxy: connections open at once per
    /// worker.
    public var maxConnections = 8
    public var connectTimeoutMilliseconds = 5000
    public var egress = Egress.broker

    /// The worker runs in its own network namespace behind the egress proxy.
    public var usesProxy: Bool { !isNone && egress == .proxy }

    public static let none = NetworkAccess()
    public var isNone: Bool { hosts.isEmpty }

    /// A DNS name: dot-separated labels of letters, digits and hyphens.
    static func isHostName(_ s: String) -> Bool {
        let labels = s.split(separator: ".", omittingEmptySubsequences: false)
        guard !s.isEmpty, s.utf8.count <= 253, !labels.isEmpty else { return false }
        return labels.allSatisfy { l in
            !l.isEmpty && l.utf8.count <= 63 && l.first != "-" && l.last != "-"
                && l.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x2D }
        }
    }

    /// Parses the manifest's `network` value: `"none"` or an object.
    /// `serverCell`: `egress` defaults to (and may only be) `proxy`.
    static func parse(_ v: JSONValue?, file: String, serverCell: Bool = false) throws(ConfigError) -> NetworkAccess {
        guard let v else { return .none }
        if case .string("none") = v { return .none }
        guard case .object = v else {
            throw ConfigError(
                file: file, field: "network",
                message: "expected \"none\" or {\"connect\": [\"host:port\", ...]}, found \(v.serialized())")
        }
        let r = try FieldReader(file: file, path: "network", value: v)
        var n = NetworkAccess()
        let entries = try r.stringArray("connect")
        guard !entries.isEmpty else {
            throw r.error("connect", "list at least one host:port (or write \"network\": \"none\")")
        }
        for (i, e) in entries.enumerated() {
            switch Host.parse(e) {
            case .success(let h):
                if n.hosts.contains(h) {
                    throw ConfigError(file: file, field: "network.connect[\(i)]", message: "duplicate entry \"\(e)\"")
                }
                n.hosts.append(h)
            case .failure(let f):
                throw ConfigError(file: file, field: "network.connect[\(i)]", message: f.message)
            }
        }
        n.maxConnections = try r.int("maxConnections", default: n.maxConnections, range: 1...256)
        n.connectTimeoutMilliseconds = try r.int(
            "connectTimeoutMilliseconds", default: n.connectTimeoutMilliseconds, range: 10...60_000, unit: "ms")
        n.egress = try r.choice("egress", default: serverCell ? .proxy : .broker)
        if serverCell && n.egress != .proxy {
            throw r.error(
                "egress",
                "a server cell opens its own sockets and cannot use the connection broker: remove \"egress\" or write \"proxy\""
            )
        }
        try r.finish()
        return n
    }
}

/// What the connection broker (or the egress proxy) did with one request,
/// for the security log.
public struct NetworkDecision: Sendable, Equatable {
    public var host: String
    public var port: Int
    /// The address connected to (granted only).
    public var address: String?
    /// Why it was refused (nil: granted).
    public var refusal: String?

    public init(host: String, port: Int, address: String? = nil, refusal: String? = nil) {
        self.host = host
        self.port = port
        self.address = address
        self.refusal = refusal
    }
}

/// The supervisor's side of one worker's broker socket (fd 5 in the
/// worker): each datagram asks for one TCP connection; the answer is a
/// datagram with the connected socket attached, or a refusal. The protocol
/// is in docs/cell-protocol.md.
public struct ConnectionBroker {
    let access: NetworkAccess
    let socket: FileDescriptor
    /// The call's cancellation: resolving and connecting give up when it
    /// fires, so a cancelled call does not wait for a slow network.
    var cancellation: CallCancellation? = nil
    var granted = 0

    enum Served {
        case closed
        case idle
        case handled(NetworkDecision)
    }

    /// Reads and answers one request. `deadline` bounds resolution and
    /// connection (monotonic ns).
    mutating func serveOne(deadline: UInt64) -> Served {
        let message: (bytes: [UInt8], truncated: Bool)
        do {
            guard let m = try Network.receive(socket, limit: 1024) else { return .closed }
            message = m
        } catch {
            return error.errno == Errno.wouldBlock ? .idle : .closed
        }
        var d = NetworkDecision(host: "", port: 0, address: nil, refusal: nil)
        var reply: JSONObject
        var connected: FileDescriptor? = nil
        do {
            let (host, port) = try Self.parseRequest(message.bytes, truncated: message.truncated)
            d.host = host
            d.port = port
            let fd = try connect(host: host, port: port, deadline: deadline, decision: &d)
            connected = fd
            granted += 1
            reply = JSONObject([("ok", true), ("address", .string(d.address ?? ""))])
        } catch {
            d.refusal = error.message
            reply = JSONObject([("ok", false), ("error", .string(error.message))])
        }
        defer { connected?.close() }
        // A worker that stopped reading gets nothing; it is its loss.
        try? Network.send(socket, JSONValue.object(reply).serializedBytes(), attaching: connected)
        return .handled(d)
    }

    /// Why a connection is refused; the message names the rule.
    public struct Refusal: Error, Sendable {
        public let message: String
        public init(_ m: String) { message = m }
    }

    /// getaddrinfo has no timeout of its own (the resolver's can be tens of
    /// seconds): it runs on a thread of its own and the call waits at most
    /// `timeoutMilliseconds`; a late answer is dropped.
    static func resolve(
        _ host: String, timeoutMilliseconds: Int, cancellation: CallCancellation? = nil,
        using lookup: @escaping @Sendable (String) throws(SystemError) -> [IPAddress] = { h throws(SystemError) in
            try Network.resolve(h)
        }
    )
        throws(Refusal) -> [IPAddress]
    {
        /// The lookup's result, and a pipe made readable when it is in. Kept
        /// alive by both threads: a late answer writes to a pipe still open.
        final class Answer: Sendable {
            let result = Mutex<Result<[IPAddress], SystemError>?>(nil)
            let ready: (read: FileDescriptor, write: FileDescriptor)
            init() throws(SystemError) { ready = try Sys.pipe() }
            deinit {
                ready.read.close()
                ready.write.close()
            }
        }
        let answer: Answer
        do { answer = try Answer() } catch { throw Refusal("resolving \(host): \(error)") }
        let t = Thread {
            let r = Result { () throws(SystemError) -> [IPAddress] in try lookup(host) }
            answer.result.withLock { $0 = r }
            try? answer.ready.write.writeAll([1])
        }
        t.name = "resolve"
        t.start()
        // One poll on the answer and the call's cancellation: a cancelled
        // call stops waiting at once; the timeout is the deadline.
        let until = monotonicNanoseconds() + UInt64(max(0, timeoutMilliseconds)) * 1_000_000
        while answer.result.withLock({ $0 == nil }) {
            if cancellation?.isCancelled == true { throw Refusal("the call was cancelled while resolving \(host)") }
            let now = monotonicNanoseconds()
            if now >= until { throw Refusal("resolving \(host) took longer than \(timeoutMilliseconds) ms") }
            var poll = PollSet()
            poll.add(answer.ready.read)
            if let cancellation { poll.add(cancellation.read) }
            _ = try? poll.wait(timeoutMilliseconds: Int32(min((until - now + 999_999) / 1_000_000, 60_000)))
        }
        switch answer.result.withLock({ $0 })! {
        case .success(let a): return a
        case .failure(let e): throw Refusal(e.operation)
        }
    }

    static func parseRequest(_ bytes: [UInt8], truncated: Bool) throws(Refusal) -> (String, Int) {
        guard !truncated else { throw Refusal("request longer than 1024 bytes") }
        guard case .object(let o)? = try? JSONParser.parse(bytes) else { throw Refusal("request is not a JSON object") }
        guard o.count == 2, case .string(let host)? = o["host"], case .int(let port)? = o["port"] else {
            throw Refusal("request must be {\"host\": string, \"port\": integer}")
        }
        guard (1...65535).contains(port) else { throw Refusal("port \(port) is out of range 1-65535") }
        return (try normalize(host: host), Int(port))
    }

    /// A requested host as the allowlist compares it: brackets of an IPv6
    /// literal and a final dot removed, lower case; refused unless it is a
    /// host name or an IP literal.
    public static func normalize(host: String) throws(Refusal) -> String {
        var host = host
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        if host.hasSuffix(".") { host.removeLast() }
        host = host.lowercased()
        guard IPAddress(literal: host) != nil || NetworkAccess.isHostName(host) else {
            throw Refusal("\"\(CellProtocol.clip(host))\" is not a host name or IP address")
        }
        return host
    }

    private func connect(host: String, port: Int, deadline: UInt64, decision d: inout NetworkDecision) throws(Refusal)
        -> FileDescriptor
    {
        guard granted < access.maxConnections else {
            throw Refusal("the cell's limit of \(access.maxConnections) connections per call is used up")
        }
        return try Self.open(
            host: host, port: port, access: access, deadline: deadline, cancellation: cancellation, decision: &d)
    }

    /// The rules every connection a cell asks for goes through, the
    /// broker's and the egress proxy's alike: `host` (normalized) and
    /// `port` must be on the allowlist; a name is resolved by the
    /// supervisor, and addresses inside the local network (loopback,
    /// private, link-local, ...) are dropped unless the address itself is
    /// listed; then a TCP connection to the first address that answers.
    /// `deadline` (monotonic ns) bounds resolution and connection together
    /// with `access.connectTimeoutMilliseconds`. Blocking: call it off any
    /// event loop. `d.address` is set when granted.
    public static func open(
        host: String, port: Int, access: NetworkAccess, deadline: UInt64, cancellation: CallCancellation?,
        decision d: inout NetworkDecision
    ) throws(Refusal) -> FileDescriptor {
        let literal = IPAddress(literal: host)
        guard access.hosts.contains(where: { $0.matches(host: host, literal: literal, port: port) }) else {
            throw Refusal(
                "\(literal?.isIPv6 == true ? "[\(host)]" : host):\(port) is not on the cell's network allowlist")
        }
        var candidates: [IPAddress]
        if let literal {
            candidates = [literal]
        } else {
            let now = monotonicNanoseconds()
            let left = now < deadline ? Int((deadline - now) / 1_000_000) : 0
            candidates = try Self.resolve(
                host, timeoutMilliseconds: min(left, access.connectTimeoutMilliseconds),
                cancellation: cancellation)
            let all = candidates
            candidates.removeAll { $0.isInternal }
            if candidates.isEmpty {
                throw Refusal(
                    "\(host) resolves only to internal addresses (\(all.map(\.description).joined(separator: ", "))); a name on the allowlist may not lead into the local network: list the address itself to allow it"
                )
            }
        }
        var lastError = ""
        for a in candidates {
            let now = monotonicNanoseconds()
            guard now < deadline else { throw Refusal("the call's deadline passed while connecting") }
            let left = Int((deadline - now) / 1_000_000)
            do {
                let fd = try Network.connect(
                    a, port: port, timeoutMilliseconds: min(left, access.connectTimeoutMilliseconds),
                    cancel: cancellation?.read)
                d.address = a.isIPv6 ? "[\(a)]:\(port)" : "\(a):\(port)"
                return fd
            } catch {
                lastError = error.description
            }
        }
        throw Refusal(lastError)
    }
}
