import ArgumentParser
import Crypto
import Foundation
import StrictJSON
import SupervisorCore
import SupervisorPlatform

struct TrustLocation: ParsableArguments {
    /// The state directory (trust/ledger.jsonl) and the configuration file.
    @OptionGroup var stateOptions: StateOptions

    @Option(name: .customLong(Setting.policies.flag), help: ArgumentHelp(Setting.policies.flagHelp))
    var policies: String?

    func validate() throws { try validateFlags([(.policies, policies)]) }

    var state: String { stateOptions.settings().stateDirectory }
    var ledgerPath: String { stateOptions.settings().ledgerPath }
    func groups() throws -> SyscallGroups {
        try SyscallGroups.load(path: stateOptions.settings(more: [(.policies, policies)]).syscallGroupsPath)
    }
}

/// Runs a trust command, turning errors into one clear line and exit 1.
/// Refusals and every ledger change are security events: the log takes
/// appends from several processes under its file lock.
func trustCommand(_ location: TrustLocation? = nil, _ name: String = "", _ body: () throws -> Void) throws {
    do { try body() } catch let e as ExitCode { throw e } catch {
        printError("error: \(describeError(error))")
        if let location {
            securityEvents(
                location,
                [
                    SecurityEvent(
                        .ledgerRefused,
                        JSONObject([
                            ("command", .string(name)), ("error", .string(describeError(error))),
                            ("uid", .int(Int64(geteuidValue()))),
                        ]))
                ])
        }
        throw ExitCode(1)
    }
}

func securityEvents(_ location: TrustLocation, _ events: [SecurityEvent]) {
    do {
        let log = try SecurityLog(stateDirectory: location.state)
        let failed = log.appendAndWait(events)
        log.close()
        if let failed { throw failed }
    } catch {
        printError("warning: could not write the security log: \(error)")
    }
}

/// Appends a ledger entry and records it as a security event.
@discardableResult
func ledgerAppend(
    _ location: TrustLocation, _ event: String, _ fields: JSONObject,
    key: Curve25519.Signing.PrivateKey
) throws -> LedgerState {
    let st = try Ledger.append(path: location.ledgerPath, event: event, fields: fields, key: key)
    // index and head anchor the ledger's length in the security log
    // (docs/trust.md): a ledger that later has fewer entries is refused.
    var f = JSONObject([
        ("index", .int(Int64(st.entries.count))), ("head", .string(st.head)), ("event", .string(event)),
        ("signer", .string(TrustKeys.keyID(key.publicKey))),
    ])
    for k in [
        "cell", "version", "label", "parent", "from", "keyId", "name", "reason", "approvedWidening", "widening",
        "executableSha256",
    ] {
        if let v = fields[k] { f[k] = v }
    }
    securityEvents(location, [SecurityEvent(.ledgerEntry, f)])
    return st
}

