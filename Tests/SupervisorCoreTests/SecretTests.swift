import Foundation
import StrictJSON
import SupervisorPlatform
import XCTest

@testable import SupervisorCore

/// The manifest's `secrets`, the permission diff, resolution at call time
/// and the redactor (docs/secrets.md).
final class SecretManifestTests: ManifestTestCase {
    func testEnvSecretParsesAndShowsItsUse() throws {
        let m = try parse {
            $0["secrets"] = [
                ["name": "api_token", "env": "API_TOKEN"],
                ["name": "other", "source": ["environment": "HOST_VAR"], "env": "OTHER"],
            ]
        }
        XCTAssertEqual(m.secrets.count, 2)
        XCTAssertEqual(
            m.secrets[0], SecretBinding(name: "api_token", source: .store, use: .environment(variable: "API_TOKEN")))
        XCTAssertEqual(m.secrets[1].source, .environment("HOST_VAR"))
        XCTAssertEqual(
            m.secrets[0].description, "api_token (store): environment variable API_TOKEN of the worker")
    }

    func testSecretErrorsNameFileAndField() {
        assertError("secrets", "expected an array") { $0["secrets"] = "x" }
        assertError("secrets[0].name", "letters, digits") { $0["secrets"] = [["name": "../x", "env": "A"]] }
        assertError("secrets[0].name", "letters, digits") { $0["secrets"] = [["name": "1abc", "env": "A"]] }
        assertError("secrets[0].inject", "exactly one use") { $0["secrets"] = [["name": "a"]] }
        assertError("secrets[0].inject", "exactly one use") {
            $0["secrets"] = [["name": "a", "env": "A", "inject": ["host": "x.org:443", "header": "X"]]]
        }
        assertError("secrets[0].env", "not a valid variable name") { $0["secrets"] = [["name": "a", "env": "A-B"]] }
        assertError("secrets[0].env", "also in the manifest's environment") {
            $0["environment"] = ["set": ["TOKEN": "x"]]
            $0["secrets"] = [["name": "a", "env": "TOKEN"]]
        }
        assertError("secrets[0].env", "set by the supervisor") { $0["secrets"] = [["name": "a", "env": "HOME"]] }
        assertError("secrets[1].env", "already receives secret a") {
            $0["secrets"] = [["name": "a", "env": "X"], ["name": "b", "env": "X"]]
        }
        assertError("secrets[0].source", "expected \"store\"") {
            $0["secrets"] = [["name": "a", "source": "vault", "env": "X"]]
        }
        assertError("secrets[0].source.environment", "not a valid variable name") {
            $0["secrets"] = [["name": "a", "source": ["environment": "1X"], "env": "X"]]
        }
        assertError("secrets[0].envv", "unknown field") { $0["secrets"] = [["name": "a", "env": "X", "envv": "Y"]] }
        // A frame cell's connections are the broker's raw sockets: nothing
        // can add a header to them.
        assertError("secrets[0].inject", "egress proxy") {
            $0["network"] = ["connect": ["api.example.com:443"]]
            $0["secrets"] = [["name": "a", "inject": ["host": "api.example.com:443", "header": "Authorization"]]]
        }
    }

