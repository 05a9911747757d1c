import StrictJSON
import SupervisorPlatform
import XCTest

@testable import SupervisorCore

#if canImport(Glibc)
import Glibc
#endif

/// The C→Swift edge of a spawn is typed: the stages mirror spawn.c's, and a
/// failed setup comes back as (stage, errno), then as a cell that cannot run,
/// recorded apart from refusals and sandbox violations.
final class SpawnErrorTests: XCTestCase {
    /// Every Swift stage has the C value and name; no C stage is missing.
    func testSpawnStageMirrorsTheShim() {
        for stage in SpawnStage.allCases {
            XCTAssertEqual(SpawnStage.shimName(stage.rawValue), stage.description, "stage \(stage.rawValue)")
        }
        var named = 0
        for raw in Int32(0)...255 where SpawnStage.shimName(raw) != "unknown" {
            named += 1
            XCTAssertNotNil(
                SpawnStage(rawValue: raw),
                "C stage \(raw) (\(SpawnStage.shimName(raw))) has no SpawnStage case")
        }
        XCTAssertEqual(named, SpawnStage.allCases.count)
    }

    /// A real child fails at a real stage: chdir into a directory that does
    /// not exist is reported as `.chdir`, ENOENT, not as a string.
    func testFailedStageIsTypedStageAndErrno() throws {
        let exe = try Sys.open("/bin/true", O_RDONLY)
        let null = try Sys.open("/dev/null", O_RDWR)
        defer {
            exe.close()
            null.close()
        }
        let r = SpawnRequest(
            executable: exe, argv: ["true"], environment: [], stdin: null, stdout: null, stderr: null,
            request: null, response: null, workingDirectory: "/nonexistent-\(getpid())")
        do {
            let w = try WorkerProcess.spawn(r)
            w.close()
            XCTFail("the spawn succeeded")
        } catch {
            XCTAssertEqual(error, SpawnError(stage: .chdir, errno: ENOENT))
            XCTAssertEqual(error.description, "worker setup failed at stage chdir-scratch: \(Errno.describe(ENOENT))")
        }
    }

    func report(_ outcome: CallOutcome, denied: DeniedSyscall? = nil) -> CallReport {
        var r = CallReport(
            outcome: outcome, exit: nil, durationNanoseconds: 0, cpuNanoseconds: 0,
            peakMemoryBytes: nil, bytesFromWorker: 0, diagnostics: "", spawnNanoseconds: 0,
            firstFrameNanoseconds: 0, reapNanoseconds: 0)
        r.deniedSyscall = denied
        return r
    }

    func events(_ outcome: CallOutcome, denied: DeniedSyscall? = nil) throws -> [String: JSONObject] {
        let cell = try Harness.prepare(try Harness.probeManifest())
        let list = SecurityEvent.callEnd(
            callID: "c1", principal: "uid:0", tool: "probe", cell: cell,
            report: report(outcome, denied: denied), bytesReturned: 0)
        var out: [String: JSONObject] = [:]
        for e in list { out[e.type.rawValue] = e.fields }
        XCTAssertEqual(out.count, list.count, "one event of each type")
        return out
    }

    /// Refused, cannot run, sandbox violation: three names in the outcome
    /// and three event types next to call.end.
    func testRefusalCannotRunAndViolationAreRecordedApart() throws {
        let spawn = try events(.cannotRun(.spawn(SpawnError(stage: .landlock, errno: EPERM))))
        XCTAssertEqual(Set(spawn.keys), ["call.end", "cell.cannot_run"])
        XCTAssertEqual(spawn["call.end"]?["outcome"], "cannot_run")
        XCTAssertEqual(spawn["cell.cannot_run"]?["kind"], "spawn")
        XCTAssertEqual(spawn["cell.cannot_run"]?["stage"], "landlock")
        XCTAssertEqual(spawn["cell.cannot_run"]?["errno"], .int(Int64(EPERM)))

        let hash = try events(.cannotRun(.hashMismatch(path: "/x", expected: "aa", actual: "bb")))
        XCTAssertEqual(Set(hash.keys), ["call.end", "cell.cannot_run"])
        XCTAssertEqual(hash["cell.cannot_run"]?["kind"], "hash_mismatch")
        XCTAssertEqual(hash["cell.cannot_run"]?["actualSha256"], "bb")

        let refused = try events(.refused(.arguments("argument \"x\" starts with \"-\"")))
        XCTAssertEqual(Set(refused.keys), ["call.end", "call.refused"])
        XCTAssertEqual(refused["call.end"]?["outcome"], "refused")
        XCTAssertEqual(refused["call.refused"]?["reason"], "invalid_arguments")
        XCTAssertEqual(refused["call.refused"]?["callId"], "c1")

        let violation = try events(.sandboxViolation(syscall: "ptrace", architecture: "x86_64"))
        XCTAssertEqual(Set(violation.keys), ["call.end", "sandbox.violation"])
        XCTAssertEqual(violation["call.end"]?["outcome"], "sandbox_violation")
        XCTAssertEqual(violation["sandbox.violation"]?["kind"], "seccomp")

        // A crash is not a violation.
        XCTAssertEqual(Set(try events(.killedBySignal(SIGSEGV)).keys), ["call.end"])
        // A forbidden syscall after the answer: the outcome is the answer,
        // the attempt is still a sandbox.violation.
        let late = try events(
            .success(CellResult(content: [], structuredContent: nil)),
            denied: DeniedSyscall(syscall: "ptrace", architecture: "x86_64"))
        XCTAssertEqual(late["call.end"]?["outcome"], "success")
        XCTAssertEqual(late["sandbox.violation"]?["syscall"], "ptrace")
        // After a limit: both are recorded.
        let cpu = SecurityEvent.callEnd(
            callID: "c1", principal: "uid:0", tool: "probe",
            cell: try Harness.prepare(try Harness.probeManifest()),
            report: report(
                .limitExceeded(.cpu),
                denied: DeniedSyscall(syscall: "ptrace", architecture: "x86_64")),
            bytesReturned: 0)
        XCTAssertEqual(cpu.map(\.type.rawValue), ["call.end", "sandbox.violation", "sandbox.violation"])
        XCTAssertEqual(cpu[1].fields["limit"], "cpu")
        XCTAssertEqual(cpu[2].fields["syscall"], "ptrace")
    }
}
