import ArgumentParser
import Logging
import SupervisorCore
import SupervisorPlatform
#if canImport(Glibc)
import Glibc
#endif

/// Options shared by the commands that load cells.
struct CommonOptions: ParsableArguments {
    @Option(name: .long, help: "Directory of cell manifests (*.json).")
    var manifests: String = "manifests"

    @Option(name: .long, help: "Directory of policies (syscall-groups.json lives here).")
    var policies: String = "policies"

    @Option(name: .long, help: "State directory (default: $XDG_STATE_HOME/mcp-supervisor or ~/.local/state/mcp-supervisor).")
    var stateDir: String?

    @Option(name: .long, help: "Parent directory of per-call scratch directories (default: $XDG_RUNTIME_DIR/mcp-supervisor/scratch, else /dev/shm/mcp-supervisor-<uid>/scratch, else /tmp/mcp-supervisor-<uid>/scratch: tmpfs where possible).")
    var scratchDir: String?

    @Option(name: .long, help: "uid workers run as when the supervisor runs as root (default 65534, nobody).")
    var workerUid: UInt32?

    @Option(name: .long, help: "gid workers run as when the supervisor runs as root (default 65534).")
    var workerGid: UInt32?

    func settings() -> SupervisorSettings {
        var s = SupervisorSettings()
        s.manifestsDirectory = SupervisorSettings.absolute(manifests)
        s.policiesDirectory = SupervisorSettings.absolute(policies)
        if let d = stateDir { s.stateDirectory = SupervisorSettings.absolute(d) }
        if let d = scratchDir { s.scratchRoot = SupervisorSettings.absolute(d) }
        s.workerUID = workerUid
        s.workerGID = workerGid
        return s
    }

    func host(_ s: SupervisorSettings, features: KernelFeatures) -> HostSandbox {
        HostSandbox(features: features, workerUID: s.workerUID, workerGID: s.workerGID, scratchRoot: s.scratchRoot,
                    protectedPaths: [s.stateDirectory])
    }
}

func stderrLogger(_ label: String) -> Logger {
    LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
    var l = Logger(label: label)
    l.logLevel = .info
    return l
}

/// A diagnostic line on stderr; never traps (a closed stderr is ignored).
func printError(_ s: String) {
    Diagnostics.line(s)
}

func formatDuration(_ ns: UInt64) -> String {
    let ms = Double(ns) / 1e6
    return ms < 10 ? String(format2(ms)) + " ms" : String(Int(ms.rounded())) + " ms"
}

func format2(_ d: Double) -> String {
    let r = (d * 100).rounded() / 100
    let s = String(r)
    if let dot = s.firstIndex(of: ".") {
        let decimals = s[s.index(after: dot)...].count
        return decimals == 1 ? s + "0" : s
    }
    return s + ".00"
}

func geteuidValue() -> UInt32 { geteuid() }
