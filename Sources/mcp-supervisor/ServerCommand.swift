import ArgumentParser
import Crypto
import Foundation
import StrictJSON
import SupervisorCore
import SupervisorPlatform

/// `server add | list | remove` (docs/gateway.md, "Adding a server with one
/// command"): an existing MCP server installed into a directory of its own
/// under the state directory by pip run inside the sandbox, its starting
/// profile found with learn mode, shown, and signed and registered as
/// `cell register` does.
struct ServerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "server",
        abstract: "Add, list and remove existing MCP servers run as server cells (one command each).",
        subcommands: [Add.self, List.self, Remove.self])

    /// `<state>/servers`: one directory per server, one install per version.
    static func root(_ state: String) -> String { state + "/servers" }

    /// `<state>/servers/NAME`, for a name that is a cell name and a
    /// directory name of its own (`.` and `..` are cell names).
    static func directory(_ state: String, _ name: String) throws -> String {
        guard CellManifest.isValidCellName(name), name != ".", name != ".." else {
            throw TrustCommandError("\"\(name)\" cannot name a server (A-Z a-z 0-9 . _ -, not . or ..)")
        }
        return root(state) + "/" + name
    }

    /// The signing key: `--key`, else `<state>/keys/signing.key` (what
    /// `keys generate` writes by default).
    static func signingKey(_ key: String?, state: String) throws -> Curve25519.Signing.PrivateKey {
        let path = key.map(SupervisorSettings.absolute) ?? state + "/keys/signing.key"
        guard key != nil || (try? Sys.stat(path)) != nil else {
            throw TrustCommandError(
                "no signing key: \(path) does not exist; create one with `mcp-supervisor keys generate` "
                    + "(or pass --key KEY)")
        }
        return try TrustKeys.loadPrivate(path: path)
    }
}

