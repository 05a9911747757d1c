import StrictJSON

/// One server setting, declared once: its configuration-file key, its
/// command-line flag, the values it accepts, its unit, its default and its
/// help. The configuration file parser, the flags of `run`, `call`,
/// `validate` and `doctor`, the settings digest recorded at start and the
/// table in docs/configuration.md are all derived from `Setting.all`, in the
/// manner of nsjail's config.proto.
public struct Setting: Sendable {
    /// What a setting holds, and where in `SupervisorSettings` it lands.
    public enum Kind: Sendable {
        /// A directory. A relative path is relative to the configuration
        /// file's directory (file) or to the working directory (flag).
        case directory(WritableKeyPath<SupervisorSettings, String> & Sendable, default: @Sendable () -> String)
        case integer(WritableKeyPath<SupervisorSettings, Int> & Sendable, range: ClosedRange<Int>, default: Int)
        /// A uid or gid for workers. Never 0: a worker running as root would
        /// hold every file the supervisor's user can reach, whatever the
        /// manifest says. Never 4294967295: `(uid_t)-1` means "unchanged" to
        /// setresuid(2). Without a value the host decides (`rootDefault` when
        /// the supervisor runs as root, else the supervisor's own id).
        case identity(WritableKeyPath<SupervisorSettings, UInt32?> & Sendable, rootDefault: UInt32)
        case choice(WritableKeyPath<SupervisorSettings, String> & Sendable, choices: [String], default: String)
        /// A file the supervisor writes (or reads: `egressCaBundle`); unset
        /// (the default) turns off what it is for. A relative path is
        /// resolved as for `directory`.
        case file(WritableKeyPath<SupervisorSettings, String?> & Sendable)
        /// An OTLP/HTTP endpoint (`OTLPEndpoint`: `http://HOST[:PORT][/PATH]`);
        /// unset (the default) turns off what it is for.
        case endpoint(WritableKeyPath<SupervisorSettings, String?> & Sendable)
        /// A list of tool-name globs (`[A-Za-z0-9_.*?-]`, 1–128 characters
        /// each): an array of strings in the file, comma-separated as a flag;
        /// empty by default.
        case toolPatterns(WritableKeyPath<SupervisorSettings, [String]> & Sendable)
    }

    /// Which commands read a setting: `cells` by every command that loads
    /// cells (`run`, `call`, `validate`, `doctor`), `server` by `run` only.
    public enum Scope: Sendable { case cells, server }

    /// The configuration file's field.
    public let key: String
    /// The long command-line flag, without the leading `--`.
    public let flag: String
    public let kind: Kind
    /// The unit of an integer, as messages and docs name it ("" for none).
    public let unit: String
    public let scope: Scope
    /// The default as docs and `--help` state it, where it is not a plain
    /// value (it depends on the environment or on the host).
    let defaultText: String?
    /// One or two sentences for docs and `--help`.
    public let help: String
    /// Why a value is out of range, where the range alone does not say.
    let rangeReason: String?

    init(
        _ key: String, flag: String, _ kind: Kind, unit: String = "", scope: Scope, defaultText: String? = nil,
        help: String, rangeReason: String? = nil
    ) {
        self.key = key
        self.flag = flag
        self.kind = kind
        self.unit = unit
        self.scope = scope
        self.defaultText = defaultText
        self.help = help
        self.rangeReason = rangeReason
    }
}

// MARK: - The table

