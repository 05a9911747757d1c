import ArgumentParser
import StrictJSON
import SupervisorCore

struct PolicyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy", abstract: "Check and explain policies.", subcommands: [Check.self, Explain.self])

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Validate a policy file; errors name file and field.")
        @Argument(help: "Policy file (default: policy.json of the policies directory, found as `run` finds it).")
        var file: String?
        @OptionGroup var options: CommonOptions
        @OptionGroup var output: JSONOutput
        func run() throws {
            let path =
                try file.map(SupervisorSettings.absolute) ?? options.settings().policiesDirectory + "/policy.json"
            do {
                let p = try Policy.load(path: path)
                output.text(
                    "ok: \(path): \(p.principals.count) principal rule(s), phases \(p.phases.joined(separator: " → ")) (initial \(p.initialPhase)), sha256 \(p.sha256)"
                )
                output.emit(
                    .object(
                        JSONObject([
                            ("path", .string(path)), ("ok", true), ("principalRules", .int(Int64(p.principals.count))),
                            ("phases", .array(p.phases.map { .string($0) })), ("initialPhase", .string(p.initialPhase)),
                            ("sha256", .string(p.sha256)),
                        ])))
            } catch {
                printError("error: \(describeError(error))")
                output.emit(
                    .object(
                        JSONObject([
                            ("path", .string(path)), ("ok", false), ("error", .string(describeError(error))),
                        ])))
                throw ExitCode(1)
            }
        }
    }

    struct Explain: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "The decision `run` makes for a tool, and the rule behind it (rate limits and concurrency are decided at call time)."
        )
        @Option(name: .long, help: "Tool name.") var tool: String
        @Option(name: .long, help: "Principal (default: this user, uid:<n>).") var principal: String?
        @Option(name: .long, help: "Client name from initialize.") var client: String?
        @Option(name: .customLong("group"), help: "A group of the caller's token (repeatable; HTTP only).")
        var groups: [String] = []
        @Option(name: .customLong("scope"), help: "A scope of the caller's token (repeatable; HTTP only).")
        var scopes: [String] = []
        @Option(name: .long, help: "Session phase (default: the policy's initial phase).") var phase: String?
        @Option(name: .long, help: "Policy file (default: policy.json of the policies directory).") var policy: String?
        /// --manifests (for the tool's phases), --policies, --config as
        /// every other command takes them.
        @OptionGroup var options: CommonOptions
        @OptionGroup var output: JSONOutput

        func run() throws {
            let s = try options.settings()
            let manifests = s.manifestsDirectory
            let path = policy.map(SupervisorSettings.absolute) ?? s.policiesDirectory + "/policy.json"
            let p: Policy
            do { p = try Policy.load(path: path) } catch {
                printError("error: \(describeError(error))")
                throw ExitCode(1)
            }
            var manifest: CellManifest? = nil
            for f in (try? CellRegistry.manifestFiles(in: manifests)) ?? [] {
                if let m = try? CellRegistry.loadManifest(path: f), m.tools.contains(where: { $0.name == tool }) {
                    manifest = m
                }
            }
            let who = principal ?? "uid:\(geteuidValue())"
            let d = p.decide(
                principal: who, client: client, groups: groups, scopes: scopes, tool: tool, manifest: manifest,
                phase: phase ?? p.initialPhase)
            output.text(
                "\(d.allowed ? "allow" : "deny") \(tool) for \(who)\(client.map { " (client \($0))" } ?? "") in phase \(phase ?? p.initialPhase)"
            )
            output.text("rule: \(d.rule)")
            if !d.allowed { output.text("reason: \(d.message)") }
            let approval = d.allowed ? p.approvalRule(tool: tool, phase: phase ?? p.initialPhase, principal: who) : nil
            if let (i, _) = approval {
                output.text("approval: approval[\(i)]: a person is asked before each call runs")
            }
            if manifest == nil { output.text("note: no manifest in \(manifests) serves \(tool); phases not checked") }
            output.text("policy: \(path) sha256 \(p.sha256)")
            output.emit(
                .object(
                    JSONObject([
                        ("tool", .string(tool)), ("principal", .string(who)),
                        ("client", client.map { .string($0) } ?? .null),
                        ("groups", .array(groups.map { .string($0) })), ("scopes", .array(scopes.map { .string($0) })),
                        ("phase", .string(phase ?? p.initialPhase)), ("allowed", .bool(d.allowed)),
                        ("rule", .string(d.rule)), ("reason", d.allowed ? .null : .string(d.message)),
                        ("approvalRule", approval.map { .int(Int64($0.0)) } ?? .null),
                        ("manifestFound", .bool(manifest != nil)), ("policy", .string(path)),
                        ("policySha256", .string(p.sha256)),
                    ])))
            if !d.allowed { throw ExitCode(1) }
        }
    }
}