extension ServerCommand {
    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Install an MCP server (pypi:NAME[==VERSION], a local project or wheel, or -- COMMAND ARGS), "
                + "derive its starting profile, show its tools and permissions, then sign and register it.",
            discussion: """
                The package is installed by pip run inside the sandbox, whose only network is the package \
                index's host:port through the egress proxy and whose only writable path is the install \
                directory (<state>/servers/NAME/). Wheels only, unless --allow-sdist (an sdist runs its \
                build code, still inside the sandbox). The server then runs in learn mode over its own \
                initialize and tools/list (and one --probe call) to find the syscalls it needs beyond the \
                python-mcp-server group. Nothing is registered without confirmation (--yes for scripts); \
                adding an existing NAME again is an upgrade, and a widening needs --approve-widening.
                """)

        @Argument(help: "pypi:NAME[==VERSION], or an absolute or relative path to a project or a wheel/sdist.")
        var spec: String?
        @Argument(parsing: .postTerminator, help: "A command that starts the server (after --).")
        var command: [String] = []
        @Option(name: .long, help: "The cell's name (default: from the package, without mcp-server-).")
        var name: String?
        @Option(name: .long, help: "The package index (PEP 503 simple API).")
        var indexUrl: String = "https://pypi.org/simple"
        @Option(
            name: .long,
            help: ArgumentHelp(
                "host:port the index's pages link to for the files (repeatable).",
                discussion: "For https://pypi.org/simple, files.pythonhosted.org:443 is added by itself."))
        var downloadHost: [String] = []
        @Flag(name: .long, help: "Install without any index (dependencies from --find-links or none).")
        var noIndex = false
        @Option(name: .long, help: "A local directory of wheels pip may install from (read-only).")
        var findLinks: String?
        @Flag(
            name: .long,
            help: "Allow source distributions: their build code runs (inside the sandbox) during install.")
        var allowSdist = false
        @Option(
            name: .long, parsing: .upToNextOption,
            help: "TOOL JSON-ARGS: one call made in learn mode after tools/list (the server's tool name).")
        var probe: [String] = []
        @Option(name: .long, help: "host:port the server may connect to through the egress proxy (repeatable).")
        var allowHost: [String] = []
        @Option(name: .long, help: "A path the server may read (repeatable).") var read: [String] = []
        @Option(name: .long, help: "A path the server may write (repeatable).") var write: [String] = []
        @Option(
            name: .long,
            help: ArgumentHelp(
                "none, reads, writes or external (default: writes with --write, external with --allow-host, "
                    + "reads with --read, else none).",
                discussion: "writes and external make it an actuator, which runs only in the policy's act phase."))
        var sideEffects: String?
        @Option(name: .long, help: "NAME=VALUE set in the server's environment (repeatable).")
        var env: [String] = []
        @Option(name: .long, help: "The console script that starts the server, when the package has several.")
        var entryPoint: String?
        @Option(name: .long, help: "An argument given to the server (repeatable, in order).")
        var serverArg: [String] = []
        @Option(name: .long, help: "The Python interpreter the server runs on (a system interpreter).")
        var python: String = "/usr/bin/python3"
        @Option(name: .long, help: "Private key that signs (default: <state>/keys/signing.key).") var key: String?
        @Flag(name: .long, help: "Register without asking (scripts): review the output.") var yes = false
        @Flag(name: .long, help: "Approve an upgrade that widens permissions (recorded in the ledger).")
        var approveWidening = false
        @OptionGroup var location: TrustLocation

        func validate() throws {
            guard probe.isEmpty || probe.count == 2 else {
                throw ValidationError("--probe takes two values: TOOL and its arguments as a JSON object")
            }
            if let e = sideEffects, !["none", "reads", "writes", "external"].contains(e) {
                throw ValidationError("--side-effects \(e): expected none, reads, writes or external")
            }
            for e in env {
                guard let eq = e.firstIndex(of: "="), eq != e.startIndex else {
                    throw ValidationError("--env \(e): expected NAME=VALUE")
                }
            }
            if let n = name, !CellManifest.isValidCellName(n) || n == "." || n == ".." {
                throw ValidationError("--name \(n): 1-128 characters of A-Z a-z 0-9 . _ -, not . or ..")
            }
        }

        func run() throws {
            try trustCommand(location, "server add") { try ServerAdd(options: self).run() }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Registered server cells: package, version, tools, state (active, quarantined, revoked).")
        @OptionGroup var location: TrustLocation
        @OptionGroup var output: JSONOutput
        func run() throws {
            let st = Ledger.load(path: location.ledgerPath)
            if let d = st.damaged { printError("LEDGER DAMAGED, every cell is refused: \(d)") }
            let quarantined = Quarantine(directory: Quarantine.directory(stateDirectory: location.state)).all()
            var rows: [JSONValue] = []
            for (name, cell) in st.cells.sorted(by: { $0.key < $1.key }) {
                guard let id = cell.active ?? cell.order.last, let v = cell.versions[id],
                    let m = try? CellManifest.parse(bytes: v.manifestBytes, path: v.manifestPath, manifestSHA256: id),
                    m.server != nil
                else { continue }
                let record = InstallRecord.load(beside: v.manifestPath)
                let state: String
                if v.revoked || cell.active == nil {
                    state = "revoked"
                } else if quarantined.contains(where: { $0.cell == name && $0.versionID == id }) {
                    state = "quarantined"
                } else if let r = st.refusal(cell: name) {
                    state = "refused: \(r)"
                } else {
                    state = "active"
                }
                let package = record?.package ?? "-"
                let version = record?.version ?? m.version
                output.text("\(name)  \(package) \(version)  \(m.tools.count) tool(s)  \(state)  \(id.prefix(12))")
                rows.append(
                    .object(
                        JSONObject([
                            ("name", .string(name)), ("package", record.map { .string($0.package) } ?? .null),
                            ("version", .string(version)), ("source", record.map { .string($0.source) } ?? .null),
                            ("tools", .int(Int64(m.tools.count))), ("state", .string(state)),
                            ("versionId", .string(id)),
                        ])))
            }
            if rows.isEmpty { output.text("no server cells registered") }
            output.emit(.array(rows))
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Remove a server: revoke its versions in the trust ledger (running servers are ended) and "
                + "delete its install directory.")
        @Argument(help: "The server cell's name.") var name: String
        @Option(name: .long, help: "Private key that signs (default: <state>/keys/signing.key).") var key: String?
        @OptionGroup var location: TrustLocation
        func run() throws {
            try trustCommand(location, "server remove") {
                let k = try ServerCommand.signingKey(key, state: location.state)
                let st = Ledger.load(path: location.ledgerPath)
                let dir = try ServerCommand.directory(location.state, name)
                guard let cell = st.cells[name] else {
                    // What an add interrupted before registering left (a
                    // failed add removes its own).
                    guard (try? Sys.lstat(dir)) != nil else {
                        throw TrustCommandError("server \(name) is not registered")
                    }
                    try Sys.removeTree(dir)
                    print("server \(name) is not registered; removed its unregistered install \(dir)")
                    return
                }
                let isServer = cell.versions.values.contains { v in
                    (try? CellManifest.parse(bytes: v.manifestBytes, path: v.manifestPath, manifestSHA256: v.id))?
                        .server != nil
                }
                guard isServer else {
                    throw TrustCommandError("\(name) is not a server cell; revoke it with `cell revoke`")
                }
                var revoked: [JSONValue] = []
                for id in cell.order where cell.versions[id]?.revoked == false {
                    try ledgerAppend(
                        location, "cell.revoke",
                        ["cell": .string(name), "version": .string(id), "reason": "removed with server remove"],
                        key: k)
                    revoked.append(.string(id))
                    print("revoked: \(name) \(id.prefix(12))")
                }
                var removed = false
                if (try? Sys.lstat(dir)) != nil {
                    try Sys.removeTree(dir)
                    removed = true
                    print("removed \(dir)")
                }
                securityEvents(
                    location,
                    [
                        SecurityEvent(
                            .serverRemoved,
                            JSONObject([
                                ("cell", .string(name)), ("revokedVersions", .array(revoked)),
                                ("directory", removed ? .string(dir) : .null), ("uid", .int(Int64(geteuidValue()))),
                            ]))
                    ])
                print("server \(name) removed")
            }
        }
    }
}

