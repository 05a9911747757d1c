import ArgumentParser
import StrictJSON
import SupervisorCore
import SupervisorPlatform

struct Doctor: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "Show which kernel features are present and what protection each cell gets. Exits non-zero when a cell cannot run as declared."
    )

    @OptionGroup var options: CommonOptions

    @OptionGroup var output: JSONOutput

    @Flag(
        name: .long,
        help: ArgumentHelp(
            "Check the manifests of --manifests as `run --allow-unsigned` would serve them, instead of the cells "
                + "of the trust ledger."))
    var allowUnsigned = false

    func run() throws {
        let s = try options.settings()
        let f = KernelFeatures.probe()
        let host = options.host(s, features: f)
        var report = JSONObject()
        let out = output
        out.text("kernel: Linux \(Sys.unameRelease())")
        out.text(
            "supervisor: uid \(Sys.geteuid())\(f.isRoot ? " (root): workers run as uid \(host.workerUID), gid \(host.workerGID)" : ": workers run under this uid, confined by Landlock and seccomp")"
        )
        out.text(
            "seccomp: libseccomp API level \(f.seccompAPILevel); kill-process \(f.seccompAPILevel >= 3 ? "yes" : "NO"); user notification \(f.seccompUserNotification ? "yes (denied syscalls are named, then the worker is killed)" : "no (denied syscalls kill the worker unnamed)")"
        )
        if let abi = f.landlockABI {
            var parts = ["files"]
            if abi >= 2 { parts.append("refer") }
            if abi >= 3 { parts.append("truncate") }
            if abi >= 4 { parts.append("TCP bind/connect") }
            if abi >= 5 { parts.append("device ioctl") }
            if abi >= 6 { parts.append("abstract-unix-socket and signal scopes") }
            out.text("landlock: ABI \(abi) (\(parts.joined(separator: ", ")))")
        } else {
            out.text(
                "landlock: NOT AVAILABLE (\(f.landlockError ?? "?")): no cell can run; enable Landlock (lsm=...,landlock)"
            )
        }
        out.text("user namespaces: \(f.userNamespaces ? "yes" : "no (\(f.userNamespaceError ?? "?"))")")
        out.text(
            "pid namespaces for workers that fork: \(f.pidNamespaces ? "yes" : "no (\(f.pidNamespaceError ?? "?"))")")
        out.text(
            "capability bounding set: \(f.canDropBoundingSet ? "dropped in every worker" : "cannot be dropped without CAP_SETPCAP; no_new_privs keeps workers from gaining any capability")"
        )
        out.text("sealed executables (memfd exec): \(f.memfdExec ? "yes" : "no (vm.memfd_noexec is set)")")
        out.text("cgroups: \(cgroupSummary())")
        out.text("state directory: \(s.stateDirectory)\(stateDirectoryNote(s))")
        out.text("policies: \(s.policiesDirectory)")
        out.text("scratch root: \(s.scratchRoot)")
        report["kernel"] = .string("Linux \(Sys.unameRelease())")
        report["features"] = featureSummary(f, host)
        report["stateDirectory"] = .string(s.stateDirectory)
        report["policies"] = .string(s.policiesDirectory)
        report["scratchRoot"] = .string(s.scratchRoot)

        let groups = try loadSyscallGroups(s, prefix: "syscall groups: ERROR")
        // What `run` serves: the trust ledger's active versions (signed
        // mode), or the manifests directory as it is (--allow-unsigned).
        let source = CellSource(
            allowUnsigned: allowUnsigned, manifestsDirectory: s.manifestsDirectory, stateDirectory: s.stateDirectory,
            ledgerPath: s.ledgerPath)
        let registry = source.registry(groups: groups, host: host)
        let ledger = s.ledgerPath
        var cells: [JSONValue] = []
        var bad = 0
        let secrets = SecretSources(store: SecretStore(stateDirectory: s.stateDirectory), environment: [:])
        func describe(_ m: CellManifest, _ c: PreparedCell) -> String {
            let l = m.limits
            var ns = f.isRoot ? "mount" : "user+mount"
            if l.processes == .processes { ns += "+pid" }
            return
                "\(m.name) \(m.version): OK — seccomp allowlist of \(c.allowlist.count) syscalls (\(c.seccomp.instructionCount) BPF instructions), Landlock ABI \(f.landlockABI ?? 0) with \(m.filesystem.read.count) read / \(m.filesystem.write.count) write / \(m.filesystem.execute.count) execute paths + scratch, processes: \(l.processes.rawValue), namespaces: \(ns), limits: \(l.timeoutMilliseconds) ms, \(l.cpuSeconds) s CPU, \(l.memoryMiB) MiB, \(l.outputKiB) KiB output, scratch \(l.scratchMiB) MiB / \(l.scratchFiles) files"
        }
        func check(_ c: PreparedCell) {
            let m = c.manifest
            var o = JSONObject([
                ("cell", .string(m.name)), ("version", .string(m.version)), ("manifest", .string(m.sourcePath)),
                ("tools", .array(m.tools.map { .string($0.name) })),
            ])
            do {
                try c.verifyFiles()
                // The store's secrets as a call would find them now (those
                // of the supervisor's environment are taken when `run`
                // starts, from its environment, not this command's).
                var stored = m
                stored.secrets = m.secrets.filter { $0.source == .store }
                if case .failure(let e) = secrets.resolve(stored) { throw CellCannotRun.secretUnavailable(e) }
                o["ok"] = true
                o["syscalls"] = .int(Int64(c.allowlist.count))
                out.text("  " + describe(m, c))
            } catch {
                bad += 1
                o["ok"] = false
                o["error"] = .string("\(error)")
                out.text("  \(m.name) \(m.version) (\(m.sourcePath)): CANNOT RUN AS DECLARED — \(error)")
                if let fix = hashMismatchFix(error, manifest: m.sourcePath) {
                    o["fix"] = .string(fix)
                    out.text("    \(fix)")
                }
            }
            cells.append(.object(o))
        }
        resilienceSummary(stateDirectory: s.stateDirectory, out, into: &report)
        if allowUnsigned {
            let count = (try? CellRegistry.manifestFiles(in: s.manifestsDirectory).count) ?? 0
            out.text("cells (unsigned: \(count) manifests in \(s.manifestsDirectory)):")
            report["source"] = .string("manifests \(s.manifestsDirectory) (unsigned)")
        } else {
            out.text(
                "cells (signed mode: the active versions of the trust ledger \(ledger); --manifests is not used, "
                    + "--allow-unsigned checks a manifests directory instead):")
            report["source"] = .string("trust ledger \(ledger)")
        }
        for c in registry.cells { check(c) }
        for p in registry.problems {
            bad += 1
            out.text("  \(p.path): CANNOT RUN AS DECLARED — \(p.message)")
            cells.append(
                .object(JSONObject([("manifest", .string(p.path)), ("ok", false), ("error", .string(p.message))])))
        }
        report["cells"] = .array(cells)
        report["toolsServed"] = .int(Int64(registry.toolNames.count))
        out.text(
            allowUnsigned
                ? "manifests \(s.manifestsDirectory): \(registry.cells.count) cells, \(registry.toolNames.count) tools served"
                : "trust ledger \(ledger): \(registry.cells.count) cells, \(registry.toolNames.count) tools served")
        var error: String? = nil
        if registry.toolNames.isEmpty {
            error = noToolsExplanation(
                source: source, manifestsDirectory: s.manifestsDirectory, stateDirectory: s.stateDirectory,
                registry: registry, stateNote: stateDirectoryNote(s))
            out.text("ERROR: " + error!)
        }
        report["ok"] = .bool(error == nil && bad == 0)
        report["error"] = error.map { .string($0) } ?? .null
        out.emit(.object(report))
        if error != nil || bad > 0 { throw ExitCode(1) }
    }

    /// Quarantined versions and breakers not closed (docs/resilience.md),
    /// in the text form and as `resilience` of the JSON report.
    func resilienceSummary(stateDirectory: String, _ out: JSONOutput, into report: inout JSONObject) {
        let q = Quarantine(directory: Quarantine.directory(stateDirectory: stateDirectory)).all()
        out.text("quarantined cell versions: \(q.isEmpty ? "none" : "")")
        for r in q {
            out.text("  \(r.cell) \(r.label) [\(r.reason)] since \(r.since): release with `cell release \(r.cell)`")
        }
        let records = (try? SecurityLogReader.records(directory: stateDirectory + "/security")) ?? []
        let breakers = Insights.breakerStates(
            records.filter { $0.type == SecurityEventType.cellBreaker.rawValue }.map {
                Insights.Record(type: $0.type, time: $0.time, fields: $0.object)
            }
        ).filter { $0.state != "closed" }
        out.text("breakers not closed (last recorded state): \(breakers.isEmpty ? "none" : "")")
        for b in breakers { out.text("  \(b.cell) \(b.version): \(b.state) since \(b.time)") }
        report["resilience"] = .object(
            JSONObject([
                (
                    "quarantined",
                    .array(
                        q.map {
                            .object(
                                JSONObject([
                                    ("cell", .string($0.cell)), ("versionId", .string($0.versionID)),
                                    ("reason", .string($0.reason)), ("since", .string($0.since)),
                                ]))
                        })
                ),
                (
                    "breakers",
                    .array(
                        breakers.map {
                            .object(
                                JSONObject([
                                    ("cell", .string($0.cell)), ("version", .string($0.version)),
                                    ("state", .string($0.state)), ("since", .string($0.time)),
                                ]))
                        })
                ),
            ]))
    }

    func cgroupSummary() -> String {
        if (try? Sys.stat("/sys/fs/cgroup/cgroup.controllers")) != nil {
            if let b = try? readFile("/sys/fs/cgroup/cgroup.controllers") {
                return
                    "v2 unified (controllers: \(String(decoding: b, as: UTF8.self).split(separator: "\n").first ?? "")); not used: limits come from rlimits, seccomp and PID namespaces"
            }
        }
        if (try? Sys.stat("/sys/fs/cgroup/unified")) != nil {
            return
                "hybrid (v1 memory/pids, v2 without them); not used: limits come from rlimits, seccomp and PID namespaces"
        }
        return "v1; not used: limits come from rlimits, seccomp and PID namespaces"
    }
}
