import Crypto
import Foundation
import StrictJSON
import SupervisorCore
import XCTest
import _CryptoExtras

@testable import SupervisorServer
@testable import mcp_supervisor

/// Bearer tokens, the HTTP configuration, the request guard and the
/// 2026-07-28 header rules, without a server (docs/http.md).
final class HTTPAuthTests: XCTestCase {
    let resource = "https://mcp.example/mcp"
    let issuer = "https://issuer.example"
    let now: Int64 = 1_800_000_000

    func oauth(_ algorithms: [JWTAlgorithm] = [.rs256, .es256]) -> HTTPConfiguration.OAuth {
        var o = HTTPConfiguration.OAuth(issuer: issuer, jwksURL: "https://issuer.example/jwks", algorithms: algorithms)
        o.requiredScopes = ["mcp:tools"]
        return o
    }

    func claims(_ over: [(String, JSONValue?)] = []) -> JSONObject {
        var c = JSONObject([
            ("iss", .string(issuer)), ("aud", .string(resource)), ("sub", "alice"), ("exp", .int(now + 60)),
            ("scope", "mcp:tools other"), ("client_id", "cli"), ("tenant", "acme"), ("groups", .array(["dev"])),
        ])
        for (k, v) in over {
            c[k] = v
        }
        return c
    }

    func check(_ c: JSONObject) -> Result<HTTPCaller, AuthFailure> {
        TokenClaims.check(c, oauth: oauth(), resource: resource, now: now)
    }

    // MARK: claims

    func testGoodClaimsGiveTheCaller() throws {
        let caller = try check(claims()).get()
        XCTAssertEqual(caller.principal, "oauth:alice")
        XCTAssertEqual(caller.clientID, "cli")
        XCTAssertEqual(caller.tenant, "acme")
        XCTAssertEqual(caller.groups, ["dev"])
        XCTAssertEqual(caller.scopes, ["mcp:tools", "other"])
    }

    func testExpiryAndNotBeforeWithLeeway() {
        XCTAssertEqual(check(claims([("exp", .int(now - 31))])), .failure(.invalidToken("expired")))
        // Within the 30 s leeway.
        XCTAssertNoThrow(try check(claims([("exp", .int(now - 29))])).get())
        XCTAssertEqual(check(claims([("exp", nil)])), .failure(.invalidToken("no exp")))
        XCTAssertEqual(check(claims([("nbf", .int(now + 31))])), .failure(.invalidToken("not yet valid")))
        XCTAssertNoThrow(try check(claims([("nbf", .int(now + 29))])).get())
        XCTAssertEqual(check(claims([("nbf", "soon")])), .failure(.invalidToken("malformed nbf")))
    }

    func testIssuerAudienceSubject() {
        XCTAssertEqual(check(claims([("iss", "https://evil.example")])), .failure(.invalidToken("wrong issuer")))
        XCTAssertEqual(check(claims([("aud", "https://other/mcp")])), .failure(.invalidToken("wrong audience")))
        XCTAssertEqual(check(claims([("aud", nil)])), .failure(.invalidToken("wrong audience")))
        XCTAssertNoThrow(try check(claims([("aud", .array(["x", .string(resource)]))])).get())
        XCTAssertEqual(check(claims([("sub", nil)])), .failure(.invalidToken("no sub")))
    }

    func testScopes() {
        XCTAssertEqual(
            check(claims([("scope", "other")])), .failure(.insufficientScope(required: ["mcp:tools"])))
        XCTAssertNoThrow(try check(claims([("scope", nil), ("scp", .array(["mcp:tools"]))])).get())
    }

    // MARK: header

    func jws(_ header: JSONObject, _ payload: JSONObject = JSONObject([("sub", "x")]), sig: [UInt8] = [1]) -> String {
        b64(JSONValue.object(header).serializedBytes()) + "." + b64(JSONValue.object(payload).serializedBytes()) + "."
            + b64(sig)
    }