/// What an install put into a server's directory, beside its manifest
/// (`install.json`): the source, the index, every distribution with its
/// version and archive digest.
struct InstallRecord {
    var source: String
    var package: String
    var version: String
    var index: String?
    var entryPoint: String?
    var distributions: [InstalledDistribution]

    static func path(beside manifest: String) -> String { directoryName(manifest) + "/install.json" }

    var json: JSONValue {
        .object(
            JSONObject([
                ("source", .string(source)), ("package", .string(package)), ("version", .string(version)),
                ("index", index.map { .string($0) } ?? .null),
                ("entryPoint", entryPoint.map { .string($0) } ?? .null),
                (
                    "installed",
                    .array(
                        distributions.map { d in
                            .object(
                                JSONObject([
                                    ("name", .string(d.name)), ("version", .string(d.version)),
                                    ("requested", .bool(d.requested)), ("url", .string(d.url)),
                                    ("sha256", d.sha256.map { .string($0) } ?? .null),
                                ]))
                        })
                ),
                ("requirements", .array(distributions.map { .string($0.requirementLine) })),
            ]))
    }

    static func load(beside manifest: String) -> InstallRecord? {
        guard let bytes = try? readFile(path(beside: manifest), limit: 1 << 22),
            let doc = try? JSONParser.parse(bytes), let source = doc["source"]?.stringValue,
            let package = doc["package"]?.stringValue, let version = doc["version"]?.stringValue
        else { return nil }
        return InstallRecord(
            source: source, package: package, version: version, index: doc["index"]?.stringValue,
            entryPoint: doc["entryPoint"]?.stringValue, distributions: [])
    }
}

/// One `server add`, step by step. Everything it creates lives in one new
/// directory, removed if any step fails: nothing is left half-installed or
/// half-registered.
struct ServerAdd {
    let options: ServerCommand.Add
    var location: TrustLocation { options.location }

    /// The limits of the server cell's starting profile. memoryMiB is
    /// address space: a Python server with a few threads reserves ~300 MiB
    /// (docs/gateway.md).
    static let serverLimits: JSONObject = [
        "timeoutMilliseconds": 20000, "cpuSeconds": 10, "memoryMiB": 1024, "openFiles": 64, "fileSizeMiB": 0,
        "outputKiB": 1024, "frameKiB": 1024, "processes": "threads",
    ]
    static let baseGroups = ["base", "python", "python-mcp-server"]

