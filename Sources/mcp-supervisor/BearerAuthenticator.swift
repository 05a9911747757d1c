import Crypto
import Foundation
import StrictJSON
import SupervisorCore
import SupervisorPlatform
import SupervisorServer
import _CryptoExtras

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// The JWS algorithms a configuration may pin. Asymmetric only: the keys
/// come from a public JWKS, so an HMAC key could only be a public key,
/// which is the algorithm-confusion forgery (CVE-2015-9235 and kin).
enum JWTAlgorithm: String, Sendable, CaseIterable {
    case rs256 = "RS256"
    case ps256 = "PS256"
    case es256 = "ES256"

    /// The JWK key type this algorithm verifies with.
    var keyType: String { self == .es256 ? "EC" : "RSA" }
}

/// Why a request is not let in.
enum AuthFailure: Error, Equatable, Sendable {
    /// No bearer token: 401 with only the metadata pointer.
    case missing
    /// 401 `error="invalid_token"`; the reason goes to the security log
    /// and a short form to the client.
    case invalidToken(String)
    /// 403 `error="insufficient_scope"`, naming the scopes needed.
    case insufficientScope(required: [String])

    var reason: String {
        switch self {
        case .missing: return "no bearer token"
        case .invalidToken(let why): return why
        case .insufficientScope(let r): return "insufficient scope: needs \(r.joined(separator: " "))"
        }
    }
}

/// A public key of the issuer's JWKS.
struct VerificationKey: Sendable {
    let kid: String?
    /// The JWK's own `alg`, when it names one: the key is used for nothing else.
    let alg: String?
    let key: Key

    enum Key: Sendable {
        case rsa(_RSA.Signing.PublicKey)
        case p256(P256.Signing.PublicKey)
    }

    var keyType: String {
        switch key {
        case .rsa: return "RSA"
        case .p256: return "EC"
        }
    }

    /// The keys of a JWKS document that can verify signatures; keys of
    /// other kinds or uses are skipped, malformed ones too (one bad key
    /// must not lock everyone out).
    static func parseSet(_ bytes: [UInt8]) -> [VerificationKey] {
        guard case .object(let doc)? = try? JSONParser.parse(bytes), case .array(let keys)? = doc["keys"] else {
            return []
        }
        return keys.compactMap { v -> VerificationKey? in
            guard case .object(let k) = v, let kty = k["kty"]?.stringValue else { return nil }
            if let use = k["use"]?.stringValue, use != "sig" { return nil }
            let kid = k["kid"]?.stringValue
            let alg = k["alg"]?.stringValue
            switch kty {
            case "RSA":
                guard let n = k["n"]?.stringValue.flatMap(Base64URL.decode),
                    let e = k["e"]?.stringValue.flatMap(Base64URL.decode),
                    let key = try? _RSA.Signing.PublicKey(n: Data(n), e: Data(e))
                else { return nil }
                return VerificationKey(kid: kid, alg: alg, key: .rsa(key))
            case "EC":
                guard k["crv"]?.stringValue == "P-256", let x = k["x"]?.stringValue.flatMap(Base64URL.decode),
                    let y = k["y"]?.stringValue.flatMap(Base64URL.decode), x.count == 32, y.count == 32,
                    let key = try? P256.Signing.PublicKey(rawRepresentation: x + y)
                else { return nil }
                return VerificationKey(kid: kid, alg: alg, key: .p256(key))
            default:
                return nil
            }
        }
    }

    /// True when `signature` is this key's signature of `input` with `alg`.
    func verifies(_ signature: [UInt8], of input: [UInt8], alg: JWTAlgorithm) -> Bool {
        let digest = SHA256.hash(data: input)
        switch (key, alg) {
        case (.rsa(let k), .rs256):
            return k.isValidSignature(
                _RSA.Signing.RSASignature(rawRepresentation: signature), for: digest, padding: .insecurePKCS1v1_5)
        case (.rsa(let k), .ps256):
            return k.isValidSignature(
                _RSA.Signing.RSASignature(rawRepresentation: signature), for: digest, padding: .PSS)
        case (.p256(let k), .es256):
            guard signature.count == 64, let s = try? P256.Signing.ECDSASignature(rawRepresentation: signature) else {
                return false
            }
            return k.isValidSignature(s, for: digest)
        default:
            return false
        }
    }
}