struct Keys: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Signing keys and the trusted keyring (kept in the trust ledger).",
        subcommands: [Generate.self, List.self, Add.self, Revoke.self])

    struct Generate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create an Ed25519 key pair: BASE.key (mode 0600) and BASE.pub.")
        @Option(name: .long, help: "Path without extension (default: <state>/keys/signing).") var out: String?
        @OptionGroup var location: TrustLocation

        func run() throws {
            try trustCommand {
                let base = out.map(SupervisorSettings.absolute) ?? location.state + "/keys/signing"
                try SecurityLogDirectory.make(directoryName(base))
                let key = try TrustKeys.generate(base: base)
                print("key \(TrustKeys.keyID(key.publicKey)): \(base).key (private, 0600), \(base).pub")
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Keys in the ledger's keyring, trusted and revoked.")
        @OptionGroup var location: TrustLocation
        @OptionGroup var output: JSONOutput
        func run() throws {
            let st = Ledger.load(path: location.ledgerPath)
            if let d = st.damaged { printError("warning: ledger damaged: \(d)") }
            if st.keys.isEmpty {
                output.text("no keys (the first `cell register --key` or `keys add` creates the keyring)")
            }
            let keys = st.keys.values.sorted(by: { $0.id < $1.id })
            for k in keys { output.text("\(k.id)  \(k.revoked ? "revoked" : "trusted")  \(k.name)") }
            output.emit(
                .array(
                    keys.map {
                        .object(
                            JSONObject([
                                ("id", .string($0.id)), ("status", .string($0.revoked ? "revoked" : "trusted")),
                                ("name", .string($0.name)),
                            ]))
                    }))
        }
    }

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Trust another public key (rotation): the entry must be signed by a key already trusted. On an empty ledger, a key adds itself."
        )
        @Argument(help: "Public key file (.pub).") var publicKey: String
        @Option(name: .long, help: "Private key of a trusted key, which signs the change.") var key: String
        @Option(name: .long, help: "A name for the key.") var name: String = ""
        @OptionGroup var location: TrustLocation
        func run() throws {
            try trustCommand(location, "keys add") {
                let signer = try TrustKeys.loadPrivate(path: SupervisorSettings.absolute(key))
                let pub = try TrustKeys.loadPublic(path: SupervisorSettings.absolute(publicKey))
                try ledgerAppend(
                    location, "key.add",
                    [
                        "keyId": .string(TrustKeys.keyID(pub)), "publicKey": .string(TrustKeys.publicText(pub)),
                        "name": .string(name),
                    ], key: signer)
                print("trusted key \(TrustKeys.keyID(pub))")
            }
        }
    }

    struct Revoke: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke a key: cells it signed stop running until re-signed.")
        @Argument(help: "Key id.") var keyID: String
        @Option(name: .long, help: "Private key of a trusted key, which signs the change.") var key: String
        @Option(name: .long) var reason: String = ""
        @OptionGroup var location: TrustLocation
        func run() throws {
            try trustCommand {
                let signer = try TrustKeys.loadPrivate(path: SupervisorSettings.absolute(key))
                try ledgerAppend(
                    location, "key.revoke", ["keyId": .string(keyID), "reason": .string(reason)], key: signer)
                print("revoked key \(keyID)")
            }
        }
    }
}