    func run() throws {
        let settings = location.stateOptions.settings(more: [(.policies, location.policies)])
        let state = settings.stateDirectory
        let groups = try location.groups()
        let key = try ServerCommand.signingKey(options.key, state: state)
        var spec = options.spec
        if let s = spec, !s.hasPrefix("pypi:") { spec = SupervisorSettings.absolute(s) }
        let source: ServerSource
        do { source = try ServerSource.parse(spec: spec, command: options.command) } catch {
            throw TrustCommandError("\(error)")
        }
        let python = try Interpreter(options.python)

        // The name: given, else from the package (index) or the file.
        let name: String
        switch source {
        case .index(let n, _): name = options.name ?? ServerSource.defaultCellName(distribution: n)
        case .local(let p):
            name = options.name ?? ServerSource.defaultCellName(distribution: Self.distributionName(ofPath: p))
        case .command:
            guard let n = options.name else {
                throw TrustCommandError("a command needs a name: server add --name NAME -- COMMAND ARGS")
            }
            name = n
        }
        let serverDir = try ServerCommand.directory(state, name)

        // An upgrade replaces a server cell's version, never another cell.
        if let c = Ledger.load(path: location.ledgerPath).cells[name], let id = c.active ?? c.order.last,
            let v = c.versions[id],
            (try? CellManifest.parse(bytes: v.manifestBytes, path: v.manifestPath, manifestSHA256: id))?.server == nil
        {
            throw TrustCommandError(
                "a cell named \(name) is registered and is not a server cell: choose another --name")
        }
        try Self.prepareServersDirectory(settings, serverDir: serverDir)
        let installDir = serverDir + "/" + Self.installID()
        try Sys.mkdir(installDir, mode: 0o755)
        do {
            try install(
                source, name: name, into: installDir, python: python, settings: settings, groups: groups, key: key)
        } catch {
            // Nothing half-installed: the new directory goes, and the
            // server's directory too if nothing else is in it.
            try? Sys.removeTree(installDir)
            if (try? Sys.readdirNames(serverDir))?.isEmpty == true { try? Sys.removeTree(serverDir) }
            securityEvents(
                location,
                [
                    SecurityEvent(
                        .serverInstallFailed,
                        JSONObject([
                            ("cell", .string(name)), ("source", .string(source.description)),
                            ("error", .string(SecurityEvent.bounded(describeError(error), maxBytes: 2048))),
                            ("uid", .int(Int64(geteuidValue()))),
                        ]))
                ])
            throw error
        }
    }

