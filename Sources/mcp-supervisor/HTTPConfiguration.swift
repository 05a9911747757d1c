import Foundation
import StrictJSON
import SupervisorCore
import SupervisorPlatform

/// The settings of `serve --http`, read from the file given with
/// `--http-config` (docs/http.md has every field with its default and unit).
/// Unknown keys are errors; every error names the file and the field.
struct HTTPConfiguration: Sendable {
    /// This server's resource identifier (RFC 8707, RFC 9728): the `aud` a
    /// token must carry, and where the protected resource metadata points.
    var resource: String?
    /// `Origin` values a browser page may send (exact, lowercase
    /// scheme://host[:port]). A request with any other Origin is 403.
    var allowedOrigins: [String] = []
    /// `Host` values accepted besides the listen address and localhost.
    var allowedHosts: [String] = []
    var tls: TLSFiles?
    var limits = Limits()
    var oauth: OAuth?
    var staticTokens: [StaticToken] = []
    /// When any: each caller is served by its tenant's own pipeline (its
    /// cells, its policy, its workers), and a caller of another tenant or
    /// of none is refused.
    var tenants: [Tenant] = []
    /// 2026-07-28 approvals shared by instances: nil, a key per run and
    /// used states in memory (one instance, or affinity).
    var approvalState: ApprovalStateFiles?

    struct ApprovalStateFiles: Sendable, Equatable {
        /// The HMAC key (0600, this user's; made when absent).
        var keyFile: String
        /// One file per used request state, created with O_EXCL.
        var usedDirectory: String
    }

    struct Tenant: Sendable, Equatable {
        var name: String
        /// The cells (by name) this tenant sees and may call.
        var cells: [String]
        /// The tenant's policy file; nil: the policies directory's policy.json.
        var policy: String?
    }

    struct TLSFiles: Sendable, Equatable {
        var certificate: String
        var privateKey: String
    }

    struct Limits: Sendable, Equatable {
        /// Largest request body (bytes); larger is 413.
        var maxBodyBytes = 4 << 20
        /// Connections open at once; more are closed at accept.
        var maxConnections = 256
        /// Requests in progress at once, all clients (503 beyond).
        var maxStreams = 64
        /// Requests in progress at once from one client address (429 beyond).
        /// HTTP/1.1 runs one request at a time per connection.
        var maxStreamsPerClient = 16
        /// From a request's first byte to its last (headers and body), ms.
        var requestTimeoutMilliseconds = 10_000
        /// A connection with no request in progress is closed after this, ms.
        var idleTimeoutMilliseconds = 60_000
        /// Handshake-era sessions open at once.
        var maxSessions = 1024
    }

    struct OAuth: Sendable, Equatable {
        var issuer: String
        var jwksURL: String
        /// Pinned: a token signed with anything else is refused.
        var algorithms: [JWTAlgorithm]
        /// Scopes every request needs (403 insufficient_scope otherwise).
        var requiredScopes: [String] = []
        var leewaySeconds = 30
        /// How long fetched keys are used before they are fetched again.
        var jwksCacheSeconds = 600
        /// An unknown `kid` fetches the keys again at most this often.
        var jwksMinRefetchSeconds = 30
        var tenantClaim = "tenant"
        var groupsClaim = "groups"
    }

    struct StaticToken: Sendable, Equatable {
        var name: String
        /// SHA-256 of the token, 32 bytes.
        var sha256: [UInt8]
        var scopes: [String] = []
        var tenant: String?
    }

    static func load(path: String) throws(ConfigError) -> HTTPConfiguration {
        let bytes: [UInt8]
        do { bytes = try readFile(path, limit: 1 << 20) } catch {
            throw ConfigError(file: path, field: "", message: "cannot read: \(error)")
        }
        let value: JSONValue
        do { value = try JSONParser.parse(bytes) } catch {
            throw ConfigError(file: path, field: "", message: "not valid JSON: \(error)")
        }
        return try parse(FieldReader(file: path, path: "", value: value))
    }

