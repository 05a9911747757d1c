import StrictJSON
import SupervisorPlatform

/// A manifest that could not be loaded or prepared, and why.
public struct CellProblem: Sendable, CustomStringConvertible {
    public let path: String
    public let message: String
    public var description: String { message.hasPrefix(path) ? message : "\(path): \(message)" }
}

/// The cells the supervisor serves, by tool name. A broken manifest refuses
/// only its own cell; the others keep working.
public final class CellRegistry: Sendable {
    public struct ToolEntry: Sendable {
        public let cell: PreparedCell
        public let tool: CellManifest.Tool
    }

    public let cells: [PreparedCell]
    public let problems: [CellProblem]
    private let tools: [String: ToolEntry]
    /// Tool names in a stable order (manifest file order, then tool order).
    public let toolNames: [String]

    public init(cells: [PreparedCell], problems: [CellProblem]) {
        var byName: [String: ToolEntry] = [:]
        var names: [String] = []
        var accepted: [PreparedCell] = []
        var problems = problems
        for c in cells {
            if let clash = c.manifest.tools.first(where: { byName[$0.name] != nil }) {
                problems.append(
                    CellProblem(
                        path: c.manifest.sourcePath,
                        message:
                            "cell \(c.name): tool \"\(clash.name)\" is already served by cell \(byName[clash.name]!.cell.name); tool names must be unique (a server cell's tools take its server.toolPrefix)"
                    ))
                continue
            }
            if let other = accepted.first(where: { $0.name == c.name }) {
                problems.append(
                    CellProblem(
                        path: c.manifest.sourcePath,
                        message: "cell name \"\(c.name)\" is already used by \(other.manifest.sourcePath)"))
                continue
            }
            accepted.append(c)
            for t in c.manifest.tools {
                byName[t.name] = ToolEntry(cell: c, tool: t)
                names.append(t.name)
            }
        }
        self.cells = accepted
        self.problems = problems
        self.tools = byName
        self.toolNames = names
    }

    public func tool(named name: String) -> ToolEntry? { tools[name] }

    /// Lists the `.json` files of a directory, sorted.
    public static func manifestFiles(in directory: String) throws(SystemError) -> [String] {
        try Sys.readdirNames(directory).filter { $0.hasSuffix(".json") && !$0.hasPrefix(".") }.map {
            directory + "/" + $0
        }
        .sorted()
    }

    /// Reads and parses one manifest file.
    public static func loadManifest(path: String) throws(ConfigError) -> CellManifest {
        let bytes: [UInt8]
        do { bytes = try readFile(path, limit: 1 << 20) } catch {
            throw ConfigError(file: path, field: "", message: "cannot read: \(error)")
        }
        return try CellManifest.parse(bytes: bytes, path: path, manifestSHA256: sha256Hex(bytes))
    }

    /// The active, unrevoked versions of the ledger's cells. Tool definitions
    /// come from the signed manifest bytes stored in the ledger, never from
    /// the manifest files as they are now.
    public static func load(ledger: LedgerState, groups: SyscallGroups, host: HostSandbox) -> CellRegistry {
        var cells: [PreparedCell] = []
        var problems: [CellProblem] = []
        if let d = ledger.damaged {
            return CellRegistry(
                cells: [], problems: [CellProblem(path: "ledger", message: "every cell is refused: \(d)")])
        }
        for name in Set(ledger.cells.keys).union(ledger.refusedCells.keys).sorted() {
            if let why = ledger.refusal(cell: name) {
                problems.append(CellProblem(path: "ledger:\(name)", message: why))
                continue
            }
            let v = ledger.cells[name]!.versions[ledger.cells[name]!.active!]!
            do {
                let m = try CellManifest.parse(bytes: v.manifestBytes, path: v.manifestPath, manifestSHA256: v.id)
                guard m.name == name else {
                    problems.append(
                        CellProblem(path: "ledger:\(name)", message: "the registered manifest names cell \(m.name)"))
                    continue
                }
                do { cells.append(try PreparedCell(manifest: m, groups: groups, host: host)) } catch {
                    problems.append(CellProblem(path: "ledger:\(name)", message: error.description))
                }
            } catch {
                problems.append(CellProblem(path: "ledger:\(name)", message: error.description))
            }
        }
        return CellRegistry(cells: cells, problems: problems)
    }

    /// Loads and prepares every manifest; failures are collected, not fatal.
    public static func load(paths: [String], groups: SyscallGroups, host: HostSandbox) -> CellRegistry {
        var cells: [PreparedCell] = []
        var problems: [CellProblem] = []
        for p in paths {
            do {
                let m = try loadManifest(path: p)
                do {
                    cells.append(try PreparedCell(manifest: m, groups: groups, host: host))
                } catch {
                    problems.append(CellProblem(path: p, message: error.description))
                }
            } catch {
                problems.append(CellProblem(path: p, message: error.description))
            }
        }
        return CellRegistry(cells: cells, problems: problems)
    }
}