    private func install(
        _ source: ServerSource, name: String, into dir: String, python: Interpreter, settings: SupervisorSettings,
        groups: SyscallGroups, key: Curve25519.Signing.PrivateKey
    ) throws {
        let host = HostSandbox(
            features: KernelFeatures.probe(), workerUID: settings.workerUID, workerGID: settings.workerGID,
            scratchRoot: settings.scratchRoot, protectedPaths: [settings.stateDirectory])
        var record: InstallRecord
        var argv: [String]
        var executable = python.path
        var packages: [String] = []
        var read = python.readPaths
        var execute = python.executePaths
        var version = "1"
        var index: PackageIndexURL? = nil
        switch source {
        case .index, .local:
            if !options.noIndex { index = try PackageIndexURL.parse(options.indexUrl) }
            let site = try python.makeVenv(dir + "/venv")
            let endpoints = index.map { [$0.endpoint] + $0.fileHosts + options.downloadHost } ?? []
            print(
                "installing \(source) into \(site) (pip, sandboxed; "
                    + (endpoints.isEmpty ? "no network)" : "network: \(endpoints.joined(separator: ", ")) only)"))
            let installed = try PipInstall(
                source: source, site: site, python: python, index: index, endpoints: endpoints,
                findLinks: options.findLinks,
                allowSdist: options.allowSdist, host: host, groups: groups, settings: settings
            ).run()
            let requested = try Self.requested(installed, source: source)
            let script = try ConsoleScript.choose(
                try Self.consoleScripts(site: site, distribution: requested), distribution: requested.name,
                preferred: options.entryPoint)
            print(
                "installed \(installed.count) distribution(s): "
                    + installed.map { "\($0.name)==\($0.version)" }.joined(separator: ", "))
            print("entry point: \(script.name) = \(script.module):\(script.attribute)")
            argv = ["python3", "-S", "-c", script.program] + options.serverArg
            packages = [site]
            version = requested.version
            record = InstallRecord(
                source: source.description, package: requested.name, version: requested.version,
                index: options.noIndex ? nil : options.indexUrl,
                entryPoint: "\(script.name) = \(script.module):\(script.attribute)", distributions: installed)
        case .command(let command):
            // The program as given, or found on PATH; pinned by digest. Its
            // path arguments are what it runs: readable, pinned as trees.
            executable = try Self.resolveCommand(command[0])
            argv = [baseName(executable)] + command.dropFirst() + options.serverArg
            if !Interpreter.isPython(executable) {
                read = try Interpreter.loaderReadPaths(executable)
                execute = try Interpreter.loaderExecutePaths(executable)
            }
            for a in command.dropFirst() where a.hasPrefix("/") {
                guard let st = try? Sys.stat(a) else { continue }
                packages.append(st.isDirectory ? a : directoryName(a))
            }
            record = InstallRecord(
                source: "command: " + command.joined(separator: " "), package: baseName(executable), version: "1",
                index: nil, entryPoint: nil, distributions: [])
        }

        // The starting profile: the base group for Python MCP servers plus
        // what learn mode sees the server do on its own handshake (and the
        // probe call).
        let manifestPath = dir + "/manifest.json"
        // A server that may connect makes a client's socket calls
        // (getsockopt, setsockopt, getpeername, …): network-client comes
        // with --allow-host, shown as an addition like any other.
        let startGroups = Self.baseGroups + (options.allowHost.isEmpty ? [] : ["network-client"])
        var doc = try serverManifest(
            name: name, version: version, record: record, executable: executable, argv: argv, packages: packages,
            read: read, execute: execute, groups: startGroups, allow: [], processes: nil, tools: [])
        var manifest = try writeManifest(doc, manifestPath)
        print("learning its syscalls: the server runs in learn mode over initialize and tools/list")
        let runner = try CallRunner(host: host, logger: stderrLogger("mcp-supervisor"))
        let proxy = options.allowHost.isEmpty ? nil : try startOwnedEgress(runner, settings: settings)
        defer { proxy?.shutdown() }
        let prepared: PreparedCell
        do { prepared = try PreparedCell(manifest: manifest, groups: groups, host: host, discovering: true) } catch {
            throw TrustCommandError("\(manifestPath): the server cannot run: \(error)")
        }
        var learned: [String]
        let tools: [JSONObject]
        let info: String?
        switch runner.discoverTools(prepared, learn: host.features.seccompUserNotification) {
        case .success(let r): (tools, info, learned) = r
        case .failure(let e):
            throw TrustCommandError(
                "the server \(source) did not complete its MCP handshake (initialize, tools/list): \(e)")
        }
        if !options.probe.isEmpty {
            learned += try probeCall(
                doc: doc, tools: tools, path: manifestPath, groups: groups, host: host, runner: runner)
        }
        let proposal = groups.proposal(for: learned, manifest: manifest)
        let needsProcesses = proposal.processCalls.contains {
            ["fork", "vfork", "execve", "wait4", "waitid"].contains($0)
        }
        doc = try serverManifest(
            name: name, version: version, record: record, executable: executable, argv: argv, packages: packages,
            read: read, execute: execute, groups: startGroups + proposal.addGroups, allow: proposal.addAllow,
            processes: needsProcesses ? "processes" : nil, tools: tools)
        manifest = try writeManifest(doc, manifestPath)

        // Review: the tools, the permissions, and for an upgrade what widens.
        print(ServerTools.show(tools, manifest: manifest, serverInfo: info), terminator: "")
        print(Self.permissions(manifest, record: record, proposal: proposal, learned: learned))
        let ledger = Ledger.load(path: location.ledgerPath)
        var upgrade = false
        if let c = ledger.cells[name], let a = c.active, let av = c.versions[a] {
            upgrade = true
            let old = try CellManifest.parse(bytes: av.manifestBytes, path: av.manifestPath, manifestSHA256: av.id)
            let changes = PermissionDiff.compare(old, manifest, groups: groups)
            print("upgrade of \(name) (active \(a.prefix(12)), \(old.version) → \(manifest.version)):")
            if changes.isEmpty { print("  no permission changes") }
            for c in changes { print("  \(c)") }
            if changes.contains(where: { $0.direction == .widens }) && !options.approveWidening {
                throw TrustCommandError(
                    "\(name): the new version widens permissions (above); nothing was registered and the new "
                        + "install was removed; review and re-run with --approve-widening")
            }
        }
        try confirm("register \(name) \(manifest.version)\(upgrade ? " (upgrade)" : "")")

        // Sign and register exactly as `cell register` does.
        let bytes = try readFile(manifestPath, limit: 1 << 20)
        let sig = try ManifestSignature.make(manifestBytes: bytes, key: key)
        try writeFileAtomically(ManifestSignature.path(for: manifestPath), Array(sig.prettySerialized().utf8))
        try writeFileAtomically(InstallRecord.path(beside: manifestPath), Array(record.json.prettySerialized().utf8))
        let st = try CellCommand.Register.ledgerTrusting(key, location)
        _ = try CellCommand.Register.register(
            manifestPath, key: key, ledger: st, groups: groups, location: location,
            approveWidening: options.approveWidening, activate: true)
        securityEvents(
            location,
            [
                SecurityEvent(
                    .serverInstalled,
                    JSONObject([
                        ("cell", .string(name)), ("cellVersionId", .string(sha256Hex(bytes))),
                        ("source", .string(record.source)), ("index", record.index.map { .string($0) } ?? .null),
                        ("directory", .string(dir)),
                        ("installed", .array(record.distributions.map { .string($0.requirementLine) })),
                        ("uid", .int(Int64(geteuidValue()))),
                    ]))
            ])
        print("server \(name) added: its tools are served by `mcp-supervisor run` (state \(location.state))")
    }

