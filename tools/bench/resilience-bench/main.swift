// The per-call cost of resilience bookkeeping (docs/benchmarks.md, "(k)"):
// a breaker's admission and record plus scoring and learning one call
// against a warmed behaviour profile (saved to disk every 16 learned calls,
// as in the supervisor), against a baseline measured in the same run:
// building and serialising one call.end record's members, work every call
// already does. Prints one JSON object.
import Foundation
import StrictJSON
import SupervisorCore
import Synchronization

let iterations = Int(CommandLine.arguments.dropFirst().first ?? "") ?? 20_000
let directory = NSTemporaryDirectory() + "resilience-bench-\(getpid())"
defer { try? FileManager.default.removeItem(atPath: directory) }

let profiles = BehaviourProfiles(directory: directory)
let anomaly = ResiliencePolicy.Anomaly()
let breakerSettings = ResiliencePolicy.Breaker()
let breaker = Mutex(BreakerState())

func observation() -> CallObservation {
    CallObservation(
        values: [
            Double.random(in: 900...1400), Double.random(in: 300...500),
            Double.random(in: 2000...2400), Double.random(in: 200...400), 1,
        ], hosts: ["api.example.org"])
}

// The syscalls of a profiled echo call (docs/resilience.md, "Syscall profiler"):
// 15 names, 33 calls.
let echoSyscalls = [
    "arch_prctl": 1, "brk": 7, "getrandom": 4, "gettid": 1, "ioctl(21505)": 2, "mprotect": 1, "newfstatat": 8,
    "openat": 1, "prlimit64": 1, "read": 1, "readlink": 2, "rseq": 1, "set_robust_list": 1, "set_tid_address": 1,
    "write": 1,
]
func profiledObservation() -> CallObservation {
    var o = observation()
    o.syscalls = echoSyscalls
    return o
}

// Warm the profiles past their warm-up, as a served cell's would be.
for _ in 0..<300 {
    _ = profiles.observe(cell: "bench", versionID: "v1", label: "1", observation(), anomaly)
    _ = profiles.observe(cell: "bench-profiled", versionID: "v1", label: "1", profiledObservation(), anomaly)
}

let clock = ContinuousClock()
var scoring: [Double] = []
var baseline: [Double] = []
var profiledScoring: [Double] = []
scoring.reserveCapacity(iterations)
baseline.reserveCapacity(iterations)
profiledScoring.reserveCapacity(iterations)
var flagged = 0
var bytes = 0
for i in 0..<iterations {
    let o = observation()
    let po = profiledObservation()
    // Rotate which goes first, so none always runs on a warm cache.
    for which in [[0, 1, 2], [1, 2, 0], [2, 0, 1]][i % 3] {
        let t0 = clock.now
        if which == 2 {
            // The same scoring for a profiled call: its syscalls merged and compared too.
            let d = profiles.observe(cell: "bench-profiled", versionID: "v1", label: "1", po, anomaly)
            if !d.isEmpty { flagged += 1 }
            profiledScoring.append(Double((clock.now - t0).components.attoseconds) / 1e12)
        } else if which == 0 {
            let now = UInt64(i) * 1_000_000
            let pass = breaker.withLock { b -> Bool in
                let ok = b.admit(now: now, breakerSettings) != .refuse(retryAfterNanoseconds: 0)
                _ = b.record(failed: false, cause: "", now: now, breakerSettings)
                return ok
            }
            let d = profiles.observe(cell: "bench", versionID: "v1", label: "1", o, anomaly)
            if !d.isEmpty || !pass { flagged += 1 }
            scoring.append(Double((clock.now - t0).components.attoseconds) / 1e12)
        } else {
            var f = JSONObject([
                ("callId", .string("c\(i)")), ("principal", "uid:1000"), ("tool", "echo"), ("cell", "echo"),
                ("cellVersion", "1.0.0"), ("executableSha256", .string(String(repeating: "a", count: 64))),
                ("outcome", "success"), ("detail", "success"),
            ])
            f["durationMicroseconds"] = .int(Int64(o.values[0]!))
            f["cpuMicroseconds"] = .int(Int64(o.values[1]!))
            f["bytesReturned"] = .int(300)
            f["spawnMicroseconds"] = 0
            f["firstFrameMicroseconds"] = .int(134)
            f["reapMicroseconds"] = 0
            f["peakMemoryBytes"] = .int(Int64(o.values[2]! * 1024))
            bytes += JSONValue.object(f).serializedBytes().count
            baseline.append(Double((clock.now - t0).components.attoseconds) / 1e12)
        }
    }
}

func quantile(_ v: [Double], _ q: Double) -> Double {
    let s = v.sorted()
    return s[min(s.count - 1, Int(Double(s.count) * q))]
}
func round2(_ x: Double) -> Double { (x * 100).rounded() / 100 }
let p50s = quantile(scoring, 0.5)
let p50b = quantile(baseline, 0.5)
let out = JSONObject([
    ("iterations", .int(Int64(iterations))),
    (
        "scoringMicroseconds",
        .object(
            JSONObject([
                ("p50", .double(round2(p50s))), ("p90", .double(round2(quantile(scoring, 0.9)))),
                ("p99", .double(round2(quantile(scoring, 0.99)))),
            ]))
    ),
    (
        "baselineMicroseconds",
        .object(
            JSONObject([
                ("p50", .double(round2(p50b))), ("p90", .double(round2(quantile(baseline, 0.9)))),
                ("p99", .double(round2(quantile(baseline, 0.99)))),
            ]))
    ),
    (
        "profiledScoringMicroseconds",
        .object(
            JSONObject([
                ("p50", .double(round2(quantile(profiledScoring, 0.5)))),
                ("p90", .double(round2(quantile(profiledScoring, 0.9)))),
                ("p99", .double(round2(quantile(profiledScoring, 0.99)))),
            ]))
    ),
    ("ratioP50", .double(round2(p50s / p50b))),
    ("flagged", .int(Int64(flagged))), ("baselineBytes", .int(Int64(bytes / iterations))),
])
print(JSONValue.object(out).serialized())
