import StrictJSON
import SupervisorCore
import SupervisorPlatform
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// The syscall profiler with real workers (docs/resilience.md, "Syscall
/// profiler"): it lists what a worker made, and it never lets through what
/// the allowlist refuses. In SandboxTests, so the unprivileged pass runs
/// them too.
extension SandboxTests {
    func profiled(_ cell: PreparedCell, _ args: JSONObject, learn: Bool = false) throws -> CallReport {
        try Harness.runner().run(
            cell: cell, tool: "probe", arguments: args, callID: "p", learn: learn, profileSyscalls: true)
    }

    func testTheProfilerListsTheSyscallsAWorkerMade() throws {
        XCTAssertTrue(Harness.features.seccompUserNotification, "the profiler needs seccomp user notification")
        let cell = try probe()
        // getpid (39) from the probe, among what the runtime makes.
        let r = try profiled(cell, ["action": "syscall", "nr": 39])
        XCTAssertEqual(Harness.text(r)?.hasPrefix("ok "), true, r.outcome.detail)
        let used = try XCTUnwrap(r.syscallProfile, "a profiled call has a profile")
        XCTAssertGreaterThanOrEqual(used["getpid"] ?? 0, 1, "\(used)")
        XCTAssertGreaterThanOrEqual(used["read"] ?? 0, 1, "the request is read: \(used)")
        XCTAssertGreaterThanOrEqual(used["write"] ?? 0, 1, "the result is written: \(used)")
        // What the profiler lets through unseen is never listed.
        for n in PreparedCell.profilerPassing { XCTAssertNil(used[n], n) }
        // Every name is one the allowlist allows: the profiler sees nothing else.
        let allowed = Set(cell.allowlist)
        for n in used.keys {
            let name = n.hasPrefix("ioctl(") ? "ioctl" : n
            XCTAssertTrue(allowed.contains(name), "\(n) is not in the allowlist")
        }
        // The same call unprofiled has no profile.
        XCTAssertNil(try Harness.call(cell, ["action": "syscall", "nr": 39]).syscallProfile)
    }

    /// Profiling never widens what a worker may do: a syscall outside the
    /// allowlist (or from another architecture, or a fork) still kills the
    /// worker, now by the filter itself (SIGSYS), and is a sandbox violation.
    func testASyscallOutsideTheAllowlistStillKillsAProfiledWorker() throws {
        XCTAssertTrue(Harness.features.seccompUserNotification, "the profiler needs seccomp user notification")
        let cell = try probe()
        for nr in [110, 101, 272, 425, 165] {  // getppid, ptrace, unshare, io_uring_setup, mount
            let r = try profiled(cell, ["action": "syscall", "nr": .int(Int64(nr))])
            XCTAssertEqual(
                r.outcome, .sandboxViolation(syscall: "unnamed", architecture: "profiled"), "nr \(nr): \(r.outcome)")
            XCTAssertEqual(r.exit, .signaled(SIGSYS), "nr \(nr): killed by the allowlist, not let through")
            XCTAssertNotNil(r.syscallProfile, "the calls made before it are still listed")
        }
        for args: JSONObject in [["action": "int80"], ["action": "syscall", "nr": .int(0x4000_0000 | 39)]] {
            let r = try profiled(cell, args)
            XCTAssertEqual(r.outcome.kind, "sandbox_violation", "\(args): \(r.outcome)")
            XCTAssertEqual(r.exit, .signaled(SIGSYS))
        }
        let fork = try profiled(cell, ["action": "fork"])
        XCTAssertEqual(fork.outcome.kind, "sandbox_violation", fork.outcome.detail)
        // An errno rule still answers: clone3 is ENOSYS, not let through.
        let threads = try probe(limits: #"{"processes": "threads"}"#)
        XCTAssertEqual(Harness.text(try profiled(threads, ["action": "syscall", "nr": 435])), "errno 38")
        XCTAssertEqual(Harness.text(try profiled(threads, ["action": "thread"])), "ok")
        // Learn mode is not profiled (it has its own use of the listener).
        let learn = try profiled(cell, ["action": "syscall", "nr": 110], learn: true)
        XCTAssertNil(learn.syscallProfile)
        XCTAssertEqual(learn.learnedSyscalls, ["getppid"])
    }

    /// The two programs a profiled worker gets: the profiler only allows or
    /// notifies (so it cannot widen), and the allowlist is the unprofiled
    /// one with kill instead of notification as its default.
    func testTheProfiledFiltersCannotAllowMoreThanTheAllowlist() throws {
        XCTAssertTrue(Harness.features.seccompUserNotification, "the profiler needs seccomp user notification")
        let cell = try probe()
        let f = try XCTUnwrap(try cell.profiledFilters())
        var returns: Set<UInt32> = []
        let bytes = f.profiler.bytes
        for i in stride(from: 0, to: bytes.count, by: 8) {
            let code = UInt16(bytes[i]) | UInt16(bytes[i + 1]) << 8
            let k = bytes[(i + 4)..<(i + 8)].reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            if code == 0x06 { returns.insert(k) }
        }
        XCTAssertEqual(returns, [0x7FC0_0000, 0x7FFF_0000], "user notification and allow, nothing else")
        XCTAssertNotEqual(f.allowlistSHA256, cell.seccompSHA256)
        let (killing, names) = try PreparedCell.compileSeccomp(
            manifest: cell.manifest, groups: Harness.groups, features: Harness.features, killing: true)
        XCTAssertEqual(killing.bytes, f.allowlist.bytes)
        XCTAssertEqual(names, cell.allowlist, "the same allowlist")
        // What `cell show` prints for a receipt of a profiled call.
        let shown = try Receipt.profiledSeccompDigests(
            manifest: cell.manifest, groups: Harness.groups, features: Harness.features)
        XCTAssertEqual(shown.allowlist, f.allowlistSHA256)
        XCTAssertEqual(shown.profiler, sha256Hex(f.profiler.bytes))
    }
}
