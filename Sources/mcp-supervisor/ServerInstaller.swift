import Foundation
import StrictJSON
import SupervisorCore
import SupervisorEgress
import SupervisorPlatform

/// The egress proxy for a command's own sandboxed runs (as `startEgress`
/// starts it for `run` and `call`), returned so that the command ends its
/// event loop once the runs are over: a process that exits while the
/// loop's thread still runs may crash in its teardown instead of exiting
/// with its status.
func startOwnedEgress(_ runner: CallRunner, settings s: SupervisorSettings) throws -> EgressProxyServer {
    do {
        let proxy = try EgressProxyServer(upstreamCABundle: s.egressCaBundle, logger: stderrLogger("mcp-supervisor"))
        runner.enableEgress(proxy)
        return proxy
    } catch {
        throw TrustCommandError(
            "cannot start the egress proxy (egressCaBundle \(s.egressCaBundle ?? "unset")): \(error)")
    }
}

/// The system Python a server runs on and what any CPython worker needs:
/// its standard library, the dynamic loader and the libraries beside it,
/// the loader's cache, /dev/null (the MCP SDK points stdin at it).
struct Interpreter {
    /// The real interpreter file (what is hashed and executed).
    let path: String
    let stdlib: String
    let readPaths: [String]
    let executePaths: [String]

    init(_ given: String) throws {
        do { path = try Sys.realpath(SupervisorSettings.absolute(given)) } catch {
            throw TrustCommandError("--python \(given): \(error)")
        }
        guard Self.isPython(path) else {
            throw TrustCommandError("--python \(given): \(path) is not a Python interpreter")
        }
        // The system interpreter itself answers (no package code: -I -S).
        let out = try runHost([path, "-I", "-S", "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"])
        let lib = out.trimmingCharacters(in: .whitespacesAndNewlines)
        guard lib.hasPrefix("/") else { throw TrustCommandError("\(path) did not name its standard library") }
        stdlib = (try? Sys.realpath(lib)) ?? lib
        readPaths = [stdlib] + (try Self.loaderReadPaths(path))
        executePaths = try Self.loaderExecutePaths(path)
    }

    static func isPython(_ path: String) -> Bool {
        (path.split(separator: "/").last ?? "").hasPrefix("python")
    }

    static func loader(_ exe: String) throws -> String? {
        let bytes: [UInt8]
        do { bytes = try readFile(exe, limit: 1 << 30) } catch { throw TrustCommandError("\(exe): \(error)") }
        return ELFInterpreter.of(bytes).map { (try? Sys.realpath($0)) ?? $0 }
    }

    /// A dynamically linked program's loader, the libraries' directory
    /// beside it and the loader's cache; /dev/null.
    static func loaderReadPaths(_ exe: String) throws -> [String] {
        guard let l = try loader(exe) else { return ["/dev/null"] }
        return [directoryName(l), "/etc/ld.so.cache", "/dev/null"]
    }

    static func loaderExecutePaths(_ exe: String) throws -> [String] { try loader(exe).map { [$0] } ?? [] }

    /// A venv made by the interpreter's own `venv` module without pip (no
    /// package code runs); returns its site-packages directory.
    func makeVenv(_ dir: String) throws -> String {
        _ = try runHost([path, "-I", "-m", "venv", "--without-pip", dir])
        let lib = dir + "/lib"
        guard let py = (try? Sys.readdirNames(lib))?.first(where: { $0.hasPrefix("python") }) else {
            throw TrustCommandError("\(dir): the venv has no lib/python*/")
        }
        return lib + "/" + py + "/site-packages"
    }

    /// pip's own wheel as the system ships it (Debian's python3-pip-whl,
    /// else the interpreter's ensurepip bundle): pip runs from it, so
    /// nothing of pip is installed into the server's tree.
    func pipWheel() throws -> String {
        for dir in ["/usr/share/python-wheels", stdlib + "/ensurepip/_bundled"] {
            if let w = ((try? Sys.readdirNames(dir)) ?? []).sorted().last(where: {
                $0.hasPrefix("pip-") && $0.hasSuffix(".whl")
            }) {
                return dir + "/" + w
            }
        }
        throw TrustCommandError(
            "no pip wheel found in /usr/share/python-wheels or \(stdlib)/ensurepip/_bundled "
                + "(install python3-pip-whl or python3-venv)")
    }
}

