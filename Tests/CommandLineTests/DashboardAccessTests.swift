import XCTest

@testable import mcp_supervisor

/// The dashboard's request checks (`DashboardAccess`) and listen address
/// rules, without a socket: every refusal the server can give, and the one
/// path that serves.
final class DashboardAccessTests: XCTestCase {
    let token = String(repeating: "ab", count: 32)

    func access(_ listen: String = "127.0.0.1:8766") throws -> DashboardAccess {
        DashboardAccess(token: token, listen: try ListenAddress.parse(listen))
    }

    func decide(
        _ a: DashboardAccess, _ method: String = "GET", _ uri: String = "/", host: String? = "127.0.0.1:8766",
        _ more: [(String, String)] = []
    ) -> DashboardAccess.Decision {
        a.decide(method: method, uri: uri, headers: (host.map { [("Host", $0)] } ?? []) + more)
    }

    func status(_ d: DashboardAccess.Decision) -> Int {
        switch d {
        case .serve: return 200
        case .redirectSettingCookie: return 303
        case .refuse(let s, _): return s
        }
    }

    var cookie: (String, String) { ("Cookie", "other=1; mcps_dashboard=\(token)") }

    func testTheCookieServesThePageAndTheState() throws {
        let a = try access()
        XCTAssertEqual(decide(a, "GET", "/", [cookie]), .serve(.page))
        XCTAssertEqual(decide(a, "GET", "/api/state", [cookie]), .serve(.state))
        XCTAssertEqual(decide(a, "GET", "/api/state", [("authorization", "Bearer \(token)")]), .serve(.state))
        XCTAssertEqual(decide(a, "GET", "/api/state?token=\(token)"), .serve(.state))
    }

    func testTheTokenInTheURLIsTradedForACookieAndDropped() throws {
        let a = try access()
        XCTAssertEqual(decide(a, "GET", "/?token=\(token)"), .redirectSettingCookie(location: "/"))
        XCTAssertEqual(a.cookie, "mcps_dashboard=\(token); Path=/; HttpOnly; SameSite=Strict")
    }

    func testNoOrAWrongTokenIs401() throws {
        let a = try access()
        XCTAssertEqual(status(decide(a, "GET", "/")), 401)
        XCTAssertEqual(status(decide(a, "GET", "/api/state")), 401)
        let wrong = String(repeating: "ab", count: 31) + "ac"
        XCTAssertEqual(status(decide(a, "GET", "/?token=\(wrong)")), 401)
        XCTAssertEqual(status(decide(a, "GET", "/", [("Cookie", "mcps_dashboard=\(wrong)")])), 401)
        XCTAssertEqual(status(decide(a, "GET", "/", [("Cookie", "mcps_dashboardx=\(token)")])), 401)
        XCTAssertEqual(status(decide(a, "GET", "/", [("Authorization", "Basic \(token)")])), 401)
        XCTAssertEqual(status(decide(a, "GET", "/?token=\(token.prefix(63))")), 401)
        XCTAssertEqual(status(decide(a, "GET", "/?token=")), 401)
        // A wrong candidate does not hide a right one, nor the reverse.
        XCTAssertEqual(decide(a, "GET", "/api/state?token=\(wrong)", [cookie]), .serve(.state))
    }