    /// The `inject` checks, for a cell whose connections pass through the
    /// egress proxy.
    func testInjectChecks() throws {
        var network = NetworkAccess()
        network.hosts = [
            try NetworkAccess.Host.parse("api.example.com:443").get(),
            try NetworkAccess.Host.parse("*.svc.org:443").get(),
            try NetworkAccess.Host.parse("127.0.0.1:8443").get(),
        ]
        func bindings(_ v: JSONValue) throws(ConfigError) -> [SecretBinding] {
            try SecretBinding.parseAll(v, file: "/m/s.json", network: network, environment: [], viaProxy: true)
        }
        func fails(_ inject: JSONObject, _ field: String, _ text: String, line: UInt = #line) {
            XCTAssertThrowsError(try bindings([["name": "t", "inject": .object(inject)]]), line: line) { e in
                let c = e as! ConfigError
                XCTAssertEqual(c.file, "/m/s.json", line: line)
                XCTAssertEqual(c.field, field, "\(c)", line: line)
                XCTAssertTrue(c.message.contains(text), "\(c)", line: line)
            }
        }
        let b = try bindings([
            [
                "name": "t",
                "inject": ["host": "API.example.com:443", "header": "Authorization", "format": "Bearer {secret}"],
            ],
            ["name": "t", "inject": ["host": "a.svc.org:443", "header": "X-Api-Key"]],
            ["name": "t", "inject": ["host": "127.0.0.1:8443", "header": "X-Api-Key", "scheme": "http"]],
        ])
        XCTAssertEqual(
            b[0].use, .inject(host: "api.example.com", port: 443, header: "Authorization", format: "Bearer {secret}"))
        XCTAssertEqual(b[1].use, .inject(host: "a.svc.org", port: 443, header: "X-Api-Key", format: "{secret}"))
        XCTAssertEqual(
            b[2].use, .inject(host: "127.0.0.1", port: 8443, header: "X-Api-Key", format: "{secret}", scheme: .http))
        fails(
            ["host": "api.example.com:443", "header": "A", "scheme": "ftp"], "secrets[0].inject.scheme",
            "\"https\" (the default) or \"http\"")
        fails(["host": "other.example.com:443", "header": "A"], "secrets[0].inject.host", "not on the cell's network")
        fails(["host": "api.example.com:80", "header": "A"], "secrets[0].inject.host", "not on the cell's network")
        fails(["host": "*.svc.org:443", "header": "A"], "secrets[0].inject.host", "not a wildcard")
        fails(["host": "api.example.com:443", "header": "Host"], "secrets[0].inject.header", "frames the request")
        fails(["host": "api.example.com:443", "header": "A B"], "secrets[0].inject.header", "not an HTTP header")
        fails(
            ["host": "api.example.com:443", "header": "A", "format": "Bearer"], "secrets[0].inject.format",
            "exactly once")
        fails(
            ["host": "api.example.com:443", "header": "A", "format": "{secret}\r\nX: {secret}"],
            "secrets[0].inject.format", "exactly once")
        fails(
            ["host": "api.example.com:443", "header": "A", "format": "x\n{secret}"], "secrets[0].inject.format",
            "printable ASCII")
        XCTAssertThrowsError(
            try bindings([
                ["name": "t", "inject": ["host": "api.example.com:443", "header": "A"]],
                ["name": "u", "inject": ["host": "api.example.com:443", "header": "a"]],
            ])
        ) { XCTAssertTrue("\($0)".contains("already set by secret t"), "\($0)") }
    }

    func testNewSecretOrNewUseWidens() throws {
        let old = try parse { $0["secrets"] = [["name": "a", "env": "A"]] }
        var root = #filePath
        for _ in 0..<3 { root = String(root[..<root.lastIndex(of: "/")!]) }
        let groups = try SyscallGroups.load(path: root + "/policies/syscall-groups.json")
        XCTAssertTrue(PermissionDiff.compare(old, old, groups: groups).filter { $0.field == "secrets" }.isEmpty)
        let more = try parse { $0["secrets"] = [["name": "a", "env": "A"], ["name": "b", "env": "B"]] }
        let added = PermissionDiff.compare(old, more, groups: groups).filter { $0.field == "secrets" }
        XCTAssertEqual(added.map(\.direction), [.widens])
        XCTAssertTrue(added[0].detail.contains("b (store)"), added[0].detail)
        let otherUse = try parse { $0["secrets"] = [["name": "a", "env": "A2"]] }
        XCTAssertEqual(
            PermissionDiff.compare(old, otherUse, groups: groups).filter { $0.field == "secrets" }.map(\.direction),
            [.widens, .narrows])
        let none = try parse { _ in }
        XCTAssertEqual(
            PermissionDiff.compare(old, none, groups: groups).filter { $0.field == "secrets" }.map(\.direction),
            [.narrows])
    }
}

