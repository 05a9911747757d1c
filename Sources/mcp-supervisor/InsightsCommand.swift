import ArgumentParser
import StrictJSON
import SupervisorCore

/// `mcp-supervisor insights`: the improvement report (docs/resilience.md).
/// Reads only; every suggestion names its evidence and the change that
/// would apply it, which stays a signed, reviewed change.
struct InsightsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "insights",
        abstract: "Suggest improvements from the security log: limits to tighten, syscalls never used by profiled "
            + "calls, rising latency or failures, policy rules that never matched, breakers that opened, anomalies, "
            + "cells never called.")

    @OptionGroup var options: CommonOptions
    @Flag(name: .long, help: "Print one JSON object with every suggestion.") var json = false
    @Option(name: .long, help: "Calls of a cell or tool before its numbers count.") var minCalls = 20
    @Option(
        name: .long,
        help: "Profiled calls of a cell version before the syscalls none of them made are suggested for removal.")
    var minProfiledCalls = 50

    func run() throws {
        let s = try options.settings()
        let logDirectory = s.stateDirectory + "/security"
        let records: [Insights.Record]
        do {
            records = try SecurityLogReader.records(directory: logDirectory).map {
                Insights.Record(type: $0.type, time: $0.time, fields: $0.object)
            }
        } catch {
            printError("insights: cannot read the security log in \(logDirectory): \(error)")
            throw ExitCode(1)
        }
        var manifests: [CellManifest] = []
        for p in (try? CellRegistry.manifestFiles(in: s.manifestsDirectory)) ?? [] {
            if let m = try? CellRegistry.loadManifest(path: p) { manifests.append(m) }
        }
        let policyPath = s.policiesDirectory + "/policy.json"
        let policy = try? Policy.load(path: policyPath)
        var o = Insights.Options()
        o.minCalls = max(1, minCalls)
        o.minProfiledCalls = max(1, minProfiledCalls)
        let profilesDirectory = BehaviourProfiles.directory(stateDirectory: s.stateDirectory)
        var groups: SyscallGroups? = nil
        do { groups = try SyscallGroups.load(path: s.syscallGroupsPath) } catch {
            printError("insights: no unused_syscalls suggestions: \(error)")
        }
        let found = Insights.analyze(
            records: records, manifests: manifests, policy: policy, options: o,
            profiles: BehaviourProfiles.all(directory: profilesDirectory), groups: groups,
            profilesDirectory: profilesDirectory)
        if json {
            print(
                JSONValue.object(
                    JSONObject([
                        ("records", .int(Int64(records.count))), ("insights", .array(found.map(\.json))),
                    ])
                ).serialized())
            return
        }
        print("\(found.count) suggestion(s) from \(records.count) records in \(logDirectory):")
        for i in found {
            print("")
            print("[\(i.kind)] \(i.subject): \(i.summary)")
            print("  evidence: \(i.evidence)")
            print("  apply:    \(i.apply)")
        }
    }
}
