/// Where the cells a command executes come from: the one trust rule for
/// every command that runs a cell (`run`, `call`). By default only the
/// active, unrevoked, signed versions in the trust ledger run
/// (docs/trust.md); the manifests directory as it is now runs only when the
/// operator asked for it with `--allow-unsigned`, for development.
public enum CellSource: Sendable, Equatable {
    /// The trust ledger of a state directory.
    case ledger(path: String)
    /// Development only: every manifest of a directory, without signatures
    /// or the ledger.
    case unsigned(manifestsDirectory: String)

    /// `ledgerPath` is the `ledger` setting (default: the state directory's).
    public init(allowUnsigned: Bool, manifestsDirectory: String, stateDirectory: String, ledgerPath: String? = nil) {
        self =
            allowUnsigned
            ? .unsigned(manifestsDirectory: manifestsDirectory)
            : .ledger(path: ledgerPath ?? Ledger.path(stateDirectory: stateDirectory))
    }

    public var isUnsigned: Bool {
        if case .unsigned = self { return true }
        return false
    }

    /// The cells to serve, read afresh (a broken manifest or ledger entry
    /// refuses its own cell and is listed in `problems`). With a
    /// `ledgerGuard`, a ledger that went backwards against what the security
    /// log anchored refuses every cell.
    public func registry(groups: SyscallGroups, host: HostSandbox, ledgerGuard: LedgerGuard? = nil) -> CellRegistry {
        switch self {
        case .ledger(let path):
            let ledger = Ledger.load(path: path)
            if let why = ledgerGuard?.refusal(ledger) {
                return CellRegistry.refusingAll(ledger: path, because: why)
            }
            return CellRegistry.load(ledger: ledger, groups: groups, host: host)
        case .unsigned(let directory):
            do {
                return CellRegistry.load(
                    paths: try CellRegistry.manifestFiles(in: directory), groups: groups, host: host)
            } catch {
                return CellRegistry(
                    cells: [],
                    problems: [
                        CellProblem(path: directory, message: "cannot list the manifests: \(error)")
                    ])
            }
        }
    }

    /// Why `tool` is not served from the ledger although a manifest in
    /// `manifestsDirectory` declares it, with how to fix that; nil if no
    /// manifest there declares it (or the source is not the ledger).
    public func unservedHint(tool: String, manifestsDirectory: String) -> String? {
        guard case .ledger(let path) = self,
            let files = try? CellRegistry.manifestFiles(in: manifestsDirectory)
        else { return nil }
        for file in files {
            guard let m = try? CellRegistry.loadManifest(path: file), m.tools.contains(where: { $0.name == tool })
            else { continue }
            return """
                tool "\(tool)" is declared by \(file), which is not an active signed version in the trust ledger \
                (\(path)): sign and register it (mcp-supervisor cell sign \(file) --key KEY, then mcp-supervisor \
                cell register \(file) --key KEY), or pass --allow-unsigned to run it unsigned (development only)
                """
        }
        return nil
    }
}