final class SecretStoreTests: XCTestCase {
    var state = ""

    override func setUp() {
        state = NSTemporaryDirectory() + "mcps-secrets-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        chmod(state, 0o700)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: state) }

    func mode(_ path: String) -> UInt32 { (try! Sys.lstat(path)).mode & 0o7777 }

    func testSetReadListRemove() throws {
        let store = SecretStore(stateDirectory: state)
        XCTAssertEqual(try store.names(), [])
        XCTAssertNil(try store.value("token"))
        try store.set("token", value: Array("s3cret".utf8))
        try store.set("b-2", value: Array("x".utf8))
        XCTAssertEqual(mode(store.directory), 0o700)
        XCTAssertEqual(mode(store.directory + "/token"), 0o600)
        XCTAssertEqual(try store.value("token"), Array("s3cret".utf8))
        try store.set("token", value: Array("new".utf8))
        XCTAssertEqual(try store.value("token"), Array("new".utf8))
        XCTAssertEqual(try store.names(), ["b-2", "token"])
        // Nothing but the secrets themselves is left in the directory.
        XCTAssertEqual(try Sys.readdirNames(store.directory).sorted(), ["b-2", "token"])
        XCTAssertTrue(try store.remove("token"))
        XCTAssertFalse(try store.remove("token"))
        XCTAssertEqual(try store.names(), ["b-2"])
        XCTAssertThrowsError(try store.set("../x", value: [1]))
    }

    func testInputValue() throws {
        XCTAssertEqual(try SecretStore.value(fromInput: Array("abc\n".utf8)), Array("abc".utf8))
        XCTAssertEqual(try SecretStore.value(fromInput: Array("abc\r\n".utf8)), Array("abc".utf8))
        XCTAssertEqual(try SecretStore.value(fromInput: Array("a\nb\n\n".utf8)), Array("a\nb\n".utf8))
        XCTAssertThrowsError(try SecretStore.value(fromInput: Array("\n".utf8)))
        XCTAssertThrowsError(try SecretStore.value(fromInput: [0x61, 0, 0x62]))
        XCTAssertThrowsError(try SecretStore.value(fromInput: [0xFF, 0xFE]))
        XCTAssertThrowsError(try SecretStore.value(fromInput: [UInt8](repeating: 0x61, count: 65 << 10)))
    }

    func testReadableByOthersIsRefusedWithTheFix() throws {
        let store = SecretStore(stateDirectory: state)
        try store.set("token", value: Array("s3cret".utf8))
        chmod(store.directory, 0o755)
        for attempt in [{ _ = try store.value("token") }, { _ = try store.names() }] as [() throws -> Void] {
            XCTAssertThrowsError(try attempt()) { e in
                XCTAssertTrue("\(e)".contains("mode 0755"), "\(e)")
                XCTAssertTrue("\(e)".contains("chmod 700 \(store.directory)"), "\(e)")
                XCTAssertFalse("\(e)".contains("s3cret"))
            }
        }
        chmod(store.directory, 0o700)
        chmod(store.directory + "/token", 0o644)
        XCTAssertThrowsError(try store.value("token")) { e in
            XCTAssertTrue("\(e)".contains("chmod 600 \(store.directory)/token"), "\(e)")
        }
        // A link planted in the store is not followed.
        chmod(store.directory + "/token", 0o600)
        try FileManager.default.createSymbolicLink(atPath: store.directory + "/link", withDestinationPath: "token")
        XCTAssertThrowsError(try store.value("link"))
    }

    func testAnotherOwnersStoreIsRefused() throws {
        try XCTSkipUnless(Sys.geteuid() == 0, "changing a file's owner needs root (the e2e tests cover uid 4242)")
        let store = SecretStore(stateDirectory: state)
        try store.set("token", value: Array("s3cret".utf8))
        chown(store.directory, 4242, 4242)
        XCTAssertThrowsError(try store.value("token")) { e in
            XCTAssertTrue("\(e)".contains("owned by uid 4242"), "\(e)")
            XCTAssertTrue("\(e)".contains("chown -R 0 \(store.directory)"), "\(e)")
        }
        chown(store.directory, 0, 0)
        chown(store.directory + "/token", 4242, 4242)
        XCTAssertThrowsError(try store.value("token")) { XCTAssertTrue("\($0)".contains("owned by uid 4242")) }
    }

    /// The sources at call time: the store, the environment taken at start,
    /// and the first missing secret named (never a value).
    func testResolution() throws {
        let store = SecretStore(stateDirectory: state)
        try store.set("token", value: Array("tok-123".utf8))
        var m = try CellManifest.parse(
            bytes: Array(
                #"{"name": "d", "version": "1", "description": "D.", "executable": {"path": "/bin/true", "sha256": "\#(String(repeating: "a", count: 64))"}, "tools": [{"name": "d", "description": "D.", "inputSchema": {"type": "object"}}], "sideEffects": "none", "secrets": [{"name": "token", "env": "TOKEN"}, {"name": "host", "source": {"environment": "HOST_KEY"}, "env": "HOST_KEY"}]}"#
                    .utf8), path: "/m/d.json", manifestSHA256: "h")
        let sources = SecretSources(store: store, environment: ["HOST_KEY": "hk-456"])
        let r = try sources.resolve(m).get()
        XCTAssertEqual(r.environment.map { "\($0.0)=\($0.1)" }, ["TOKEN=tok-123", "HOST_KEY=hk-456"])
        XCTAssertEqual(r.redactor.redact("a tok-123 b hk-456"), "a [secret:token] b [secret:host]")
        m.secrets.append(
            SecretBinding(
                name: "token", source: .store,
                use: .inject(host: "api.example.com", port: 443, header: "Authorization", format: "Bearer {secret}")))
        XCTAssertEqual(
            try sources.resolve(m).get().injections,
            [
                CredentialInjection(
                    host: "api.example.com", port: 443, headerName: "Authorization", headerValue: "Bearer tok-123",
                    secretName: "token")
            ])
        // An injected secret goes to the proxy only, never into the worker's
        // environment.
        XCTAssertEqual(try sources.resolve(m).get().environment.map(\.0), ["TOKEN", "HOST_KEY"])
        XCTAssertTrue(try store.remove("token"))
        guard case .failure(let e) = sources.resolve(m) else { return XCTFail("resolved without its secret") }
        XCTAssertEqual(e.name, "token")
        XCTAssertTrue(e.description.contains("secret set token"), e.description)
        guard case .failure(let e2) = SecretSources(store: store, environment: [:]).resolve(m) else {
            return XCTFail("resolved without its environment")
        }
        XCTAssertEqual(e2.name, "token")
        // A line break cannot go into a header.
        try store.set("token", value: Array("a\r\nX-Evil: 1".utf8))
        guard case .failure(let e3) = sources.resolve(m) else { return XCTFail("a line break went into a header") }
        XCTAssertTrue(e3.reason.contains("control character"), e3.reason)
        XCTAssertEqual(CellCannotRun.secretUnavailable(e).description, e.description)
        XCTAssertEqual(
            CallOutcome.cannotRun(.secretUnavailable(e)).shortCause,
            "The tool cannot run: its secret token is not available; an operator must provide it.")
    }
}

final class SecretRedactorTests: XCTestCase {
    let secret = "sk-live-4f9a2b7c1d"
    lazy var redactor = SecretRedactor([("api", Array(secret.utf8))])