/// Runs a trusted host program (the system interpreter's own modules) to
/// its end; returns its stdout, or throws with its stderr.
func runHost(_ argv: [String]) throws -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: argv[0])
    p.arguments = Array(argv.dropFirst())
    p.environment = ["PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"]
    // Not the caller's working directory: it may be one this user cannot
    // enter (a private checkout run under another uid), which fails the
    // spawn with EACCES as if the program could not be executed.
    p.currentDirectoryURL = URL(fileURLWithPath: "/")
    let out = Pipe()
    let err = Pipe()
    p.standardOutput = out
    p.standardError = err
    p.standardInput = FileHandle.nullDevice
    do { try p.run() } catch { throw TrustCommandError("cannot run \(argv[0]): \(error)") }
    let o = out.fileHandleForReading.readDataToEndOfFile()
    let e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    guard p.terminationStatus == 0 else {
        throw TrustCommandError(
            "\(argv.joined(separator: " ")) failed (status \(p.terminationStatus)): "
                + String(decoding: e, as: UTF8.self).suffix(2000))
    }
    return String(decoding: o, as: UTF8.self)
}

/// pip, run inside the sandbox as a command cell built in memory: its only
/// writable path is the target site-packages, its only network the index's
/// host:port through the egress proxy, its report (what it installed) on
/// stdout.
struct PipInstall {
    let source: ServerSource
    let site: String
    let python: Interpreter
    let index: PackageIndexURL?
    /// Every host:port pip may reach: the index's, and those its pages
    /// link to for the files.
    let endpoints: [String]
    let findLinks: String?
    let allowSdist: Bool
    let host: HostSandbox
    let groups: SyscallGroups
    let settings: SupervisorSettings

    /// Syscalls pip needs, found with learn mode on installs: files read
    /// and written in the target (`chmod` for scripts, `sendfile` to copy
    /// from the scratch's tmpfs, `listxattr` when copying metadata), FIOCLEX
    /// (python-mcp-server's ioctl), threads; with an index, the socket
    /// calls of a client (network-client: only the proxy is reachable);
    /// `close_range` as `subprocess` starts an sdist's build backend.
    static let groupNames = [
        "base", "python", "python-mcp-server", "files-read", "files-write", "events", "process-info",
    ]
    static let allow = ["chmod", "sendfile", "listxattr", "close_range"]

    /// pip from its wheel, with two changes. urllib3 (vendored in pip)
    /// probes for IPv6 at import by binding a socket, and the sandbox
    /// refuses `bind` (a worker never listens): saying there is no IPv6
    /// skips the probe. pip's user agent describes the host (distribution,
    /// libc, OpenSSL; it reads /etc and runs lsb_release for it): a fixed
    /// one tells the index nothing about this machine and needs neither.
    /// The host's MIME tables (/etc/mime.types, read by `mimetypes`) stay
    /// unread: the built-in table serves. The interpreter runs from a
    /// sealed copy, so it cannot name itself: `sys.executable` (what an
    /// sdist's build backend is started with) is set to the interpreter's
    /// path, the first argument; the wheel's path is the second.
    static let bootstrap =
        "import mimetypes, runpy, socket, sys; socket.has_ipv6 = False; mimetypes.knownfiles[:] = []; "
        + "sys.executable = sys.argv.pop(1); sys.path.insert(0, sys.argv.pop(1)); "
        + "sys.argv[0] = 'pip'; import pip._internal.network.session as s; "
        + "s.user_agent = lambda: 'pip (mcp-supervisor server add)'; "
        + "runpy.run_module('pip', run_name='__main__', alter_sys=True)"

