import NIOCore
import NIOEmbedded
import NIOHTTP1
import SupervisorCore
import XCTest

@testable import SupervisorEgress

/// The proxy's reading of request targets: CONNECT's authority-form and
/// plain HTTP's absolute-form, each malformed case refused with a message
/// that says what is wrong.
final class RequestTargetTests: XCTestCase {
    func testConnectAuthorityForm() throws {
        XCTAssertEqual(
            try RequestTarget.connect("Example.ORG.:443"), RequestTarget(host: "example.org", port: 443, originForm: "")
        )
        XCTAssertEqual(try RequestTarget.connect("127.0.0.1:8443").host, "127.0.0.1")
        let v6 = try RequestTarget.connect("[::1]:443")
        XCTAssertEqual(v6.host, "::1")
        XCTAssertEqual(v6.authority, "[::1]:443")
    }

    func testMalformedConnect() {
        let cases: [(String, String)] = [
            ("", "needs a target"),
            ("example.org", "needs a port"),
            ("example.org:0", "port must be 1-65535"),
            ("example.org:65536", "port must be 1-65535"),
            ("example.org:http", "port must be 1-65535"),
            ("http://example.org:443/", "authority-form"),
            ("user@example.org:443", "authority-form"),
            ("[::1:443", "unclosed ["),
            ("exa mple.org:443", "is not a host name or IP address"),
            (":443", "no host"),
            (String(repeating: "a", count: 9000) + ":443", "longer than 8192 bytes"),
        ]
        for (uri, expected) in cases {
            XCTAssertThrowsError(try RequestTarget.connect(uri), uri) { e in
                let m = (e as? RequestTarget.Malformed)?.message ?? "\(e)"
                XCTAssertTrue(m.contains(expected), "CONNECT \(uri.prefix(40)): \(m)")
            }
        }
    }

    func testAbsoluteForm() throws {
        XCTAssertEqual(
            try RequestTarget.absolute("http://Example.org/a/b?q=1#frag"),
            RequestTarget(host: "example.org", port: 80, originForm: "/a/b?q=1"))
        XCTAssertEqual(
            try RequestTarget.absolute("HTTP://127.0.0.1:8080"),
            RequestTarget(host: "127.0.0.1", port: 8080, originForm: "/"))
        XCTAssertEqual(try RequestTarget.absolute("http://h.example:81?x").originForm, "/?x")
        XCTAssertEqual(try RequestTarget.absolute("http://[::1]:8080/x").host, "::1")
    }

    func testMalformedAbsoluteForm() {
        let cases: [(String, String)] = [
            ("/index.html", "absolute http:// URL"),
            ("https://example.org/", "go through CONNECT"),
            ("ftp://example.org/", "absolute http:// URL"),
            ("http://user:pw@example.org/", "user information"),
            ("http://example.org:99999/", "port must be 1-65535"),
            ("http:///path", "no host"),
            ("http://exa_mple.org/", "is not a host name or IP address"),
        ]
        for (uri, expected) in cases {
            XCTAssertThrowsError(try RequestTarget.absolute(uri), uri) { e in
                let m = (e as? RequestTarget.Malformed)?.message ?? "\(e)"
                XCTAssertTrue(m.contains(expected), "\(uri): \(m)")
            }
        }
    }

    func testHopByHopHeadersAreNotForwarded() {
        let h = HTTPHeaders([
            ("Host", "x"), ("Connection", "keep-alive, X-Private"), ("X-Private", "1"), ("Proxy-Authorization", "b"),
            ("Keep-Alive", "5"), ("Accept", "*/*"),
        ])
        let out = ClientHandler.forwardedHeaders(h)
        XCTAssertEqual(out.map(\.name), ["Host", "Accept"])
    }
}