    func testExactAndEdges() {
        XCTAssertEqual(redactor.redact("key=\(secret); again \(secret)"), "key=[secret:api]; again [secret:api]")
        XCTAssertEqual(redactor.redact("nothing here"), "nothing here")
        // A stream's tail that starts inside the value, a message clipped
        // inside it.
        XCTAssertEqual(redactor.redact(String(secret.dropFirst(5)) + " rest"), "[secret:api] rest")
        XCTAssertEqual(redactor.redact("start " + String(secret.prefix(9))), "start [secret:api]")
        XCTAssertEqual(SecretRedactor([]).redact(secret), secret)
    }

    /// The value inside base64 text at every alignment, standard and URL-safe.
    func testBase64AtEveryAlignment() {
        for prefix in 0..<3 {
            for suffix in 0..<3 {
                let bytes = Array("xyz".utf8.prefix(prefix)) + Array(secret.utf8) + Array("?>~".utf8.prefix(suffix))
                let b64 = Data(bytes).base64EncodedString()
                let out = redactor.redact("data:\(b64)")
                XCTAssertTrue(out.contains("[secret:api]"), "\(prefix)/\(suffix): \(out)")
                let url = b64.replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
                XCTAssertTrue(redactor.redact(url).contains("[secret:api]"), url)
            }
        }
    }