    /// The server manifest of the starting profile.
    private func serverManifest(
        name: String, version: String, record: InstallRecord, executable: String, argv: [String],
        packages: [String], read: [String], execute: [String], groups: [String], allow: [String],
        processes: String?, tools: [JSONObject]
    ) throws -> JSONObject {
        // PATH leads nowhere: the sandbox refuses to execute other programs
        // anyway, and a missing program (ENOENT) is what servers that probe
        // for optional tools expect, where Landlock's EACCES may crash them.
        var env: JSONObject = [
            "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "PATH": "/nonexistent",
        ]
        for e in options.env {
            let eq = e.firstIndex(of: "=")!
            env[String(e[..<eq])] = .string(String(e[e.index(after: eq)...]))
        }
        if Interpreter.isPython(executable), !packages.isEmpty, record.index != nil || !record.distributions.isEmpty {
            env["PYTHONPATH"] = .string(packages.joined(separator: ":"))
        }
        var limits = Self.serverLimits
        if let processes {
            limits["processes"] = .string(processes)
            limits["maxProcesses"] = 64
        }
        let extraRead = options.read.map(SupervisorSettings.absolute)
        let extraWrite = options.write.map(SupervisorSettings.absolute)
        // Nothing of the supervisor's own state (keys, ledger, log, other
        // servers): the sandbox already refuses a path that contains it.
        let state = (try? Sys.realpath(location.state)) ?? location.state
        for p in extraRead + extraWrite {
            let real = (try? Sys.realpath(p)) ?? p
            if real == state || real.hasPrefix(state + "/") {
                throw TrustCommandError("\(p) is inside the supervisor's state directory \(state): not for a server")
            }
        }
        // What it does to the world, from what it may touch (a server that
        // may connect can send what it read elsewhere: external, an
        // actuator), unless the operator says otherwise.
        let sideEffects =
            options.sideEffects
            ?? (!extraWrite.isEmpty
                ? "writes" : !options.allowHost.isEmpty ? "external" : extraRead.isEmpty ? "none" : "reads")
        var doc: JSONObject = [
            "name": .string(name),
            "version": .string(String(version.prefix(64))),
            "description": .string(
                "\(record.package) \(record.version) (\(record.source)) added with `mcp-supervisor server add`"
                    + (record.distributions.isEmpty
                        ? "" : "; \(record.distributions.count) distributions, listed in install.json")),
            "executable": ["path": .string(executable), "sha256": .string(try fileSHA256(executable))],
            "argv": .array(argv.map { .string($0) }),
            "environment": ["set": .object(env)],
            "server": [
                "lifecycle": "perCall",
                "packages": .array(
                    try packages.map { p in
                        .object(["path": .string(p), "sha256": .string(try PackageTree.digest(of: p))])
                    }),
            ],
            "tools": .array(tools.map { .object($0) }),
            "limits": .object(limits),
            "filesystem": [
                "read": .array(unique(read + packages + extraRead).map { .string($0) }),
                "write": .array(unique(extraWrite).map { .string($0) }),
                "execute": .array(unique(execute).map { .string($0) }),
            ],
            "syscalls": .object(
                JSONObject(
                    [("groups", .array(unique(groups).map { .string($0) }))]
                        + (allow.isEmpty ? [] : [("allow", JSONValue.array(allow.map { .string($0) }))]))),
            "sideEffects": .string(sideEffects),
        ]
        // An actuator runs in the policy's `act` phase (as the bundled
        // policy names it), never before the session reaches it.
        if sideEffects == "writes" || sideEffects == "external" { doc["phases"] = ["act"] }
        if !options.allowHost.isEmpty {
            doc["network"] = ["connect": .array(options.allowHost.map { .string($0) }), "egress": "proxy"]
        }
        return doc
    }

