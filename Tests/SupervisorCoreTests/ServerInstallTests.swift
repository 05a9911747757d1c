import Foundation
import StrictJSON
import SupervisorPlatform
import XCTest

@testable import SupervisorCore

/// What `server add` decides without running anything: the source a SPEC
/// names, the index's one endpoint, the console script that starts the
/// server, what pip's report says was installed, the loader an executable
/// names.
final class ServerInstallTests: XCTestCase {
    func testSpecForms() throws {
        XCTAssertEqual(
            try ServerSource.parse(spec: "pypi:mcp-server-fetch", command: []),
            .index(name: "mcp-server-fetch", version: nil))
        XCTAssertEqual(
            try ServerSource.parse(spec: "pypi:mcp_server.time==2025.1.2", command: []),
            .index(name: "mcp_server.time", version: "2025.1.2"))
        XCTAssertEqual(try ServerSource.parse(spec: "/x/y.whl", command: []), .local(path: "/x/y.whl"))
        XCTAssertEqual(
            try ServerSource.parse(spec: nil, command: ["/bin/srv", "-v"]), .command(argv: ["/bin/srv", "-v"]))
        for bad in [
            "pypi:", "pypi:-x", "pypi:a b", "pypi:x>=1", "pypi:x==1;rm", "pypi:x=1", "relative/path", "pypi:x==1==2",
        ] {
            XCTAssertThrowsError(try ServerSource.parse(spec: bad, command: []), bad)
        }
        XCTAssertThrowsError(try ServerSource.parse(spec: "pypi:x", command: ["/bin/srv"]))
        XCTAssertThrowsError(try ServerSource.parse(spec: nil, command: []))
    }

    func testNamesAreNormalizedAndShortened() {
        XCTAssertEqual(ServerSource.normalized("Mcp_Server..Fetch"), "mcp-server-fetch")
        XCTAssertEqual(ServerSource.defaultCellName(distribution: "mcp-server-fetch"), "fetch")
        XCTAssertEqual(ServerSource.defaultCellName(distribution: "weather_mcp"), "weather")
        XCTAssertEqual(ServerSource.defaultCellName(distribution: "mcp-server"), "server")
        XCTAssertEqual(ServerSource.defaultCellName(distribution: "mcp"), "mcp")
        XCTAssertEqual(ServerSource.defaultCellName(distribution: "notes"), "notes")
    }

    func testIndexURLGivesOneEndpoint() throws {
        XCTAssertEqual(try PackageIndexURL.parse("https://pypi.org/simple").endpoint, "pypi.org:443")
        XCTAssertEqual(try PackageIndexURL.parse("http://127.0.0.1:8080/simple").endpoint, "127.0.0.1:8080")
        XCTAssertEqual(try PackageIndexURL.parse("http://[::1]:81/simple/").endpoint, "[::1]:81")
        XCTAssertEqual(
            try PackageIndexURL.parse("HTTP://Example.ORG/x".replacingOccurrences(of: "HTTP", with: "http")).host,
            "example.org")
        for bad in [
            "ftp://x/simple", "https://user:pw@x/simple", "https://x:0/", "https://x:99999/", "https:///simple",
            "https://x/sim ple", "https://x/{a}", "https://[::1/simple",
        ] {
            XCTAssertThrowsError(try PackageIndexURL.parse(bad), bad)
        }
    }

    func testConsoleScriptsAreParsedAndChosen() throws {
        let text = """
            [gui_scripts]
            gui = pkg.gui:main

            [console_scripts]
            mcp-server-fetch = mcp_server_fetch:main
            other=pkg.cli:app.run [extra]
            evil = os:system("x")
            ; comment
            """
        let scripts = ConsoleScript.parse(entryPoints: text)
        XCTAssertEqual(scripts.map(\.name), ["mcp-server-fetch", "other"])
        XCTAssertEqual(scripts[1].module, "pkg.cli")
        XCTAssertEqual(scripts[1].attribute, "app.run")
        XCTAssertEqual(scripts[1].program, "import sys; from pkg.cli import app; sys.exit(app.run())")
        XCTAssertEqual(
            try ConsoleScript.choose(scripts, distribution: "mcp_server_fetch", preferred: nil).name, "mcp-server-fetch"
        )
        XCTAssertEqual(try ConsoleScript.choose(scripts, distribution: "x", preferred: "other").name, "other")
        XCTAssertThrowsError(try ConsoleScript.choose(scripts, distribution: "x", preferred: nil)) { e in
            XCTAssertTrue("\(e)".contains("--entry-point"), "\(e)")
        }
        XCTAssertThrowsError(try ConsoleScript.choose([], distribution: "x", preferred: nil)) { e in
            XCTAssertTrue("\(e)".contains("declares no console script"), "\(e)")
        }
    }

