import ArgumentParser
import StrictJSON
import SupervisorCore
import SupervisorPlatform

struct Call: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run one tool call in a fresh worker and print its result and outcome.")

    @OptionGroup var options: CommonOptions

    @Argument(help: "Tool name.")
    var tool: String

    @Option(name: .long, help: "Arguments as a JSON object.")
    var args: String = "{}"

    @Flag(name: .long, help: "Print the result and the outcome as one JSON object.")
    var json = false

    @Flag(
        name: .long,
        help: ArgumentHelp(
            "Development only: run the manifest in --manifests without signature or trust ledger.",
            discussion: "Without it, as for `run`, only the active signed version registered in the trust ledger runs.")
    )
    var allowUnsigned = false

    @Flag(
        name: .long,
        help: ArgumentHelp(
            "Learn mode, for developing a cell: syscalls outside the allowlist are recorded and let through, then an allowlist is proposed.",
            discussion:
                "Not a sandbox against the syscalls it lets through: use it on your own cell's code, never on untrusted input."
        ))
    var learn = false

    @Flag(
        name: .long,
        help: ArgumentHelp(
            "Run the worker under the syscall profiler and print the syscalls it made (docs/resilience.md).",
            discussion: "The allowlist is enforced as always: a syscall outside it kills the worker, unnamed."))
    var profileSyscalls = false

    func run() throws {
        let s = try options.settings()
        let logger = stderrLogger("mcp-supervisor")
        let groups = try loadSyscallGroups(s)
        let arguments: JSONObject
        do {
            guard case .object(let o) = try JSONParser.parse(args) else {
                printError("error: --args must be a JSON object")
                throw ExitCode(2)
            }
            arguments = o
        } catch let e as JSONParseError {
            printError("error: --args is not valid JSON: \(e)")
            throw ExitCode(2)
        }
        let host = options.host(s, features: KernelFeatures.probe())
        // The same trust rule as `run` (CellSource).
        let source = CellSource(
            allowUnsigned: allowUnsigned, manifestsDirectory: s.manifestsDirectory,
            stateDirectory: s.stateDirectory, ledgerPath: s.ledgerPath)
        let registry = source.registry(groups: groups, host: host)
        guard let entry = registry.tool(named: tool) else {
            for p in registry.problems { printError("warning: \(p)") }
            if let hint = source.unservedHint(tool: tool, manifestsDirectory: s.manifestsDirectory) {
                printError("error: \(hint)")
            } else {
                printError("error: unknown tool \"\(tool)\" (known: \(registry.toolNames.joined(separator: ", ")))")
            }
            throw ExitCode(2)
        }
        if !source.isUnsigned && options.manifests != nil {
            printError(
                "note: signed mode: \(tool) runs the active version of the trust ledger "
                    + "\(s.ledgerPath); --manifests is not used "
                    + "(--allow-unsigned runs a manifests directory, for development)")
        }
        if source.isUnsigned {
            printError(
                "warning: UNSIGNED development mode: running \(entry.cell.manifest.sourcePath) without signature "
                    + "or trust ledger; never use this in a deployment")
        }
        if let problem = SchemaValidator.validate(.object(arguments), against: entry.tool.inputSchema) {
            printError("error: invalid arguments: \(problem)")
            throw ExitCode(2)
        }
        let runner = try CallRunner(
            host: host, logger: logger, secrets: SecretSources(store: SecretStore(stateDirectory: s.stateDirectory)))
        try startEgress(runner, settings: s, logger: logger)
        if learn && profileSyscalls {
            printError("error: --learn and --profile-syscalls cannot be combined (both need the one seccomp listener)")
            throw ExitCode(2)
        }
        if (learn || profileSyscalls) && !host.features.seccompUserNotification {
            printError(
                "error: \(learn ? "learn mode" : "the syscall profiler") needs seccomp user notification (Linux 5.0+), "
                    + "which this kernel does not offer")
            throw ExitCode(2)
        }
        func onNetwork(_ d: NetworkDecision) {
            if let r = d.refusal {
                printError("network: refused \(d.host):\(d.port): \(r)")
            } else {
                printError("network: granted \(d.host):\(d.port) (\(d.address ?? ""))")
            }
        }
        func onMessage(_ message: WorkerMessage) {
            switch message {
            case .progress(let p, let t, let m):
                printError("progress: \(p)\(t.map { "/\($0)" } ?? "")\(m.map { " \($0)" } ?? "")")
            case .log(let level, let m, _):
                printError("log[\(level)]: \(m)")
            }
        }
        let report = runner.run(
            cell: entry.cell, tool: tool, arguments: arguments, callID: "cli-1", learn: learn,
            profileSyscalls: profileSyscalls, onNetwork: onNetwork, onMessage: onMessage)
        if json {
            var o = JSONObject([("outcome", .string(report.outcome.kind)), ("detail", .string(report.outcome.detail))])
            if case .timeout = report.outcome {
                o["timeoutMilliseconds"] = .int(Int64(entry.cell.manifest.limits.timeoutMilliseconds))
            }
            if case .success(let r) = report.outcome {
                o["content"] = .array(r.content)
                if let sc = r.structuredContent { o["structuredContent"] = sc }
            }
            o["durationMicroseconds"] = .int(Int64(report.durationNanoseconds / 1000))
            o["cpuMicroseconds"] = .int(Int64(report.cpuNanoseconds / 1000))
            if let p = report.peakMemoryBytes { o["peakMemoryBytes"] = .int(Int64(p)) }
            if let used = report.syscallProfile {
                o["syscalls"] = .object(
                    JSONObject(used.sorted { $0.key < $1.key }.map { ($0.key, .int(Int64($0.value))) }))
            }
            switch report.exit {
            case .exited(let c)?: o["exitStatus"] = .int(Int64(c))
            case .signaled(let sig)?: o["signal"] = .string(signalName(sig))
            case nil: break
            }
            print(JSONValue.object(o).serialized())
        } else {
            if case .success(let r) = report.outcome {
                for c in r.content {
                    if let t = c["text"]?.stringValue { print(t) } else { print(c.serialized()) }
                }
                if let sc = r.structuredContent { print("structuredContent: \(sc.serialized())") }
            }
            var exit = ""
            switch report.exit {
            case .exited(let c)?: exit = "exit \(c)"
            case .signaled(let sig)?: exit = signalName(sig)
            case nil: exit = "not started"
            }
            printError(
                "outcome: \(report.outcome.detail); duration \(formatDuration(report.durationNanoseconds)), cpu \(formatDuration(report.cpuNanoseconds)), peak memory \(report.peakMemoryBytes.map { "\($0 >> 10) KiB" } ?? "not measured"), \(exit)"
            )
            if case .timeout = report.outcome {
                printError(
                    "the deadline is limits.timeoutMilliseconds = \(entry.cell.manifest.limits.timeoutMilliseconds) ms "
                        + "in \(entry.cell.manifest.sourcePath)")
            }
            if case .cannotRun(let c) = report.outcome,
                let fix = hashMismatchFix(c, manifest: entry.cell.manifest.sourcePath)
            {
                printError(fix)
            }
            if case .success = report.outcome {
            } else if !report.diagnostics.isEmpty {
                printError("worker stderr (last \(report.diagnostics.utf8.count) bytes):\n\(report.diagnostics)")
            }
        }
        if learn { printLearned(report.learnedSyscalls, entry.cell.manifest, groups) }
        if let used = report.syscallProfile {
            let list = used.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }
            printError("profile: \(used.count) syscalls made (name, times): \(list.joined(separator: ", "))")
        }
        if case .success = report.outcome { return }
        throw ExitCode(1)
    }

    private func printLearned(_ learned: [String], _ m: CellManifest, _ groups: SyscallGroups) {
        guard !learned.isEmpty else {
            printError("learn: the call needed no syscall outside \(m.sourcePath)'s allowlist")
            return
        }
        let p = groups.proposal(for: learned, manifest: m)
        printError("learn: \(learned.count) syscalls outside the allowlist: \(learned.joined(separator: ", "))")
        printError("learn: proposed for \(m.sourcePath):")
        var syscalls = JSONObject()
        syscalls["groups"] = .array((m.syscallGroups + p.addGroups).map { .string($0) })
        let allow = m.syscallAllow + p.addAllow
        if !allow.isEmpty { syscalls["allow"] = .array(allow.map { .string($0) }) }
        printError("  \"syscalls\": \(JSONValue.object(syscalls).serialized())")
        if !p.processCalls.isEmpty {
            printError(
                "learn: \(p.processCalls.joined(separator: ", ")) follow limits.processes (\"threads\" for clone with CLONE_THREAD, \"processes\" for child processes)"
            )
        }
        if !p.unmatchedIoctls.isEmpty {
            printError(
                "learn: ioctl requests no group allows: \(p.unmatchedIoctls.map { "0x" + String($0, radix: 16) }.joined(separator: ", ")); allowing ioctl outright would allow every request, so add a conditioned entry to a group in syscall-groups.json"
            )
        }
        if !p.network.isEmpty {
            printError(
                "learn: never allowed, refused during this run: \(p.network.joined(separator: ", ")); network access comes only from the manifest's \"network\" declaration, which gives the worker connected sockets from the supervisor's broker (docs/manifest.md, 'network')"
            )
        }
        if !p.forbidden.isEmpty {
            printError(
                "learn: never allowed in a worker, refused during this run: \(p.forbidden.joined(separator: ", ")); the cell must do without them"
            )
        }
    }
}