    func testReportMessageAndNetwork() {
        var report = CallReport(
            outcome: .success(
                CellResult(
                    content: [["type": "text", "text": .string("got \(secret)")]],
                    structuredContent: [secret: ["v": .string(secret)]])),
            exit: nil, durationNanoseconds: 0, cpuNanoseconds: 0, peakMemoryBytes: nil, bytesFromWorker: 0,
            diagnostics: "stderr: \(secret)", spawnNanoseconds: 0, firstFrameNanoseconds: 0, reapNanoseconds: 0)
        report.refusedServerRequests = ["sampling/\(secret)"]
        let r = redactor.redact(report)
        XCTAssertFalse("\(r)".contains(secret), "\(r)")
        XCTAssertEqual(r.diagnostics, "stderr: [secret:api]")
        report.outcome = .toolError("failed with \(secret)")
        XCTAssertEqual(redactor.redact(report).outcome, CallOutcome.toolError("failed with [secret:api]"))
        XCTAssertEqual(
            redactor.redact(WorkerMessage.log(level: "info", message: secret, data: [.string(secret)])),
            .log(level: "info", message: "[secret:api]", data: ["[secret:api]"]))
        let d = redactor.redact(
            NetworkDecision(host: "\(secret).evil.org", port: 443, address: nil, refusal: "\(secret).evil.org:443 no"))
        XCTAssertEqual(d.host, "[secret:api].evil.org")
        XCTAssertFalse(d.refusal!.contains(secret))
    }
}

final class InterceptionCATests: XCTestCase {
    var state = ""

    override func setUp() {
        state = NSTemporaryDirectory() + "mcps-ca-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        chmod(state, 0o700)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: state) }

    func openssl(_ args: [String]) throws -> (status: Int32, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        p.arguments = args
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try p.run()
        let out = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: out, as: UTF8.self))
    }