    func testPipReportListsWhatWasInstalled() throws {
        let report = """
            {"version": "1", "install": [
              {"download_info": {"url": "http://i/b-2.whl", "archive_info": {"hashes": {"sha256": "\(String(repeating: "a", count: 64))"}}},
               "requested": false, "metadata": {"name": "b", "version": "2"}},
              {"download_info": {"url": "http://i/a-1.whl", "archive_info": {"hash": "sha256=\(String(repeating: "b", count: 64))"}},
               "requested": true, "metadata": {"name": "A", "version": "1.0"}}
            ]}
            """
        let d = try InstalledDistribution.parse(report: Array(report.utf8))
        XCTAssertEqual(d.map(\.name), ["A", "b"])
        XCTAssertEqual(d[0].requested, true)
        XCTAssertEqual(d[0].requirementLine, "A==1.0 --hash=sha256:" + String(repeating: "b", count: 64))
        XCTAssertEqual(d[1].sha256, String(repeating: "a", count: 64))
        XCTAssertThrowsError(try InstalledDistribution.parse(report: Array("{\"install\": [{}]}".utf8)))
        XCTAssertThrowsError(try InstalledDistribution.parse(report: Array("not json".utf8)))
        XCTAssertThrowsError(
            try InstalledDistribution.parse(
                report: Array("{\"install\": [{\"metadata\": {\"name\": \"x y\", \"version\": \"1\"}}]}".utf8)))
    }

    func testELFInterpreterOfTheSystemPython() throws {
        let bytes = try readFile("/usr/bin/python3", limit: 1 << 30)
        let interp = try XCTUnwrap(ELFInterpreter.of(bytes))
        XCTAssertTrue(interp.hasPrefix("/") && interp.contains("ld-linux"), interp)
        XCTAssertNil(ELFInterpreter.of(Array("#!/bin/sh\n".utf8)))
        XCTAssertNil(ELFInterpreter.of(Array(bytes.prefix(40))))
    }

    /// The tree a sandboxed pip wrote, handed back: modes normalized (no
    /// group/other write, no setuid), links left as links; a hard-linked
    /// file or a FIFO refuses it before anything changes.
    func testSealingAnInstalledTree() throws {
        let fm = FileManager.default
        let root = NSTemporaryDirectory() + "seal-\(UUID().uuidString)"
        defer { try? fm.removeItem(atPath: root) }
        try fm.createDirectory(atPath: root + "/pkg", withIntermediateDirectories: true)
        XCTAssertTrue(fm.createFile(atPath: root + "/pkg/mod.py", contents: Data("x = 1\n".utf8)))
        XCTAssertTrue(fm.createFile(atPath: root + "/pkg/tool", contents: Data("#!/bin/sh\n".utf8)))
        try fm.setAttributes([.posixPermissions: 0o6777], ofItemAtPath: root + "/pkg/tool")
        try fm.setAttributes([.posixPermissions: 0o666], ofItemAtPath: root + "/pkg/mod.py")
        try fm.setAttributes([.posixPermissions: 0o777], ofItemAtPath: root + "/pkg")
        try fm.createSymbolicLink(atPath: root + "/pkg/link", withDestinationPath: "/etc/passwd")
        try Sys.sealInstalledTree(root, uid: Sys.geteuid(), gid: Sys.getegid(), chown: false)
        func mode(_ p: String) throws -> Int {
            (try fm.attributesOfItem(atPath: root + p)[.posixPermissions] as! NSNumber).intValue
        }
        XCTAssertEqual(try mode("/pkg"), 0o755)
        XCTAssertEqual(try mode("/pkg/mod.py"), 0o644)
        XCTAssertEqual(try mode("/pkg/tool"), 0o755)
        XCTAssertEqual(try fm.destinationOfSymbolicLink(atPath: root + "/pkg/link"), "/etc/passwd")

        // A second name for a file (it could be any file of the system).
        try fm.linkItem(atPath: root + "/pkg/mod.py", toPath: root + "/pkg/again.py")
        try fm.setAttributes([.posixPermissions: 0o666], ofItemAtPath: root + "/pkg/tool")
        XCTAssertThrowsError(try Sys.sealInstalledTree(root, uid: Sys.geteuid(), gid: Sys.getegid(), chown: false)) {
            XCTAssertTrue("\($0)".contains("hard links"), "\($0)")
        }
        XCTAssertEqual(try mode("/pkg/tool"), 0o666, "nothing changes when the tree is refused")
        try fm.removeItem(atPath: root + "/pkg/again.py")
        XCTAssertEqual(mkfifo(root + "/pkg/fifo", 0o644), 0)
        XCTAssertThrowsError(try Sys.sealInstalledTree(root, uid: Sys.geteuid(), gid: Sys.getegid(), chown: false)) {
            XCTAssertTrue("\($0)".contains("neither a file"), "\($0)")
        }
    }
}
