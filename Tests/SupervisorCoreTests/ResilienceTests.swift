import Foundation
import StrictJSON
import XCTest

@testable import SupervisorCore

/// Breaker state machine, the policy's resilience section, behaviour
/// profiles (robust statistics, warm-up, violations, drift bound,
/// persistence) without any worker.
final class ResilienceTests: XCTestCase {
    let s: UInt64 = 1_000_000_000

    func breaker(failures: Int = 3, window: Int = 60, open: Int = 30) -> ResiliencePolicy.Breaker {
        var b = ResiliencePolicy.Breaker()
        b.failures = failures
        b.windowSeconds = window
        b.openSeconds = open
        return b
    }

    // MARK: breaker

    func testBreakerOpensAfterConsecutiveFailuresThenHalfOpensAndCloses() {
        let cfg = breaker()
        var b = BreakerState()
        var t: UInt64 = 100 * s
        XCTAssertNil(b.record(failed: true, cause: "timeout", now: t, cfg))
        XCTAssertNil(b.record(failed: true, cause: "timeout", now: t + s, cfg))
        XCTAssertEqual(b.admit(now: t + s, cfg), .pass)
        XCTAssertEqual(b.record(failed: true, cause: "sandbox_violation", now: t + 2 * s, cfg), .open)
        XCTAssertEqual(b.phase, .open)
        XCTAssertEqual(b.cause, "sandbox_violation")
        t += 2 * s
        // Open: refused with the time left.
        XCTAssertEqual(b.admit(now: t + 10 * s, cfg), .refuse(retryAfterNanoseconds: 20 * s))
        // Due: one probe, then the others are refused while it runs.
        XCTAssertEqual(b.admit(now: t + 30 * s, cfg), .probe)
        XCTAssertEqual(b.phase, .halfOpen)
        if case .refuse = b.admit(now: t + 31 * s, cfg) {} else { XCTFail("a second call passed a half-open breaker") }
        // The probe succeeds: closed, failures forgotten.
        XCTAssertEqual(b.record(failed: false, cause: "", now: t + 32 * s, cfg), .closed)
        XCTAssertEqual(b.failures, 0)
        XCTAssertEqual(b.admit(now: t + 32 * s, cfg), .pass)
    }

    func testFailedProbeReopensAndStaleProbeFreesTheSlot() {
        let cfg = breaker(failures: 1, open: 10)
        var b = BreakerState()
        XCTAssertEqual(b.record(failed: true, cause: "timeout", now: 0, cfg), .open)
        XCTAssertEqual(b.admit(now: 10 * s, cfg), .probe)
        XCTAssertEqual(b.record(failed: true, cause: "timeout", now: 11 * s, cfg), .open)
        XCTAssertEqual(b.admit(now: 12 * s, cfg), .refuse(retryAfterNanoseconds: 9 * s))
        // A probe that never reports (refused later in admission) does not
        // hold the breaker half-open for ever.
        XCTAssertEqual(b.admit(now: 21 * s, cfg), .probe)
        if case .refuse = b.admit(now: 22 * s, cfg) {} else { XCTFail("second probe admitted at once") }
        XCTAssertEqual(b.admit(now: 31 * s, cfg), .probe)
    }

    func testSuccessOrAWindowRunOutResetsTheCount() {
        let cfg = breaker(failures: 3, window: 5)
        var b = BreakerState()
        _ = b.record(failed: true, cause: "timeout", now: 0, cfg)
        _ = b.record(failed: true, cause: "timeout", now: s, cfg)
        _ = b.record(failed: false, cause: "", now: 2 * s, cfg)
        _ = b.record(failed: true, cause: "timeout", now: 3 * s, cfg)
        _ = b.record(failed: true, cause: "timeout", now: 4 * s, cfg)
        XCTAssertEqual(b.phase, .closed, "a success in between breaks the run")
        // The third failure comes after the window of the run's first.
        XCTAssertNil(b.record(failed: true, cause: "timeout", now: 9 * s, cfg))
        XCTAssertEqual(b.failures, 1)
        XCTAssertEqual(b.phase, .closed)
    }