extension Setting {
    public static let logLevels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]

    public static let manifests = Setting(
        "manifests", flag: "manifests",
        .directory(\.manifestsDirectory, default: { SupervisorSettings.defaultDirectory("manifests") }),
        scope: .cells,
        defaultText: "`<prefix>/share/mcp-supervisor/manifests` beside an installed `<prefix>/bin/mcp-supervisor`, "
            + "else `manifests/` of the checkout the binary was built in (never the working directory)",
        help: "Directory of cell manifests (`*.json`).")

    public static let policies = Setting(
        "policies", flag: "policies",
        .directory(\.policiesDirectory, default: { SupervisorSettings.defaultDirectory("policies") }),
        scope: .cells, defaultText: "`policies/`, found the same way",
        help: "Directory of policies: `syscall-groups.json` and `policy.json`.")

    public static let stateDirectory = Setting(
        "stateDirectory", flag: "state-dir",
        .directory(\.stateDirectory, default: { SupervisorSettings.defaultStateDirectory() }), scope: .cells,
        defaultText: "`$XDG_STATE_HOME/mcp-supervisor`, else `~/.local/state/mcp-supervisor`, else (no `$HOME`, as "
            + "with `env -i`) `/tmp/mcp-supervisor-<uid>/state`; `run` and `doctor` say which one is in use and why",
        help:
            "Supervisor state: security log, keys, trust ledger (mode 0700). No manifest may expose it to a worker. `run` refuses to start if it, `trust/`, the ledger, `keys/` (or a file in it) or `security/` is writable by group or others."
    )

    public static let ledger = Setting(
        "ledger", flag: "ledger", .file(\.ledgerFile), scope: .cells,
        defaultText: "`trust/ledger.jsonl` in the state directory",
        help: "The trust ledger, when it lives outside the state directory: several instances read one ledger "
            + "(a shared directory, or a path the operator's tools keep in sync; signatures make the transport "
            + "untrusted) while each keeps its own security log and keys (docs/deployment.md). The trust "
            + "commands take the same setting to append to it.")

    public static let ledgerRecheckSeconds = Setting(
        "ledgerRecheckSeconds", flag: "ledger-recheck-seconds",
        .integer(\.ledgerRecheckSeconds, range: 0...3600, default: 0), unit: "s", scope: .server,
        help: "Besides inotify (a change in place on a local filesystem applies at once) and the look before each "
            + "call, the ledger is looked at this often, so that a revocation reaches a network or synchronised "
            + "path within this bound without waiting for a call; 0 turns the periodic look off.")

    public static let scratchDirectory = Setting(
        "scratchDirectory", flag: "scratch-dir",
        .directory(\.scratchRoot, default: { SupervisorSettings.defaultScratchRoot() }), scope: .cells,
        defaultText: "`$XDG_RUNTIME_DIR/mcp-supervisor/scratch`, else `/dev/shm/mcp-supervisor-<uid>/scratch`, "
            + "else `/tmp/mcp-supervisor-<uid>/scratch`",
        help: "Parent of the per-call scratch directories (mode 0711). tmpfs where possible: nothing a worker "
            + "writes reaches a disk, and creating and wiping a scratch directory costs no journal (~10% throughput "
            + "against ext4 here).")

    public static let workerUid = Setting(
        "workerUid", flag: "worker-uid", .identity(\.workerUID, rootDefault: 65534), unit: "uid", scope: .cells,
        defaultText: "65534 (nobody) when the supervisor runs as root, else the supervisor's own uid",
        help: "uid workers run as. A normal user's workers keep its uid.",
        rangeReason: "workers never run as root (uid 0)")

    public static let workerGid = Setting(
        "workerGid", flag: "worker-gid", .identity(\.workerGID, rootDefault: 65534), unit: "gid", scope: .cells,
        defaultText: "65534 when the supervisor runs as root, else the supervisor's own gid",
        help: "gid workers run as.",
        rangeReason: "workers never run in the root group (gid 0)")

    public static let maxConcurrentCalls = Setting(
        "maxConcurrentCalls", flag: "max-concurrent-calls",
        .integer(\.maxConcurrentCalls, range: 1...256, default: 4), unit: "calls", scope: .server,
        help: "Calls running at once.")

    public static let maxQueuedCalls = Setting(
        "maxQueuedCalls", flag: "max-queued-calls", .integer(\.maxQueuedCalls, range: 0...65536, default: 32),
        unit: "calls", scope: .server,
        help: "Calls waiting for a free slot; beyond this new calls are refused with an error result.")

    public static let toolsPageSize = Setting(
        "toolsPageSize", flag: "tools-page-size", .integer(\.toolsPageSize, range: 1...1000, default: 50),
        unit: "tools", scope: .server, help: "Tools per `tools/list` page.")

    public static let maxMessageBytes = Setting(
        "maxMessageBytes", flag: "max-message-bytes",
        .integer(\.maxMessageBytes, range: 1024...(256 << 20), default: 4 << 20), unit: "bytes", scope: .server,
        help: "Longest client message; a longer line is answered with `-32600` and skipped.")

    public static let prespawn = Setting(
        "prespawn", flag: "prespawn", .integer(\.prespawn, range: 0...16, default: 1), unit: "workers",
        scope: .server,
        help: "Workers started ahead of the call per recently called cell (docs/architecture.md, \"Prespawn\"); "
            + "0 spawns every worker when its call arrives.")

    public static let prespawnIdleSeconds = Setting(
        "prespawnIdleSeconds", flag: "prespawn-idle-seconds",
        .integer(\.prespawnIdleSeconds, range: 1...86400, default: 60), unit: "s", scope: .server,
        help: "A prespawned worker not used for this long is ended.")

    public static let metricsFile = Setting(
        "metricsFile", flag: "metrics-file", .file(\.metricsFile), scope: .server, defaultText: "none (no metrics)",
        help: "Prometheus text-format metrics, rewritten atomically (write, then rename) every "
            + "`metricsIntervalSeconds`, for node_exporter's textfile collector or any scraper that reads a file "
            + "(docs/operations.md).")

    public static let metricsIntervalSeconds = Setting(
        "metricsIntervalSeconds", flag: "metrics-interval-seconds",
        .integer(\.metricsIntervalSeconds, range: 1...3600, default: 5), unit: "s", scope: .server,
        help: "How often the metrics file is rewritten (and once more at exit).")

    public static let otlpEndpoint = Setting(
        "otlpEndpoint", flag: "otlp-endpoint", .endpoint(\.otlpEndpoint), scope: .server,
        defaultText: "none (no export)",
        help: "OTLP/HTTP (JSON) endpoint, e.g. `http://127.0.0.1:4318`: a span per call with a child per stage to "
            + "`/v1/traces`, every security log record as a log record to `/v1/logs` (docs/operations.md).")

    public static let eventsJsonl = Setting(
        "eventsJsonl", flag: "events-jsonl", .file(\.eventsJsonl), scope: .server, defaultText: "none (no export)",
        help: "A file every security log record is appended to, one JSON line each, exactly as the log holds it, "
            + "once it is durable (docs/operations.md).")

    public static let catalogueVisibleLimit = Setting(
        "catalogueVisibleLimit", flag: "catalogue-visible-limit",
        .integer(\.catalogueVisibleLimit, range: 0...100_000, default: 0), unit: "tools", scope: .server,
        defaultText: "0 (off: every tool is listed)",
        help: "When the principal may see more tools than this, a session's `tools/list` holds only the pinned "
            + "tools, the ones it enabled and the catalogue's search/enable tools (docs/catalogue.md).")

    public static let cataloguePinnedTools = Setting(
        "cataloguePinnedTools", flag: "catalogue-pinned-tools", .toolPatterns(\.cataloguePinnedTools),
        scope: .server, defaultText: "none",
        help: "Tools listed from the start while the catalogue is on: names or globs (`fs_*`); an array in the "
            + "file, comma-separated as a flag.")

    public static let egressCaBundle = Setting(
        "egressCaBundle", flag: "egress-ca-bundle", .file(\.egressCaBundle), scope: .cells,
        defaultText: "none (the system roots only)",
        help: "A PEM file of CA certificates the egress proxy trusts, besides the system roots, for the upstream "
            + "servers of connections it terminates TLS for to add a credential (docs/egress.md).")

    public static let logLevel = Setting(
        "logLevel", flag: "log-level", .choice(\.logLevel, choices: logLevels, default: "info"), scope: .server,
        help: "Diagnostics on stderr.")

    /// Every setting, in the order of docs/configuration.md.
    public static let all: [Setting] = [
        manifests, policies, stateDirectory, ledger, ledgerRecheckSeconds, scratchDirectory, workerUid, workerGid,
        egressCaBundle,
        maxConcurrentCalls, maxQueuedCalls, prespawn, prespawnIdleSeconds, toolsPageSize, maxMessageBytes,
        metricsFile, metricsIntervalSeconds, otlpEndpoint, eventsJsonl, catalogueVisibleLimit,
        cataloguePinnedTools, logLevel,
    ]

    public static func named(key: String) -> Setting? { all.first { $0.key == key } }
}