    func manifest(pipWheel: String) throws -> [UInt8] {
        var args: [String] = [
            "python3", "-S", "-c", Self.bootstrap, python.path, pipWheel, "install", "--quiet", "--no-cache-dir",
            "--disable-pip-version-check",
            "--no-input", "--no-warn-script-location", "--progress-bar", "off", "--retries", "1", "--timeout", "20",
            "--target", site, "--report", "-",
        ]
        if let index { args += ["--index-url", index.url] } else { args.append("--no-index") }
        if let findLinks { args += ["--find-links", findLinks] }
        if !allowSdist { args += ["--only-binary", ":all:"] }
        switch source {
        case .index(let n, let v): args.append(n + (v.map { "==" + $0 } ?? ""))
        case .local(let p): args.append(p)
        case .command: throw TrustCommandError("a command is not installed")
        }
        for a in args where a.contains("{") || a.contains("}") {
            throw TrustCommandError("\(a): braces are not accepted in an install argument")
        }
        var read = python.readPaths + [pipWheel]
        if case .local(let p) = source { read.append(p) }
        if let findLinks { read.append(findLinks) }
        if index?.scheme == "https" {
            for p in ["/etc/ssl/certs", "/usr/share/ca-certificates"] where (try? Sys.stat(p)) != nil {
                read.append(p)
            }
        }
        // An sdist's build runs a child interpreter (the PEP 517 backend),
        // which exec's the interpreter file itself, in the worker's own PID
        // namespace.
        var execute = python.executePaths
        if allowSdist { execute.append(python.path) }
        var doc: JSONObject = [
            "name": "server-install",
            "version": "1",
            "description": .string("pip installing \(source) into \(site) for `server add` (built in memory)."),
            "executable": ["path": .string(python.path), "sha256": .string(try fileSHA256(python.path))],
            "environment": [
                "set": [
                    "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
                    "PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1",
                    // No configuration file (a host's pip.conf may name
                    // other indexes or find-links): only these arguments.
                    "PIP_CONFIG_FILE": "/dev/null",
                ]
            ],
            "tools": [
                [
                    "name": "pip_install",
                    "description": "pip install into the server's own directory.",
                    "inputSchema": ["type": "object", "properties": [:], "additionalProperties": false],
                    "command": ["argv": .array(args.map { .string($0) })],
                ]
            ],
            "limits": [
                "timeoutMilliseconds": 600_000, "cpuSeconds": 600, "memoryMiB": 4096, "openFiles": 1024,
                "fileSizeMiB": 1024, "outputKiB": 65536, "frameKiB": 65536, "scratchMiB": 2048,
                "scratchFiles": 200_000, "processes": .string(allowSdist ? "processes" : "threads"),
                "maxProcesses": 256,
            ],
            "filesystem": [
                "read": .array(read.map { .string($0) }), "write": [.string(site)],
                "execute": .array(execute.map { .string($0) }),
            ],
            "syscalls": [
                "groups": .array((Self.groupNames + (index == nil ? [] : ["network-client"])).map { .string($0) }),
                "allow": .array(Self.allow.map { .string($0) }),
            ],
            "sideEffects": "writes",
            // Policy phases do not apply (no client session); the field is
            // required of a cell that writes.
            "phases": ["act"],
        ]
        if index != nil { doc["network"] = ["connect": .array(endpoints.map { .string($0) }), "egress": "proxy"] }
        return Array(JSONValue.object(doc).prettySerialized().utf8)
    }

