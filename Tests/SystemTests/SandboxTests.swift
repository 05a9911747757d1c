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
        XCTAssertNotNil(
            Harness.features.landlockABI,
            "Landlock is required for these tests: \(Harness.features.landlockError ?? "")")
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
        for (nr, name) in [
            (101, "ptrace"), (110, "getppid"), (425, "io_uring_setup"), (272, "unshare"), (165, "mount"), (321, "bpf"),
        ] {
            let r = try Harness.call(cell, ["action": "syscall", "nr": .int(Int64(nr))])
            XCTAssertEqual(
                r.outcome, .sandboxViolation(syscall: name, architecture: "x86_64"), "nr \(nr): \(r.outcome.detail)")
        }
    }

    func testForeignArchitecturesAreKilledAndNamed() throws {
        // getpid through the x32 numbering and through the i386 entry point:
        // the listener names the architecture and the call, then kills.
        let cell = try probe()
        let x32 = try Harness.call(cell, ["action": "syscall", "nr": .int(0x4000_0000 | 39)])
        XCTAssertEqual(x32.outcome, .sandboxViolation(syscall: "getpid", architecture: "x32"), x32.outcome.detail)
        let i386 = try Harness.call(cell, ["action": "int80"])
        XCTAssertEqual(i386.outcome, .sandboxViolation(syscall: "getpid", architecture: "i386"), i386.outcome.detail)
        XCTAssertEqual(i386.exit, .signaled(SIGKILL), "killed through the pidfd, not by the filter's SIGSYS")
        // Not even learn mode lets a foreign architecture through.
        let learn = try Harness.runner().run(
            cell: cell, tool: "probe", arguments: ["action": "int80"], callID: "l", learn: true)
        XCTAssertEqual(learn.outcome, .sandboxViolation(syscall: "getpid", architecture: "i386"), learn.outcome.detail)
    }

    func testForeignArchitecturesInACommandCellAreNamed() throws {
        // The same probe as a command cell (argv, no frames): the outcome is a
        // sandbox violation naming the architecture, not a crash by signal 31.
        let bytes = try readFile(Harness.probe, limit: 1 << 30)
        let text = """
            {
              "name": "probe-command", "version": "1", "description": "Probe as a command.",
              "executable": {"path": "\(Harness.probe)", "sha256": "\(sha256Hex(bytes))"},
              "tools": [{"name": "probe", "description": "Probe.",
                         "inputSchema": {"type": "object", "properties": {"action": {"type": "string"}}},
                         "command": {"argv": ["probe-cell", "{action}"]}}],
              "syscalls": {"groups": ["base"]}, "sideEffects": "none"
            }
            """
        let cell = try Harness.prepare(
            try CellManifest.parse(bytes: Array(text.utf8), path: "/tmp/pc.json", manifestSHA256: "x"))
        for (action, arch) in [("int80", "i386"), ("x32", "x32")] {
            let r = try Harness.call(cell, ["action": .string(action)])
            XCTAssertEqual(r.outcome, .sandboxViolation(syscall: "getpid", architecture: arch), r.outcome.detail)
        }
    }

    func testClone3IsNotAvailableAndForkIsKilled() throws {
        let none = try probe()
        let fork = try Harness.call(none, ["action": "fork"])
        XCTAssertEqual(fork.outcome.kind, "sandbox_violation", fork.outcome.detail)
        if case .sandboxViolation(let s, _) = fork.outcome { XCTAssertTrue(["clone", "fork"].contains(s)) }
        let thread = try Harness.call(none, ["action": "thread"])
        XCTAssertEqual(
            thread.outcome.kind, "sandbox_violation", "threads need limits.processes=threads: \(thread.outcome.detail)")
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
        for path in [
            "/etc/shadow", "/etc/passwd", "/root/.ssh/id_ed25519", Harness.state + "/ledger", "/proc/1/environ",
            "/proc/self/maps",
        ] {
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
        XCTAssertEqual(
            Harness.text(try Harness.call(cell, ["action": "write", "path": .string(dir + "/new")])), "errno 13")
    }

    func testWorkerCannotReachTheSecurityLogOrItsKey() throws {
        let log = try SecurityLog(stateDirectory: Harness.state)
        log.appendAndWait([SecurityEvent(.supervisorStart, ["version": "test"])])
        let cell = try probe(groups: ["base", "files-write"])
        let key = LogSigningKey.paths(stateDirectory: Harness.state).privateKey
        let events = Harness.state + "/security/events-000001.jsonl"
        for path in [key, events, Harness.state + "/security/checkpoints.jsonl"] {
            XCTAssertEqual(
                Harness.text(try Harness.call(cell, ["action": "read", "path": .string(path)])), "errno 13", path)
            XCTAssertEqual(
                Harness.text(try Harness.call(cell, ["action": "write", "path": .string(path)])), "errno 13", path)
        }
        log.close()
        XCTAssertNil(
            SecurityLogReader.verify(
                directory: Harness.state + "/security",
                publicKeyPath: LogSigningKey.paths(stateDirectory: Harness.state).publicKey
            ).problem)
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

    func testScratchIsBoundedByTheKernel() throws {
        // fileSizeMiB above scratchMiB: the tmpfs says no first (ENOSPC).
        let cell = try probe(limits: #"{"scratchMiB": 2, "scratchFiles": 16, "fileSizeMiB": 16}"#)
        let fill = try Harness.call(cell, ["action": "fill", "path": "big", "bytes": .int(8 << 20)])
        let parts = (Harness.text(fill) ?? fill.outcome.detail).split(separator: " ")
        XCTAssertEqual(parts.count, 4, fill.outcome.detail)
        XCTAssertEqual(parts.last, "\(ENOSPC)", "\(parts)")
        XCTAssertLessThanOrEqual(Int(parts[1]) ?? .max, 2 << 20, "\(parts)")
        let many = try Harness.call(cell, ["action": "many-files", "count": 1000])
        XCTAssertEqual(Harness.text(many), "created 16 errno \(ENOSPC)", many.outcome.detail)
        // Each call has its own tmpfs: the next one starts empty.
        let again = try Harness.call(cell, ["action": "many-files", "count": 16])
        XCTAssertEqual(Harness.text(again), "created 16 errno 0", again.outcome.detail)
        // Nothing remains: no directory, no mount in the supervisor's namespace.
        XCTAssertEqual(Harness.scratchLeftovers(), [])
        let mounts = String(decoding: try readFile("/proc/self/mountinfo"), as: UTF8.self)
        XCTAssertFalse(mounts.contains(Harness.scratchRoot), mounts)
        // The defaults bound a manifest that says nothing: 64 MiB.
        let defaults = try probe(limits: #"{"fileSizeMiB": 128, "memoryMiB": 256}"#)
        let big = try Harness.call(defaults, ["action": "fill", "path": "big", "bytes": .int(80 << 20)])
        XCTAssertTrue(Harness.text(big)?.hasSuffix("errno \(ENOSPC)") == true, big.outcome.detail)
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
        let r = runner.run(
            cell: cell, tool: "probe", arguments: ["action": "sleep", "ms": 5000], callID: "c", cancellation: c)
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
                guard let cmd = try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8),
                    cmd.hasPrefix("probe-cell")
                else { continue }
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

/// Confinement that holds whatever `syscalls` says: the manifests here are
/// built by hand, past the parser that refuses them, so only the filter
/// compiler stands between the worker and the thing it tries.
final class ConfinementSystemTests: XCTestCase {
    override func setUpWithError() throws {
        XCTAssertNotNil(
            Harness.features.landlockABI,
            "Landlock is required for these tests: \(Harness.features.landlockError ?? "")")
        XCTAssertTrue(Harness.features.seccompUserNotification, "seccomp user notification is required")
    }

    /// The probe with `calls` allowed in syscalls.allow (set after parsing:
    /// the parser refuses network and IPC calls).
    func probe(allowing calls: [String], limits: String = "{}", groups: [String] = ["base"]) throws -> PreparedCell {
        var m = try Harness.probeManifest(limits: limits, groups: groups)
        m.syscallAllow = calls
        return try Harness.prepare(m)
    }

    func testAHandBuiltNetworkFilterReachesNoListener() throws {
        let cell = try probe(allowing: ["socket", "sendto", "connect", "bind"])
        // UDP to a real listener on 127.0.0.1.
        let udp = try Listener.udp()
        defer { udp.close() }
        let r = try Harness.call(cell, ["action": "udp", "port": .int(Int64(udp.port))])
        XCTAssertEqual(r.outcome, .sandboxViolation(syscall: "socket", architecture: "x86_64"), r.outcome.detail)
        XCTAssertNil(udp.receive(), "a datagram reached the listener")
        // A pathname unix socket outside the cell's paths, which anyone may
        // connect to (Landlock below ABI 9 does not mediate connect).
        let dir = Harness.tempDir("unix")
        let stream = try Listener.unix(path: dir + "/agent.sock", type: SOCK_STREAM)
        defer { stream.close() }
        let c = try Harness.call(cell, ["action": "unix-connect", "path": .string(stream.path)])
        XCTAssertEqual(Harness.text(c), "errno 13", c.outcome.detail)
        XCTAssertFalse(stream.hasPendingConnection(), "the worker connected to a host socket")
        // An abstract socket.
        let abstract = try Listener.unix(path: "@mcps-test-\(getpid())", type: SOCK_STREAM)
        defer { abstract.close() }
        let a = try Harness.call(cell, ["action": "unix-connect", "path": .string(abstract.path)])
        XCTAssertEqual(Harness.text(a), "errno 13", a.outcome.detail)
        XCTAssertFalse(abstract.hasPendingConnection(), "the worker connected to an abstract socket")
    }

    func testSocketpairsCannotReachHostDatagramSockets() throws {
        let cell = try probe(allowing: ["socketpair"])
        let dir = Harness.tempDir("dgram")
        let log = try Listener.unix(path: dir + "/log.sock", type: SOCK_DGRAM)
        defer { log.close() }
        // A datagram pair would deliver to the address given to sendmsg.
        let dgram = try Harness.call(
            cell,
            [
                "action": "pair-sendmsg", "type": .int(Int64(SOCK_DGRAM.rawValue)),
                "path": .string(log.path),
            ])
        XCTAssertEqual(
            dgram.outcome, .sandboxViolation(syscall: "socketpair", architecture: "x86_64"), dgram.outcome.detail)
        // A stream pair refuses the address (EISCONN); seqpacket ignores it.
        let stream = try Harness.call(
            cell,
            [
                "action": "pair-sendmsg", "type": .int(Int64(SOCK_STREAM.rawValue)),
                "path": .string(log.path),
            ])
        XCTAssertEqual(Harness.text(stream), "errno \(EISCONN)", stream.outcome.detail)
        let seq = try Harness.call(
            cell,
            [
                "action": "pair-sendmsg", "type": .int(Int64(SOCK_SEQPACKET.rawValue)),
                "path": .string(log.path),
            ])
        XCTAssertEqual(Harness.text(seq), "ok 6", seq.outcome.detail)
        XCTAssertNil(log.receive(), "a datagram reached the host socket")
    }

    func testIPCObjectsCannotBeCreated() throws {
        let cell = try probe(
            allowing: ["shmget", "shmat", "semget", "msgget", "mq_open"],
            limits: #"{"processes": "processes"}"#)
        let ipc = ["/proc/sysvipc/shm", "/proc/sysvipc/sem", "/proc/sysvipc/msg"]
        let ipcBefore = ipc.map(Self.lines)
        let queuesBefore = (try? FileManager.default.contentsOfDirectory(atPath: "/dev/mqueue")) ?? []
        // shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600), semget, msgget, mq_open.
        for (nr, name, args) in [
            (29, "shmget", [0, 4096, 0o1600]), (64, "semget", [0, 1, 0o1600]),
            (68, "msgget", [0, 0o1600]), (240, "mq_open", [0, 0o100, 0o600, 0]),
        ] {
            let r = try Harness.call(
                cell, ["action": "syscall", "nr": .int(Int64(nr)), "args": .array(args.map { .int(Int64($0)) })])
            XCTAssertEqual(
                r.outcome, .sandboxViolation(syscall: name, architecture: "x86_64"), "\(name): \(r.outcome.detail)")
        }
        XCTAssertEqual(ipc.map(Self.lines), ipcBefore, "a System V IPC object was left behind")
        XCTAssertEqual((try? FileManager.default.contentsOfDirectory(atPath: "/dev/mqueue")) ?? [], queuesBefore)
    }

    func testAnonymousFilesCannotBeExecuted() throws {
        // Processes allowed (execve is in the filter) and memfd_create listed.
        let cell = try probe(allowing: ["memfd_create"], limits: #"{"processes": "processes"}"#)
        // Without MFD_NOEXEC_SEAL (here MFD_CLOEXEC) or with MFD_EXEC: stopped at memfd_create.
        for flags in [1, 0x10, 0x18] {
            let r = try Harness.call(cell, ["action": "memfd-exec", "flags": .int(Int64(flags))])
            XCTAssertEqual(
                r.outcome, .sandboxViolation(syscall: "memfd_create", architecture: "x86_64"),
                "flags \(flags): \(r.outcome.detail)")
        }
        // With MFD_NOEXEC_SEAL the memfd exists, but exec of it fails.
        let sealed = try Harness.call(cell, ["action": "memfd-exec", "flags": .int(1 | 8)])
        XCTAssertEqual(Harness.text(sealed), "errno 13", sealed.outcome.detail)
        // A program written to scratch, named or unnamed (O_TMPFILE): Landlock
        // grants no execute there.
        for anonymous in [false, true] {
            let r = try Harness.call(cell, ["action": "scratch-exec", "anonymous": .bool(anonymous)])
            XCTAssertEqual(Harness.text(r), "errno 13", "anonymous \(anonymous): \(r.outcome.detail)")
        }
    }

    static func lines(_ path: String) -> [String] {
        ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }
}

/// A listening socket in the test process, to prove nothing reached it.
struct Listener {
    let fd: Int32
    let path: String
    let port: Int

    static func udp() throws -> Listener {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket", errno: errno) }
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let rc = withUnsafeMutablePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { p -> Int32 in
                bind(fd, p, len) == 0 ? getsockname(fd, p, &len) : -1
            }
        }
        guard rc == 0 else { throw SystemError("bind udp", errno: errno) }
        return Listener(fd: fd, path: "", port: Int(UInt16(bigEndian: a.sin_port)))
    }

    /// A unix socket bound at `path` ("@name": abstract), open to every
    /// uid, listening if it is a stream socket.
    static func unix(path: String, type: __socket_type) throws -> Listener {
        let fd = socket(AF_UNIX, Int32(type.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket", errno: errno) }
        var a = sockaddr_un()
        a.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        if path.hasPrefix("@") { bytes[0] = 0 }
        withUnsafeMutableBytes(of: &a.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
        let len = socklen_t(path.hasPrefix("@") ? 2 + bytes.count : MemoryLayout<sockaddr_un>.size)
        let rc = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) }
        }
        guard rc == 0 else { throw SystemError("bind \(path)", errno: errno) }
        if !path.hasPrefix("@") {
            chmod(path, 0o777)
            chmod(String(path[..<path.lastIndex(of: "/")!]), 0o755)
        }
        if type == SOCK_STREAM { guard listen(fd, 4) == 0 else { throw SystemError("listen", errno: errno) } }
        return Listener(fd: fd, path: path, port: 0)
    }

    /// A datagram that arrived within 200 ms, or nil.
    func receive() -> [UInt8]? {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard Glibc.poll(&p, 1, 200) == 1 else { return nil }
        var buf = [UInt8](repeating: 0, count: 256)
        let n = recv(fd, &buf, buf.count, 0)
        return n > 0 ? Array(buf[0..<n]) : nil
    }

    func hasPendingConnection() -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return Glibc.poll(&p, 1, 200) == 1
    }

    func close() { _ = Glibc.close(fd) }
}

/// Copies a file (mode 0755) and returns the destination.
func copyFile(_ from: String, to: String) throws -> String {
    let fd = try Sys.open(to, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o755)
    defer { fd.close() }
    try fd.writeAll(try readFile(from, limit: 1 << 30))
    return to
}
