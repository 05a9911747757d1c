import Foundation
import StrictJSON
import SupervisorCore
import SupervisorPlatform
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// A real worker tries each forbidden thing; each test asserts how it was
/// stopped. Requires: seccomp, Landlock (ABI >= 1; >= 6 when not root).
final class SandboxTests: XCTestCase {
    override func setUpWithError() throws {
        XCTAssertNotNil(Harness.features.landlockABI, "Landlock is required for these tests: \(Harness.features.landlockError ?? "")")
        XCTAssertGreaterThanOrEqual(Harness.features.seccompAPILevel, 3, "seccomp kill-process is required")
    }

    func probe(limits: String = "{}", filesystem: String = "{}", groups: [String] = ["base"]) throws -> PreparedCell {
        try Harness.prepare(try Harness.probeManifest(limits: limits, filesystem: filesystem, groups: groups))
    }

    func testAllowedCallWithBadArgumentsFailsHarmlessly() throws {
        // read(-1, NULL, 0) is allowed: the kernel answers EBADF.
        let r = try Harness.call(try probe(), ["action": "syscall", "nr": 0, "args": [-1, 0, 0]])
        XCTAssertEqual(Harness.text(r), "errno 9", r.outcome.detail)
        // After its result the worker is ended at once (or has exited).
        XCTAssertTrue(r.exit == .exited(0) || r.exit == .signaled(SIGKILL), "\(String(describing: r.exit))")
    }

    func testSyscallOutsideAllowlistIsKilledAndNamed() throws {
        let cell = try probe()
        for (nr, name) in [(101, "ptrace"), (110, "getppid"), (425, "io_uring_setup"), (272, "unshare"), (165, "mount"), (321, "bpf")] {
            let r = try Harness.call(cell, ["action": "syscall", "nr": .int(Int64(nr))])
            XCTAssertEqual(r.outcome, .sandboxViolation(syscall: name, architecture: "x86_64"), "nr \(nr): \(r.outcome.detail)")
        }
    }

    func testForeignArchitecturesAreKilled() throws {
        let cell = try probe()
        // x32 numbering of getpid, and the i386 entry point.
        let x32 = try Harness.call(cell, ["action": "syscall", "nr": .int(0x4000_0000 | 39)])
        XCTAssertNil(Harness.text(x32), "x32 syscall must not return: \(x32.outcome.detail)")
        XCTAssertEqual(x32.outcome.kind, "sandbox_violation")
        let i386 = try Harness.call(cell, ["action": "int80"])
        XCTAssertEqual(i386.outcome.kind, "sandbox_violation", i386.outcome.detail)
        XCTAssertEqual(i386.exit, .signaled(SIGSYS))
    }

    func testClone3IsNotAvailableAndForkIsKilled() throws {
        let none = try probe()
        let fork = try Harness.call(none, ["action": "fork"])
        XCTAssertEqual(fork.outcome.kind, "sandbox_violation", fork.outcome.detail)
        if case .sandboxViolation(let s, _) = fork.outcome { XCTAssertTrue(["clone", "fork"].contains(s)) }
        let thread = try Harness.call(none, ["action": "thread"])
        XCTAssertEqual(thread.outcome.kind, "sandbox_violation", "threads need limits.processes=threads: \(thread.outcome.detail)")
    }