    func run() throws -> [InstalledDistribution] {
        let wheel = try python.pipWheel()
        let bytes = try manifest(pipWheel: wheel)
        let path = directoryName(directoryName(directoryName(directoryName(site)))) + "/pip-install.json"
        let m = try CellManifest.parse(bytes: bytes, path: path, manifestSHA256: sha256Hex(bytes))
        // The installer (a worker of another uid under root) may write only
        // the target; `seal` hands the tree back afterwards.
        if host.features.isRoot {
            let d = try Sys.open(site, OpenFlags.readOnly | OpenFlags.directory | OpenFlags.noFollow)
            defer { d.close() }
            try d.chown(uid: host.workerUID, gid: host.workerGID)
        }
        let cell: PreparedCell
        do { cell = try PreparedCell(manifest: m, groups: groups, host: host) } catch {
            throw TrustCommandError("the sandboxed installer cannot run: \(error)")
        }
        let runner = try CallRunner(host: host, logger: stderrLogger("mcp-supervisor"))
        let proxy = index == nil ? nil : try startOwnedEgress(runner, settings: settings)
        defer { proxy?.shutdown() }
        var refused: [NetworkDecision] = []
        let report = runner.run(
            cell: cell, tool: "pip_install", arguments: JSONObject(), callID: "server-add-pip",
            onNetwork: { d in
                if let r = d.refusal {
                    refused.append(d)
                    printError("install network: refused \(d.host):\(d.port): \(r)")
                }
            })
        try seal()
        guard case .success(let result) = report.outcome else {
            throw TrustCommandError(explain(report, refused: refused))
        }
        let text = result.content.compactMap { $0["text"]?.stringValue }.joined()
        let installed: [InstalledDistribution]
        do { installed = try InstalledDistribution.parse(report: Array(text.utf8)) } catch {
            throw TrustCommandError("\(error)")
        }
        guard !installed.isEmpty else { throw TrustCommandError("pip installed nothing for \(source)") }
        return installed
    }

    /// The tree back in the supervisor's hands, readable by all, writable by
    /// none other.
    private func seal() throws {
        do {
            try Sys.sealInstalledTree(
                site, uid: Sys.geteuid(), gid: Sys.getegid(), chown: host.features.isRoot)
        } catch {
            throw TrustCommandError("the installed tree \(site) is refused: \(error)")
        }
    }

    /// Why pip failed, in the operator's terms, with pip's own last words.
    private func explain(_ report: CallReport, refused: [NetworkDecision]) -> String {
        let said = report.diagnostics.isEmpty ? report.outcome.detail : report.diagnostics
        let lines = said.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter {
            !$0.isEmpty
        }
        let tail = lines.suffix(8).joined(separator: "\n    ")
        let origin = index.map { " from \($0.url)" } ?? " (no index)"
        var what: String
        // What the proxy refused says more than pip's summary of it.
        func isIndex(_ d: NetworkDecision) -> Bool {
            endpoints.contains { e in e == "\(d.host):\(d.port)" || e == "[\(d.host)]:\(d.port)" }
        }
        let elsewhere = refused.filter { !isIndex($0) }
        let toIndex = refused.filter(isIndex)
        if let d = elsewhere.first {
            what =
                "pip tried to reach \(d.host):\(d.port), which is not the package index (\(endpoints.joined(separator: ", "))): "
                + "refused (\(d.refusal ?? "")); a dependency or build step that needs another host cannot be installed"
        } else if let d = toIndex.first {
            what = "the package index is unreachable\(origin): \(d.refusal ?? "refused")"
        } else if said.contains("No matching distribution found") || said.contains("Could not find a version") {
            if said.contains("(from versions: none)") {
                what = "no distribution of \(source) was found\(origin)"
                if case .index(_, nil) = source { what = "unknown package: \(what)" }
                if !allowSdist { what += " (only wheels are accepted; --allow-sdist accepts source distributions)" }
            } else {
                what = "version not found: \(source) is not among the versions offered\(origin)"
            }
        } else if said.contains("Failed to establish a new connection") || said.contains("Max retries exceeded")
            || said.contains("ProxyError") || said.contains("Connection refused")
            || said.contains("Temporary failure in name resolution") || said.contains("Network is unreachable")
        {
            what = "the package index is unreachable\(origin)"
        } else if case .sandboxViolation = report.outcome {
            what =
                "the sandbox stopped the install of \(source)\(origin): pip"
                + (allowSdist ? " or a package's build code" : "") + " did what no install may"
        } else if case .timeout = report.outcome {
            what = "the install did not finish within its deadline"
        } else {
            what = "pip could not install \(source)\(origin) (\(report.outcome.kind))"
        }
        return "\(what)\n  pip (sandboxed) said:\n    \(tail)"
    }
}