// MARK: - Reading values

extension Setting {
    /// The accepted values of an identity (see `Kind.identity`).
    static let identityRange = 1...4_294_967_294

    /// The default of an integer setting, for types that keep their own copy
    /// of a value (`ServiceOptions`).
    public var integerDefault: Int {
        guard case .integer(_, _, let d) = kind else { preconditionFailure("\(key) is not an integer setting") }
        return d
    }

    /// The uid/gid a root supervisor gives workers when the setting is unset.
    public var identityRootDefault: UInt32 {
        guard case .identity(_, let d) = kind else { preconditionFailure("\(key) is not an identity setting") }
        return d
    }

    /// Sets the default value.
    func applyDefault(to s: inout SupervisorSettings) {
        switch kind {
        case .directory(let p, let d): s[keyPath: p] = d()
        case .integer(let p, _, let d): s[keyPath: p] = d
        case .identity(let p, _): s[keyPath: p] = nil
        case .choice(let p, _, let d): s[keyPath: p] = d
        case .file(let p), .endpoint(let p): s[keyPath: p] = nil
        case .toolPatterns(let p): s[keyPath: p] = []
        }
    }

    /// Sets the value of the configuration file's field; `directory` is the
    /// file's, against which relative paths are resolved.
    func apply(_ value: JSONValue, file: String, directory: String, to s: inout SupervisorSettings)
        throws(ConfigError)
    {
        func fail(_ message: String) -> ConfigError { ConfigError(file: file, field: key, message: message) }
        switch kind {
        case .directory(let p, _):
            guard case .string(let v) = value, !v.isEmpty else {
                throw fail("expected a path, found \(value.typeName)")
            }
            s[keyPath: p] = v.hasPrefix("/") ? normalize(v) : normalize(directory + "/" + v)
        case .file(let p):
            guard case .string(let v) = value, !v.isEmpty, !v.hasSuffix("/") else {
                throw fail("expected a file path, found \(value.serialized())")
            }
            s[keyPath: p] = v.hasPrefix("/") ? normalize(v) : normalize(directory + "/" + v)
        case .endpoint(let p):
            guard case .string(let v) = value else { throw fail("expected an http:// URL, found \(value.typeName)") }
            if case .failure(let why) = OTLPEndpoint.parse(v) { throw fail(why.description) }
            s[keyPath: p] = v
        case .integer, .identity:
            guard case .int(let i) = value else {
                throw fail("expected an integer\(unit.isEmpty ? "" : " (\(unit))"), found \(value.typeName)")
            }
            try setInteger(i, to: &s, fail)
        case .choice(let p, let choices, _):
            guard case .string(let v) = value, choices.contains(v) else {
                throw fail("expected one of \(choices.joined(separator: ", ")), found \(value.serialized())")
            }
            s[keyPath: p] = v
        case .toolPatterns(let p):
            guard case .array(let items) = value else {
                throw fail("expected an array of tool names or globs, found \(value.typeName)")
            }
            var patterns: [String] = []
            for (i, item) in items.enumerated() {
                guard case .string(let v) = item, Self.isToolPattern(v) else {
                    throw fail(
                        "[\(i)]: expected a tool name or glob (\(Self.toolPatternText)), found \(item.serialized())")
                }
                patterns.append(v)
            }
            s[keyPath: p] = patterns
        }
    }