    func b64(_ b: [UInt8]) -> String {
        Data(b).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    func testHeaderRules() {
        func parse(_ h: JSONObject, pinned: [JWTAlgorithm] = [.rs256]) -> AuthFailure? {
            if case .failure(let f) = JWTParts.parse(jws(h), pinned: pinned) { return f }
            return nil
        }
        XCTAssertNil(parse(JSONObject([("alg", "RS256"), ("kid", "k")])))
        XCTAssertEqual(parse(JSONObject([("alg", "none")])), .invalidToken("algorithm none is not accepted"))
        XCTAssertEqual(parse(JSONObject([("alg", "HS256")])), .invalidToken("algorithm HS256 is not accepted"))
        // Pinned: a valid algorithm the configuration did not name is refused.
        XCTAssertEqual(parse(JSONObject([("alg", "ES256")])), .invalidToken("algorithm ES256 is not accepted"))
        XCTAssertEqual(
            parse(JSONObject([("alg", "RS256"), ("crit", .array(["b64"]))])), .invalidToken("unsupported crit header"))
        XCTAssertEqual(
            parse(JSONObject([("alg", "RS256"), ("typ", "JOSE+JSON")])), .invalidToken("typ JOSE+JSON is not a JWT"))
        XCTAssertEqual(parse(JSONObject([("alg", "RS256"), ("kid", 3)])), .invalidToken("kid must be a string"))
        if case .failure(let f) = JWTParts.parse("a.b", pinned: [.rs256]) {
            XCTAssertEqual(f, .invalidToken("not a JWS compact serialization"))
        } else {
            XCTFail("two parts accepted")
        }
        // Padding and the standard alphabet are not base64url.
        XCTAssertNil(Base64URL.decode("ab=="))
        XCTAssertNil(Base64URL.decode("a+b/"))
        XCTAssertEqual(Base64URL.decode("_-8"), [0xFF, 0xEF])
    }

    // MARK: signatures

    func testRS256AndES256SignaturesVerifyAndTamperingFails() throws {
        let rsa = try _RSA.Signing.PrivateKey(keySize: .bits2048)
        let der = rsa.publicKey.derRepresentation
        _ = der
        let input = Array("header.payload".utf8)
        let sig = try rsa.signature(for: SHA256.hash(data: input), padding: .insecurePKCS1v1_5)
        let rsaKey = VerificationKey(kid: "r", alg: nil, key: .rsa(rsa.publicKey))
        XCTAssertTrue(rsaKey.verifies(Array(sig.rawRepresentation), of: input, alg: .rs256))
        XCTAssertFalse(rsaKey.verifies(Array(sig.rawRepresentation), of: input + [0], alg: .rs256))
        // The same key never verifies another algorithm's signature.
        XCTAssertFalse(rsaKey.verifies(Array(sig.rawRepresentation), of: input, alg: .es256))
        XCTAssertFalse(rsaKey.verifies(Array(sig.rawRepresentation), of: input, alg: .ps256))

        let ec = P256.Signing.PrivateKey()
        let ecSig = try ec.signature(for: SHA256.hash(data: input))
        let ecKey = VerificationKey(kid: "e", alg: nil, key: .p256(ec.publicKey))
        XCTAssertTrue(ecKey.verifies(Array(ecSig.rawRepresentation), of: input, alg: .es256))
        XCTAssertFalse(ecKey.verifies(Array(ecSig.rawRepresentation), of: input, alg: .rs256))
        XCTAssertFalse(ecKey.verifies(Array(ecSig.derRepresentation), of: input, alg: .es256))
    }

    func testJWKSParsingAndKeyChoice() throws {
        let ec = P256.Signing.PrivateKey()
        let raw = Array(ec.publicKey.rawRepresentation)
        let jwks = JSONValue.object(
            JSONObject([
                (
                    "keys",
                    .array([
                        .object(
                            JSONObject([
                                ("kty", "EC"), ("crv", "P-256"), ("kid", "e1"), ("x", .string(b64(Array(raw[0..<32])))),
                                ("y", .string(b64(Array(raw[32..<64])))),
                            ])),
                        // An encryption key is skipped; so is a malformed one.
                        .object(JSONObject([("kty", "EC"), ("use", "enc"), ("kid", "e2")])),
                        .object(JSONObject([("kty", "RSA"), ("kid", "bad"), ("n", "!!"), ("e", "AQAB")])),
                    ])
                )
            ])
        ).serializedBytes()
        let keys = VerificationKey.parseSet(jwks)
        XCTAssertEqual(keys.map(\.kid), ["e1"])
        XCTAssertEqual(JWKSCache.match(keys, kid: "e1", alg: .es256).count, 1)
        XCTAssertEqual(JWKSCache.match(keys, kid: "e1", alg: .rs256).count, 0)
        XCTAssertEqual(JWKSCache.match(keys, kid: nil, alg: .es256).count, 1)
        XCTAssertEqual(JWKSCache.match(keys, kid: "other", alg: .es256).count, 0)
    }

    func testUnknownKidRefetchesAtMostOncePerInterval() async {
        final class Counter: @unchecked Sendable {
            var n = 0
            let lock = NSLock()
            func bump() {
                lock.lock()
                n += 1
                lock.unlock()
            }
        }
        let counter = Counter()
        let cache = JWKSCache(url: "x", cacheSeconds: 600, minRefetchSeconds: 3600) { _ in
            counter.bump()
            return .success(Array(#"{"keys":[]}"#.utf8))
        }
        _ = await cache.candidates(kid: "a", alg: .rs256)
        _ = await cache.candidates(kid: "b", alg: .rs256)
        _ = await cache.candidates(kid: "c", alg: .rs256)
        // The first look fetched; unknown kids within the interval do not.
        XCTAssertEqual(counter.n, 1)
    }

    // MARK: static tokens and configuration

    func config(_ json: String) throws -> HTTPConfiguration {
        try HTTPConfiguration.parse(
            FieldReader(file: "h.json", path: "", value: try JSONParser.parse(Array(json.utf8))))
    }

    func testStaticTokensByDigest() throws {
        let digest = SHA256.hash(data: Array("s3cret".utf8)).map { String(format: "%02x", $0) }.joined()
        let c = try config(#"{"staticTokens": [{"name": "op", "sha256": "\#(digest)", "tenant": "t1"}]}"#)
        let auth = BearerAuthenticator(config: c)
        XCTAssertEqual(auth.staticCaller("s3cret")?.principal, "token:op")
        XCTAssertEqual(auth.staticCaller("s3cret")?.tenant, "t1")
        XCTAssertNil(auth.staticCaller("s3cres"))
        XCTAssertEqual(BearerAuthenticator.bearer("Bearer abc"), "abc")
        XCTAssertEqual(BearerAuthenticator.bearer("bearer  abc"), "abc")
        XCTAssertNil(BearerAuthenticator.bearer("Basic abc"))
        XCTAssertNil(BearerAuthenticator.bearer("Bearer "))
    }

    func testConfigurationRefusals() {
        func error(_ json: String) -> String {
            do {
                _ = try config(json)
                return ""
            } catch { return "\(error)" }
        }
        XCTAssertTrue(error("{}").contains("no way to authenticate callers"))
        let o = #""issuer": "i", "jwksUrl": "https://i/jwks""#
        XCTAssertTrue(
            error(#"{"resource": "https://r/mcp", "oauth": {\#(o), "algorithms": ["HS256"]}}"#)
                .contains("oauth.algorithms[0]: \"HS256\" is not accepted"))
        XCTAssertTrue(
            error(#"{"resource": "https://r/mcp", "oauth": {\#(o), "algorithms": ["none"]}}"#)
                .contains("never none or HS*"))
        XCTAssertTrue(error(#"{"oauth": {\#(o), "algorithms": ["RS256"]}}"#).contains("resource: required with oauth"))
        XCTAssertTrue(error(#"{"staticTokens": [{"name": "a", "sha256": "00"}]}"#).contains("64 hex digits"))
        let zero = String(repeating: "0", count: 64)
        XCTAssertTrue(
            error(#"{"staticTokens": [{"name": "a", "sha256": "\#(zero)"}], "limitz": {}}"#)
                .contains("limitz: unknown field (did you mean \"limits\"?)"))
    }

    // MARK: the request guard

    func testGuardOnLoopback() throws {
        let zero = String(repeating: "0", count: 64)
        let c = try config(
            #"{"staticTokens": [{"name": "a", "sha256": "\#(zero)"}], "allowedOrigins": ["https://App.example"]}"#)
        let g = HTTPRequestGuard(
            listen: ListenAddress(host: "127.0.0.1", port: 8765, isIPv6: false), loopback: true, config: c)
        func d(_ f: [(String, String)], _ method: String = "POST", _ uri: String = "/mcp") -> HTTPRequestGuard.Decision
        {
            g.decide(method: method, uri: uri, fields: HTTPFields(f))
        }
        XCTAssertEqual(d([("Host", "127.0.0.1:8765")]), .route(.mcp))
        XCTAssertEqual(d([("host", "LOCALHOST:8765")]), .route(.mcp))
        if case .refuse(421, _, _) = d([("Host", "evil.example:8765")]) {} else { XCTFail("rebinding host accepted") }
        if case .refuse(421, _, _) = d([]) {} else { XCTFail("no Host accepted") }
        if case .refuse(421, _, _) = d([("Host", "127.0.0.1:8765"), ("Host", "evil")]) {
        } else {
            XCTFail("two Hosts accepted")
        }
        let h = ("Host", "127.0.0.1:8765")
        XCTAssertEqual(d([h, ("Origin", "https://app.example")]), .route(.mcp))
        if case .refuse(403, _, _) = d([h, ("Origin", "https://evil.example")]) {} else { XCTFail("origin accepted") }
        if case .refuse(403, _, _) = d([h, ("Origin", "null")]) {} else { XCTFail("null origin accepted") }
        XCTAssertEqual(d([h], "GET", "/mcp"), .refuse(status: 405, reason: "POST or DELETE", allow: "POST, DELETE"))
        XCTAssertEqual(d([h], "DELETE", "/mcp"), .route(.mcp))
        XCTAssertEqual(d([h], "GET", "/.well-known/oauth-protected-resource/mcp"), .route(.metadata))
        XCTAssertEqual(d([h], "GET", "/healthz?x=1"), .route(.health))
        XCTAssertEqual(d([h], "POST", "/healthz"), .refuse(status: 405, reason: "only GET", allow: "GET"))
        if case .refuse(421, _, _) = d([("Host", "evil.example")], "GET", "/healthz") {
        } else {
            XCTFail("health answered to another Host")
        }
        if case .refuse(404, _, _) = d([h], "POST", "/mcp/x") {} else { XCTFail("other path accepted") }
        XCTAssertEqual(
            MCPHTTPApp.metadataURL(resource: "https://mcp.example:8443/mcp"),
            "https://mcp.example:8443/.well-known/oauth-protected-resource/mcp")
        XCTAssertEqual(
            MCPHTTPApp.metadataURL(resource: "https://mcp.example/"),
            "https://mcp.example/.well-known/oauth-protected-resource")
    }

    func testReasonsInHeadersCannotSplitOrBreakQuoting() {
        XCTAssertEqual(
            MCPHTTPHandler.quotable("algorithm \"x\r\nSet-Cookie: a\\ is not accepted"),
            "algorithm xSet-Cookie: a is not accepted")
    }

    // MARK: refusal records

    func testRefusalRecordsAreBoundedPerAddress() {
        let l = RefusalRecordLimiter(burst: 3, perSecond: 1)
        let t0: UInt64 = 1_000_000_000
        XCTAssertEqual((0..<5).map { _ in l.admit("a", now: t0) }, [0, 0, 0, nil, nil])
        // Another address has its own bucket.
        XCTAssertEqual(l.admit("b", now: t0), 0)
        // A second later one more is recorded, naming the two not recorded.
        XCTAssertEqual(l.admit("a", now: t0 + 1_000_000_000), 2)
        XCTAssertNil(l.admit("a", now: t0 + 1_000_000_000))
    }

    // MARK: 2026-07-28 headers

    func testModernHeaderRules() throws {
        let meta = JSONObject([
            (ModernEnvelope.protocolVersionKey, "2026-07-28"), (ModernEnvelope.clientCapabilitiesKey, .object([:])),
        ])
        let call = JSONObject([
            ("jsonrpc", "2.0"), ("id", 1), ("method", "tools/call"),
            ("params", .object(JSONObject([("name", "echo"), ("_meta", .object(meta))]))),
        ])
        func problem(_ f: [(String, String)], _ o: JSONObject = call) -> String? {
            StreamableHTTPEndpoint.modernHeaderProblem(fields: HTTPFields(f), version: "2026-07-28", request: o)
        }
        XCTAssertNil(problem([("Mcp-Method", "tools/call"), ("Mcp-Name", "echo")]))
        XCTAssertNil(problem([("mcp-method", "tools/call"), ("MCP-NAME", "echo")]))
        XCTAssertNotNil(problem([("Mcp-Method", "tools/call")]))
        XCTAssertNotNil(problem([("Mcp-Name", "echo")]))
        XCTAssertNotNil(problem([("Mcp-Method", "tools/list"), ("Mcp-Name", "echo")]))
        XCTAssertNotNil(problem([("Mcp-Method", "tools/call"), ("Mcp-Name", "Echo")]))
        XCTAssertNotNil(problem([("Mcp-Method", "tools/call"), ("Mcp-Name", "echo"), ("Mcp-Name", "echo")]))
        var other = call
        other["params"] = .object(JSONObject([("name", "echo"), ("_meta", .object([:]))]))
        XCTAssertNotNil(problem([("Mcp-Method", "tools/call"), ("Mcp-Name", "echo")], other))
        let list = JSONObject([
            ("jsonrpc", "2.0"), ("id", 2), ("method", "tools/list"),
            ("params", .object(JSONObject([("_meta", .object(meta))]))),
        ])
        XCTAssertNil(problem([("Mcp-Method", "tools/list")], list))
        XCTAssertNotNil(problem([("Mcp-Method", "tools/list"), ("Mcp-Name", "x")], list))
    }
}