struct CellCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cell",
        abstract: "Sign, register and manage cell versions in the trust ledger.",
        subcommands: [
            New.self, Sign.self, Register.self, List.self, Show.self, Lineage.self, Diff.self, Activate.self,
            Rollback.self, Revoke.self, Quarantined.self, Release.self,
        ])

    /// The ledger and one registered cell of it.
    static func registered(_ location: TrustLocation, _ cell: String) throws -> (LedgerState, LedgerState.Cell) {
        let st = Ledger.load(path: location.ledgerPath)
        guard let c = st.cells[cell] else { throw TrustCommandError("cell \(cell) is not registered") }
        return (st, c)
    }

    /// One version argument, `CELL:VERSION`; `CELL VERSION` (two arguments)
    /// is the older form, still accepted.
    static func cellVersion(_ first: String, _ second: String?) throws -> (cell: String, version: String) {
        if let second { return (first, second) }
        guard let cv = splitCellVersion(first) else {
            throw ValidationError("expected CELL:VERSION (e.g. echo:3f6506dc1eaf), found \"\(first)\"")
        }
        return cv
    }

    static func resolve(_ st: LedgerState, cell: String, version: String) throws -> LedgerState.Version {
        guard let c = st.cells[cell] else { throw TrustCommandError("cell \(cell) is not registered") }
        let matches = c.versions.keys.filter { $0.hasPrefix(version) }
        guard version.count >= 6, matches.count == 1 else {
            throw TrustCommandError(
                "\(version) does not name exactly one version of \(cell) (give at least 6 hex digits)")
        }
        return c.versions[matches[0]]!
    }

    struct Sign: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Write MANIFEST.sig: a detached signature over the manifest's exact bytes (which pin the executable's SHA-256)."
        )
        @Argument(help: "Manifest files.") var manifests: [String]
        @Option(name: .long, help: "Private key file.") var key: String
        @OptionGroup var location: TrustLocation
        func run() throws {
            try trustCommand {
                let k = try TrustKeys.loadPrivate(path: SupervisorSettings.absolute(key))
                for m in manifests.map(SupervisorSettings.absolute) {
                    let bytes = try readFile(m, limit: 1 << 20)
                    _ = try CellManifest.parse(bytes: bytes, path: m, manifestSHA256: "")
                    let sig = try ManifestSignature.make(manifestBytes: bytes, key: k)
                    try writeFileAtomically(ManifestSignature.path(for: m), Array(sig.prettySerialized().utf8))
                    print("signed: \(m) (\(sha256Hex(bytes).prefix(12))) by \(TrustKeys.keyID(k.publicKey))")
                }
            }
        }
    }

    struct Register: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Register signed manifests as new immutable versions and activate them. A version that widens permissions needs --approve-widening."
        )
        @Argument(help: "Manifest files (each with MANIFEST.sig beside it).") var manifests: [String]
        @Option(
            name: .long,
            help:
                "Private key of a trusted key, which signs the ledger entries. On an empty ledger it becomes the first trusted key."
        )
        var key: String
        @Flag(name: .long, help: "Approve a version that widens permissions (recorded in the ledger).")
        var approveWidening = false
        @Flag(name: .long, help: "Register without activating.") var noActivate = false
        @OptionGroup var location: TrustLocation

        func run() throws {
            try trustCommand(location, "cell register") {
                let k = try TrustKeys.loadPrivate(path: SupervisorSettings.absolute(key))
                let groups = try location.groups()
                var st = try Register.ledgerTrusting(k, location)
                var failed = false
                for m in manifests.map(SupervisorSettings.absolute) {
                    do {
                        st = try Register.register(
                            m, key: k, ledger: st, groups: groups, location: location,
                            approveWidening: approveWidening, activate: !noActivate)
                    } catch {
                        printError("error: \(error)")
                        securityEvents(
                            location,
                            [
                                SecurityEvent(
                                    .ledgerRefused,
                                    JSONObject([
                                        ("command", "cell register"), ("manifest", .string(m)),
                                        ("error", .string("\(error)")),
                                    ]))
                            ])
                        failed = true
                    }
                }
                if failed { throw ExitCode(1) }
            }
        }

        /// The ledger, started with `k` as its first trusted key when empty.
        static func ledgerTrusting(_ k: Curve25519.Signing.PrivateKey, _ location: TrustLocation) throws -> LedgerState
        {
            let st = Ledger.load(path: location.ledgerPath)
            guard st.entries.isEmpty else { return st }
            let started = try ledgerAppend(
                location, "key.add",
                [
                    "keyId": .string(TrustKeys.keyID(k.publicKey)),
                    "publicKey": .string(TrustKeys.publicText(k.publicKey)),
                    "name": "first key",
                ], key: k)
            print("new ledger: trusting key \(TrustKeys.keyID(k.publicKey))")
            return started
        }

        /// Registers the signed manifest at `m` (MANIFEST.sig beside it) as
        /// a new version and activates it: a server cell's tools are read
        /// from the server, run once in its sandbox, shown and pinned (or
        /// compared with those pinned); a version that widens permissions
        /// is refused unless `approveWidening`, and what is approved is
        /// shown. Returns the ledger after the new entries.
        static func register(
            _ m: String, key k: Curve25519.Signing.PrivateKey, ledger: LedgerState, groups: SyscallGroups,
            location: TrustLocation, approveWidening: Bool, activate: Bool
        ) throws -> LedgerState {
            var st = ledger
            var bytes = try readFile(m, limit: 1 << 20)
            var manifest = try CellManifest.parse(bytes: bytes, path: m, manifestSHA256: sha256Hex(bytes))
            _ = try groups.entries(for: manifest)
            // A server cell: its tools come from the server, run
            // once in its sandbox, shown here, and pinned.
            if manifest.server != nil {
                let s = location.stateOptions.settings(more: [(.policies, location.policies)])
                let (listed, info) = try ServerTools.discover(manifest, settings: s, groups: groups)
                print(ServerTools.show(listed, manifest: manifest, serverInfo: info), terminator: "")
                if manifest.tools.isEmpty {
                    bytes = try ServerTools.withTools(bytes, listed, path: m)
                    try writeFileAtomically(m, bytes)
                    let sig = try ManifestSignature.make(manifestBytes: bytes, key: k)
                    try writeFileAtomically(
                        ManifestSignature.path(for: m), Array(sig.prettySerialized().utf8))
                    manifest = try CellManifest.parse(
                        bytes: bytes, path: m, manifestSHA256: sha256Hex(bytes))
                    print(
                        "pinned \(listed.count) tool(s) into \(m), signed by \(TrustKeys.keyID(k.publicKey))"
                    )
                } else if let d = ToolDefinitions.diff(
                    pinned: manifest.tools.compactMap(\.pinned), listed: listed)
                {
                    throw TrustCommandError(
                        "\(m): the server lists other tools than the manifest pins (\(d)); to pin what it "
                            + "lists now, remove \"tools\" from the manifest and register again")
                }
            }
            let sigBytes: [UInt8]
            do { sigBytes = try readFile(ManifestSignature.path(for: m), limit: 1 << 16) } catch {
                throw TrustCommandError("\(m) is not signed: run `mcp-supervisor cell sign \(m) --key KEY`")
            }
            if case .failure(let e) = ManifestSignature.verify(
                sigBytes: sigBytes, manifestBytes: bytes, keys: st.trustedKeys,
                file: ManifestSignature.path(for: m))
            {
                throw TrustCommandError("\(m): \(e)")
            }
            guard let sigValue = try? JSONParser.parse(sigBytes) else {
                throw TrustCommandError("bad signature file")
            }
            let vid = sha256Hex(bytes)
            let cell = st.cells[manifest.name]
            if cell?.active == vid {
                print("unchanged: \(manifest.name) \(vid.prefix(12)) is already active")
                return st
            }
            if cell?.versions[vid] != nil {
                throw TrustCommandError(
                    "\(manifest.name) \(vid.prefix(12)) is already registered; use `cell activate` or `cell rollback`"
                )
            }
            var widening: [PermissionChange] = []
            if let a = cell?.active, let av = cell?.versions[a] {
                let old = try CellManifest.parse(
                    bytes: av.manifestBytes, path: av.manifestPath, manifestSHA256: av.id)
                widening = PermissionDiff.compare(old, manifest, groups: groups).filter {
                    $0.direction == .widens
                }
                if !widening.isEmpty && !approveWidening {
                    throw TrustCommandError(
                        "\(manifest.name): the new version widens permissions; review and re-run with --approve-widening:\n  "
                            + widening.map(\.description).joined(separator: "\n  "))
                }
                // What is approved is shown, never approved silently.
                for c in widening { print("approving for \(manifest.name): \(c)") }
            }
            var fields: JSONObject = [
                "cell": .string(manifest.name), "version": .string(vid), "label": .string(manifest.version),
                "executableSha256": .string(manifest.executable.sha256), "manifestPath": .string(m),
                "manifest": .string(Data(bytes).base64EncodedString()), "manifestSignature": sigValue,
                "parent": cell?.active.map { .string($0) } ?? .null,
                "approvedWidening": .bool(!widening.isEmpty),
            ]
            if !widening.isEmpty { fields["widening"] = .array(widening.map { .string($0.description) }) }
            st = try ledgerAppend(location, "cell.register", fields, key: k)
            print(
                "registered: \(manifest.name) \(manifest.version) as \(vid.prefix(12))\(widening.isEmpty ? "" : " (widening approved)")"
            )
            if activate {
                st = try ledgerAppend(
                    location, "cell.activate", ["cell": .string(manifest.name), "version": .string(vid)],
                    key: k)
                print("active: \(manifest.name) \(vid.prefix(12))")
            }
            return st
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Registered cells, their active version and status.")
        @OptionGroup var location: TrustLocation
        @OptionGroup var output: JSONOutput
        func run() throws {
            let st = Ledger.load(path: location.ledgerPath)
            if let d = st.damaged { printError("LEDGER DAMAGED, every cell is refused: \(d)") }
            var rows: [JSONValue] = []
            for name in Set(st.cells.keys).union(st.refusedCells.keys).sorted() {
                let c = st.cells[name]
                let active = c?.active.flatMap { c?.versions[$0] }
                let refusal = st.refusal(cell: name)
                let status = refusal.map { "REFUSED: \($0)" } ?? "ok"
                output.text(
                    "\(name)  \(active.map { "\($0.id.prefix(12)) \($0.label) signed by \($0.signedBy)" } ?? "no active version")  versions: \(c?.order.count ?? 0)  \(status)"
                )
                rows.append(
                    .object(
                        JSONObject([
                            ("cell", .string(name)), ("active", active.map { .string($0.id) } ?? .null),
                            ("label", active.map { .string($0.label) } ?? .null),
                            ("signedBy", active.map { .string($0.signedBy) } ?? .null),
                            ("versions", .int(Int64(c?.order.count ?? 0))),
                            ("refused", refusal.map { .string($0) } ?? .null),
                        ])))
            }
            output.emit(.array(rows))
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Every version of a cell, with its tools.")
        @Argument var cell: String
        @OptionGroup var location: TrustLocation
        @OptionGroup var output: JSONOutput
        func run() throws {
            try trustCommand {
                let (st, c) = try CellCommand.registered(location, cell)
                var versions: [JSONValue] = []
                let groups = Result { try location.groups() }
                let features = KernelFeatures.probe()
                for id in c.order {
                    let v = c.versions[id]!
                    let m = try? CellManifest.parse(bytes: v.manifestBytes, path: v.manifestPath, manifestSHA256: id)
                    versions.append(
                        .object(
                            JSONObject([
                                ("id", .string(id)), ("active", .bool(c.active == id)), ("revoked", .bool(v.revoked)),
                                ("revokeReason", v.revokeReason.map { .string($0) } ?? .null),
                                ("label", .string(v.label)), ("registeredAt", .string(v.registeredAt)),
                                ("signedBy", .string(v.signedBy)), ("approvedWidening", .bool(v.approvedWidening)),
                                ("manifest", .string(v.manifestPath)),
                                ("executable", m.map { .string($0.executable.path) } ?? .null),
                                ("executableSha256", .string(v.executableSHA256)),
                                ("argv", m.map { .array($0.argv.map { .string($0) }) } ?? .null),
                                ("tools", m.map { .array($0.tools.map { .string($0.name) }) } ?? .null),
                                ("secrets", m.map { .array($0.secrets.map(\.json)) } ?? .null),
                                ("parent", v.parent.map { .string($0) } ?? .null),
                            ])))
                    guard !output.json else { continue }
                    print(
                        "\(id)\(c.active == id ? "  (active)" : "")\(v.revoked ? "  REVOKED\(v.revokeReason.map { ": \($0)" } ?? "")" : "")"
                    )
                    print(
                        "  label \(v.label), registered \(v.registeredAt), signed by \(v.signedBy)\(v.approvedWidening ? ", widening approved" : "")"
                    )
                    print("  executable \(m?.executable.path ?? "?") sha256 \(v.executableSHA256)")
                    // What an enforcement receipt names (docs/operations.md).
                    if let m {
                        do {
                            let (d, n) = try Receipt.seccompDigest(
                                manifest: m, groups: try groups.get(), features: features)
                            print("  seccomp filter sha256 \(d) (\(n) instructions)")
                            if features.seccompUserNotification {
                                let p = try Receipt.profiledSeccompDigests(
                                    manifest: m, groups: try groups.get(), features: features)
                                print("  profiled: seccomp filter sha256 \(p.allowlist), profiler sha256 \(p.profiler)")
                            }
                        } catch { print("  seccomp filter: cannot be built here: \(error)") }
                    }
                    print("  argv \(m?.argv.joined(separator: " ") ?? "?")")
                    print("  tools: \(m?.tools.map(\.name).joined(separator: ", ") ?? "?")")
                    // Names and uses, never values (docs/secrets.md).
                    if let m, !m.secrets.isEmpty {
                        print("  secrets:")
                        for b in m.secrets { print("    \(b)") }
                    }
                    print("  parent: \(v.parent ?? "none")")
                }
                let refusal = st.refusal(cell: cell)
                output.text(refusal.map { "status: REFUSED: \($0)" } ?? "status: ok")
                output.emit(
                    .object(
                        JSONObject([
                            ("cell", .string(cell)), ("versions", .array(versions)),
                            ("refused", refusal.map { .string($0) } ?? .null),
                        ])))
            }
        }
    }

    struct Lineage: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The active version and its ancestors, newest first.")
        @Argument var cell: String
        @OptionGroup var location: TrustLocation
        @OptionGroup var output: JSONOutput
        func run() throws {
            try trustCommand {
                let (_, c) = try CellCommand.registered(location, cell)
                var cur = c.active ?? c.order.last
                var rows: [JSONValue] = []
                while let id = cur, let v = c.versions[id] {
                    output.text(
                        "\(id.prefix(12))  \(v.label)  \(v.registeredAt)\(c.active == id ? "  active" : "")\(v.revoked ? "  revoked" : "")"
                    )
                    rows.append(
                        .object(
                            JSONObject([
                                ("id", .string(id)), ("label", .string(v.label)),
                                ("registeredAt", .string(v.registeredAt)), ("active", .bool(c.active == id)),
                                ("revoked", .bool(v.revoked)),
                            ])))
                    cur = v.parent
                }
                output.emit(.array(rows))
            }
        }
    }

    struct Diff: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Which permissions widen or narrow between two versions (manifest files, or CELL:VERSION from the ledger)."
        )
        @Argument(help: "The old version: a manifest file or CELL:VERSION.") var old: String
        @Argument(help: "The new version: a manifest file or CELL:VERSION.") var new: String
        @OptionGroup var location: TrustLocation
        @OptionGroup var output: JSONOutput
        func load(_ spec: String, _ st: LedgerState) throws -> CellManifest {
            if !spec.hasPrefix("/"), let (cell, version) = splitCellVersion(spec), st.cells[cell] != nil {
                let v = try CellCommand.resolve(st, cell: cell, version: version)
                return try CellManifest.parse(bytes: v.manifestBytes, path: v.manifestPath, manifestSHA256: v.id)
            }
            return try CellRegistry.loadManifest(path: SupervisorSettings.absolute(spec))
        }
        func run() throws {
            try trustCommand {
                let st = Ledger.load(path: location.ledgerPath)
                let changes = PermissionDiff.compare(
                    try load(old, st), try load(new, st), groups: try location.groups())
                if changes.isEmpty { output.text("no permission changes") }
                for c in changes { output.text("\(c)") }
                output.emit(
                    .array(
                        changes.map {
                            .object(
                                JSONObject([
                                    ("field", .string($0.field)), ("direction", .string($0.direction.rawValue)),
                                    ("detail", .string($0.detail)),
                                ]))
                        }))
            }
        }
    }

    struct Activate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make a registered, unrevoked version the active one.")
        @Argument(help: "CELL:VERSION (the older form CELL VERSION is accepted too).") var cell: String
        @Argument(help: .hidden) var version: String?
        @Option(name: .long, help: "Private key of a trusted key.") var key: String
        @OptionGroup var location: TrustLocation
        func validate() throws { _ = try CellCommand.cellVersion(cell, version) }
        func run() throws {
            let (cell, version) = try CellCommand.cellVersion(cell, version)
            try trustCommand {
                let v = try CellCommand.resolve(Ledger.load(path: location.ledgerPath), cell: cell, version: version)
                try ledgerAppend(
                    location, "cell.activate", ["cell": .string(cell), "version": .string(v.id)],
                    key: try TrustKeys.loadPrivate(path: SupervisorSettings.absolute(key)))
                print("active: \(cell) \(v.id.prefix(12))")
            }
        }
    }

    struct Rollback: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Go back to an earlier unrevoked version (default: the active version's parent).")
        @Argument var cell: String
        @Option(name: .long, help: "Version to go back to.") var to: String?
        @Option(name: .long, help: "Private key of a trusted key.") var key: String
        @OptionGroup var location: TrustLocation
        func run() throws {
            try trustCommand(location, "cell rollback") {
                let st = Ledger.load(path: location.ledgerPath)
                guard let c = st.cells[cell], let a = c.active else {
                    throw TrustCommandError("cell \(cell) has no active version")
                }
                let target: LedgerState.Version
                if let to {
                    // --to VERSION, or CELL:VERSION as everywhere else.
                    let version = splitCellVersion(to).flatMap { $0.cell == cell ? $0.version : nil } ?? to
                    target = try CellCommand.resolve(st, cell: cell, version: version)
                } else {
                    guard let p = c.versions[a]?.parent, let v = c.versions[p] else {
                        throw TrustCommandError("the active version has no parent")
                    }
                    target = v
                }
                try ledgerAppend(
                    location, "cell.rollback",
                    ["cell": .string(cell), "from": .string(a), "version": .string(target.id)],
                    key: try TrustKeys.loadPrivate(path: SupervisorSettings.absolute(key)))
                print("rolled back: \(cell) \(a.prefix(12)) → \(target.id.prefix(12))")
            }
        }
    }

    struct Revoke: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke a version: new calls are refused at once and its workers in flight are killed.")
        @Argument(help: "CELL:VERSION (the older form CELL VERSION is accepted too).") var cell: String
        @Argument(help: .hidden) var version: String?
        @Option(name: .long, help: "Private key of a trusted key.") var key: String
        @Option(name: .long) var reason: String = ""
        @OptionGroup var location: TrustLocation
        func validate() throws { _ = try CellCommand.cellVersion(cell, version) }
        func run() throws {
            let (cell, version) = try CellCommand.cellVersion(cell, version)
            try trustCommand {
                let v = try CellCommand.resolve(Ledger.load(path: location.ledgerPath), cell: cell, version: version)
                try ledgerAppend(
                    location, "cell.revoke",
                    ["cell": .string(cell), "version": .string(v.id), "reason": .string(reason)],
                    key: try TrustKeys.loadPrivate(path: SupervisorSettings.absolute(key)))
                print("revoked: \(cell) \(v.id.prefix(12))")
            }
        }
    }
}

enum SecurityLogDirectory {
    static func make(_ path: String) throws {
        var p = ""
        for c in path.split(separator: "/") {
            p += "/" + c
            if (try? Sys.lstat(p)) == nil { try Sys.mkdir(p, mode: 0o700) }
        }
    }
}

func directoryName(_ path: String) -> String {
    guard let i = path.lastIndex(of: "/") else { return "." }
    return i == path.startIndex ? "/" : String(path[..<i])
}