    /// Sets the value given as `--flag value`; relative paths are resolved
    /// against the working directory.
    public func apply(flagValue v: String, to s: inout SupervisorSettings) throws(ConfigError) {
        func fail(_ message: String) -> ConfigError { ConfigError(file: "--" + flag, field: "", message: message) }
        switch kind {
        case .directory(let p, _):
            guard !v.isEmpty else { throw fail("expected a path, found an empty string") }
            s[keyPath: p] = SupervisorSettings.absolute(v)
        case .file(let p):
            guard !v.isEmpty, !v.hasSuffix("/") else { throw fail("expected a file path, found \"\(v)\"") }
            s[keyPath: p] = SupervisorSettings.absolute(v)
        case .endpoint(let p):
            if case .failure(let why) = OTLPEndpoint.parse(v) { throw fail(why.description) }
            s[keyPath: p] = v
        case .integer, .identity:
            guard let i = Int64(v) else {
                throw fail("expected an integer\(unit.isEmpty ? "" : " (\(unit))"), found \"\(v)\"")
            }
            try setInteger(i, to: &s, fail)
        case .choice(let p, let choices, _):
            guard choices.contains(v) else {
                throw fail("expected one of \(choices.joined(separator: ", ")), found \"\(v)\"")
            }
            s[keyPath: p] = v
        case .toolPatterns(let p):
            // An empty value clears the list (a file's pins can be undone).
            let patterns = v.isEmpty ? [] : v.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            if let bad = patterns.first(where: { !Self.isToolPattern($0) }) {
                throw fail(
                    "expected tool names or globs (\(Self.toolPatternText)) separated by commas, found \"\(bad)\"")
            }
            s[keyPath: p] = patterns
        }
    }

