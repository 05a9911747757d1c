import ArgumentParser
import SupervisorCore

struct PolicyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy", abstract: "Check and explain policies.", subcommands: [Check.self, Explain.self])

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Validate a policy file; errors name file and field.")
        @Argument(help: "Policy file (default: policies/policy.json).") var file: String?
        func run() throws {
            let path =
                file.map(SupervisorSettings.absolute) ?? SupervisorSettings.defaultDirectory("policies")
                + "/policy.json"
            do {
                let p = try Policy.load(path: path)
                print(
                    "ok: \(path): \(p.principals.count) principal rule(s), phases \(p.phases.joined(separator: " → ")) (initial \(p.initialPhase)), sha256 \(p.sha256)"
                )
            } catch {
                printError("error: \(error)")
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
        @Option(name: .long, help: "Session phase (default: the policy's initial phase).") var phase: String?
        @Option(name: .long, help: "Policy file (default: policies/policy.json).") var policy: String?
        @Option(name: .long, help: "Directory of manifests (for the tool's phases).") var manifests: String =
            "manifests"

        func run() throws {
            let path =
                policy.map(SupervisorSettings.absolute) ?? SupervisorSettings.defaultDirectory("policies")
                + "/policy.json"
            let p: Policy
            do { p = try Policy.load(path: path) } catch {
                printError("error: \(error)")
                throw ExitCode(1)
            }
            var manifest: CellManifest? = nil
            for f in (try? CellRegistry.manifestFiles(in: SupervisorSettings.defaultDirectory(manifests))) ?? [] {
                if let m = try? CellRegistry.loadManifest(path: f), m.tools.contains(where: { $0.name == tool }) {
                    manifest = m
                }
            }
            let who = principal ?? "uid:\(geteuidValue())"
            let d = p.decide(
                principal: who, client: client, tool: tool, manifest: manifest, phase: phase ?? p.initialPhase)
            print(
                "\(d.allowed ? "allow" : "deny") \(tool) for \(who)\(client.map { " (client \($0))" } ?? "") in phase \(phase ?? p.initialPhase)"
            )
            print("rule: \(d.rule)")
            if !d.allowed { print("reason: \(d.message)") }
            if d.allowed, let (i, _) = p.approvalRule(tool: tool, phase: phase ?? p.initialPhase, principal: who) {
                print("approval: approval[\(i)]: a person is asked before each call runs")
            }
            if manifest == nil { print("note: no manifest in \(manifests) serves \(tool); phases not checked") }
            print("policy: \(path) sha256 \(p.sha256)")
            if !d.allowed { throw ExitCode(1) }
        }
    }
}
