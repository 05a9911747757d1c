import StrictJSON

/// The enforcement receipt of one call: under which confinement its result
/// was produced, in the result's `_meta` (docs/operations.md, "Enforcement
/// receipts"). Everything in it can be checked against what the operator
/// holds: the cell version in the trust ledger (`cell show`), the policy
/// file (`policy check`), the seccomp program (`cell show`), the
/// security log record of the call's end (`audit query`, `audit verify`).
///
/// It names no path, no argument, no principal and no key: only digests,
/// the cell's own name and version, numbers, and the log's key id (public).
public enum Receipt {
    /// The `_meta` key (namespaced, as MCP asks of `_meta` keys).
    public static let metaKey = "io.github.mcp-supervisor/receipt"
    /// The receipt's own format; a change of meaning takes a new number.
    public static let format = 1

    /// The SHA-256 of the BPF program a worker of `cell` is given
    /// (`struct sock_filter` array, as passed to seccomp(2)).
    public static func seccompDigest(_ cell: PreparedCell) -> String { cell.seccompSHA256 }

    /// The same digest for a manifest not loaded as a cell (`cell show`):
    /// the program depends only on the manifest, the syscall groups and
    /// whether the kernel has seccomp user notification.
    public static func seccompDigest(
        manifest: CellManifest, groups: SyscallGroups, features: KernelFeatures
    ) throws(CellRefusal) -> (sha256: String, instructions: Int) {
        let (program, _) = try PreparedCell.compileSeccomp(manifest: manifest, groups: groups, features: features)
        return (sha256Hex(program.bytes), program.instructionCount)
    }

    /// The digest of the allowlist a worker run under the syscall profiler
    /// gets instead (the same rules, killing what they refuse), and of the
    /// profiler's own program (docs/resilience.md, "Syscall profiler").
    public static func profiledSeccompDigests(
        manifest: CellManifest, groups: SyscallGroups, features: KernelFeatures
    ) throws(CellRefusal) -> (allowlist: String, profiler: String) {
        let (program, _) = try PreparedCell.compileSeccomp(
            manifest: manifest, groups: groups, features: features, killing: true)
        return (sha256Hex(program.bytes), sha256Hex(PreparedCell.profilerProgram.bytes))
    }

    /// The confinement every worker of `cell` gets under `limits`, without
    /// the call: what `validate --receipt` prints and a receipt contains.
    public static func confinement(
        cell: PreparedCell, limits: CellManifest.Limits, features: KernelFeatures
    ) -> JSONObject {
        var o = JSONObject([
            ("cell", .string(cell.name)), ("cellVersion", .string(cell.version)),
            // The trust ledger's version id is the manifest's SHA-256.
            ("versionId", .string(cell.manifest.manifestSHA256)),
            ("manifestSha256", .string(cell.manifest.manifestSHA256)),
            ("executableSha256", .string(cell.manifest.executable.sha256)),
        ])
        if let s = cell.manifest.script {
            o["scriptSha256"] = .string(s.sha256)
            o["librarySha256"] = .array(cell.manifest.libraries.map { .string($0.sha256) })
        }
        o["seccomp"] = .object(
            JSONObject([
                ("filterSha256", .string(seccompDigest(cell))),
                ("instructions", .int(Int64(cell.seccomp.instructionCount))),
                // What a syscall outside the allowlist meets.
                ("defaultAction", .string(features.seccompUserNotification ? "user_notif" : "kill_process")),
            ]))
        // The ruleset is created for the host's ABI (CallRunner.startWorker).
        o["landlockAbi"] = .int(Int64(features.landlockABI ?? 1))
        o["limits"] = .object(json(limits))
        return o
    }

    /// Whether a call that ended so ran under the confinement: a worker
    /// was started (or taken) for it. A cell that cannot run and a call
    /// the runner refused had no worker, so they get no receipt.
    public static func applies(to outcome: CallOutcome) -> Bool {
        switch outcome {
        case .cannotRun, .refused: return false
        default: return true
        }
    }

    /// The receipt of a call whose end is recorded as `callEnd`.
    /// `profiled`: the worker ran under the syscall profiler, with the
    /// allowlist compiled to kill what it refuses (`PreparedCell.ProfiledFilters`).
    static func make(
        cell: PreparedCell, limits: CellManifest.Limits, features: KernelFeatures, policySHA256: String,
        callID: String, prespawned: Bool, callEnd: LogRecordID?, logKeyID: String, profiled: Bool = false
    ) -> JSONValue {
        var o = JSONObject([("format", .int(Int64(format)))])
        for (k, v) in confinement(cell: cell, limits: limits, features: features) { o[k] = v }
        if profiled, let f = try? cell.profiledFilters() {
            o["seccomp"] = .object(
                JSONObject([
                    ("filterSha256", .string(f.allowlistSHA256)),
                    ("instructions", .int(Int64(f.allowlist.instructionCount))),
                    ("defaultAction", "kill_process"),
                    ("profilerSha256", .string(sha256Hex(f.profiler.bytes))),
                ]))
        }
        o["policySha256"] = .string(policySHA256)
        o["prespawned"] = .bool(prespawned)
        var log = JSONObject([("callId", .string(callID)), ("keyId", .string(logKeyID))])
        if let r = callEnd {
            // call.end is durable before the result exists (CallPipeline),
            // so the receipt names that record, not call.start.
            log["record"] = "call.end"
            log["seq"] = .int(Int64(r.seq))
            log["sha256"] = .string(r.sha256)
        }
        o["securityLog"] = .object(log)
        return .object(o)
    }

    /// The limits a worker was started with, in the manifest's field names.
    static func json(_ l: CellManifest.Limits) -> JSONObject {
        JSONObject([
            ("timeoutMilliseconds", .int(Int64(l.timeoutMilliseconds))), ("cpuSeconds", .int(Int64(l.cpuSeconds))),
            ("memoryMiB", .int(Int64(l.memoryMiB))), ("openFiles", .int(Int64(l.openFiles))),
            ("fileSizeMiB", .int(Int64(l.fileSizeMiB))), ("outputKiB", .int(Int64(l.outputKiB))),
            ("frameKiB", .int(Int64(l.frameKiB))), ("processes", .string(l.processes.rawValue)),
            ("maxProcesses", .int(Int64(l.maxProcesses))), ("scratchMiB", .int(Int64(l.scratchMiB))),
            ("scratchFiles", .int(Int64(l.scratchFiles))),
        ])
    }
}
