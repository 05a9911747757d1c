import SupervisorPlatform
#if canImport(Glibc)
import Glibc
#endif

/// Where the supervisor finds its inputs and keeps its state. Defaults work
/// straight from a checkout (run from the repository root).
public struct SupervisorSettings: Sendable {
    public var manifestsDirectory = "manifests"
    public var policiesDirectory = "policies"
    public var stateDirectory: String
    public var scratchRoot: String
    public var workerUID: UInt32? = nil
    public var workerGID: UInt32? = nil

    public var syscallGroupsPath: String { policiesDirectory + "/syscall-groups.json" }

    public init() {
        stateDirectory = Self.defaultStateDirectory()
        scratchRoot = Self.defaultScratchRoot()
    }

    /// `$XDG_STATE_HOME/mcp-supervisor`, else `~/.local/state/mcp-supervisor`.
    public static func defaultStateDirectory() -> String {
        if let x = getenv("XDG_STATE_HOME"), x.pointee != 0, String(cString: x).hasPrefix("/") {
            return String(cString: x) + "/mcp-supervisor"
        }
        if let h = getenv("HOME"), h.pointee != 0, (try? Sys.stat(String(cString: h)))?.isDirectory == true {
            return String(cString: h) + "/.local/state/mcp-supervisor"
        }
        return "/tmp/mcp-supervisor-\(geteuid())/state"
    }

    /// Scratch directories live on tmpfs when possible, so nothing a worker
    /// writes reaches a disk and creating and wiping them costs no journal:
    /// `$XDG_RUNTIME_DIR`, else `/dev/shm/mcp-supervisor-<uid>`, else
    /// `/tmp/mcp-supervisor-<uid>`.
    public static func defaultScratchRoot() -> String {
        if let x = getenv("XDG_RUNTIME_DIR"), x.pointee != 0, (try? Sys.stat(String(cString: x)))?.isDirectory == true {
            return String(cString: x) + "/mcp-supervisor/scratch"
        }
        if (try? Sys.stat("/dev/shm"))?.isDirectory == true {
            return "/dev/shm/mcp-supervisor-\(geteuid())/scratch"
        }
        return "/tmp/mcp-supervisor-\(geteuid())/scratch"
    }

    /// Absolute form of a possibly relative path.
    public static func absolute(_ p: String) -> String {
        if p.hasPrefix("/") { return p }
        var buf = [CChar](repeating: 0, count: 4096)
        guard getcwd(&buf, 4096) != nil else { return p }
        return normalize(String(cString: buf) + "/" + p)
    }

    /// Creates the state directory (0700) and its parents.
    public func prepareStateDirectory() throws(SystemError) {
        var path = ""
        for c in stateDirectory.split(separator: "/") {
            path += "/" + c
            if (try? Sys.lstat(path)) == nil { try Sys.mkdir(path, mode: 0o700) }
        }
        try Sys.chmod(stateDirectory, mode: 0o700)
    }
}