enum Base64URL {
    /// Unpadded base64url (RFC 7515 §2); nil for anything else.
    static func decode(_ s: String) -> [UInt8]? {
        guard !s.contains("="), !s.contains("+"), !s.contains("/") else { return nil }
        var b = s.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while b.count % 4 != 0 { b += "=" }
        guard let d = Data(base64Encoded: b) else { return nil }
        return Array(d)
    }
}

/// A JWT's parts, once its header is checked and before its signature is.
struct JWTParts: Sendable {
    let alg: JWTAlgorithm
    let kid: String?
    let signingInput: [UInt8]
    let signature: [UInt8]
    let payload: JSONObject

    /// Checks the form and the header: three base64url parts, a header
    /// whose `alg` is one of the pinned algorithms (never `none`, never
    /// HS*), no `crit` extensions, `typ` JWT or at+jwt if given.
    static func parse(_ token: String, pinned: [JWTAlgorithm]) -> Result<JWTParts, AuthFailure> {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3 else { return .failure(.invalidToken("not a JWS compact serialization")) }
        guard let headerBytes = Base64URL.decode(String(parts[0])),
            case .object(let header)? = try? JSONParser.parse(headerBytes)
        else { return .failure(.invalidToken("malformed header")) }
        guard let algName = header["alg"]?.stringValue else { return .failure(.invalidToken("header has no alg")) }
        guard let alg = JWTAlgorithm(rawValue: algName), pinned.contains(alg) else {
            return .failure(.invalidToken("algorithm \(SecurityEvent.bounded(algName, maxBytes: 16)) is not accepted"))
        }
        if header["crit"] != nil { return .failure(.invalidToken("unsupported crit header")) }
        if let typ = header["typ"]?.stringValue, !["jwt", "at+jwt", "application/at+jwt"].contains(typ.lowercased()) {
            return .failure(.invalidToken("typ \(SecurityEvent.bounded(typ, maxBytes: 32)) is not a JWT"))
        }
        if header["kid"] != nil && header["kid"]?.stringValue == nil {
            return .failure(.invalidToken("kid must be a string"))
        }
        guard let payloadBytes = Base64URL.decode(String(parts[1])),
            case .object(let payload)? = try? JSONParser.parse(payloadBytes)
        else { return .failure(.invalidToken("malformed payload")) }
        guard let signature = Base64URL.decode(String(parts[2])), !signature.isEmpty else {
            return .failure(.invalidToken("malformed signature"))
        }
        return .success(
            JWTParts(
                alg: alg, kid: header["kid"]?.stringValue, signingInput: Array("\(parts[0]).\(parts[1])".utf8),
                signature: signature, payload: payload))
    }
}

/// The claims of a verified token, checked against the configuration.
enum TokenClaims {
    static func number(_ v: JSONValue?) -> Int64? {
        switch v {
        case .int(let i)?: return i
        case .double(let d)? where d.isFinite: return Int64(d)
        default: return nil
        }
    }