    func testThreadsModeAllowsThreadsNotProcesses() throws {
        let cell = try probe(limits: #"{"processes": "threads"}"#)
        XCTAssertEqual(Harness.text(try Harness.call(cell, ["action": "thread"])), "ok")
        let fork = try Harness.call(cell, ["action": "fork"])
        XCTAssertEqual(fork.outcome.kind, "sandbox_violation", fork.outcome.detail)
        // clone3 answers ENOSYS so libc falls back to the inspectable clone.
        XCTAssertEqual(Harness.text(try Harness.call(cell, ["action": "syscall", "nr": 435])), "errno 38")
    }

    func testProcessesModeRunsInPIDNamespace() throws {
        let cell = try probe(limits: #"{"processes": "processes", "maxProcesses": 8}"#)
        let r = try Harness.call(cell, ["action": "fork"])
        XCTAssertEqual(r.outcome.kind, "success", r.outcome.detail)
        // Inside its own PID namespace the worker is pid 1.
        XCTAssertEqual(Harness.text(try Harness.call(cell, ["action": "syscall", "nr": 39])), "ok 1")
    }

    func testFilesOutsideDeclaredPathsAreDenied() throws {
        let cell = try probe()
        for path in ["/etc/shadow", "/etc/passwd", "/root/.ssh/id_ed25519", Harness.state + "/ledger", "/proc/1/environ", "/proc/self/maps"] {
            let r = try Harness.call(cell, ["action": "read", "path": .string(path)])
            let t = Harness.text(r) ?? r.outcome.detail
            XCTAssertTrue(t == "errno 13" || t == "errno 2", "\(path): \(t)")
        }
        let w = try Harness.call(cell, ["action": "write", "path": "/tmp/mcps-escape"])
        XCTAssertEqual(Harness.text(w), "errno 13")
        XCTAssertNil(try? Sys.stat("/tmp/mcps-escape"))
    }

    func testDeclaredReadPathIsReadableAndOnlyIt() throws {
        let dir = Harness.tempDir("ro")
        let f = dir + "/data.txt"
        let fd = try Sys.open(f, O_WRONLY | O_CREAT, mode: 0o644)
        try fd.writeAll(Array("hello".utf8))
        fd.close()
        let cell = try probe(filesystem: "{\"read\": [\"\(dir)\"]}")
        XCTAssertEqual(Harness.text(try Harness.call(cell, ["action": "read", "path": .string(f)])), "read 5")
        XCTAssertEqual(Harness.text(try Harness.call(cell, ["action": "write", "path": .string(dir + "/new")])), "errno 13")
    }

    func testWorkerCannotReachTheSecurityLogOrItsKey() throws {
        let log = try SecurityLog(stateDirectory: Harness.state)
        log.appendAndWait([SecurityEvent(.supervisorStart, ["version": "test"])])
        let cell = try probe(groups: ["base", "files-write"])
        let key = LogSigningKey.paths(stateDirectory: Harness.state).privateKey
        let events = Harness.state + "/security/events-000001.jsonl"
        for path in [key, events, Harness.state + "/security/checkpoints.jsonl"] {
            XCTAssertEqual(Harness.text(try Harness.call(cell, ["action": "read", "path": .string(path)])), "errno 13", path)
            XCTAssertEqual(Harness.text(try Harness.call(cell, ["action": "write", "path": .string(path)])), "errno 13", path)
        }
        log.close()
        XCTAssertNil(SecurityLogReader.verify(directory: Harness.state + "/security",
                                              publicKeyPath: LogSigningKey.paths(stateDirectory: Harness.state).publicKey).problem)
    }

    func testProtectedStateCannotBeDeclared() throws {
        let m = try Harness.probeManifest(filesystem: "{\"read\": [\"/tmp\"]}")
        XCTAssertThrowsError(try Harness.prepare(m)) { e in
            XCTAssertTrue("\(e)".contains("state directory"), "\(e)")
        }
    }

    func testScratchIsWritableAndWipedWithoutFollowingLinks() throws {
        let cell = try probe(limits: #"{"fileSizeMiB": 1}"#, groups: ["base", "files-write"])
        let r = try Harness.call(cell, ["action": "leave"])
        let t = Harness.text(r) ?? ""
        XCTAssertTrue(t.contains("left-behind: wrote 1"), t)
        XCTAssertTrue(t.contains("/tmp/mcps-left-behind: errno 13"), t)
        XCTAssertTrue(t.contains("/dev/shm/mcps-left-behind: errno 13"), t)
        XCTAssertNil(try? Sys.stat("/tmp/mcps-left-behind"))
        XCTAssertNil(try? Sys.stat("/dev/shm/mcps-left-behind"))
        let victim = Harness.tempDir("victim") + "/keep"
        let fd = try Sys.open(victim, O_WRONLY | O_CREAT, mode: 0o644)
        fd.close()
        let link = try Harness.call(cell, ["action": "symlink-out", "target": .string(victim)])
        XCTAssertEqual(Harness.text(link), "linked")
        XCTAssertNotNil(try? Sys.stat(victim), "wiping scratch must not follow a planted link")
        XCTAssertEqual(Harness.scratchLeftovers(), [])
    }

    func testOnlyTheProtocolDescriptorsAreInherited() throws {
        let before = Sys.openDescriptorCount()
        let r = try Harness.call(try probe(), ["action": "fds"])
        XCTAssertEqual(Harness.text(r), "0,1,2,3,4")
        XCTAssertEqual(Sys.openDescriptorCount(), before, "the supervisor leaked descriptors")
    }

    func testSignallingTheSupervisorIsStopped() throws {
        let me = JSONValue.int(Int64(getpid()))
        let r = try Harness.call(try probe(), ["action": "signal-parent", "pid": me])
        XCTAssertEqual(r.outcome, .sandboxViolation(syscall: "kill", architecture: "x86_64"))
        // A cell allowed kill(2) is still stopped: by Landlock's signal scope
        // when it shares the supervisor's uid, by the uid itself under root.
        let killer = try Harness.prepare(try Harness.probeManifest(allow: ["kill"]))
        XCTAssertEqual(Harness.text(try Harness.call(killer, ["action": "signal-parent", "pid": me])), "errno 1")
        // In a PID namespace the supervisor does not even exist.
        let forking = try probe(limits: #"{"processes": "processes"}"#)
        XCTAssertEqual(Harness.text(try Harness.call(forking, ["action": "signal-parent", "pid": me])), "errno 3")
    }

    func testMemoryLimitRefusesAllocation() throws {
        let cell = try probe(limits: #"{"memoryMiB": 64}"#)
        XCTAssertEqual(Harness.text(try Harness.call(cell, ["action": "alloc", "bytes": .int(1 << 20)])), "ok 0")
        let big = try Harness.call(cell, ["action": "alloc", "bytes": .int(256 << 20)])
        XCTAssertEqual(Harness.text(big), "errno 12", big.outcome.detail)
        if let peak = big.peakMemoryBytes { XCTAssertLessThan(peak, 64 << 20) }
    }

    func testTheCallDoesNotSpinWhileAWorkerDies() throws {
        // A worker that leaves 512 MiB to its exit takes a while to be torn
        // down after the kill at its final frame; its seccomp listener
        // reports POLLHUP meanwhile. The poll loop must not busy-wait on it.
        let cell = try probe(limits: #"{"memoryMiB": 1024}"#)
        let r = try Harness.call(cell, ["action": "alloc", "bytes": .int(512 << 20), "keep": true])
        XCTAssertEqual(Harness.text(r), "ok 0", r.outcome.detail)
        XCTAssertLessThan(r.pollWakeups, 20, "the call's poll loop woke \(r.pollWakeups) times")
    }

    func testCPULimitEndsTheCall() throws {
        let cell = try probe(limits: #"{"cpuSeconds": 1, "timeoutMilliseconds": 10000, "processes": "threads"}"#)
        let r = try Harness.call(cell, ["action": "spin", "seconds": 5, "threads": 2])
        XCTAssertEqual(r.outcome, .limitExceeded(.cpu), r.outcome.detail)
        XCTAssertLessThan(r.durationNanoseconds, 4_000_000_000)
    }

    func testFileSizeLimit() throws {
        let cell = try probe(limits: #"{"fileSizeMiB": 1}"#)
        let r = try Harness.call(cell, ["action": "write", "path": "big", "bytes": .int(4 << 20)])
        XCTAssertEqual(r.outcome, .limitExceeded(.fileSize), r.outcome.detail)
    }

    func testOutputFloodIsCappedAndKilled() throws {
        let cell = try probe(limits: #"{"outputKiB": 64, "frameKiB": 16}"#)
        let r = try Harness.call(cell, ["action": "stderr", "bytes": .int(4 << 20)])
        XCTAssertEqual(r.outcome, .limitExceeded(.output), r.outcome.detail)
        XCTAssertLessThanOrEqual(r.diagnostics.utf8.count, 8192)
    }

    func testDeadlineKillsEvenWhenSIGTERMIsIgnored() throws {
        let cell = try probe(limits: #"{"timeoutMilliseconds": 300}"#)
        for ignore in [false, true] {
            let r = try Harness.call(cell, ["action": "sleep", "ms": 5000, "ignoreTerm": .bool(ignore)])
            XCTAssertEqual(r.outcome, .timeout, r.outcome.detail)
            XCTAssertLessThan(r.durationNanoseconds, 2_000_000_000)
        }
        XCTAssertEqual(Harness.scratchLeftovers(), [])
    }

    func testCancellationKillsTheWorker() throws {
        let cell = try probe()
        let c = try CallCancellation()
        let runner = try Harness.runner()
        let t0 = monotonicNanoseconds()
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(100)) { c.cancel() }
        let r = runner.run(cell: cell, tool: "probe", arguments: ["action": "sleep", "ms": 5000], callID: "c", cancellation: c)
        XCTAssertEqual(r.outcome, .cancelled)
        XCTAssertLessThan(monotonicNanoseconds() - t0, 2_000_000_000)
    }

    func testProgressAndLogsAreRelayed() throws {
        var messages: [WorkerMessage] = []
        let r = try Harness.call(try probe(), ["action": "progress", "steps": 2]) { messages.append($0) }
        XCTAssertEqual(Harness.text(r), "done")
        XCTAssertEqual(messages.count, 4)
        XCTAssertEqual(messages.first, .progress(progress: 1, total: 2, message: "step 1"))
    }

    func testSwappedExecutableIsRefused() throws {
        let dir = Harness.tempDir("swap")
        let copy = try copyFile(Harness.probe, to: dir + "/probe-cell")
        let cell = try Harness.prepare(try Harness.probeManifest(executable: copy))
        XCTAssertEqual(Harness.text(try Harness.call(cell, ["action": "echo", "text": "a"])), "a")
        // Replace the file with other bytes (the echo cell).
        let other = try readFile(Harness.echo, limit: 1 << 30)
        let w = try Sys.open(copy, O_WRONLY | O_TRUNC, mode: 0)
        try w.writeAll(other)
        w.close()
        let r = try Harness.call(cell, ["action": "echo", "text": "a"])
        guard case .cannotRun(.hashMismatch(let p, _, _)) = r.outcome else { return XCTFail(r.outcome.detail) }
        XCTAssertEqual(p, copy)
        XCTAssertNil(r.exit, "no worker may start")
    }

    func testTheWorkerExecutesTheSealedVerifiedCopy() throws {
        // exec uses the sealed memfd holding the verified bytes, not the path:
        // /proc/<worker>/exe of a running worker is that memfd.
        let cell = try probe()
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            _ = try? Harness.call(cell, ["action": "sleep", "ms": 1500])
            done.signal()
        }
        var exe: String? = nil
        for _ in 0..<200 where exe == nil {
            usleep(10_000)
            for pid in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] where Int(pid) != nil {
                guard let cmd = try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8), cmd.hasPrefix("probe-cell") else { continue }
                exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/exe")
            }
        }
        XCTAssertEqual(exe, "/memfd:probe-cell (deleted)")
        done.wait()
    }

    func testCellsLoadedAsTheyWereVerifiedEvenIfRenamedOver() throws {
        // Exec uses the sealed copy of the verified bytes: renaming another
        // file over the path between verification and exec changes nothing
        // that runs, and the next spawn re-verifies and refuses.
        let dir = Harness.tempDir("rename")
        let copy = try copyFile(Harness.probe, to: dir + "/probe-cell")
        let cell = try Harness.prepare(try Harness.probeManifest(executable: copy))
        let other = try copyFile(Harness.echo, to: dir + "/other")
        XCTAssertEqual(rename(other, copy), 0)
        let r = try Harness.call(cell, ["action": "echo", "text": "a"])
        XCTAssertEqual(r.outcome.kind, "cannot_run", r.outcome.detail)
    }
}

/// Copies a file (mode 0755) and returns the destination.
func copyFile(_ from: String, to: String) throws -> String {
    let fd = try Sys.open(to, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o755)
    defer { fd.close() }
    try fd.writeAll(try readFile(from, limit: 1 << 30))
    return to
}
