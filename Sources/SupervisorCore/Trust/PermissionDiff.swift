import StrictJSON

/// What changes between two versions of a cell, and whether each change
/// widens (grants more) or narrows what the cell may do.
public struct PermissionChange: Sendable, CustomStringConvertible {
    public enum Direction: String, Sendable { case widens, narrows, changes }
    public let field: String
    public let direction: Direction
    public let detail: String
    public var description: String { "\(direction.rawValue): \(field): \(detail)" }
}

public enum PermissionDiff {
    public static func compare(_ old: CellManifest, _ new: CellManifest, groups: SyscallGroups) -> [PermissionChange] {
        var out: [PermissionChange] = []
        func sets(_ field: String, _ a: [String], _ b: [String]) {
            let added = Set(b).subtracting(a).sorted()
            let removed = Set(a).subtracting(b).sorted()
            if !added.isEmpty {
                out.append(
                    PermissionChange(field: field, direction: .widens, detail: "+ " + added.joined(separator: ", ")))
            }
            if !removed.isEmpty {
                out.append(
                    PermissionChange(field: field, direction: .narrows, detail: "- " + removed.joined(separator: ", ")))
            }
        }
        func number(_ field: String, _ a: Int, _ b: Int) {
            if b > a { out.append(PermissionChange(field: field, direction: .widens, detail: "\(a) → \(b)")) }
            if b < a { out.append(PermissionChange(field: field, direction: .narrows, detail: "\(a) → \(b)")) }
        }
        sets("filesystem.read", old.filesystem.read, new.filesystem.read)
        sets("filesystem.write", old.filesystem.write, new.filesystem.write)
        sets("filesystem.execute", old.filesystem.execute, new.filesystem.execute)
        let sysA = ((try? groups.entries(for: old)) ?? []).map(\.name)
        let sysB = ((try? groups.entries(for: new)) ?? []).map(\.name)
        sets("syscalls", sysA, sysB)
        let la = old.limits
        let lb = new.limits
        number("limits.timeoutMilliseconds", la.timeoutMilliseconds, lb.timeoutMilliseconds)
        number("limits.cpuSeconds", la.cpuSeconds, lb.cpuSeconds)
        number("limits.memoryMiB", la.memoryMiB, lb.memoryMiB)
        number("limits.openFiles", la.openFiles, lb.openFiles)
        number("limits.fileSizeMiB", la.fileSizeMiB, lb.fileSizeMiB)
        number("limits.outputKiB", la.outputKiB, lb.outputKiB)
        number("limits.frameKiB", la.frameKiB, lb.frameKiB)
        number("limits.maxProcesses", la.maxProcesses, lb.maxProcesses)
        number("limits.scratchMiB", la.scratchMiB, lb.scratchMiB)
        number("limits.scratchFiles", la.scratchFiles, lb.scratchFiles)
        let modes: [CellManifest.ProcessMode] = [.none, .threads, .processes]
        number(
            "limits.processes (none < threads < processes)", modes.firstIndex(of: la.processes)!,
            modes.firstIndex(of: lb.processes)!)
        sets("network.connect", old.network.hosts.map(\.description), new.network.hosts.map(\.description))
        number("network.maxConnections", old.network.maxConnections, new.network.maxConnections)
        // A server's tool definitions are what a model is told the tools
        // do: a changed description or schema is approved like a widening.
        if old.server != nil || new.server != nil,
            let d = ToolDefinitions.diff(
                pinned: old.tools.compactMap(\.pinned), listed: new.tools.compactMap(\.pinned))
        {
            out.append(PermissionChange(field: "tools (server definitions)", direction: .widens, detail: d))
        }
        sets(
            "server.packages", (old.server?.packages ?? []).map { "\($0.path)@\($0.sha256.prefix(12))" },
            (new.server?.packages ?? []).map { "\($0.path)@\($0.sha256.prefix(12))" })
        if old.workingDirectory != new.workingDirectory {
            out.append(
                PermissionChange(
                    field: "workingDirectory", direction: .changes,
                    detail: "\(old.workingDirectory ?? "scratch") → \(new.workingDirectory ?? "scratch")"))
        }
        sets(
            "libraries", old.libraries.map { "\($0.path)@\($0.sha256.prefix(12))" },
            new.libraries.map { "\($0.path)@\($0.sha256.prefix(12))" })
        let effects: [CellManifest.SideEffects] = [.none, .reads, .writes, .external]
        number(
            "sideEffects (none < reads < writes < external)", effects.firstIndex(of: old.sideEffects)!,
            effects.firstIndex(of: new.sideEffects)!)
        // No phases means every phase: that is the widest.
        if old.phases.isEmpty != new.phases.isEmpty {
            out.append(
                PermissionChange(
                    field: "phases", direction: new.phases.isEmpty ? .widens : .narrows,
                    detail:
                        "\(old.phases.isEmpty ? "every phase" : old.phases.joined(separator: ", ")) → \(new.phases.isEmpty ? "every phase" : new.phases.joined(separator: ", "))"
                ))
        } else {
            sets("phases", old.phases, new.phases)
        }
        sets(
            "environment", old.environmentPass + old.environmentSet.map(\.0),
            new.environmentPass + new.environmentSet.map(\.0))
        // A new secret, or a new use of one (another host, header, format or
        // variable), gives the cell a credential it did not have.
        sets("secrets", old.secrets.map(\.description), new.secrets.map(\.description))
        if old.executable.path != new.executable.path || old.argv != new.argv {
            out.append(
                PermissionChange(
                    field: "executable", direction: .widens,
                    detail:
                        "\(old.argv.joined(separator: " ")) (\(old.executable.path)) → \(new.argv.joined(separator: " ")) (\(new.executable.path))"
                ))
        }
        let ta = Dictionary(uniqueKeysWithValues: old.tools.map { ($0.name, $0) })
        let tb = Dictionary(uniqueKeysWithValues: new.tools.map { ($0.name, $0) })
        sets("tools", Array(ta.keys), Array(tb.keys))
        for (name, t) in tb.sorted(by: { $0.key < $1.key }) {
            guard let o = ta[name] else { continue }
            if o.description != t.description || o.inputSchema != t.inputSchema || o.outputSchema != t.outputSchema
                || o.annotations != t.annotations || o.title != t.title || o.command != t.command
            {
                out.append(
                    PermissionChange(
                        field: "tools.\(name)", direction: .widens,
                        detail: "definition changed (description, schema or annotations)"))
            }
        }
        if old.executable.sha256 != new.executable.sha256 {
            out.append(
                PermissionChange(
                    field: "executable.sha256", direction: .changes,
                    detail: "\(old.executable.sha256.prefix(12)) → \(new.executable.sha256.prefix(12))"))
        }
        return out
    }
}