    /// `iss`, `aud` (this resource), `exp` (required), `nbf`, `sub`, then
    /// the caller's scopes, groups and tenant. `now` in seconds.
    static func check(_ c: JSONObject, oauth: HTTPConfiguration.OAuth, resource: String, now: Int64)
        -> Result<HTTPCaller, AuthFailure>
    {
        let leeway = Int64(oauth.leewaySeconds)
        guard c["iss"]?.stringValue == oauth.issuer else { return .failure(.invalidToken("wrong issuer")) }
        let audiences: [String]
        switch c["aud"] {
        case .string(let a)?: audiences = [a]
        case .array(let a)?: audiences = a.compactMap(\.stringValue)
        default: audiences = []
        }
        guard audiences.contains(resource) else { return .failure(.invalidToken("wrong audience")) }
        guard let exp = number(c["exp"]) else { return .failure(.invalidToken("no exp")) }
        guard now < exp + leeway else { return .failure(.invalidToken("expired")) }
        if c["nbf"] != nil {
            guard let nbf = number(c["nbf"]) else { return .failure(.invalidToken("malformed nbf")) }
            guard now + leeway >= nbf else { return .failure(.invalidToken("not yet valid")) }
        }
        guard let sub = c["sub"]?.stringValue, !sub.isEmpty, sub.utf8.count <= 256 else {
            return .failure(.invalidToken("no sub"))
        }
        var scopes: [String] = []
        if let s = c["scope"]?.stringValue {
            scopes = s.split(separator: " ").map(String.init)
        } else if case .array(let a)? = c["scp"] {
            scopes = a.compactMap(\.stringValue)
        }
        let missing = oauth.requiredScopes.filter { !scopes.contains($0) }
        if !missing.isEmpty { return .failure(.insufficientScope(required: oauth.requiredScopes)) }
        var groups: [String] = []
        if case .array(let a)? = c[oauth.groupsClaim] { groups = a.compactMap(\.stringValue) }
        let tenant = c[oauth.tenantClaim]?.stringValue
        let client = c["client_id"]?.stringValue ?? c["azp"]?.stringValue
        return .success(
            HTTPCaller(
                principal: "oauth:\(sub)", subject: sub, clientID: client, scopes: scopes, groups: groups,
                tenant: tenant))
    }
}

struct JWKSFetchError: Error, Sendable {
    let message: String
}

/// The issuer's keys: fetched from `jwksUrl`, kept `jwksCacheSeconds`, and
/// fetched again when a token names a `kid` not among them (the issuer
/// rotated its keys), at most once every `jwksMinRefetchSeconds` so that
/// tokens with made-up kids cannot make the server hammer the issuer.
actor JWKSCache {
    let url: String
    let cacheSeconds: Double
    let minRefetchSeconds: Double
    let fetch: @Sendable (String) async -> Result<[UInt8], JWKSFetchError>
    private var keys: [VerificationKey] = []
    private var fetchedAt: Double = -.infinity
    private var lastAttempt: Double = -.infinity
    private var inFlight: Task<Void, Never>?
    private(set) var fetches = 0
    private(set) var lastError: String?

    init(
        url: String, cacheSeconds: Int, minRefetchSeconds: Int,
        fetch: @escaping @Sendable (String) async -> Result<[UInt8], JWKSFetchError> = JWKSCache.httpGet
    ) {
        self.url = url
        self.cacheSeconds = Double(cacheSeconds)
        self.minRefetchSeconds = Double(minRefetchSeconds)
        self.fetch = fetch
    }

    static func now() -> Double { Double(monotonicNanoseconds()) / 1e9 }

    private func refresh() async {
        if let t = inFlight { return await t.value }
        let t = Task {
            lastAttempt = Self.now()
            fetches += 1
            switch await fetch(url) {
            case .success(let bytes):
                let parsed = VerificationKey.parseSet(bytes)
                if parsed.isEmpty {
                    lastError = "the JWKS at \(url) holds no usable signing key"
                } else {
                    keys = parsed
                    fetchedAt = Self.now()
                    lastError = nil
                }
            case .failure(let e):
                // The keys already known stay in use: an issuer briefly
                // unreachable does not lock everyone out.
                lastError = e.message
            }
        }
        inFlight = t
        await t.value
        inFlight = nil
    }

    /// The keys that may verify a token with this `kid` and algorithm.
    func candidates(kid: String?, alg: JWTAlgorithm) async -> [VerificationKey] {
        if Self.now() - fetchedAt > cacheSeconds, Self.now() - lastAttempt >= min(minRefetchSeconds, 1) {
            await refresh()
        }
        var found = Self.match(keys, kid: kid, alg: alg)
        if found.isEmpty, Self.now() - lastAttempt >= minRefetchSeconds {
            await refresh()
            found = Self.match(keys, kid: kid, alg: alg)
        }
        return found
    }

    static func match(_ keys: [VerificationKey], kid: String?, alg: JWTAlgorithm) -> [VerificationKey] {
        let usable = keys.filter { $0.keyType == alg.keyType && ($0.alg == nil || $0.alg == alg.rawValue) }
        if let kid { return usable.filter { $0.kid == kid } }
        // Without a kid only an unambiguous key is used.
        return usable.count == 1 ? usable : []
    }

    static func httpGet(_ url: String) async -> Result<[UInt8], JWKSFetchError> {
        guard let u = URL(string: url) else { return .failure(JWKSFetchError(message: "bad JWKS URL \(url)")) }
        var request = URLRequest(url: u)
        request.timeoutInterval = 5
        do {
            let (data, response) = try await URLSession.shared.data(for: request)
            guard let h = response as? HTTPURLResponse, h.statusCode == 200 else {
                return .failure(
                    JWKSFetchError(message: "JWKS \(url): HTTP \((response as? HTTPURLResponse)?.statusCode ?? 0)"))
            }
            guard data.count <= 1 << 20 else { return .failure(JWKSFetchError(message: "JWKS \(url): over 1 MiB")) }
            return .success(Array(data))
        } catch {
            return .failure(JWKSFetchError(message: "JWKS \(url): \(error.localizedDescription)"))
        }
    }
}

