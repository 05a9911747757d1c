import ArgumentParser
import Logging
import SupervisorCore
import SupervisorPlatform

/// The configuration file and the cell settings of `Setting.all` (scope
/// `cells`) as flags: for every command that loads cells. Each flag's name,
/// help and accepted values come from its table entry; values are parsed
/// and checked by the table, the same code that reads the file.
struct CommonOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(configHelp))
    var config: String?

    @Option(name: .customLong(Setting.manifests.flag), help: ArgumentHelp(Setting.manifests.flagHelp))
    var manifests: String?

    @Option(name: .customLong(Setting.policies.flag), help: ArgumentHelp(Setting.policies.flagHelp))
    var policies: String?

    @Option(name: .customLong(Setting.stateDirectory.flag), help: ArgumentHelp(Setting.stateDirectory.flagHelp))
    var stateDir: String?

    @Option(name: .customLong(Setting.ledger.flag), help: ArgumentHelp(Setting.ledger.flagHelp))
    var ledger: String?

    @Option(name: .customLong(Setting.scratchDirectory.flag), help: ArgumentHelp(Setting.scratchDirectory.flagHelp))
    var scratchDir: String?

    @Option(name: .customLong(Setting.workerUid.flag), help: ArgumentHelp(Setting.workerUid.flagHelp))
    var workerUid: String?

    @Option(name: .customLong(Setting.workerGid.flag), help: ArgumentHelp(Setting.workerGid.flagHelp))
    var workerGid: String?

    @Option(name: .customLong(Setting.egressCaBundle.flag), help: ArgumentHelp(Setting.egressCaBundle.flagHelp))
    var egressCaBundle: String?

    static let configHelp =
        "Configuration file (JSON; docs/configuration.md). Default: $XDG_CONFIG_HOME/mcp-supervisor/config.json, "
        + "else ~/.config/mcp-supervisor/config.json, if present. Flags override it."

    /// Each setting of this group with its flag's value: the one place where
    /// a flag meets its setting (CommandLineTests checks every table entry).
    var flags: [(Setting, String?)] {
        [
            (.manifests, manifests), (.policies, policies), (.stateDirectory, stateDir), (.ledger, ledger),
            (.scratchDirectory, scratchDir), (.workerUid, workerUid), (.workerGid, workerGid),
            (.egressCaBundle, egressCaBundle),
        ]
    }

    func validate() throws { try validateFlags(flags) }

    /// Defaults, the configuration file, then the flags of this group and
    /// `more`. A broken file ends the command with status 2 and a message
    /// naming the file and the field.
    func settings(more: [(Setting, String?)] = []) throws -> SupervisorSettings {
        let given = (flags + more).compactMap { setting, value in value.map { (setting, $0) } }
        do { return try SupervisorSettings.resolve(configurationFile: config, flags: given) } catch {
            printError("mcp-supervisor: configuration error: \(error)")
            throw ExitCode(2)
        }
    }

    func host(_ s: SupervisorSettings, features: KernelFeatures) -> HostSandbox {
        HostSandbox(
            features: features, workerUID: s.workerUID, workerGID: s.workerGID, scratchRoot: s.scratchRoot,
            protectedPaths: [s.stateDirectory])
    }
}

/// The server settings of `Setting.all` (scope `server`) as flags of `run`.
struct ServerOptions: ParsableArguments {
    @Option(
        name: .customLong(Setting.maxConcurrentCalls.flag), help: ArgumentHelp(Setting.maxConcurrentCalls.flagHelp))
    var maxConcurrentCalls: String?

    @Option(name: .customLong(Setting.maxQueuedCalls.flag), help: ArgumentHelp(Setting.maxQueuedCalls.flagHelp))
    var maxQueuedCalls: String?

    @Option(name: .customLong(Setting.prespawn.flag), help: ArgumentHelp(Setting.prespawn.flagHelp))
    var prespawn: String?

    @Option(
        name: .customLong(Setting.prespawnIdleSeconds.flag), help: ArgumentHelp(Setting.prespawnIdleSeconds.flagHelp))
    var prespawnIdleSeconds: String?

    @Option(
        name: .customLong(Setting.ledgerRecheckSeconds.flag), help: ArgumentHelp(Setting.ledgerRecheckSeconds.flagHelp))
    var ledgerRecheckSeconds: String?

    @Option(name: .customLong(Setting.toolsPageSize.flag), help: ArgumentHelp(Setting.toolsPageSize.flagHelp))
    var toolsPageSize: String?

    @Option(name: .customLong(Setting.maxMessageBytes.flag), help: ArgumentHelp(Setting.maxMessageBytes.flagHelp))
    var maxMessageBytes: String?

