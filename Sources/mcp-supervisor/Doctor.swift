import ArgumentParser
import SupervisorCore
import SupervisorPlatform

struct Doctor: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "Show which kernel features are present and what protection each cell gets. Exits non-zero when a cell cannot run as declared."
    )

    @OptionGroup var options: CommonOptions

    func run() throws {
        let s = try options.settings()
        let f = KernelFeatures.probe()
        let host = options.host(s, features: f)
        print("kernel: Linux \(Sys.unameRelease())")
        print(
            "supervisor: uid \(Sys.geteuid())\(f.isRoot ? " (root): workers run as uid \(host.workerUID), gid \(host.workerGID)" : ": workers run under this uid, confined by Landlock and seccomp")"
        )
        print(
            "seccomp: libseccomp API level \(f.seccompAPILevel); kill-process \(f.seccompAPILevel >= 3 ? "yes" : "NO"); user notification \(f.seccompUserNotification ? "yes (denied syscalls are named, then the worker is killed)" : "no (denied syscalls kill the worker unnamed)")"
        )
        if let abi = f.landlockABI {
            var parts = ["files"]
            if abi >= 2 { parts.append("refer") }
            if abi >= 3 { parts.append("truncate") }
            if abi >= 4 { parts.append("TCP bind/connect") }
            if abi >= 5 { parts.append("device ioctl") }
            if abi >= 6 { parts.append("abstract-unix-socket and signal scopes") }
            print("landlock: ABI \(abi) (\(parts.joined(separator: ", ")))")
        } else {
            print(
                "landlock: NOT AVAILABLE (\(f.landlockError ?? "?")): no cell can run; enable Landlock (lsm=...,landlock)"
            )
        }
        print("user namespaces: \(f.userNamespaces ? "yes" : "no (\(f.userNamespaceError ?? "?"))")")
        print("pid namespaces for workers that fork: \(f.pidNamespaces ? "yes" : "no (\(f.pidNamespaceError ?? "?"))")")
        print(
            "capability bounding set: \(f.canDropBoundingSet ? "dropped in every worker" : "cannot be dropped without CAP_SETPCAP; no_new_privs keeps workers from gaining any capability")"
        )
        print("sealed executables (memfd exec): \(f.memfdExec ? "yes" : "no (vm.memfd_noexec is set)")")
        print("cgroups: \(cgroupSummary())")
        print("state directory: \(s.stateDirectory)")
        print("scratch root: \(s.scratchRoot)")

        let groups: SyscallGroups
        do { groups = try SyscallGroups.load(path: s.syscallGroupsPath) } catch {
            print("syscall groups: ERROR \(error)")
            throw ExitCode(1)
        }
        let paths = (try? CellRegistry.manifestFiles(in: s.manifestsDirectory)) ?? []
        print("cells (\(paths.count) manifests in \(s.manifestsDirectory)):")
        var bad = 0
        for p in paths {
            do {
                let m = try CellRegistry.loadManifest(path: p)
                let c = try PreparedCell(manifest: m, groups: groups, host: host)
                try c.verifyFiles()
                let l = m.limits
                var ns = f.isRoot ? "mount" : "user+mount"
                if l.processes == .processes { ns += "+pid" }
                print(
                    "  \(m.name) \(m.version): OK — seccomp allowlist of \(c.allowlist.count) syscalls (\(c.seccomp.instructionCount) BPF instructions), Landlock ABI \(f.landlockABI ?? 0) with \(m.filesystem.read.count) read / \(m.filesystem.write.count) write / \(m.filesystem.execute.count) execute paths + scratch, processes: \(l.processes.rawValue), namespaces: \(ns), limits: \(l.timeoutMilliseconds) ms, \(l.cpuSeconds) s CPU, \(l.memoryMiB) MiB, \(l.outputKiB) KiB output, scratch \(l.scratchMiB) MiB / \(l.scratchFiles) files"
                )
            } catch {
                bad += 1
                print("  \(p): CANNOT RUN AS DECLARED — \(error)")
            }
        }
        resilienceSummary(stateDirectory: s.stateDirectory)
        // What `run` serves comes from the trust ledger: manifests that
        // would run mean nothing while none of them is registered there.
        let source = CellSource(
            allowUnsigned: false, manifestsDirectory: s.manifestsDirectory, stateDirectory: s.stateDirectory)
        let registry = source.registry(groups: groups, host: host)
        print(
            "trust ledger \(Ledger.path(stateDirectory: s.stateDirectory)): \(registry.cells.count) cells, "
                + "\(registry.toolNames.count) tools served")
        if registry.toolNames.isEmpty {
            print(
                "ERROR: "
                    + noToolsExplanation(
                        source: source, manifestsDirectory: s.manifestsDirectory, stateDirectory: s.stateDirectory,
                        registry: registry))
            throw ExitCode(1)
        }
        for p in registry.problems { print("  \(p)") }
        if bad > 0 { throw ExitCode(1) }
    }

    /// Quarantined versions and breakers not closed (docs/resilience.md).
    func resilienceSummary(stateDirectory: String) {
        let q = Quarantine(directory: Quarantine.directory(stateDirectory: stateDirectory)).all()
        print("quarantined cell versions: \(q.isEmpty ? "none" : "")")
        for r in q {
            print("  \(r.cell) \(r.label) [\(r.reason)] since \(r.since): release with `cell release \(r.cell)`")
        }
        let records = (try? SecurityLogReader.records(directory: stateDirectory + "/security")) ?? []
        let breakers = Insights.breakerStates(
            records.filter { $0.type == SecurityEventType.cellBreaker.rawValue }.map {
                Insights.Record(type: $0.type, time: $0.time, fields: $0.object)
            }
        ).filter { $0.state != "closed" }
        print("breakers not closed (last recorded state): \(breakers.isEmpty ? "none" : "")")
        for b in breakers { print("  \(b.cell) \(b.version): \(b.state) since \(b.time)") }
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
