import CSupervisorShim

#if canImport(Glibc)
import Glibc
#endif

/// An IPv4 or IPv6 address, as the connection broker resolves and checks it.
public struct IPAddress: Equatable, Hashable, Sendable, CustomStringConvertible {
    public let isIPv6: Bool
    /// 4 or 16 bytes, network order.
    public let bytes: [UInt8]

    init(_ a: mcps_address) {
        isIPv6 = a.family == AF_INET6
        let all = withUnsafeBytes(of: a.bytes) { Array($0) }
        bytes = Array(all.prefix(isIPv6 ? 16 : 4))
    }

    var raw: mcps_address {
        var a = mcps_address()
        a.family = isIPv6 ? AF_INET6 : AF_INET
        withUnsafeMutableBytes(of: &a.bytes) { dst in
            for (i, b) in bytes.enumerated() { dst[i] = b }
        }
        return a
    }

    /// Parses a literal ("127.0.0.1", "::1"); nil for anything else.
    public init?(literal: String) {
        var a = mcps_address()
        guard mcps_parse_address(literal, &a) == 1 else { return nil }
        self.init(a)
    }

    public var description: String {
        var a = raw
        var buf = [CChar](repeating: 0, count: 64)
        guard mcps_address_text(&a, &buf, buf.count) == 0 else { return "?" }
        return String(nulTerminated: buf)
    }

    /// Loopback, private, link-local, CGNAT, unspecified, multicast,
    /// unique-local or IPv4-mapped forms of those: addresses a name on an
    /// allowlist must not lead to (DNS rebinding into the user's network).
    public var isInternal: Bool {
        if isIPv6 {
            let b = bytes
            if b[0..<10].allSatisfy({ $0 == 0 }) && b[10] == 0xFF && b[11] == 0xFF {
                return IPAddress(v4: Array(b[12..<16])).isInternal
            }
            if b[0..<15].allSatisfy({ $0 == 0 }) { return true }  // :: and ::1
            if b[0] == 0xFE && (b[1] & 0xC0) == 0x80 { return true }  // fe80::/10
            if (b[0] & 0xFE) == 0xFC { return true }  // fc00::/7
            if b[0] == 0xFF { return true }  // multicast
            return false
        }
        let (a, b) = (bytes[0], bytes[1])
        return a == 0 || a == 10 || a == 127 || (a == 169 && b == 254) || (a == 172 && (b & 0xF0) == 16)
            || (a == 192 && b == 168) || (a == 100 && (b & 0xC0) == 64) || a >= 224
    }

    init(v4: [UInt8]) {
        isIPv6 = false
        bytes = v4
    }
}

public enum Network {
    /// A name's addresses (getaddrinfo, TCP). Throws the resolver's message.
    public static func resolve(_ host: String) throws(SystemError) -> [IPAddress] {
        var out = [mcps_address](repeating: mcps_address(), count: 16)
        let n = mcps_resolve(host, &out, Int32(out.count))
        if n < 0 {
            throw SystemError("resolve \(host): \(String(cString: mcps_resolve_error(n)))", errno: 0)
        }
        var seen: [IPAddress] = []
        for a in out.prefix(Int(n)) {
            let ip = IPAddress(a)
            if !seen.contains(ip) { seen.append(ip) }
        }
        return seen
    }

    /// A connected, blocking, close-on-exec TCP socket.
    /// Gives up with ECANCELED when `cancel` becomes readable first.
    public static func connect(
        _ address: IPAddress, port: Int, timeoutMilliseconds: Int,
        cancel: FileDescriptor? = nil
    ) throws(SystemError) -> FileDescriptor {
        var a = address.raw
        let fd = mcps_tcp_connect(&a, Int32(port), Int32(timeoutMilliseconds), cancel?.rawValue ?? -1)
        if fd < 0 { throw SystemError("connect \(address):\(port)", errno: Glibc.errno) }
        return FileDescriptor(rawValue: fd)
    }

    /// Sends one datagram on a SOCK_SEQPACKET socket, with `fd` attached.
    public static func send(_ socket: FileDescriptor, _ bytes: [UInt8], attaching fd: FileDescriptor? = nil)
        throws(SystemError)
    {
        let rc = bytes.withUnsafeBytes {
            mcps_send_message(socket.rawValue, $0.baseAddress!, $0.count, fd?.rawValue ?? -1)
        }
        if rc != 0 { throw SystemError("sendmsg", errno: Glibc.errno) }
    }

    /// Receives a descriptor sent over `socket` with SCM_RIGHTS (one byte of
    /// data; close-on-exec, not waiting). The worker's egress listener.
    public static func receiveDescriptor(_ socket: FileDescriptor) throws(SystemError) -> FileDescriptor {
        let fd = mcps_recv_fd(socket.rawValue)
        if fd < 0 { throw SystemError("receive a descriptor", errno: Glibc.errno) }
        return FileDescriptor(rawValue: fd)
    }

    /// Receives one datagram (at most `limit` bytes; a longer one is
    /// reported as truncated). nil at end of stream.
    public static func receive(_ socket: FileDescriptor, limit: Int) throws(SystemError) -> (
        bytes: [UInt8], truncated: Bool
    )? {
        var buf = [UInt8](repeating: 0, count: limit + 1)
        let n = try retrying("recv") {
            buf.withUnsafeMutableBytes { Glibc.recv(socket.rawValue, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        }
        if n == 0 { return nil }
        return (Array(buf.prefix(min(n, limit))), n > limit)
    }
}