    @Option(name: .customLong(Setting.metricsFile.flag), help: ArgumentHelp(Setting.metricsFile.flagHelp))
    var metricsFile: String?

    @Option(
        name: .customLong(Setting.metricsIntervalSeconds.flag),
        help: ArgumentHelp(Setting.metricsIntervalSeconds.flagHelp))
    var metricsIntervalSeconds: String?

    @Option(name: .customLong(Setting.otlpEndpoint.flag), help: ArgumentHelp(Setting.otlpEndpoint.flagHelp))
    var otlpEndpoint: String?

    @Option(name: .customLong(Setting.eventsJsonl.flag), help: ArgumentHelp(Setting.eventsJsonl.flagHelp))
    var eventsJsonl: String?

    @Option(
        name: .customLong(Setting.catalogueVisibleLimit.flag),
        help: ArgumentHelp(Setting.catalogueVisibleLimit.flagHelp))
    var catalogueVisibleLimit: String?

    @Option(
        name: .customLong(Setting.cataloguePinnedTools.flag), help: ArgumentHelp(Setting.cataloguePinnedTools.flagHelp))
    var cataloguePinnedTools: String?

    @Option(name: .customLong(Setting.logLevel.flag), help: ArgumentHelp(Setting.logLevel.flagHelp))
    var logLevel: String?

    /// Each setting of this group with its flag's value (see CommonOptions).
    var flags: [(Setting, String?)] {
        [
            (.maxConcurrentCalls, maxConcurrentCalls), (.maxQueuedCalls, maxQueuedCalls), (.prespawn, prespawn),
            (.prespawnIdleSeconds, prespawnIdleSeconds), (.toolsPageSize, toolsPageSize),
            (.ledgerRecheckSeconds, ledgerRecheckSeconds),
            (.maxMessageBytes, maxMessageBytes), (.metricsFile, metricsFile),
            (.metricsIntervalSeconds, metricsIntervalSeconds), (.otlpEndpoint, otlpEndpoint),
            (.eventsJsonl, eventsJsonl), (.catalogueVisibleLimit, catalogueVisibleLimit),
            (.cataloguePinnedTools, cataloguePinnedTools), (.logLevel, logLevel),
        ]
    }

    func validate() throws { try validateFlags(flags) }
}

/// The configuration file and the state directory, for commands that only
/// need where the supervisor keeps its state (keys, ledger, security log):
/// they find it where `run` does.
struct StateOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(CommonOptions.configHelp))
    var config: String?

    @Option(name: .customLong(Setting.stateDirectory.flag), help: ArgumentHelp(Setting.stateDirectory.flagHelp))
    var stateDir: String?

    @Option(name: .customLong(Setting.ledger.flag), help: ArgumentHelp(Setting.ledger.flagHelp))
    var ledger: String?

    /// Each setting of this group with its flag's value (see CommonOptions).
    var flags: [(Setting, String?)] { [(.stateDirectory, stateDir), (.ledger, ledger)] }

    /// Checks the flags and the file, so that `settings` cannot fail later.
    func validate() throws {
        try validateFlags(flags)
        do { _ = try resolve() } catch { throw ValidationError("configuration error: \(error)") }
    }

    func resolve(more: [(Setting, String?)] = []) throws(ConfigError) -> SupervisorSettings {
        let given = (flags + more).compactMap { setting, value in value.map { (setting, $0) } }
        return try SupervisorSettings.resolve(configurationFile: config, flags: given)
    }

    /// Defaults, the configuration file, then the flags (checked by
    /// `validate()` before the command runs).
    func settings(more: [(Setting, String?)] = []) -> SupervisorSettings {
        do { return try resolve(more: more) } catch {
            // Only if the file changed since validate(): fail closed.
            printError("mcp-supervisor: configuration error: \(error)")
            Sys.exit(2)
        }
    }
}

/// Checks each given flag's value with the table, so a bad value is a usage
/// error before anything starts.
func validateFlags(_ flags: [(Setting, String?)]) throws {
    var scratch = SupervisorSettings()
    for (setting, value) in flags {
        guard let value else { continue }
        do { try setting.apply(flagValue: value, to: &scratch) } catch { throw ValidationError(error.description) }
    }
}

/// swift-log may be bootstrapped once per process (a second time traps):
/// every command's loggers go to stderr through this one bootstrap.
private let stderrLogging: Void = LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }

func stderrLogger(_ label: String) -> Logger {
    stderrLogging
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

func geteuidValue() -> UInt32 { Sys.geteuid() }