    private func writeManifest(_ doc: JSONObject, _ path: String) throws -> CellManifest {
        let bytes = Array(JSONValue.object(doc).prettySerialized().utf8)
        try writeFileAtomically(path, bytes)
        return try CellManifest.parse(bytes: bytes, path: path, manifestSHA256: sha256Hex(bytes))
    }

    /// The probe call, in learn mode, with the tools just listed pinned;
    /// returns the syscalls it made outside the allowlist.
    private func probeCall(
        doc: JSONObject, tools: [JSONObject], path: String, groups: SyscallGroups, host: HostSandbox,
        runner: CallRunner
    ) throws -> [String] {
        let (tool, argsText) = (options.probe[0], options.probe[1])
        guard tools.contains(where: { $0["name"]?.stringValue == tool }) else {
            throw TrustCommandError(
                "--probe \(tool): the server lists no such tool (it lists: "
                    + tools.compactMap { $0["name"]?.stringValue }.joined(separator: ", ") + ")")
        }
        guard case .object(let arguments)? = try? JSONParser.parse(Array(argsText.utf8)) else {
            throw TrustCommandError("--probe \(tool): the arguments must be a JSON object, found \(argsText)")
        }
        var d = doc
        d["tools"] = .array(tools.map { .object($0) })
        let bytes = Array(JSONValue.object(d).prettySerialized().utf8)
        let m = try CellManifest.parse(bytes: bytes, path: path, manifestSHA256: sha256Hex(bytes))
        let cell: PreparedCell
        do { cell = try PreparedCell(manifest: m, groups: groups, host: host) } catch {
            throw TrustCommandError("\(path): the server cannot run: \(error)")
        }
        print("probe: \(tool) \(argsText) (learn mode)")
        let report = runner.run(
            cell: cell, tool: m.server?.exposedName(tool) ?? tool, arguments: arguments, callID: "server-add-probe",
            learn: true)
        print("probe: \(report.outcome.detail)")
        return report.learnedSyscalls
    }

    /// Asks the operator, unless --yes; without a terminal, refuses.
    private func confirm(_ what: String) throws {
        if options.yes { return }
        guard Sys.isTerminal(0) else {
            throw TrustCommandError(
                "nothing registered: no terminal to confirm on; review the above and re-run with --yes to \(what)")
        }
        print("\(what)? [y/N] ", terminator: "")
        guard let answer = readLine(), ["y", "yes"].contains(answer.lowercased()) else {
            throw TrustCommandError("nothing registered: not confirmed")
        }
    }

    /// What the operator approves, besides the tools.
    static func permissions(
        _ m: CellManifest, record: InstallRecord, proposal: SyscallGroups.Proposal, learned: [String]
    ) -> String {
        var out = "permissions of \(m.name) \(m.version):\n"
        out += "  runs: \(m.argv.map { $0.contains(" ") ? "'\($0)'" : $0 }.joined(separator: " "))\n"
        out += "    executable \(m.executable.path) (sha256 \(m.executable.sha256.prefix(16))…)\n"
        for p in m.server?.packages ?? [] { out += "  package tree: \(p.path) (sha256 \(p.sha256.prefix(16))…)\n" }
        if !record.distributions.isEmpty {
            out +=
                "    installed: \(record.distributions.map { "\($0.name)==\($0.version)" }.joined(separator: ", "))\n"
        }
        out += "  read: \(m.filesystem.read.joined(separator: ", "))\n"
        out += "  write: \(m.filesystem.write.isEmpty ? "nothing" : m.filesystem.write.joined(separator: ", "))\n"
        out += "  execute: \(m.filesystem.execute.isEmpty ? "nothing" : m.filesystem.execute.joined(separator: ", "))\n"
        out +=
            "  network: "
            + (m.network.isNone
                ? "none" : m.network.hosts.map(\.description).joined(separator: ", ") + " (through the egress proxy)")
            + "\n"
        let added = m.syscallGroups.filter { !baseGroups.contains($0) }
        out += "  syscalls: groups \(m.syscallGroups.joined(separator: ", "))"
        if !added.isEmpty || !m.syscallAllow.isEmpty {
            out += " — beyond \(baseGroups.joined(separator: ", ")): "
            out += (added.map { "group \($0)" } + m.syscallAllow).joined(separator: ", ")
        }
        out += "\n"
        if !learned.isEmpty { out += "    learn mode saw: \(learned.joined(separator: ", "))\n" }
        if !proposal.forbidden.isEmpty || !proposal.network.isEmpty {
            out +=
                "    refused and never allowed: \((proposal.forbidden + proposal.network).joined(separator: ", "))\n"
        }
        if !proposal.unmatchedIoctls.isEmpty {
            out +=
                "    ioctl requests no group allows (refused): "
                + proposal.unmatchedIoctls.map { "0x" + String($0, radix: 16) }.joined(separator: ", ") + "\n"
        }
        out += "  environment: \(m.environmentSet.map { "\($0.0)=\($0.1)" }.joined(separator: " "))\n"
        out += "  processes: \(m.limits.processes.rawValue)\n"
        out += "  secrets: none\n"
        out += "  side effects: \(m.sideEffects.rawValue)"
        return out
    }