    static let toolPatternText = "[A-Za-z0-9_.*?-], 1 to 128 characters"

    /// A tool name (`CellManifest.namePattern`) that may hold `*` and `?`.
    static func isToolPattern(_ s: String) -> Bool {
        let u = Array(s.utf8)
        guard !u.isEmpty && u.count <= 128 else { return false }
        return u.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x5F
                || c == 0x2E || c == 0x2D || c == 0x2A || c == 0x3F
        }
    }

    /// The one range check for file and flag.
    private func setInteger(_ i: Int64, to s: inout SupervisorSettings, _ fail: (String) -> ConfigError)
        throws(ConfigError)
    {
        let range: ClosedRange<Int>
        switch kind {
        case .integer(_, let r, _): range = r
        case .identity: range = Self.identityRange
        default: preconditionFailure("\(key) is not an integer setting")
        }
        guard i >= Int64(range.lowerBound) && i <= Int64(range.upperBound) else {
            throw fail(
                "\(i) is out of range \(range.lowerBound)...\(range.upperBound)\(unit.isEmpty ? "" : " \(unit)")"
                    + (rangeReason.map { ": " + $0 } ?? ""))
        }
        switch kind {
        case .integer(let p, _, _): s[keyPath: p] = Int(i)
        case .identity(let p, _): s[keyPath: p] = UInt32(i)
        default: break
        }
    }

    /// The effective value, as the configuration file would spell it.
    func value(in s: SupervisorSettings) -> JSONValue {
        switch kind {
        case .directory(let p, _): return .string(s[keyPath: p])
        case .integer(let p, _, _): return .int(Int64(s[keyPath: p]))
        case .identity(let p, _): return s[keyPath: p].map { .int(Int64($0)) } ?? .null
        case .choice(let p, _, _): return .string(s[keyPath: p])
        case .file(let p), .endpoint(let p): return s[keyPath: p].map { .string($0) } ?? .null
        case .toolPatterns(let p): return .array(s[keyPath: p].map { .string($0) })
        }
    }
}

// MARK: - Describing settings (docs/configuration.md, --help)

extension Setting {
    /// The accepted values, in words.
    public var valuesText: String {
        switch kind {
        case .directory: return "a directory"
        case .file: return "a file path"
        case .endpoint: return "an `http://` URL"
        case .integer(_, let r, _): return "\(r.lowerBound)–\(r.upperBound)\(unit.isEmpty ? "" : " " + unit)"
        case .identity:
            return "\(Self.identityRange.lowerBound)–\(Self.identityRange.upperBound) (never 0)"
        case .choice(_, let c, _): return c.map { "`\($0)`" }.joined(separator: ", ")
        case .toolPatterns: return "tool names or globs"
        }
    }

    public var defaultDescription: String {
        if let defaultText { return defaultText }
        switch kind {
        case .integer(_, _, let d): return "\(d)"
        case .choice(_, _, let d): return "`\(d)`"
        case .directory, .identity, .file, .endpoint, .toolPatterns: preconditionFailure("\(key) needs a defaultText")
        }
    }

    /// The flag's text in `--help` (plain text: no Markdown quotes).
    public var flagHelp: String {
        let values: String
        switch kind {
        case .directory, .file: values = ""
        default: values = valuesText + "; "
        }
        return String("\(help) (\(values)default: \(defaultDescription))".filter { $0 != "`" })
    }

    public static let tableBegin = "<!-- settings table: generated from Setting.all by `make docs`; do not edit -->"
    public static let tableEnd = "<!-- end of settings table -->"

    /// The settings table of docs/configuration.md.
    public static func markdownTable() -> String {
        var lines = [
            "| key | flag | values | default | meaning |",
            "| --- | --- | --- | --- | --- |",
        ]
        for s in all {
            let cells = ["`\(s.key)`", "`--\(s.flag)`", s.valuesText, s.defaultDescription, s.help]
            lines.append("| " + cells.map { $0.replacing("|", with: "\\|") }.joined(separator: " | ") + " |")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// `document` with the text between the table markers replaced by
    /// `markdownTable()`; nil if the markers are missing.
    public static func documentWithTable(_ document: String) -> String? {
        guard let begin = document.firstRange(of: tableBegin + "\n"), let end = document.firstRange(of: tableEnd),
            begin.upperBound <= end.lowerBound
        else { return nil }
        return String(document[..<begin.upperBound]) + markdownTable() + String(document[end.lowerBound...])
    }
}