    /// A leaf verifies against the CA (openssl's own verifier) and names the
    /// host as its subjectAltName; the key is owner-only and the CA is the
    /// same one the next time.
    func testLeafVerifiesAgainstTheCAWithTheHostAsSAN() throws {
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: "/usr/bin/openssl"), "the test needs openssl")
        let ca = try PerInstallCA(stateDirectory: state)
        XCTAssertEqual(ca.caCertificatePath, state + "/egress-ca/ca.pem")
        XCTAssertEqual((try Sys.lstat(state + "/egress-ca/ca.key")).mode & 0o777, 0o600)
        XCTAssertEqual((try Sys.lstat(state + "/egress-ca")).mode & 0o777, 0o700)
        for (host, san) in [("api.example.com", "DNS:api.example.com"), ("127.0.0.1", "IP Address:127.0.0.1")] {
            let leaf = try ca.leafCertificate(forHost: host)
            let path = state + "/leaf-\(host).pem"
            try leaf.certificateChainPEM.write(toFile: path, atomically: true, encoding: .utf8)
            let v = try openssl(["verify", "-CAfile", ca.caCertificatePath, path])
            XCTAssertEqual(v.status, 0, v.output)
            XCTAssertTrue(v.output.contains(": OK"), v.output)
            let x = try openssl(["x509", "-in", path, "-noout", "-ext", "subjectAltName,basicConstraints", "-enddate"])
            XCTAssertTrue(x.output.contains(san), x.output)
            XCTAssertTrue(x.output.contains("CA:FALSE"), x.output)
            // The leaf's key is the one in the certificate.
            let keyPath = state + "/leaf-\(host).key"
            try leaf.privateKeyPEM.write(toFile: keyPath, atomically: true, encoding: .utf8)
            let a = try openssl(["pkey", "-in", keyPath, "-pubout"])
            let b = try openssl(["x509", "-in", path, "-noout", "-pubkey"])
            XCTAssertEqual(a.output, b.output)
        }
        // The wrong host's name is not in the leaf: a verifier checking the
        // name refuses it.
        let other = try openssl([
            "verify", "-CAfile", ca.caCertificatePath, "-verify_hostname", "evil.example.com",
            state + "/leaf-api.example.com.pem",
        ])
        XCTAssertNotEqual(other.status, 0, other.output)
        XCTAssertEqual(
            try ca.leafCertificate(forHost: "api.example.com").certificateChainPEM,
            try ca.leafCertificate(forHost: "api.example.com").certificateChainPEM, "cached")
        XCTAssertEqual(try PerInstallCA(stateDirectory: state).caCertificatePEM, ca.caCertificatePEM)
        XCTAssertThrowsError(try ca.leafCertificate(forHost: "not a host"))
    }

    func testCreatedOnFirstNeedAndKept() throws {
        let sources = SecretSources(store: SecretStore(stateDirectory: state), environment: [:])
        XCTAssertNil(try? Sys.lstat(state + "/egress-ca"))
        let a = try sources.interceptionAuthority()
        XCTAssertTrue(a === (try sources.interceptionAuthority()))
        XCTAssertEqual(a.caCertificatePEM, try String(contentsOfFile: a.caCertificatePath, encoding: .utf8))
        XCTAssertThrowsError(try SecretSources.none.interceptionAuthority())
        // Published where a worker can read it: the certificate, never the key.
        let published = try PerInstallCA(stateDirectory: state, publishIn: state)
        XCTAssertEqual(published.caCertificatePath, state + "/egress-ca.pem")
        XCTAssertEqual(published.caCertificatePEM, a.caCertificatePEM)
        // A bundle: the system roots (tunnels to other hosts still verify), then this CA, last.
        let bundle = try String(contentsOfFile: state + "/egress-ca.pem", encoding: .utf8)
        XCTAssertTrue(bundle.hasSuffix(a.caCertificatePEM))
        XCTAssertEqual(
            bundle.utf8.count - a.caCertificatePEM.utf8.count, PerInstallCA.systemRoots().count,
            "the system roots come first")
        XCTAssertEqual((try Sys.lstat(state + "/egress-ca.pem")).mode & 0o777, 0o644)
        XCTAssertFalse(try String(contentsOfFile: state + "/egress-ca.pem", encoding: .utf8).contains("PRIVATE"))
    }

    func testKeyReadableByOthersIsRefused() throws {
        _ = try PerInstallCA(stateDirectory: state)
        chmod(state + "/egress-ca/ca.key", 0o644)
        XCTAssertThrowsError(try PerInstallCA(stateDirectory: state)) { e in
            XCTAssertTrue("\(e)".contains("chmod 600 \(state)/egress-ca/ca.key"), "\(e)")
        }
    }
}
