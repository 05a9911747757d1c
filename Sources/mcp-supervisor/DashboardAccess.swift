import SupervisorPlatform

/// Who may read the dashboard, decided for each request from its method,
/// target and headers before anything is read from the state directory.
///
/// The page shows what the security log and the trust ledger hold, so it is
/// guarded like the files themselves would be by their mode: only someone
/// who saw the token printed at start may read it. The checks, in order:
///
/// 1. `Host` must name the address listened on (`127.0.0.1:PORT`,
///    `[::1]:PORT`) or `localhost:PORT`: a page of another site whose name
///    an attacker points at 127.0.0.1 (DNS rebinding) sends its own name and
///    is refused with 421 before anything else is looked at.
/// 2. Only `GET` (405 otherwise, `Allow: GET`): the dashboard changes
///    nothing, so no request may carry an action.
/// 3. A request sent by another site's page is refused (403): an `Origin`
///    other than the dashboard's own, or `Sec-Fetch-Site: cross-site` /
///    `same-site` (another port of the same host is same-site).
/// 4. The token, compared in constant time, from the `mcps_dashboard`
///    cookie, an `Authorization: Bearer` header (scripts) or the `token`
///    query parameter (the URL printed at start). Without a valid one: 401.
///    A page request that brought the token in its URL is answered with a
///    redirect to the same page without it and the cookie set (`HttpOnly`,
///    `SameSite=Strict`), so the token does not stay in the address bar,
///    the history or a screenshot.
/// 5. Only two resources exist: `/` (the page) and `/api/state` (its data).
///
/// No response carries an `Access-Control-Allow-*` header: no other origin
/// may read one.
struct DashboardAccess: Sendable {
    static let cookieName = "mcps_dashboard"

    /// 256 random bits, hex.
    let token: String
    /// `Host` values accepted, lowercased.
    let hosts: Set<String>
    /// `Origin` values accepted.
    let origins: Set<String>

    enum Resource: Equatable, Sendable {
        case page
        case state
    }

    enum Decision: Equatable, Sendable {
        case serve(Resource)
        /// 303 to `location` with the token cookie set.
        case redirectSettingCookie(location: String)
        case refuse(status: Int, reason: String)
    }

    /// The rules for a server bound to `listen` (with its real port).
    init(token: String, listen: ListenAddress) {
        self.token = token
        let port = ":\(listen.port)"
        var hosts: Set<String> = [listen.hostForURL + port, "localhost" + port]
        if listen.port == 80 { hosts.formUnion([listen.hostForURL, "localhost"]) }
        self.hosts = Set(hosts.map { $0.lowercased() })
        self.origins = Set(self.hosts.map { "http://" + $0 })
    }

    /// A fresh token: 32 bytes of the kernel's random generator
    /// (`getrandom(2)` behind `SystemRandomNumberGenerator`), as hex.
    static func newToken() -> String {
        var g = SystemRandomNumberGenerator()
        let hex = Array("0123456789abcdef")
        var s = ""
        for _ in 0..<32 {
            let b = UInt8.random(in: 0...255, using: &g)
            s.append(hex[Int(b >> 4)])
            s.append(hex[Int(b & 0xF)])
        }
        return s
    }