/// Decides who sent a request from its `Authorization` header: a static
/// token of the configuration (compared by SHA-256 in constant time) or a
/// JWT of the configured issuer.
final class BearerAuthenticator: Sendable {
    let config: HTTPConfiguration
    let jwks: JWKSCache?

    init(config: HTTPConfiguration, jwks: JWKSCache? = nil) {
        self.config = config
        self.jwks =
            jwks
            ?? config.oauth.map {
                JWKSCache(
                    url: $0.jwksURL, cacheSeconds: $0.jwksCacheSeconds, minRefetchSeconds: $0.jwksMinRefetchSeconds)
            }
    }

    /// The token of an `Authorization: Bearer …` header, or nil.
    static func bearer(_ authorization: String?) -> String? {
        guard let a = authorization else { return nil }
        let parts = a.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
        let token = parts[1].trimmingCharacters(in: .whitespaces)
        return token.isEmpty ? nil : token
    }

    func authenticate(authorization: String?, now: Int64 = Int64(Date().timeIntervalSince1970)) async
        -> Result<HTTPCaller, AuthFailure>
    {
        guard let token = Self.bearer(authorization) else { return .failure(.missing) }
        guard token.utf8.count <= 16384 else { return .failure(.invalidToken("token longer than 16 KiB")) }
        if !config.staticTokens.isEmpty, let caller = staticCaller(token) { return .success(caller) }
        guard let oauth = config.oauth, let jwks, let resource = config.resource else {
            return .failure(.invalidToken("unknown token"))
        }
        let parts: JWTParts
        switch JWTParts.parse(token, pinned: oauth.algorithms) {
        case .failure(let f): return .failure(f)
        case .success(let p): parts = p
        }
        let keys = await jwks.candidates(kid: parts.kid, alg: parts.alg)
        if keys.isEmpty { return .failure(.invalidToken("unknown signing key")) }
        guard keys.contains(where: { $0.verifies(parts.signature, of: parts.signingInput, alg: parts.alg) }) else {
            return .failure(.invalidToken("bad signature"))
        }
        return TokenClaims.check(parts.payload, oauth: oauth, resource: resource, now: now)
    }

    /// The static token whose SHA-256 is this token's. Every entry is
    /// compared, each in constant time, whether or not one matched.
    func staticCaller(_ token: String) -> HTTPCaller? {
        let digest = Array(SHA256.hash(data: Array(token.utf8)))
        var found: HTTPConfiguration.StaticToken? = nil
        for t in config.staticTokens {
            var diff: UInt8 = 0
            for i in 0..<32 { diff |= digest[i] ^ t.sha256[i] }
            if diff == 0 && found == nil { found = t }
        }
        guard let t = found else { return nil }
        return HTTPCaller(principal: "token:\(t.name)", subject: t.name, scopes: t.scopes, tenant: t.tenant)
    }

    /// Static tokens carry their scopes in the configuration: the same
    /// required scopes apply to them.
    func scopeProblem(_ caller: HTTPCaller) -> AuthFailure? {
        guard let required = config.oauth?.requiredScopes, !required.isEmpty, caller.principal.hasPrefix("token:")
        else { return nil }
        return required.allSatisfy(caller.scopes.contains) ? nil : .insufficientScope(required: required)
    }
}
