import StrictJSON
import SupervisorPlatform

/// The effective server settings: each one declared in `Setting.all`
/// (key, flag, range, unit, default, help), given its default there, then
/// its value from the configuration file, then from the command line.
/// Defaults work straight from a checkout (run from the repository root).
public struct SupervisorSettings: Sendable {
    // The initial values below are never seen: `init()` sets every property
    // from its entry in `Setting.all` (a unit test checks that each property
    // has exactly one entry).
    public internal(set) var manifestsDirectory = ""
    public internal(set) var policiesDirectory = ""
    public internal(set) var stateDirectory = ""
    public internal(set) var scratchRoot = ""
    public internal(set) var ledgerFile: String? = nil
    public internal(set) var ledgerRecheckSeconds = 0
    public internal(set) var workerUID: UInt32? = nil
    public internal(set) var workerGID: UInt32? = nil
    public internal(set) var maxConcurrentCalls = 0
    public internal(set) var maxQueuedCalls = 0
    public internal(set) var toolsPageSize = 0
    public internal(set) var maxMessageBytes = 0
    public internal(set) var prespawn = 0
    public internal(set) var prespawnIdleSeconds = 0
    public internal(set) var metricsFile: String? = nil
    public internal(set) var metricsIntervalSeconds = 0
    public internal(set) var otlpEndpoint: String? = nil
    public internal(set) var eventsJsonl: String? = nil
    public internal(set) var catalogueVisibleLimit = 0
    public internal(set) var cataloguePinnedTools: [String] = []
    public internal(set) var egressCaBundle: String? = nil
    public internal(set) var logLevel = ""
    /// The configuration file the values came from, if any.
    public internal(set) var configurationFile: String? = nil

    /// The trust ledger: `ledger` if set, else the state directory's.
    public var ledgerPath: String { ledgerFile ?? Ledger.path(stateDirectory: stateDirectory) }

    public var syscallGroupsPath: String { policiesDirectory + "/syscall-groups.json" }

    /// Every setting at its default.
    public init() {
        for setting in Setting.all { setting.applyDefault(to: &self) }
    }

    /// Defaults, then the configuration file (`configurationFile`, else the
    /// default one if it exists), then the flags given on the command line.
    /// Errors name the file and field, or the flag.
    public static func resolve(configurationFile: String?, flags: [(Setting, String)])
        throws(ConfigError) -> SupervisorSettings
    {
        var s = SupervisorSettings()
        if let path = configurationFile.map(absolute) ?? ConfigurationFile.defaultPath() {
            try ConfigurationFile.load(path: path, into: &s)
        }
        for (setting, value) in flags { try setting.apply(flagValue: value, to: &s) }
        return s
    }

    /// The effective settings as one JSON object with the configuration
    /// file's keys (recorded as a digest at start, so a change shows in the
    /// security log).
    public var recorded: JSONObject {
        var o = JSONObject()
        for setting in Setting.all { o[setting.key] = setting.value(in: self) }
        o["configFile"] = configurationFile.map { .string($0) } ?? .null
        return o
    }

    /// `$XDG_STATE_HOME/mcp-supervisor`, else `~/.local/state/mcp-supervisor`.
    public static func defaultStateDirectory() -> String {
        if let x = Sys.getenv("XDG_STATE_HOME"), x.hasPrefix("/") {
            return x + "/mcp-supervisor"
        }
        if let h = Sys.getenv("HOME"), (try? Sys.stat(h))?.isDirectory == true {
            return h + "/.local/state/mcp-supervisor"
        }
        return "/tmp/mcp-supervisor-\(Sys.geteuid())/state"
    }

    /// Scratch directories live on tmpfs when possible, so nothing a worker
    /// writes reaches a disk and creating and wiping them costs no journal:
    /// `$XDG_RUNTIME_DIR`, else `/dev/shm/mcp-supervisor-<uid>`, else
    /// `/tmp/mcp-supervisor-<uid>`.
    public static func defaultScratchRoot() -> String {
        if let x = Sys.getenv("XDG_RUNTIME_DIR"), (try? Sys.stat(x))?.isDirectory == true {
            return x + "/mcp-supervisor/scratch"
        }
        if (try? Sys.stat("/dev/shm"))?.isDirectory == true {
            return "/dev/shm/mcp-supervisor-\(Sys.geteuid())/scratch"
        }
        return "/tmp/mcp-supervisor-\(Sys.geteuid())/scratch"
    }

    /// Absolute form of a possibly relative path.
    public static func absolute(_ p: String) -> String {
        if p.hasPrefix("/") { return p }
        guard let cwd = Sys.getcwd() else { return p }
        return normalize(cwd + "/" + p)
    }

    /// Creates the state directory (0700) and its parents. With servers
    /// installed by `server add` under a root supervisor, whose workers run
    /// as another uid, it is 0711 instead: others may pass through to
    /// `servers/` (0755) but list nothing, and what else it holds stays
    /// private by its own modes (keys, trust, security: 0700).
    public func prepareStateDirectory() throws(SystemError) {
        try Sys.makeDirectories(stateDirectory, mode: 0o700)
        let servers = (try? Sys.lstat(stateDirectory + "/servers"))?.isDirectory == true
        try Sys.chmod(stateDirectory, mode: servers && Sys.geteuid() == 0 ? 0o711 : 0o700)
    }
}
