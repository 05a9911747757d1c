import ArgumentParser
import Foundation
import StrictJSON
import SupervisorCore
import SupervisorPlatform

/// `mcp-supervisor secret`: the secret store under the state directory
/// (docs/secrets.md). A value is read from stdin or a file, never from the
/// command line (argv is visible to every user in /proc), and never printed.
struct SecretCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "secret",
        abstract: "Secrets for cells, kept under the state directory (owner only) and never printed.",
        subcommands: [SetSecret.self, ListSecrets.self, RemoveSecret.self])

    static func store(_ s: SupervisorSettings) -> SecretStore { SecretStore(stateDirectory: s.stateDirectory) }

    static func validName(_ name: String) throws {
        guard SecretName.isValid(name) else {
            throw ValidationError("\"\(name)\" is not a valid secret name: \(SecretName.rule)")
        }
    }

    struct SetSecret: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set",
            abstract: "Store the value of NAME, read from standard input (or --from-file); one trailing newline "
                + "is dropped.")
        @Argument(help: "The secret's name (\(SecretName.rule)).") var name: String
        @Option(name: .customLong("from-file"), help: "Read the value from this file instead of standard input.")
        var fromFile: String?
        @OptionGroup var state: StateOptions

        func validate() throws { try SecretCommand.validName(name) }

        func run() throws {
            let limit = SecretStore.maxValueBytes + 2
            var input: [UInt8]
            if let fromFile {
                let path = SupervisorSettings.absolute(fromFile)
                do { input = try readFile(path, limit: limit + 1) } catch {
                    printError("error: cannot read \(path): \(error)")
                    throw ExitCode(1)
                }
            } else {
                if Sys.isatty(0) {
                    printError(
                        "reading the value of \(name) from standard input; end it with Ctrl-D (the terminal shows "
                            + "what you type: prefer `... | mcp-supervisor secret set \(name)` or --from-file)")
                }
                input = [UInt8](FileHandle.standardInput.readData(ofLength: limit + 1))
            }
            if input.count > limit {
                printError("error: the value is longer than \(SecretStore.maxValueBytes) bytes")
                throw ExitCode(1)
            }
            let store = SecretCommand.store(state.settings())
            do {
                let value = try SecretStore.value(fromInput: input)
                input = []
                try store.set(name, value: value)
            } catch {
                printError("error: \(error)")
                throw ExitCode(1)
            }
            print("stored secret \(name) in \(store.directory)")
        }
    }

    struct ListSecrets: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "list",
            abstract: "Secret names, where each comes from, and which cells use them (never values).")
        @OptionGroup var common: CommonOptions
        @OptionGroup var output: JSONOutput

        /// A manifest and where it was found (a file of the manifests
        /// directory, or the active version of a cell in the trust ledger).
        struct Use {
            let cell: String
            let origin: String
            let binding: SecretBinding
        }

        func uses(_ s: SupervisorSettings) -> [Use] {
            var out: [Use] = []
            let dir = s.manifestsDirectory
            for file in ((try? Sys.readdirNames(dir)) ?? []).filter({ $0.hasSuffix(".json") }).sorted() {
                let path = dir + "/" + file
                guard let bytes = try? readFile(path, limit: 1 << 20),
                    let m = try? CellManifest.parse(bytes: bytes, path: path, manifestSHA256: "")
                else { continue }
                out += m.secrets.map { Use(cell: m.name, origin: path, binding: $0) }
            }
            let ledger = Ledger.load(path: s.ledgerPath)
            for (name, c) in ledger.cells.sorted(by: { $0.key < $1.key }) {
                guard let id = c.active, let v = c.versions[id],
                    let m = try? CellManifest.parse(bytes: v.manifestBytes, path: v.manifestPath, manifestSHA256: id)
                else { continue }
                out += m.secrets.map { Use(cell: name, origin: "ledger \(name):\(id.prefix(12))", binding: $0) }
            }
            return out
        }

        func run() throws {
            let s = try common.settings()
            let store = SecretCommand.store(s)
            let stored: [String]
            do { stored = try store.names() } catch {
                printError("error: \(error)")
                throw ExitCode(2)
            }
            let uses = uses(s)
            // One row per secret and source: the store's secrets, and each
            // environment variable a manifest names.
            var keys: [(name: String, source: SecretBinding.Source)] = stored.map { ($0, .store) }
            for u in uses where !keys.contains(where: { $0.name == u.binding.name && $0.source == u.binding.source }) {
                keys.append((u.binding.name, u.binding.source))
            }
            keys.sort { ($0.name, "\($0.source)") < ($1.name, "\($1.source)") }
            var rows: [JSONValue] = []
            for k in keys {
                let mine = uses.filter { $0.binding.name == k.name && $0.binding.source == k.source }
                var status = ""
                if case .store = k.source { status = stored.contains(k.name) ? "" : "  MISSING from the store" }
                output.text("\(k.name)  \(k.source)\(status)")
                if mine.isEmpty { output.text("    used by no manifest") }
                for u in mine { output.text("    \(u.cell) (\(u.origin)): \(u.binding.use)") }
                var source: JSONValue = "store"
                if case .environment(let v) = k.source {
                    source = .object(JSONObject([("environment", .string(v))]))
                }
                rows.append(
                    .object(
                        JSONObject([
                            ("name", .string(k.name)), ("source", source),
                            ("stored", k.source == .store ? .bool(stored.contains(k.name)) : .null),
                            (
                                "usedBy",
                                .array(
                                    mine.map { u in
                                        .object(
                                            JSONObject([
                                                ("cell", .string(u.cell)), ("origin", .string(u.origin)),
                                                ("use", .string(u.binding.use.description)),
                                            ]))
                                    })
                            ),
                        ])))
            }
            if keys.isEmpty { output.text("no secrets (store: \(store.directory))") }
            output.emit(.array(rows))
        }
    }

    struct RemoveSecret: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "remove",
            abstract: "Remove NAME from the store; cells that use it are refused until it is set again.")
        @Argument(help: "The secret's name.") var name: String
        @OptionGroup var state: StateOptions

        func validate() throws { try SecretCommand.validName(name) }

        func run() throws {
            let store = SecretCommand.store(state.settings())
            do {
                guard try store.remove(name) else {
                    printError("error: no secret \(name) in \(store.directory)")
                    throw ExitCode(1)
                }
            } catch let e as SecretStoreError {
                printError("error: \(e)")
                throw ExitCode(1)
            }
            print("removed secret \(name) from \(store.directory)")
        }
    }
}