    /// The distribution that was asked for, among those pip installed.
    static func requested(_ installed: [InstalledDistribution], source: ServerSource) throws -> InstalledDistribution {
        if case .index(let n, _) = source,
            let d = installed.first(where: { ServerSource.normalized($0.name) == ServerSource.normalized(n) })
        {
            return d
        }
        let asked = installed.filter(\.requested)
        guard asked.count == 1 else {
            throw TrustCommandError(
                "pip's report names \(asked.count) requested distributions, expected the one of \(source)")
        }
        return asked[0]
    }

    /// The console scripts of `distribution` as installed in `site`.
    static func consoleScripts(site: String, distribution d: InstalledDistribution) throws -> [ConsoleScript] {
        let names = (try? Sys.readdirNames(site)) ?? []
        for n in names where n.hasSuffix(".dist-info") {
            let stem = n.dropLast(".dist-info".count)
            guard let dash = stem.lastIndex(of: "-") else { continue }
            guard ServerSource.normalized(String(stem[..<dash])) == ServerSource.normalized(d.name) else { continue }
            guard let bytes = try? readFile(site + "/" + n + "/entry_points.txt", limit: 1 << 20) else { return [] }
            return ConsoleScript.parse(entryPoints: String(decoding: bytes, as: UTF8.self))
        }
        throw TrustCommandError("\(d.name) \(d.version) was installed but \(site) has no \(d.name) *.dist-info")
    }

    /// A guess at a local package's name, for the default cell name: the
    /// directory's name, or a wheel/sdist file's name up to its version.
    static func distributionName(ofPath p: String) -> String {
        var base = baseName(p)
        for ext in [".whl", ".tar.gz", ".zip"] where base.hasSuffix(ext) {
            base = String(base.dropLast(ext.count))
            if let dash = base.firstIndex(of: "-") { base = String(base[..<dash]) }
        }
        return base
    }

    static func resolveCommand(_ c: String) throws -> String {
        if c.contains("/") {
            do { return try Sys.realpath(SupervisorSettings.absolute(c)) } catch {
                throw TrustCommandError("\(c): \(error)")
            }
        }
        for dir in (Sys.getenv("PATH") ?? "/usr/bin:/bin").split(separator: ":") {
            let p = "\(dir)/\(c)"
            if let st = try? Sys.stat(p), st.isRegularFile, st.mode & 0o111 != 0 { return try Sys.realpath(p) }
        }
        throw TrustCommandError("\(c): no such command on PATH")
    }

    /// `<state>/servers/<name>` ready for a new install. A root supervisor's
    /// workers run as another uid, and the state directory is private
    /// (0700): it becomes 0711 (others may pass through to a path they
    /// know, list nothing; keys, trust and security stay 0700) so that the
    /// workers can reach `servers/`, which is 0755.
    static func prepareServersDirectory(_ s: SupervisorSettings, serverDir: String) throws {
        try s.prepareStateDirectory()
        try Sys.makeDirectories(serverDir, mode: 0o755)
        try Sys.chmod(ServerCommand.root(s.stateDirectory), mode: 0o755)
        try Sys.chmod(serverDir, mode: 0o755)
        try s.prepareStateDirectory()
    }

    /// A new install's directory name: UTC time and 32 random bits.
    static func installID() -> String {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "yyyyMMdd'T'HHmmss"
        return f.string(from: Date()) + "-" + String(UInt32.random(in: 0...UInt32.max), radix: 16)
    }
}

private func unique(_ l: [String]) -> [String] {
    var out: [String] = []
    for s in l where !out.contains(s) { out.append(s) }
    return out
}

private func baseName(_ p: String) -> String { p.split(separator: "/").last.map(String.init) ?? p }

func fileSHA256(_ path: String) throws -> String { sha256Hex(try readFile(path, limit: 1 << 30)) }