    func testWhatCountsAsABreakerFailure() {
        XCTAssertNil(breakerFailure(.success(CellResult(content: [])), refusedNetwork: false, countToolErrors: true))
        XCTAssertNil(breakerFailure(.cancelled, refusedNetwork: false, countToolErrors: true))
        XCTAssertNil(breakerFailure(.toolError("x"), refusedNetwork: false, countToolErrors: false))
        XCTAssertEqual(breakerFailure(.toolError("x"), refusedNetwork: false, countToolErrors: true), "tool_error")
        XCTAssertEqual(breakerFailure(.timeout, refusedNetwork: false, countToolErrors: false), "timeout")
        XCTAssertEqual(
            breakerFailure(.success(CellResult(content: [])), refusedNetwork: true, countToolErrors: false),
            "network_refused")
    }

    // MARK: policy

    func parse(_ resilience: String) throws -> Policy {
        let doc = """
            {"principals": [{"name": "p", "allow": ["*"]}], "resilience": \(resilience)}
            """
        return try Policy.parse(bytes: Array(doc.utf8), path: "p.json")
    }

    func testPolicySectionDefaultsOverridesAndErrors() throws {
        let none = try Policy.parse(bytes: Array(#"{"principals": []}"#.utf8), path: "p.json")
        XCTAssertNil(none.resilience.breaker(for: "a"), "breakers are off without a resilience section")
        let p = try parse(
            """
            {"breaker": {"failures": 4}, "anomaly": {"response": "quarantine"},
             "cells": {"quiet": {"breaker": false}, "strict": {"breaker": {"openSeconds": 5}, "anomaly": false}},
             "retry": [{"tool": "fetch*"}],
             "fallback": [{"tool": "fetch", "alternatives": ["fetch_b"]}]}
            """)
        let r = p.resilience
        XCTAssertEqual(r.breaker(for: "any")?.failures, 4)
        XCTAssertEqual(r.breaker(for: "any")?.openSeconds, 30)
        XCTAssertNil(r.breaker(for: "quiet"))
        XCTAssertEqual(r.breaker(for: "strict")?.openSeconds, 5)
        XCTAssertEqual(r.breaker(for: "strict")?.failures, 4, "a cell's breaker starts from the policy-wide one")
        XCTAssertEqual(r.anomaly(for: "any")?.response, .quarantine)
        XCTAssertEqual(r.anomaly(for: "any")?.warmupCalls, 20)
        XCTAssertNil(r.anomaly(for: "strict"))
        XCTAssertEqual(r.retry(for: "fetch_x")?.attempts, 2)
        XCTAssertEqual(r.retry(for: "fetch_x")?.on, ResiliencePolicy.defaultRetryOn)
        XCTAssertEqual(r.fallback(for: "fetch")?.alternatives, ["fetch_b"])

        func fails(_ text: String, _ field: String) {
            XCTAssertThrowsError(try parse(text), text) { e in
                XCTAssertEqual((e as? ConfigError)?.field, field, "\(e)")
            }
        }
        fails(#"{"breaker": {"failures": 0}}"#, "resilience.breaker.failures")
        fails(#"{"breaker": {"failure": 3}}"#, "resilience.breaker.failure")
        fails(#"{"anomaly": {"response": "ignore"}}"#, "resilience.anomaly.response")
        fails(#"{"anomaly": {"threshold": 1}}"#, "resilience.anomaly.threshold")
        fails(#"{"retry": [{"tool": "x", "on": ["sandbox_violation"]}]}"#, "resilience.retry[0].on[0]")
        fails(#"{"retry": [{"tool": "x", "attempts": 9}]}"#, "resilience.retry[0].attempts")
        fails(#"{"fallback": [{"tool": "x", "alternatives": ["x"]}]}"#, "resilience.fallback[0].alternatives")
        fails(#"{"cells": {"c": {"breakers": false}}}"#, "resilience.cells.c.breakers")
    }

    // MARK: profiles

    /// Values: duration µs, CPU µs, peak KiB, output bytes, grants.
    func obs(
        memoryKiB: Double = 2048, duration: Double = 3000, hosts: [String] = [], violation: String? = nil,
        syscalls: [String: Int]? = nil, succeeded: Bool = true
    ) -> CallObservation {
        CallObservation(
            values: [duration, 1000, memoryKiB, 300, Double(hosts.count)], hosts: hosts, violation: violation,
            succeeded: succeeded, syscalls: syscalls)
    }

    func anomaly(warmup: Int = 20) -> ResiliencePolicy.Anomaly {
        var a = ResiliencePolicy.Anomaly()
        a.warmupCalls = warmup
        return a
    }

    func warmed(_ cfg: ResiliencePolicy.Anomaly, hosts: [String] = []) -> BehaviourProfile {
        var p = BehaviourProfile(cell: "c", versionID: "v", label: "1")
        for i in 0..<cfg.warmupCalls {
            // Ordinary jitter: ±10 %.
            let o = obs(memoryKiB: 2048 + Double(i % 5) * 50, duration: 3000 + Double(i % 7) * 100, hosts: hosts)
            let d = p.observe(o, cfg)
            XCTAssertEqual(d, [], "call \(i) of the warm-up was flagged")
        }
        return p
    }

    func testWarmUpThenFiftyTimesTheMemoryIsAnomalous() {
        let cfg = anomaly()
        var cold = BehaviourProfile(cell: "c", versionID: "v", label: "1")
        for _ in 0..<5 { _ = cold.observe(obs(), cfg) }
        XCTAssertEqual(cold.observe(obs(memoryKiB: 2048 * 50), cfg), [], "scores do not count before warm-up")

        var p = warmed(cfg)
        XCTAssertEqual(p.observe(obs(memoryKiB: 2300, duration: 3500), cfg), [], "ordinary variation")
        let d = p.observe(obs(memoryKiB: 2048 * 50), cfg)
        XCTAssertEqual(d.map(\.measure), ["peakMemoryKiB"])
        XCTAssertGreaterThan(d[0].score, cfg.threshold)
        XCTAssertEqual(p.anomalies, 1)
        XCTAssertEqual(p.calls, 21, "the anomalous call is not learned")
        XCTAssertEqual(p.maximum(.memory), 2300)
    }

    func testNewHostAndViolationsAreAnomalous() {
        let cfg = anomaly()
        var p = warmed(cfg, hosts: ["api.example.org"])
        XCTAssertEqual(p.observe(obs(hosts: ["api.example.org"]), cfg), [])
        XCTAssertEqual(p.observe(obs(hosts: ["exfil.example.net"]), cfg).map(\.measure), ["networkHost"])
        XCTAssertFalse(p.hosts.contains("exfil.example.net"))
        // A violation counts even before warm-up, far above the threshold.
        var cold = BehaviourProfile(cell: "c", versionID: "v", label: "1")
        let v = cold.observe(obs(violation: "killed by SIGSYS: syscall ptrace"), cfg)
        XCTAssertEqual(v.map(\.measure), ["violation"])
        XCTAssertEqual(v[0].score, cfg.threshold * BehaviourProfile.violationFactor)
        XCTAssertEqual(cold.calls, 0)
    }

    /// An attacker shifting the profile by steps that each pass unnoticed
    /// is stopped by the baseline frozen after warm-up.
    func testSlowShiftIsBoundedByTheBaseline() {
        let cfg = anomaly()
        var p = warmed(cfg)
        var memory = 2048.0
        var flaggedAt: Double? = nil
        for _ in 0..<5000 {
            // Each step a little more, just inside half the threshold of
            // the recent profile (what is still learned).
            let next = memory * 1.002
            if !p.observe(obs(memoryKiB: next), cfg).isEmpty {
                flaggedAt = next
                break
            }
            memory = next
        }
        let reached = flaggedAt ?? memory
        XCTAssertNotNil(flaggedAt, "a slow shift went unnoticed up to \(Int(memory)) KiB")
        // Baseline median ~2150 KiB, scale max(MAD, 10 %, 4 MiB) = 4096:
        // flagged before 3 × threshold scales above it.
        XCTAssertLessThan(reached, 2150 + BehaviourProfile.baselineFactor * cfg.threshold * 4096 + 4096)
    }

    func testProfilesPersistBoundedAndWithoutArguments() throws {
        let dir = NSTemporaryDirectory() + "profiles-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cfg = anomaly(warmup: 5)
        let a = BehaviourProfiles(directory: dir)
        for _ in 0..<(BehaviourProfile.capacity + 40) {
            XCTAssertEqual(a.observe(cell: "c", versionID: "v1", label: "1", obs(hosts: ["h"]), cfg), [])
        }
        a.flush()
        let text = try String(contentsOfFile: dir + "/c@v1.json", encoding: .utf8)
        XCTAssertFalse(text.contains("arguments"))
        // A new process (same directory) keeps scoring against the saved profile.
        let b = BehaviourProfiles(directory: dir)
        let loaded = try XCTUnwrap(b.profile(cell: "c", versionID: "v1"))
        XCTAssertEqual(loaded.count(.memory), BehaviourProfile.capacity, "bounded")
        XCTAssertGreaterThanOrEqual(loaded.calls, BehaviourProfile.capacity)
        XCTAssertEqual(loaded.hosts, ["h"])
        XCTAssertEqual(
            b.observe(cell: "c", versionID: "v1", label: "1", obs(memoryKiB: 100_000, hosts: ["h"]), cfg)
                .map(\.measure), ["peakMemoryKiB"])
    }

    // MARK: syscall profiler

    func testProfileSyscallsSettingIsGlobsOverCells() throws {
        let none = try Policy.parse(bytes: Array(#"{"principals": []}"#.utf8), path: "p.json")
        XCTAssertFalse(none.resilience.profilesSyscalls("echo"), "the profiler is off by default")
        let r = try parse(#"{"profileSyscalls": ["fetch*", "echo"]}"#).resilience
        XCTAssertTrue(r.profilesSyscalls("echo"))
        XCTAssertTrue(r.profilesSyscalls("fetch_backup"))
        XCTAssertFalse(r.profilesSyscalls("python_run"))
        XCTAssertTrue(try parse(#"{"profileSyscalls": ["*"]}"#).resilience.profilesSyscalls("any"))
        for (text, field) in [
            (#"{"profileSyscalls": "echo"}"#, "resilience.profileSyscalls"),
            (#"{"profileSyscalls": [3]}"#, "resilience.profileSyscalls[0]"),
            (#"{"profileSyscalls": [""]}"#, "resilience.profileSyscalls[0]"),
        ] {
            XCTAssertThrowsError(try parse(text), text) { e in
                XCTAssertEqual((e as? ConfigError)?.field, field, "\(e)")
            }
        }
    }

    /// The syscalls of profiled calls: counted per call and in all, every
    /// profiled call in `syscallsSeen`, learned calls in `syscalls`; after
    /// warm-up a syscall never seen is an anomaly of small weight, not
    /// learned, while it still counts as used.
    func testProfiledSyscallsAreCountedAndANewOneIsAnomalous() {
        let cfg = anomaly(warmup: 5)
        let usual = ["read": 3, "write": 1, "ioctl(21505)": 1]
        var p = BehaviourProfile(cell: "c", versionID: "v", label: "1")
        for _ in 0..<5 { XCTAssertEqual(p.observe(obs(syscalls: usual), cfg), []) }
        XCTAssertEqual(p.syscallCalls, 5)
        XCTAssertEqual(p.syscalls["read"], .init(calls: 5, count: 15))
        XCTAssertEqual(p.observe(obs(syscalls: ["read": 1]), cfg), [], "fewer syscalls than usual is fine")
        // A failed call's syscalls count as used, but are not learned.
        XCTAssertEqual(
            p.observe(obs(syscalls: ["read": 1, "unlink": 1], succeeded: false), cfg).map(\.measure),
            [
                "syscall"
            ])
        let d = p.observe(obs(syscalls: usual.merging(["getppid": 2, "pipe2": 1]) { a, _ in a }), cfg)
        XCTAssertEqual(d.map(\.measure), ["syscall"])
        XCTAssertEqual(d[0].score, cfg.threshold * BehaviourProfile.syscallFactor)
        XCTAssertGreaterThan(d[0].score, cfg.threshold, "anomalous on its own")
        XCTAssertLessThan(d[0].score, cfg.threshold * 2, "weighs less than a new host")
        XCTAssertTrue(d[0].detail.contains("getppid, pipe2"), d[0].detail)
        XCTAssertNil(p.syscalls["getppid"], "an anomaly is not learned")
        XCTAssertEqual(p.syscallsSeen["getppid"], .init(calls: 1, count: 2), "but what a call made counts as used")
        XCTAssertEqual(p.syscallsSeen["unlink"]?.calls, 1)
        XCTAssertEqual(p.profiledCalls, 8)
        XCTAssertEqual(p.syscallCalls, 6)
        // Unprofiled calls leave the syscall measures alone.
        XCTAssertEqual(p.observe(obs(), cfg), [])
        XCTAssertEqual(p.profiledCalls, 8)

        // The profiler turned on after the statistical warm-up: syscalls are
        // learned until the profile has as many profiled calls.
        var late = warmed(cfg)
        for i in 0..<5 {
            XCTAssertEqual(late.observe(obs(syscalls: ["read": 1, "f\(i)": 1]), cfg), [], "profiled call \(i)")
        }
        XCTAssertEqual(late.observe(obs(syscalls: ["read": 1, "new": 1]), cfg).map(\.measure), ["syscall"])
    }

    func testSyscallMapsPersistAndAreBounded() throws {
        var p = BehaviourProfile(cell: "c", versionID: "v", label: "1")
        var many: [String: Int] = [:]
        for i in 0..<(BehaviourProfile.maxSyscallNames + 100) { many["s\(i)"] = 1 }
        _ = p.observe(obs(syscalls: ["read": 7]), anomaly())
        _ = p.observe(obs(syscalls: many), anomaly())
        XCTAssertEqual(p.syscallsSeen.count, BehaviourProfile.maxSyscallNames, "bounded")
        XCTAssertEqual(p.syscalls.count, BehaviourProfile.maxSyscallNames, "bounded")
        let text = JSONValue.object(try XCTUnwrap(p.json.objectValue)).serialized()
        let back = try XCTUnwrap(BehaviourProfile(json: try XCTUnwrap(JSONParser.parse(Array(text.utf8)).objectValue)))
        XCTAssertEqual(back.syscalls, p.syscalls)
        XCTAssertEqual(back.syscallsSeen, p.syscallsSeen)
        XCTAssertEqual(back.profiledCalls, 2)
        XCTAssertEqual(back.syscallCalls, 2)
        XCTAssertEqual(back.syscalls["read"], .init(calls: 1, count: 7))
    }

    /// `unused_syscalls`: a group none of whose syscalls a profiled call
    /// made, an unused `allow` entry, a partly used group; never before
    /// `minProfiledCalls`, never from another version's profile, never for
    /// what the profiler cannot see.
    func testInsightsSuggestRemovingSyscallsNoProfiledCallMade() throws {
        let dir = NSTemporaryDirectory() + "groups-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try
            #"{"groups": {"base": ["read", "write", "close", "exit_group", {"name": "ioctl", "argument": 1, "values": [21505]}], "files-write": ["unlink", "mkdir", "sendmsg"], "events": ["poll", "pipe2"]}}"#
            .write(toFile: dir + "/syscall-groups.json", atomically: true, encoding: .utf8)
        let groups = try SyscallGroups.load(path: dir + "/syscall-groups.json")
        let o: JSONObject = [
            "name": "lean", "version": "1", "description": "A cell.",
            "executable": ["path": "/bin/true", "sha256": .string(String(repeating: "a", count: 64))],
            "tools": [["name": "lean", "description": "Tool.", "inputSchema": ["type": "object"]]],
            "sideEffects": "none",
            "syscalls": ["groups": ["base", "files-write", "events"], "allow": ["getppid", "uname"]],
        ]
        let m = try CellManifest.parse(
            bytes: JSONValue.object(o).serializedBytes(), path: "/m/lean.json", manifestSHA256: "v1")
        var p = BehaviourProfile(cell: "lean", versionID: "v1", label: "1")
        for _ in 0..<49 {
            _ = p.observe(obs(syscalls: ["read": 2, "write": 1, "ioctl(21505)": 1, "poll": 1, "uname": 1]), anomaly())
        }
        func found(_ profile: BehaviourProfile) -> [Insight] {
            Insights.analyze(
                records: [], manifests: [m], policy: nil, profiles: [profile], groups: groups,
                profilesDirectory: "/s/profiles"
            ).filter { $0.kind == "unused_syscalls" }
        }
        XCTAssertEqual(found(p), [], "49 profiled calls are not enough (default 50)")
        _ = p.observe(obs(syscalls: ["read": 1]), anomaly())
        let i = try XCTUnwrap(found(p).first)
        XCTAssertEqual(found(p).count, 1)
        XCTAssertEqual(i.subject, "lean")
        // files-write's sendmsg is allowed in every filter and unseen: the
        // group still counts as unused (2 syscalls the profiler can see).
        XCTAssertTrue(
            i.summary.hasPrefix("50 profiled calls used none of: group files-write (2 syscalls); allow: getppid"),
            i.summary)
        XCTAssertTrue(i.summary.contains("group events never used pipe2"), i.summary)
        XCTAssertTrue(i.apply.contains(#""syscalls": {"groups":["base","events"],"allow":["uname"]}"#), i.apply)
        XCTAssertTrue(
            i.apply.contains(#"or narrower still, "syscalls": {"groups":["base"],"allow":["uname","poll"]}"#), i.apply)
        XCTAssertTrue(i.apply.contains("/m/lean.json"), i.apply)
        XCTAssertTrue(i.evidence.contains("/s/profiles/lean@v1.json"), i.evidence)
        XCTAssertTrue(i.evidence.contains("50 profiled calls"), i.evidence)
        // Another version's profile says nothing about this one.
        var other = BehaviourProfile(cell: "lean", versionID: "v0", label: "0")
        for _ in 0..<60 { _ = other.observe(obs(syscalls: ["read": 1]), anomaly()) }
        XCTAssertEqual(found(other), [])
        // An ioctl request outside base's values leaves base's ioctl unused,
        // and a group whose used entry is conditioned is not narrowed.
        var q = BehaviourProfile(cell: "lean", versionID: "v1", label: "1")
        for _ in 0..<50 {
            _ = q.observe(
                obs(syscalls: ["read": 1, "write": 1, "ioctl(1)": 1, "poll": 1, "pipe2": 1, "getppid": 1, "uname": 1]),
                anomaly())
        }
        let j = try XCTUnwrap(found(q).first)
        XCTAssertTrue(j.summary.contains("group files-write"), j.summary)
        XCTAssertFalse(j.summary.contains("allow:"), j.summary)
        XCTAssertTrue(j.summary.contains("group base never used ioctl"), j.summary)
    }

    // MARK: insights

    /// A prepared log: a cell far below its limits, a tool getting slower
    /// and failing more, a rule that never matched, a breaker that opened,
    /// an anomaly, and a cell never called.
    func testInsightsOnAPreparedLog() throws {
        let sha = String(repeating: "a", count: 64)
        func manifest(_ name: String) throws -> CellManifest {
            let o: JSONObject = [
                "name": .string(name), "version": "1", "description": "A cell.",
                "executable": ["path": "/bin/true", "sha256": .string(sha)],
                "tools": [["name": .string(name), "description": "Tool.", "inputSchema": ["type": "object"]]],
                "sideEffects": "none",
                "limits": ["timeoutMilliseconds": 10000, "memoryMiB": 1024, "cpuSeconds": 10],
            ]
            return try CellManifest.parse(
                bytes: JSONValue.object(o).serializedBytes(), path: "/m/\(name).json", manifestSHA256: name)
        }
        let policy = try Policy.parse(
            bytes: Array(
                #"{"principals": [{"name": "me", "allow": ["fetch", "slow", "old_tool"], "deny": ["x"]}], "approval": [{"tool": "fetch"}, {"tool": "gone"}]}"#
                    .utf8),
            path: "/p/policy.json")
        var records: [Insights.Record] = []
        var n = 0
        func add(_ type: SecurityEventType, _ f: JSONObject) {
            n += 1
            records.append(Insights.Record(type: type.rawValue, time: "2026-11-30T10:00:\(n)Z", fields: f))
        }
        add(.policyLoaded, ["policySha256": .string(policy.sha256)])
        add(.cellsLoaded, ["cells": [["cell": "fetch"], ["cell": "slow"], ["cell": "idle"]]])
        for i in 0..<40 {
            for (tool, late) in [("fetch", false), ("slow", i >= 20)] {
                add(
                    .callStart,
                    [
                        "cell": .string(tool), "tool": .string(tool),
                        "decision": .string(
                            "allow: principals[0] (me) allow[\(tool == "fetch" ? 0 : 1)] \"\(tool)\" in phase default"),
                        "approval": tool == "fetch" ? "approval[0] approved via elicitation/create" : .null,
                    ])
                add(
                    .callEnd,
                    [
                        "cell": .string(tool), "tool": .string(tool),
                        "outcome": .string(late && i % 2 == 0 ? "timeout" : "success"),
                        "durationMicroseconds": .int(late ? 400_000 : 50_000), "cpuMicroseconds": 20_000,
                        "peakMemoryBytes": .int(3 << 20), "bytesReturned": 200,
                    ])
            }
        }
        add(
            .cellBreaker,
            ["cell": "slow", "cellVersion": "1", "cellVersionId": "v", "state": "open", "cause": "timeout"])
        add(.cellAnomaly, ["cell": "fetch", "deviations": [["measure": "networkHost"]]])
        let found = Insights.analyze(
            records: records, manifests: [try manifest("fetch"), try manifest("slow"), try manifest("idle")],
            policy: policy)
        let kinds = Set(found.map { "\($0.kind) \($0.subject)" })
        XCTAssertEqual(
            kinds,
            [
                "tighten_limit fetch", "tighten_limit slow", "rising_latency slow", "rising_failures slow",
                "unmatched_rule principals[0].allow[2]", "unmatched_rule principals[0].deny[0]",
                "unmatched_rule approval[1]",
                "breaker_opened slow", "anomalies fetch", "never_called idle",
            ])
        let memory = try XCTUnwrap(
            found.first { $0.kind == "tighten_limit" && $0.subject == "fetch" && $0.summary.contains("memoryMiB") })
        XCTAssertTrue(memory.apply.contains(#""memoryMiB": 64"#), memory.apply)
        XCTAssertTrue(memory.evidence.contains("40 call.end records"), memory.evidence)
        let timeout = try XCTUnwrap(found.first { $0.subject == "fetch" && $0.summary.contains("timeoutMilliseconds") })
        XCTAssertTrue(timeout.apply.contains(#""timeoutMilliseconds": 1000"#), timeout.apply)
        XCTAssertEqual(Insights.breakerStates(records).map(\.state), ["open"])
        // Too few calls: no numbers-based suggestion.
        var strict = Insights.Options()
        strict.minCalls = 1000
        XCTAssertEqual(
            Set(Insights.analyze(records: records, manifests: [], policy: policy, options: strict).map(\.kind)),
            ["breaker_opened", "anomalies"])
    }
}