    func testOnlyGET() throws {
        let a = try access()
        for m in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "CONNECT", "get"] {
            XCTAssertEqual(status(decide(a, m, "/api/state", [cookie])), 405, m)
        }
    }

    func testTheHostMustBeTheLoopbackAddressListenedOn() throws {
        let a = try access()
        XCTAssertEqual(decide(a, "GET", "/", host: "localhost:8766", [cookie]), .serve(.page))
        XCTAssertEqual(decide(a, "GET", "/", host: "LOCALHOST:8766", [cookie]), .serve(.page))
        // DNS rebinding: another site's name pointed at 127.0.0.1.
        for bad in ["evil.example:8766", "127.0.0.1", "127.0.0.1:8767", "127.0.0.2:8766", "localhost", "[::1]:8766"] {
            XCTAssertEqual(status(decide(a, "GET", "/", host: bad, [cookie])), 421, bad)
        }
        XCTAssertEqual(status(decide(a, "GET", "/", host: nil, [cookie])), 400)
        XCTAssertEqual(status(decide(a, "GET", "/", [("Host", "127.0.0.1:8766"), cookie])), 400)
        // The Host is checked first: a rebinding page learns nothing else.
        XCTAssertEqual(status(decide(a, "POST", "/", host: "evil.example:8766")), 421)
        let v6 = try access("[::1]:9000")
        XCTAssertEqual(decide(v6, "GET", "/", host: "[::1]:9000", [cookie]), .serve(.page))
        XCTAssertEqual(status(decide(v6, "GET", "/", host: "127.0.0.1:9000", [cookie])), 421)
    }

    func testRequestsFromOtherSitesAreRefused() throws {
        let a = try access()
        XCTAssertEqual(decide(a, "GET", "/api/state", [cookie, ("Origin", "http://127.0.0.1:8766")]), .serve(.state))
        XCTAssertEqual(decide(a, "GET", "/api/state", [cookie, ("Sec-Fetch-Site", "same-origin")]), .serve(.state))
        XCTAssertEqual(decide(a, "GET", "/", [cookie, ("Sec-Fetch-Site", "none")]), .serve(.page))
        for h in [
            ("Origin", "http://evil.example"), ("Origin", "null"), ("Origin", "http://127.0.0.1:3000"),
            ("Sec-Fetch-Site", "cross-site"), ("Sec-Fetch-Site", "same-site"),
        ] {
            XCTAssertEqual(status(decide(a, "GET", "/api/state", [cookie, h])), 403, "\(h)")
        }
    }

    func testOnlyTwoResources() throws {
        let a = try access()
        for path in ["/index.html", "/api", "/api/state/", "/../etc/passwd", "http://127.0.0.1:8766/"] {
            XCTAssertEqual(status(decide(a, "GET", path, [cookie])), 404, path)
        }
    }

    func testConstantTimeEqual() {
        XCTAssertTrue(DashboardAccess.constantTimeEqual(token, token))
        XCTAssertFalse(DashboardAccess.constantTimeEqual(token, token + "0"))
        XCTAssertFalse(DashboardAccess.constantTimeEqual("", token))
        XCTAssertFalse(DashboardAccess.constantTimeEqual(String(repeating: "ab", count: 31) + "aa", token))
        XCTAssertTrue(DashboardAccess.constantTimeEqual("", ""))
    }

    func testTokensAre256RandomBits() {
        let a = DashboardAccess.newToken()
        let b = DashboardAccess.newToken()
        XCTAssertEqual(a.count, 64)
        XCTAssertTrue(a.allSatisfy { $0.isHexDigit })
        XCTAssertNotEqual(a, b)
    }

    func testOnlyLoopbackAddressesAreListenedOn() throws {
        XCTAssertEqual(
            try ListenAddress.parse("127.0.0.1:8766"), ListenAddress(host: "127.0.0.1", port: 8766, isIPv6: false))
        XCTAssertEqual(try ListenAddress.parse("127.1.2.3:0").port, 0)
        XCTAssertEqual(try ListenAddress.parse("[::1]:8766").hostForURL, "[::1]")
        for bad in [
            "0.0.0.0:8766", "192.168.1.2:8766", "10.0.0.1:80", "[::]:8766", "[::ffff:127.0.0.1]:8766",
            "[fe80::1]:8766", "localhost:8766", "example.org:8766", "::1:8766", "127.0.0.1", "127.0.0.1:65536",
            "127.0.0.1:-1", "127.0.0.1:x",
        ] {
            XCTAssertThrowsError(try ListenAddress.parse(bad), bad)
        }
        do {
            _ = try ListenAddress.parse("0.0.0.0:8766")
        } catch {
            XCTAssertTrue(error.description.contains("not a loopback address"), error.description)
        }
    }

    func testThePageCarriesTheStateSoNoStringCanCloseItsElement() {
        let state = Array(#"{"detail":"</script><script>alert(1)</script>"}"#.utf8)
        let page = String(decoding: DashboardPage.html(state: state), as: UTF8.self)
        XCTAssertFalse(page.contains("</script><script>alert"))
        XCTAssertTrue(page.contains(#"\u003c/script>\u003cscript>alert(1)\u003c/script>"#))
        // The policy names the exact script and style the page holds.
        XCTAssertTrue(page.contains("<script>\(DashboardPage.script)</script>"))
        XCTAssertTrue(page.contains("<style>\(DashboardPage.style)</style>"))
        XCTAssertTrue(DashboardApp.pageCSP.contains(DashboardPage.scriptHash))
        XCTAssertFalse(DashboardApp.pageCSP.contains("unsafe"))
    }
}
