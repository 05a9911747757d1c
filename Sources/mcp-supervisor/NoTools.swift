import SupervisorCore
import SupervisorPlatform

/// Why a supervisor would serve no tool at all, and how to fix it: `run`
/// refuses to start with this message (a stdio client would otherwise see an
/// empty tool list and nothing else) and `doctor` fails with it.
func noToolsExplanation(
    source: CellSource, manifestsDirectory dir: String, stateDirectory state: String, registry: CellRegistry,
    stateNote: String = ""
) -> String {
    var lines: [String] = []
    let manifests: String
    if (try? Sys.stat(dir)) == nil {
        manifests = "the manifests directory \(dir) does not exist"
    } else {
        let count = (try? CellRegistry.manifestFiles(in: dir).count) ?? 0
        manifests = "\(count) manifest\(count == 1 ? "" : "s") in \(dir)"
    }
    switch source {
    case .ledger(let path):
        let registered = Ledger.load(path: path).cells.count
        lines.append(
            "no usable tools: \(manifests), \(registered) cell\(registered == 1 ? "" : "s") registered in the "
                + "trust ledger \(path) (state directory \(state)\(stateNote))")
        lines.append(
            "fix: from the source checkout run `make install` or `make register` (they sign and register the "
                + "bundled cells in the default state directory), or sign and register cells into this state directory "
                + "(mcp-supervisor cell sign FILES --key KEY --state-dir \(state), then mcp-supervisor cell register "
                + "FILES --key KEY --state-dir \(state)); a client that starts the server with another $HOME or a "
                + "minimal environment must pass --state-dir (or set stateDirectory in the config file)")
    case .unsigned:
        lines.append("no usable tools: \(manifests) (--allow-unsigned serves the manifests of that directory)")
        lines.append("fix: pass --manifests with a directory of cell manifests (*.json)")
    }
    for p in registry.problems { lines.append("  \(p)") }
    return lines.joined(separator: "\n")
}

/// Where the state directory in use came from, for the lines that name it:
/// a client that starts the server with a minimal environment or another
/// `$HOME` (desktop clients do) otherwise reads the ledger of a directory
/// nobody registered cells in, and nothing says why.
func stateDirectoryNote(_ s: SupervisorSettings) -> String {
    guard s.stateDirectory == SupervisorSettings.defaultStateDirectory() else {
        return " (from --state-dir or the configuration file)"
    }
    if let x = Sys.getenv("XDG_STATE_HOME"), x.hasPrefix("/") { return " (from $XDG_STATE_HOME=\(x))" }
    if let h = Sys.getenv("HOME"), s.stateDirectory.hasPrefix(h + "/") { return " (from $HOME=\(h))" }
    return " ($HOME and $XDG_STATE_HOME are unset or missing: a per-uid default under /tmp; a client that "
        + "starts the server with a minimal environment should pass --state-dir)"
}
