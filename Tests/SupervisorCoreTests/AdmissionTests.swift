import Foundation
import StrictJSON
import Synchronization
import XCTest

@testable import SupervisorCore

/// Admission without any worker: policy decisions, token buckets,
/// concurrency caps, phases, resource waits with cancellation, and the call
/// pool's concurrency and queue bound.
final class AdmissionTests: XCTestCase {
    /// A clock the test moves by hand.
    final class FakeClock: Sendable {
        let now = Synchronization.Mutex<UInt64>(1_000_000_000)
        func advance(seconds: Double) { now.withLock { $0 += UInt64(seconds * 1e9) } }
        var read: @Sendable () -> UInt64 { { self.now.withLock { $0 } } }
    }

    func policy(_ principal: String) throws -> Policy {
        let doc = """
            {"phases": {"states": ["observe", "act"], "initial": "observe",
                        "transitions": [{"from": "observe", "to": "act"}]},
             "principals": [\(principal)],
             "cells": {"busy": {"maxConcurrent": 1}}}
            """
        return try Policy.parse(bytes: Array(doc.utf8), path: "test-policy.json")
    }

    func rule(_ p: Policy) -> Policy.PrincipalRule { p.rule(for: "uid:1000", client: "c")!.1 }

    func testTokenBucketRefusesWhenEmptyAndRefills() throws {
        let p = try policy(#"{"name": "u", "allow": ["*"], "ratePerTool": {"perSecond": 2, "burst": 3}}"#)
        let clock = FakeClock()
        let a = Admission(clock: clock.read)
        var leases: [Admission.Lease] = []
        for _ in 0..<3 {
            leases.append(try a.admit(principal: "uid:1000", tool: "t", cell: "c", rule: rule(p), cellRule: nil).get())
        }
        guard
            case .failure(.rateLimit(let l, let scope, let wait)) =
                a.admit(principal: "uid:1000", tool: "t", cell: "c", rule: rule(p), cellRule: nil)
        else { return XCTFail("the fourth call in the same instant must be refused by the bucket") }
        XCTAssertEqual(l, Policy.RateLimit(rate: 2, burst: 3))
        XCTAssertEqual(scope, .tool)
        XCTAssertEqual(wait, 0.5, accuracy: 0.001)
        // Another tool has its own bucket.
        XCTAssertNoThrow(
            try a.admit(principal: "uid:1000", tool: "other", cell: "c", rule: rule(p), cellRule: nil).get())
        clock.advance(seconds: 0.5)
        XCTAssertNoThrow(try a.admit(principal: "uid:1000", tool: "t", cell: "c", rule: rule(p), cellRule: nil).get())
        XCTAssertThrowsError(
            try a.admit(principal: "uid:1000", tool: "t", cell: "c", rule: rule(p), cellRule: nil).get())
    }

    func testARefusalByOneBucketDoesNotDrainAnother() throws {
        let p = try policy(
            #"{"name": "u", "allow": ["*"], "ratePerTool": {"perSecond": 1, "burst": 5}, "rateOverall": {"perSecond": 1, "burst": 1}}"#
        )
        let clock = FakeClock()
        let a = Admission(clock: clock.read)
        XCTAssertNoThrow(try a.admit(principal: "uid:1000", tool: "t", cell: "c", rule: rule(p), cellRule: nil).get())
        for _ in 0..<10 {
            guard
                case .failure(.rateLimit(_, .overall, _)) =
                    a.admit(principal: "uid:1000", tool: "t", cell: "c", rule: rule(p), cellRule: nil)
            else { return XCTFail("the overall bucket is empty") }
        }
        // The per-tool bucket still has 4 tokens: after the overall one refills, 1 call per second passes.
        clock.advance(seconds: 1)
        XCTAssertNoThrow(try a.admit(principal: "uid:1000", tool: "t", cell: "c", rule: rule(p), cellRule: nil).get())
    }

    func testConcurrencyCapsPerPrincipalAndPerCell() throws {
        let p = try policy(#"{"name": "u", "allow": ["*"], "maxConcurrent": 2}"#)
        let a = Admission()
        let one = try a.admit(principal: "uid:1000", tool: "t", cell: "c", rule: rule(p), cellRule: nil).get()
        let two = try a.admit(principal: "uid:1000", tool: "t", cell: "c", rule: rule(p), cellRule: nil).get()
        guard
            case .failure(.concurrency(2, .principal("u"))) =
                a.admit(principal: "uid:1000", tool: "t", cell: "c", rule: rule(p), cellRule: nil)
        else { return XCTFail("a third call at once exceeds maxConcurrent 2") }
        one.release()
        one.release()  // idempotent: must not free a second slot
        let three = try a.admit(principal: "uid:1000", tool: "t", cell: "c", rule: rule(p), cellRule: nil).get()
        XCTAssertThrowsError(
            try a.admit(principal: "uid:1000", tool: "t", cell: "c", rule: rule(p), cellRule: nil).get())
        two.release()
        three.release()
        XCTAssertEqual(a.runningCounts, 0)

        let cellRule = p.cells["busy"]
        let held = try a.admit(principal: "uid:1000", tool: "t", cell: "busy", rule: rule(p), cellRule: cellRule).get()
        guard
            case .failure(.concurrency(1, .cell("busy"))) =
                a.admit(principal: "uid:1000", tool: "t", cell: "busy", rule: rule(p), cellRule: cellRule)
        else { return XCTFail("the cell's cap is 1") }
        // A refused call took no slot anywhere.
        XCTAssertEqual(a.runningCounts, 2)
        _ = held
    }

    func testALeaseDroppedWithoutReleaseStillFreesItsSlot() throws {
        let p = try policy(#"{"name": "u", "allow": ["*"], "maxConcurrent": 1}"#)
        let a = Admission()
        do { _ = try a.admit(principal: "uid:1000", tool: "t", cell: "c", rule: rule(p), cellRule: nil).get() }
        XCTAssertNoThrow(try a.admit(principal: "uid:1000", tool: "t", cell: "c", rule: rule(p), cellRule: nil).get())
    }

    func testPolicyDecisionsNamePrincipalDenyAndPhase() throws {
        let p = try policy(
            #"{"name": "u", "principal": "uid:1000", "allow": ["echo*", "act_*"], "deny": ["echo_secret"]}"#)
        XCTAssertTrue(
            p.decide(principal: "uid:1000", client: nil, tool: "echo", manifest: nil, phase: "observe").allowed)
        let denied = p.decide(principal: "uid:1000", client: nil, tool: "echo_secret", manifest: nil, phase: "observe")
        XCTAssertEqual(denied.reason, "policy")
        XCTAssertTrue(denied.rule.contains("deny[0]"))
        XCTAssertFalse(
            p.decide(principal: "uid:1000", client: nil, tool: "other", manifest: nil, phase: "observe").allowed)
        let stranger = p.decide(principal: "uid:2000", client: nil, tool: "echo", manifest: nil, phase: "observe")
        XCTAssertEqual(stranger.rule, "no principals[] entry matches uid:2000")
        XCTAssertEqual(Refusal.policy(stranger).reason, "policy")
        XCTAssertEqual(Refusal.policy(stranger).message, "Refused: No policy rule covers this caller.")
    }

    func testPrincipalRulesMatchTokenGroupsAnyOfAndScopesAllOf() throws {
        let p = try policy(
            #"""
            {"name": "ops", "principal": "oauth:*", "groups": ["ops", "sre-*"], "scopes": ["tools:call", "fs:*"],
             "allow": ["*"]},
            {"name": "readers", "principal": "oauth:*", "groups": ["readers"], "allow": ["echo"]}
            """#)
        func d(_ groups: [String], _ scopes: [String], _ tool: String = "fs_write") -> Policy.Decision {
            p.decide(
                principal: "oauth:alice", client: nil, groups: groups, scopes: scopes, tool: tool, manifest: nil,
                phase: "observe")
        }
        // Any one group (a glob) with every scope.
        XCTAssertEqual(d(["x", "sre-eu"], ["fs:write", "tools:call"]).rule, #"principals[0] (ops) allow[0] "*""#)
        XCTAssertTrue(d(["ops"], ["tools:call", "fs:read", "other"]).allowed)
        // One scope missing: the rule does not match, and the refusal names it.
        let lacking = d(["ops"], ["tools:call"])
        XCTAssertFalse(lacking.allowed)
        XCTAssertEqual(
            lacking.rule, #"principals[0] (ops) scopes ["tools:call", "fs:*"]: the caller lacks "fs:*""#)
        // No group of the rule: the next rule decides.
        XCTAssertTrue(d(["readers"], [], "echo").allowed)
        XCTAssertEqual(d(["readers"], [], "fs_write").rule, "principals[1] (readers): no allow[] pattern matches")
        let none = d([], ["tools:call", "fs:write"])
        XCTAssertFalse(none.allowed)
        XCTAssertEqual(none.rule, #"principals[0] (ops) groups ["ops", "sre-*"]: the caller has none of them"#)
        // Over stdio a caller has neither: only rules without them apply.
        XCTAssertNil(p.rule(for: "oauth:alice", client: nil))
        XCTAssertFalse(p.mayList(principal: "oauth:alice", client: nil, tool: "echo"))
        XCTAssertTrue(p.mayList(principal: "oauth:alice", client: nil, groups: ["readers"], tool: "echo"))
        // A rule without groups or scopes matches callers with or without them.
        let open = try policy(#"{"name": "all", "allow": ["*"]}"#)
        XCTAssertTrue(
            open.decide(
                principal: "token:t", client: nil, groups: ["g"], scopes: ["s"], tool: "x", manifest: nil,
                phase: "observe"
            ).allowed)
    }

    func testGroupsAndScopesAreValidatedWithFileAndField() throws {
        for (field, value, message) in [
            ("groups", "[]", "an empty list"), ("scopes", "[]", "an empty list"),
            ("groups", #""ops""#, "array"), ("scopes", #"["a", ""]"#, "an empty pattern"),
            ("groups", "[1]", "expected a string"),
        ] {
            XCTAssertThrowsError(try policy(#"{"name": "u", "\#(field)": \#(value), "allow": ["*"]}"#)) { e in
                let e = e as! ConfigError
                XCTAssertEqual(e.file, "test-policy.json")
                XCTAssertTrue(e.field.hasPrefix("principals[0].\(field)"), "\(field) \(value): \(e)")
                XCTAssertTrue(e.message.contains(message), "\(field) \(value): \(e)")
            }
        }
    }

    func testResourceClaimWaitsInAQueueAndIsGrantedOnRelease() async throws {
        let a = Admission()
        let first = await a.claim(["file:/x"], waitNanoseconds: 0)
        XCTAssertTrue(first)
        let refusedAtOnce = await a.claim(["file:/x"], waitNanoseconds: 0)
        XCTAssertFalse(refusedAtOnce, "wait 0 means refuse at once")
        let waiter = Task { await a.claim(["file:/x"], waitNanoseconds: 10_000_000_000) }
        try await Task.sleep(for: .milliseconds(50))
        let started = DispatchTime.now().uptimeNanoseconds
        a.release(["file:/x"])
        let granted = await waiter.value
        XCTAssertTrue(granted)
        XCTAssertLessThan(
            DispatchTime.now().uptimeNanoseconds - started, 1_000_000_000, "granted by the release, not by polling")
        XCTAssertEqual(a.heldResources, ["file:/x"])
        a.release(["file:/x"])
        XCTAssertEqual(a.heldResources, [])
    }

    func testResourceWaitRunsOutAndIsCancelled() async throws {
        let a = Admission()
        _ = await a.claim(["r"], waitNanoseconds: 0)
        let timedOut = await a.claim(["r"], waitNanoseconds: 30_000_000)
        XCTAssertFalse(timedOut)
        let waiter = Task { await a.claim(["r"], waitNanoseconds: 60_000_000_000) }
        try await Task.sleep(for: .milliseconds(30))
        let t0 = DispatchTime.now().uptimeNanoseconds
        waiter.cancel()
        let cancelled = await waiter.value
        XCTAssertFalse(cancelled)
        XCTAssertLessThan(
            DispatchTime.now().uptimeNanoseconds - t0, 1_000_000_000, "cancellation ends the wait at once")
        // The cancelled and timed-out waiters hold nothing and block nobody.
        a.release(["r"])
        let again = await a.claim(["r"], waitNanoseconds: 0)
        XCTAssertTrue(again)
    }

    func testWaitersAreServedInArrivalOrder() async throws {
        let a = Admission()
        _ = await a.claim(["A"], waitNanoseconds: 0)
        final class Order: Sendable { let names = Synchronization.Mutex<[String]>([]) }
        let order = Order()
        // First waiter needs A and B; the second only B, which is free. The
        // second may not take B ahead of the first.
        let w1 = Task {
            let ok = await a.claim(["A", "B"], waitNanoseconds: 10_000_000_000)
            order.names.withLock { $0.append("AB") }
            return ok
        }
        try await Task.sleep(for: .milliseconds(30))
        let w2 = Task {
            let ok = await a.claim(["B"], waitNanoseconds: 10_000_000_000)
            order.names.withLock { $0.append("B") }
            return ok
        }
        try await Task.sleep(for: .milliseconds(30))
        XCTAssertEqual(order.names.withLock { $0 }, [], "B must wait behind the earlier waiter for A+B")
        a.release(["A"])
        let ok1 = await w1.value
        XCTAssertTrue(ok1)
        a.release(["A", "B"])
        let ok2 = await w2.value
        XCTAssertTrue(ok2)
        XCTAssertEqual(order.names.withLock { $0 }, ["AB", "B"])
    }

    // MARK: the call pool

    /// Submits `jobs` jobs that each hold a thread for `micros` and returns
    /// how many ran at once at most.
    func peakConcurrency(_ pool: CallPool, jobs: Int, micros: UInt32) -> Int {
        let running = Synchronization.Mutex((now: 0, peak: 0))
        let done = DispatchGroup()
        for _ in 0..<jobs {
            done.enter()
            XCTAssertTrue(
                pool.submit {
                    running.withLock {
                        $0.now += 1
                        $0.peak = max($0.peak, $0.now)
                    }
                    usleep(micros)
                    running.withLock { $0.now -= 1 }
                    done.leave()
                })
        }
        XCTAssertEqual(done.wait(timeout: .now() + 10), .success)
        return running.withLock { $0.peak }
    }

    func testCallPoolRunsUpToItsThreadsAtOnce() {
        let pool = CallPool(threads: 4, queueLimit: 32)
        XCTAssertEqual(
            peakConcurrency(pool, jobs: 8, micros: 200_000), 4,
            "8 calls on 4 threads run 4 at a time, not one at a time")
    }

    func testCallPoolBurstsAfterIdleUseEveryThread() {
        // One call, a pause, then a burst: the idle thread takes one job and
        // new threads start for the rest (a pool that counted the idle thread
        // once per submit signalled it six times and ran the burst serially).
        let pool = CallPool(threads: 3, queueLimit: 8)
        let warm = DispatchGroup()
        warm.enter()
        _ = pool.submit { warm.leave() }
        XCTAssertEqual(warm.wait(timeout: .now() + 10), .success)
        usleep(50_000)
        XCTAssertEqual(peakConcurrency(pool, jobs: 6, micros: 150_000), 3)
    }

    func testCallPoolEnforcesItsQueueBound() {
        let gate = DispatchSemaphore(value: 0)
        let ran = Synchronization.Mutex(0)
        let pool0 = CallPool(threads: 1, queueLimit: 0)
        XCTAssertTrue(
            pool0.submit {
                gate.wait()
                ran.withLock { $0 += 1 }
            })
        for _ in 0..<11 { XCTAssertFalse(pool0.submit({ ran.withLock { $0 += 1 } }), "queue bound 0: nothing waits") }
        gate.signal()

        let pool = CallPool(threads: 2, queueLimit: 3)
        for _ in 0..<5 {
            XCTAssertTrue(
                pool.submit {
                    gate.wait()
                    ran.withLock { $0 += 1 }
                })
        }
        XCTAssertEqual(pool.load.running, 2)
        XCTAssertEqual(pool.load.queued, 3)
        XCTAssertFalse(pool.submit { ran.withLock { $0 += 1 } }, "2 running + 3 queued is full")
        for _ in 0..<5 { gate.signal() }
        let until = Date(timeIntervalSinceNow: 10)
        while ran.withLock({ $0 }) < 6 && Date() < until { usleep(5_000) }
        XCTAssertEqual(ran.withLock { $0 }, 6, "every accepted job ran; no refused one did")
        XCTAssertEqual(pool.load.running, 0)
        XCTAssertEqual(pool.load.queued, 0)
    }
}