    static func parse(_ r: FieldReader) throws(ConfigError) -> HTTPConfiguration {
        var c = HTTPConfiguration()
        c.resource = try r.optionalString("resource")
        if let res = c.resource, !(res.hasPrefix("https://") || res.hasPrefix("http://")) || res.contains("#") {
            throw r.error("resource", "expected an absolute http(s) URL without a fragment, found \"\(res)\"")
        }
        c.allowedOrigins = try r.stringArray("allowedOrigins", default: []).map { $0.lowercased() }
        c.allowedHosts = try r.stringArray("allowedHosts", default: []).map { $0.lowercased() }
        if let t = try r.object("tls") {
            c.tls = TLSFiles(certificate: try t.string("certificate"), privateKey: try t.string("privateKey"))
            try t.finish()
        }
        if let l = try r.object("limits") {
            c.limits.maxBodyBytes = try l.int(
                "maxBodyBytes", default: c.limits.maxBodyBytes, range: 1024...(64 << 20), unit: "bytes")
            c.limits.maxConnections = try l.int("maxConnections", default: c.limits.maxConnections, range: 1...65536)
            c.limits.maxStreams = try l.int("maxStreams", default: c.limits.maxStreams, range: 1...4096)
            c.limits.maxStreamsPerClient = try l.int(
                "maxStreamsPerClient", default: c.limits.maxStreamsPerClient, range: 1...4096)
            c.limits.requestTimeoutMilliseconds = try l.int(
                "requestTimeoutMilliseconds", default: c.limits.requestTimeoutMilliseconds, range: 100...600_000,
                unit: "ms")
            c.limits.idleTimeoutMilliseconds = try l.int(
                "idleTimeoutMilliseconds", default: c.limits.idleTimeoutMilliseconds, range: 100...3_600_000,
                unit: "ms")
            c.limits.maxSessions = try l.int("maxSessions", default: c.limits.maxSessions, range: 1...100_000)
            try l.finish()
        }
        if let o = try r.object("oauth") {
            var names = try o.stringArray("algorithms")
            if names.isEmpty { throw o.error("algorithms", "name at least one: RS256, PS256 or ES256") }
            var algorithms: [JWTAlgorithm] = []
            for (i, n) in names.enumerated() {
                guard let a = JWTAlgorithm(rawValue: n) else {
                    // none and the HS family are never accepted: a JWKS holds
                    // public keys, and an HMAC "signed" with a public key is
                    // the classic algorithm-confusion forgery.
                    throw ConfigError(
                        file: o.file, field: o.field("algorithms") + "[\(i)]",
                        message: "\"\(n)\" is not accepted; use RS256, PS256 or ES256 (never none or HS*)")
                }
                algorithms.append(a)
            }
            names = []
            var oauth = OAuth(issuer: try o.string("issuer"), jwksURL: try o.string("jwksUrl"), algorithms: algorithms)
            oauth.requiredScopes = try o.stringArray("requiredScopes", default: [])
            oauth.leewaySeconds = try o.int("leewaySeconds", default: 30, range: 0...300, unit: "s")
            oauth.jwksCacheSeconds = try o.int("jwksCacheSeconds", default: 600, range: 0...86400, unit: "s")
            oauth.jwksMinRefetchSeconds = try o.int("jwksMinRefetchSeconds", default: 30, range: 0...3600, unit: "s")
            oauth.tenantClaim = try o.optionalString("tenantClaim") ?? "tenant"
            oauth.groupsClaim = try o.optionalString("groupsClaim") ?? "groups"
            guard oauth.jwksURL.hasPrefix("https://") || oauth.jwksURL.hasPrefix("http://") else {
                throw o.error("jwksUrl", "expected an http(s) URL")
            }
            try o.finish()
            c.oauth = oauth
            if c.resource == nil { throw r.error("resource", "required with oauth: the audience tokens must name") }
        }
        if let tokens = try r.array("staticTokens") {
            for (i, v) in tokens.enumerated() {
                let t = try FieldReader(file: r.file, path: r.field("staticTokens") + "[\(i)]", value: v)
                let name = try t.string("name")
                let hex = try t.string("sha256")
                guard let digest = hexBytes(hex), digest.count == 32 else {
                    throw t.error("sha256", "expected 64 hex digits (sha256sum of the token)")
                }
                var token = StaticToken(name: name, sha256: digest)
                token.scopes = try t.stringArray("scopes", default: [])
                token.tenant = try t.optionalString("tenant")
                try t.finish()
                c.staticTokens.append(token)
            }
        }
        if let t = try r.object("tenants") {
            for name in t.object.keys.sorted() {
                guard let one = try t.object(name) else { continue }
                // It names a scratch directory: letters, digits, . _ - only.
                guard !name.isEmpty, name.utf8.count <= 64, !name.hasPrefix("."),
                    name.utf8.allSatisfy({ b in
                        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x2E
                            || b == 0x5F || b == 0x2D
                    })
                else {
                    throw t.error(name, "a tenant name has 1 to 64 letters, digits, '.', '_' or '-' (not first '.')")
                }
                let tenant = Tenant(
                    name: name, cells: try one.stringArray("cells"), policy: try one.optionalString("policy"))
                try one.finish()
                c.tenants.append(tenant)
            }
            try t.finish()
        }
        if let a = try r.object("approvalState") {
            func absolute(_ key: String) throws(ConfigError) -> String {
                let v = try a.string(key)
                guard v.hasPrefix("/") else { throw a.error(key, "expected an absolute path") }
                return v
            }
            c.approvalState = ApprovalStateFiles(
                keyFile: try absolute("keyFile"), usedDirectory: try absolute("usedDirectory"))
            try a.finish()
        }
        if c.oauth == nil && c.staticTokens.isEmpty {
            throw r.error(
                "oauth", "no way to authenticate callers: configure oauth (an issuer) or staticTokens (docs/http.md)")
        }
        try r.finish()
        return c
    }

    static func hexBytes(_ s: String) -> [UInt8]? {
        let chars = Array(s.lowercased().utf8)
        guard chars.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        for i in stride(from: 0, to: chars.count, by: 2) {
            guard let hi = hexValue(chars[i]), let lo = hexValue(chars[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
        }
        return out
    }

    static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        default: return nil
        }
    }
}
