import SupervisorCore

/// Where a request through the egress proxy goes, read from its request
/// line (RFC 9112 §3.2): `CONNECT host:port` (authority-form) or an
/// absolute-form `http://host[:port]/path` of plain HTTP proxying. The host
/// is normalized as the allowlist compares it (`ConnectionBroker.normalize`).
public struct RequestTarget: Equatable, Sendable {
    public var host: String
    public var port: Int
    /// The request-target for the upstream server (origin-form: path and
    /// query, "/" at least); empty for CONNECT.
    public var originForm: String

    /// `host:port` as HTTP writes it (an IPv6 literal in brackets).
    public var authority: String {
        (host.contains(":") ? "[\(host)]" : host) + ":\(port)"
    }

    /// A request the proxy does not serve, and why (the text of the 400
    /// answer; the security log never sees it: no connection was asked for).
    public struct Malformed: Error, Equatable, Sendable, CustomStringConvertible {
        public let message: String
        init(_ m: String) { message = m }
        public var description: String { message }
    }

    /// The longest request-target served (bytes).
    public static let maxLength = 8192

    /// The target of `CONNECT`: `host:port`, the port required.
    public static func connect(_ uri: String) throws(Malformed) -> RequestTarget {
        guard uri.utf8.count <= maxLength else {
            throw Malformed("the CONNECT target is longer than \(maxLength) bytes")
        }
        guard !uri.isEmpty else { throw Malformed("CONNECT needs a target host:port") }
        guard !uri.contains("/"), !uri.contains("@") else {
            throw Malformed("a CONNECT target is host:port (authority-form), found \"\(clip(uri))\"")
        }
        let (host, port) = try authority(uri, defaultPort: nil)
        return RequestTarget(host: host, port: port, originForm: "")
    }

    /// The target of a plain HTTP request through the proxy: absolute-form
    /// `http://host[:port][/path][?query]` (a fragment is dropped).
    /// `https://` is refused: TLS goes through CONNECT.
    public static func absolute(_ uri: String) throws(Malformed) -> RequestTarget {
        guard uri.utf8.count <= maxLength else {
            throw Malformed("the request target is longer than \(maxLength) bytes")
        }
        let lower = uri.lowercased()
        if lower.hasPrefix("https://") {
            throw Malformed(
                "https:// requests go through CONNECT (set HTTPS_PROXY); the proxy does not speak TLS for you")
        }
        guard lower.hasPrefix("http://") else {
            throw Malformed(
                "a request through the proxy needs an absolute http:// URL (absolute-form), found \"\(clip(uri))\"")
        }
        let rest = uri.dropFirst(7)
        let end = rest.firstIndex { $0 == "/" || $0 == "?" || $0 == "#" } ?? rest.endIndex
        let auth = String(rest[rest.startIndex..<end])
        guard !auth.contains("@") else { throw Malformed("user information in the URL is not passed on") }
        let (host, port) = try authority(auth, defaultPort: 80)
        var path = String(rest[end...])
        if let hash = path.firstIndex(of: "#") { path = String(path[..<hash]) }
        if path.isEmpty || path.hasPrefix("?") { path = "/" + path }
        guard path.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw Malformed("the URL's path holds spaces or control characters")
        }
        return RequestTarget(host: host, port: port, originForm: path)
    }

    /// `host[:port]` with `[v6]` literals.
    static func authority(_ s: String, defaultPort: Int?) throws(Malformed) -> (String, Int) {
        var host: Substring
        var portText: Substring? = nil
        if s.hasPrefix("[") {
            guard let close = s.firstIndex(of: "]") else { throw Malformed("unclosed [ in \"\(clip(s))\"") }
            host = s[s.index(after: s.startIndex)..<close]
            let after = s[s.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw Malformed("unexpected text after ] in \"\(clip(s))\"") }
                portText = after.dropFirst()
            }
        } else if let colon = s.lastIndex(of: ":") {
            host = s[..<colon]
            portText = s[s.index(after: colon)...]
        } else {
            host = s[...]
        }
        guard !host.isEmpty else { throw Malformed("no host in \"\(clip(s))\"") }
        let port: Int
        if let portText {
            guard let p = Int(portText), portText.allSatisfy(\.isASCII), (1...65535).contains(p) else {
                throw Malformed("port must be 1-65535, found \"\(clip(String(portText)))\"")
            }
            port = p
        } else if let defaultPort {
            port = defaultPort
        } else {
            throw Malformed("a CONNECT target needs a port (host:port), found \"\(clip(s))\"")
        }
        do {
            return (try ConnectionBroker.normalize(host: String(host)), port)
        } catch {
            throw Malformed(error.message)
        }
    }

    static func clip(_ s: String) -> String { s.count > 200 ? String(s.prefix(200)) + "…" : s }
}