    /// Equal strings, in a time that depends only on their lengths (the
    /// length of a token is not a secret: it is always 64).
    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8)
        let y = Array(b.utf8)
        guard x.count == y.count else { return false }
        var difference: UInt8 = 0
        for i in 0..<x.count { difference |= x[i] ^ y[i] }
        return difference == 0
    }

    /// The decision for one request. `headers` are (name, value) pairs as
    /// received; names compare without case.
    func decide(method: String, uri: String, headers: [(String, String)]) -> Decision {
        func values(_ name: String) -> [String] {
            headers.filter { $0.0.lowercased() == name }.map(\.1)
        }
        let host = values("host")
        guard host.count == 1 else {
            return .refuse(status: 400, reason: host.isEmpty ? "no Host header" : "more than one Host header")
        }
        guard hosts.contains(host[0].trimmingSpaces.lowercased()) else {
            return .refuse(
                status: 421, reason: "this server answers only for \(hosts.sorted().joined(separator: ", "))")
        }
        guard method == "GET" else {
            return .refuse(status: 405, reason: "the dashboard is read-only: only GET")
        }
        for origin in values("origin") where !origins.contains(origin.trimmingSpaces.lowercased()) {
            return .refuse(status: 403, reason: "a request from another origin")
        }
        for site in values("sec-fetch-site") where !["same-origin", "none"].contains(site.trimmingSpaces) {
            return .refuse(status: 403, reason: "a request from another site")
        }
        let (path, query) = Self.split(uri)
        let queryToken = query.first { $0.0 == "token" }?.1
        var presented: [String] = []
        for cookie in values("cookie") {
            for pair in cookie.split(separator: ";") {
                let kv = pair.split(separator: "=", maxSplits: 1).map { String($0).trimmingSpaces }
                if kv.count == 2 && kv[0] == Self.cookieName { presented.append(kv[1]) }
            }
        }
        for auth in values("authorization") {
            let parts = auth.trimmingSpaces.split(separator: " ", maxSplits: 1)
            if parts.count == 2 && parts[0].lowercased() == "bearer" {
                presented.append(String(parts[1]).trimmingSpaces)
            }
        }
        if let queryToken { presented.append(queryToken) }
        // Every candidate is compared, so the time does not tell which one
        // (if any) matched.
        var valid = false
        for candidate in presented where Self.constantTimeEqual(candidate, token) { valid = true }
        guard valid else {
            return .refuse(
                status: 401,
                reason: presented.isEmpty
                    ? "no token: open the URL `mcp-supervisor dashboard` printed at start"
                    : "wrong token (a new one is made at each start): open the URL printed at start")
        }
        switch path {
        case "/":
            if queryToken != nil { return .redirectSettingCookie(location: "/") }
            return .serve(.page)
        case "/api/state":
            return .serve(.state)
        default:
            return .refuse(status: 404, reason: "no such page")
        }
    }

    /// The `Set-Cookie` value that carries the token: sent back only to
    /// this host by the page's own requests (`SameSite=Strict`), never
    /// readable by a script (`HttpOnly`), gone when the browser closes.
    var cookie: String {
        "\(Self.cookieName)=\(token); Path=/; HttpOnly; SameSite=Strict"
    }

    /// "/api/state?token=x&y" → ("/api/state", [("token", "x"), ("y", "")]).
    /// Values are not percent-decoded: a token is hex.
    static func split(_ uri: String) -> (path: String, query: [(String, String)]) {
        guard let q = uri.firstIndex(of: "?") else { return (uri, []) }
        let pairs = uri[uri.index(after: q)...].split(separator: "&").map { item -> (String, String) in
            let kv = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            return (String(kv[0]), kv.count > 1 ? String(kv[1]) : "")
        }
        return (String(uri[..<q]), pairs)
    }
}

/// Where the dashboard listens: a loopback address, never anything else.
struct ListenAddress: Sendable, Equatable {
    /// The IP literal, without brackets.
    let host: String
    let port: Int
    let isIPv6: Bool

    /// `[::1]` or `127.0.0.1`: the host as a URL and a `Host` header name it.
    var hostForURL: String { isIPv6 ? "[\(host)]" : host }

    /// Parses `127.0.0.1:8766` or `[::1]:8766` (port 0: any free port) and
    /// refuses every address outside 127.0.0.0/8 and ::1: the dashboard has
    /// no TLS and shows the security log, so it is for this machine only.
    static func parse(_ text: String) throws(ListenError) -> ListenAddress {
        guard let colon = text.lastIndex(of: ":") else {
            throw ListenError("--listen \(text): expected ADDRESS:PORT, e.g. 127.0.0.1:8766 or [::1]:8766")
        }
        var host = String(text[..<colon])
        let portText = text[text.index(after: colon)...]
        guard let port = Int(portText), (0...65535).contains(port) else {
            throw ListenError("--listen \(text): the port must be 0–65535 (0: any free port)")
        }
        var bracketed = false
        if host.hasPrefix("[") && host.hasSuffix("]") {
            host = String(host.dropFirst().dropLast())
            bracketed = true
        }
        guard let address = IPAddress(literal: host), address.isIPv6 == bracketed else {
            throw ListenError(
                "--listen \(text): expected an IP address (127.0.0.1 or [::1] for IPv6), not a host name: "
                    + "a name could resolve to an address other machines reach")
        }
        let loopback =
            address.isIPv6
            ? address.bytes == [UInt8](repeating: 0, count: 15) + [1]
            : address.bytes[0] == 127
        guard loopback else {
            throw ListenError(
                "--listen \(text): \(address) is not a loopback address; the dashboard listens only on "
                    + "127.0.0.0/8 or [::1] (it has no TLS and shows the security log): reach it from another "
                    + "machine through an SSH tunnel (ssh -L 8766:127.0.0.1:8766 HOST)")
        }
        return ListenAddress(host: address.description, port: port, isIPv6: address.isIPv6)
    }

    func withPort(_ p: Int) -> ListenAddress { ListenAddress(host: host, port: p, isIPv6: isIPv6) }
}

struct ListenError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

extension String {
    fileprivate var trimmingSpaces: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return String(s)
    }
}
