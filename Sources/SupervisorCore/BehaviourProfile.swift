import Foundation
import StrictJSON
import SupervisorPlatform
import Synchronization

/// What one call's worker did, in the measures a profile keeps: never its
/// arguments or its result.
public struct CallObservation: Sendable {
    /// In `BehaviourProfile.Measure` order; nil where not measured.
    public var values: [Double?]
    /// Hosts the broker granted a connection to.
    public var hosts: [String]
    /// A broken rule (seccomp kill, refused connection, limit, protocol),
    /// named; nil when there was none.
    public var violation: String?
    public var succeeded: Bool
    /// The syscalls the profiler saw the worker make, with how many times
    /// each; nil when the call was not profiled.
    public var syscalls: [String: Int]?

    public init(
        values: [Double?], hosts: [String] = [], violation: String? = nil, succeeded: Bool = true,
        syscalls: [String: Int]? = nil
    ) {
        self.values = values
        self.hosts = hosts
        self.violation = violation
        self.succeeded = succeeded
        self.syscalls = syscalls
    }

    public init(report r: CallReport, network: [NetworkDecision]) {
        let grants = network.filter { $0.refusal == nil }
        values = [
            Double(r.durationNanoseconds / 1000), Double(r.cpuNanoseconds / 1000),
            r.peakMemoryBytes.map { Double($0 >> 10) }, Double(r.bytesFromWorker), Double(grants.count),
        ]
        hosts = grants.map(\.host)
        syscalls = r.syscallProfile
        succeeded = r.outcome.kind == "success"
        if let refused = network.first(where: { $0.refusal != nil }) {
            violation = "network refused: \(refused.host):\(refused.port) (\(refused.refusal ?? ""))"
        } else {
            switch r.outcome {
            case .sandboxViolation, .limitExceeded, .protocolViolation: violation = r.outcome.detail
            default: violation = r.deniedSyscall.map { "syscall \($0.syscall) denied" }
            }
        }
    }
}

/// One measure that departed from the profile.
public struct Deviation: Sendable, Equatable {
    public let measure: String
    public let value: Double?
    public let median: Double?
    /// The scale the score divides by (scaled MAD, or the measure's floor).
    public let scale: Double?
    public let score: Double
    public let detail: String

    var json: JSONValue {
        var o = JSONObject([("measure", .string(measure)), ("score", .double((score * 100).rounded() / 100))])
        if let value { o["value"] = .double(value) }
        if let median { o["median"] = .double(median) }
        if let scale { o["scale"] = .double((scale * 100).rounded() / 100) }
        o["detail"] = .string(detail)
        return .object(o)
    }
}

/// A cell version's behaviour, learned from its successful calls: a ring of
/// the last `capacity` values of each measure, their median and MAD, the
/// same frozen at the end of warm-up (the baseline), the hosts it connected
/// to and the syscalls the profiler saw (those of learned calls, scored
/// against; and those of every profiled call, which `insights` reads).
/// Scores are robust z-scores:
/// `(value − median) / max(1.4826·MAD, floor)`, upward only (a cell doing
/// less than usual is not suspect).
public struct BehaviourProfile: Sendable {
    public enum Measure: Int, CaseIterable, Sendable {
        case duration, cpu, memory, output, network

        public var name: String {
            switch self {
            case .duration: return "durationMicroseconds"
            case .cpu: return "cpuMicroseconds"
            case .memory: return "peakMemoryKiB"
            case .output: return "outputBytes"
            case .network: return "networkGrants"
            }
        }

        /// The smallest scale a score divides by: an absolute floor and a
        /// share of the median, so that a cell with near-constant values
        /// (MAD 0) is not flagged for ordinary jitter. Durations are the
        /// noisiest (a loaded host), memory the most telling.
        func floor(median: Double) -> Double {
            switch self {
            case .duration: return max(20_000, 0.25 * median)
            case .cpu: return max(10_000, 0.25 * median)
            case .memory: return max(4096, 0.10 * median)
            case .output: return max(4096, 0.25 * median)
            case .network: return 1
            }
        }
    }

    /// Values kept per measure.
    public static let capacity = 256
    /// Hosts and syscalls kept (a cell that contacts more hosts than this
    /// has no useful host profile anyway).
    public static let maxNames = 128
    /// Deviations from the frozen baseline count at this multiple of the
    /// threshold: the bound on how far a slowly shifted profile can move.
    public static let baselineFactor = 3.0
    /// A violation scores this multiple of the threshold: anomalous always,
    /// warm-up or not.
    public static let violationFactor = 10.0
    /// A syscall never seen in the profile's learned profiled calls, once it
    /// has `warmupCalls` of them, scores this multiple of the threshold:
    /// anomalous, but the weakest signal (a new host scores 2, a violation
    /// 10), since the allowlist, not the profile, bounds the syscalls.
    public static let syscallFactor = 1.25
    /// Syscall names kept per map (the x86_64 table has about 460, and
    /// ioctl is kept per request).
    public static let maxSyscallNames = 512

    /// One syscall in a profile: in how many calls, and how many times in all.
    public struct SyscallUse: Sendable, Equatable {
        public var calls: Int
        public var count: Int
        public init(calls: Int, count: Int) {
            self.calls = calls
            self.count = count
        }
    }

    public let cell: String
    public let versionID: String
    public var label: String
    /// Calls learned.
    public private(set) var calls = 0
    public private(set) var anomalies = 0
    var samples: [[Double]] = Array(repeating: [], count: Measure.allCases.count)
    var next: [Int] = Array(repeating: 0, count: Measure.allCases.count)
    var stats: [(median: Double, mad: Double)?] = Array(repeating: nil, count: Measure.allCases.count)
    var baseline: [(median: Double, mad: Double)?]? = nil
    var learnedSinceStats = 0
    public private(set) var hosts: Set<String> = []
    /// The syscalls of the learned profiled calls (scored against).
    public private(set) var syscalls: [String: SyscallUse] = [:]
    /// Learned calls that were profiled.
    public private(set) var syscallCalls = 0
    /// The syscalls of every profiled call, whatever its outcome: what the
    /// cell may need (`insights` suggests removing the rest).
    public private(set) var syscallsSeen: [String: SyscallUse] = [:]
    /// Profiled calls observed, whatever their outcome.
    public private(set) var profiledCalls = 0
    /// Learned calls not yet written.
    var unsaved = 0

    public init(cell: String, versionID: String, label: String) {
        self.cell = cell
        self.versionID = versionID
        self.label = label
    }

    /// Scores a call and learns from it if it was a normal success. The
    /// deviations are empty when the call is not anomalous.
    public mutating func observe(_ o: CallObservation, _ s: ResiliencePolicy.Anomaly) -> [Deviation] {
        var out: [Deviation] = []
        if let v = o.violation {
            out.append(
                Deviation(
                    measure: "violation", value: nil, median: nil, scale: nil,
                    score: s.threshold * Self.violationFactor, detail: v))
        }
        let warm = calls >= s.warmupCalls
        var highest = 0.0
        var newHosts: [String] = []
        if warm {
            for m in Measure.allCases {
                guard let x = o.values[m.rawValue], let st = stats[m.rawValue] else { continue }
                let scale = max(1.4826 * st.mad, m.floor(median: st.median))
                let z = (x - st.median) / scale
                highest = max(highest, z)
                if z > s.threshold {
                    out.append(
                        Deviation(
                            measure: m.name, value: x, median: st.median, scale: scale, score: z,
                            detail: "\(m.name) \(Self.format(x)) against a median of \(Self.format(st.median)) "
                                + "over \(calls) calls"))
                } else if let b = baseline?[m.rawValue] {
                    // Within the recent profile: is it also within reach of
                    // the one frozen after warm-up?
                    let bscale = max(1.4826 * b.mad, m.floor(median: b.median))
                    let zb = (x - b.median) / bscale
                    if zb > s.threshold * Self.baselineFactor {
                        out.append(
                            Deviation(
                                measure: m.name, value: x, median: b.median, scale: bscale,
                                score: zb / Self.baselineFactor,
                                detail: "\(m.name) \(Self.format(x)) against the warm-up baseline's median of "
                                    + "\(Self.format(b.median)) (the profile has drifted)"))
                    }
                }
            }
            newHosts = o.hosts.filter { !hosts.contains($0) }
            for h in Set(newHosts).sorted() {
                out.append(
                    Deviation(
                        measure: "networkHost", value: nil, median: nil, scale: nil, score: s.threshold * 2,
                        detail: "connected to \(h), never seen in \(calls) calls"))
            }
        }
        // Syscalls are scored once the profile has learned as many profiled
        // calls as the warm-up asks (profiling may be turned on late).
        var newSyscalls: [String] = []
        if let used = o.syscalls {
            profiledCalls += 1
            unsaved += 1
            Self.merge(used, into: &syscallsSeen)
            if syscallCalls >= s.warmupCalls {
                newSyscalls = used.keys.filter { syscalls[$0] == nil }.sorted()
                if !newSyscalls.isEmpty {
                    let shown = newSyscalls.prefix(8).joined(separator: ", ")
                    let more = newSyscalls.count > 8 ? " and \(newSyscalls.count - 8) more" : ""
                    out.append(
                        Deviation(
                            measure: "syscall", value: Double(newSyscalls.count), median: nil, scale: nil,
                            score: s.threshold * Self.syscallFactor,
                            detail: "made \(shown)\(more), never seen in \(syscallCalls) profiled calls"))
                }
            }
        }
        if !out.isEmpty { anomalies += 1 }
        // Learn only from a success that stays well inside the profile, so
        // that an anomaly never becomes the new normal in one step.
        if o.succeeded, o.violation == nil, newHosts.isEmpty, newSyscalls.isEmpty,
            !warm || highest <= s.threshold / 2
        {
            learn(o, warmup: s.warmupCalls)
        }
        return out
    }

    /// Adds one call's syscalls to a map, within `maxSyscallNames` names.
    static func merge(_ used: [String: Int], into map: inout [String: SyscallUse]) {
        for (name, n) in used {
            if var u = map[name] {
                u.calls += 1
                u.count += n
                map[name] = u
            } else if map.count < maxSyscallNames {
                map[name] = SyscallUse(calls: 1, count: n)
            }
        }
    }

    mutating func learn(_ o: CallObservation, warmup: Int) {
        for m in Measure.allCases {
            guard let x = o.values[m.rawValue] else { continue }
            let i = m.rawValue
            if samples[i].count < Self.capacity {
                samples[i].append(x)
            } else {
                samples[i][next[i]] = x
                next[i] = (next[i] + 1) % Self.capacity
            }
        }
        for h in o.hosts where hosts.count < Self.maxNames { hosts.insert(h) }
        if let used = o.syscalls {
            syscallCalls += 1
            Self.merge(used, into: &syscalls)
        }
        calls += 1
        unsaved += 1
        learnedSinceStats += 1
        // Medians are recomputed every 8 learned calls once warm (sorting
        // is most of the cost of scoring), at every call before.
        if calls <= warmup || learnedSinceStats >= 8 { refreshStats() }
        if calls == warmup, baseline == nil { baseline = stats }
    }

    mutating func refreshStats() {
        learnedSinceStats = 0
        for i in samples.indices where !samples[i].isEmpty {
            let med = Self.median(samples[i])
            stats[i] = (med, Self.median(samples[i].map { abs($0 - med) }))
        }
    }

    static func median(_ v: [Double]) -> Double {
        let s = v.sorted()
        let n = s.count
        return n % 2 == 1 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2
    }

    static func format(_ x: Double) -> String { x == x.rounded() ? String(Int64(x)) : String(x) }

    // MARK: persistence

    public var json: JSONValue {
        func pair(_ p: (median: Double, mad: Double)?) -> JSONValue {
            guard let p else { return .null }
            return .object(JSONObject([("median", .double(p.median)), ("mad", .double(p.mad))]))
        }
        var measures = JSONObject()
        var base = JSONObject()
        for m in Measure.allCases {
            // In arrival order (oldest first), so a reload refills the ring the same way.
            let s = samples[m.rawValue]
            let ordered = s.count < Self.capacity ? s : Array(s[next[m.rawValue]...] + s[..<next[m.rawValue]])
            measures[m.name] = .array(ordered.map { .double($0) })
            if let b = baseline { base[m.name] = pair(b[m.rawValue]) }
        }
        return .object(
            JSONObject([
                ("cell", .string(cell)), ("versionId", .string(versionID)), ("label", .string(label)),
                ("calls", .int(Int64(calls))), ("anomalies", .int(Int64(anomalies))),
                ("measures", .object(measures)), ("baseline", baseline == nil ? .null : .object(base)),
                ("hosts", .array(hosts.sorted().map { .string($0) })),
                ("syscalls", Self.json(syscalls)), ("syscallCalls", .int(Int64(syscallCalls))),
                ("syscallsSeen", Self.json(syscallsSeen)), ("profiledCalls", .int(Int64(profiledCalls))),
            ]))
    }

    static func json(_ map: [String: SyscallUse]) -> JSONValue {
        .object(
            JSONObject(
                map.sorted { $0.key < $1.key }.map { name, u in
                    (name, .object(JSONObject([("calls", .int(Int64(u.calls))), ("count", .int(Int64(u.count)))])))
                }))
    }

    static func syscallMap(_ v: JSONValue?) -> [String: SyscallUse] {
        guard case .object(let o)? = v else { return [:] }
        var out: [String: SyscallUse] = [:]
        for (name, u) in o where out.count < maxSyscallNames {
            guard let calls = u["calls"]?.intValue, let count = u["count"]?.intValue else { continue }
            out[name] = SyscallUse(calls: Int(calls), count: Int(count))
        }
        return out
    }

    public init?(json o: JSONObject) {
        guard let cell = o["cell"]?.stringValue, let id = o["versionId"]?.stringValue,
            case .object(let measures)? = o["measures"]
        else { return nil }
        self.init(cell: cell, versionID: id, label: o["label"]?.stringValue ?? "?")
        calls = Int(o["calls"]?.intValue ?? 0)
        anomalies = Int(o["anomalies"]?.intValue ?? 0)
        for m in Measure.allCases {
            let v = (measures[m.name]?.arrayValue ?? []).compactMap(\.doubleValue).suffix(Self.capacity)
            samples[m.rawValue] = Array(v)
            next[m.rawValue] = 0
        }
        if case .object(let b)? = o["baseline"] {
            baseline = Measure.allCases.map { m in
                guard let p = b[m.name]?.objectValue, let med = p["median"]?.doubleValue,
                    let mad = p["mad"]?.doubleValue
                else { return nil }
                return (med, mad)
            }
        }
        hosts = Set((o["hosts"]?.arrayValue ?? []).compactMap(\.stringValue).prefix(Self.maxNames))
        syscalls = Self.syscallMap(o["syscalls"])
        syscallCalls = Int(o["syscallCalls"]?.intValue ?? 0)
        syscallsSeen = Self.syscallMap(o["syscallsSeen"])
        profiledCalls = Int(o["profiledCalls"]?.intValue ?? 0)
        refreshStats()
    }

    /// The median of a measure (insights, tests).
    public func median(_ m: Measure) -> Double? { stats[m.rawValue]?.median }
    /// The largest value kept of a measure.
    public func maximum(_ m: Measure) -> Double? { samples[m.rawValue].max() }
    public func count(_ m: Measure) -> Int { samples[m.rawValue].count }
}

/// The profiles of every cell version, kept under `<state>/profiles` (one
/// file per version, rewritten every `saveEvery` learned calls; bounded by
/// `BehaviourProfile.capacity`).
public final class BehaviourProfiles: Sendable {
    public static let saveEvery = 16
    public let directory: String?
    private let profiles = Mutex<[String: BehaviourProfile]>([:])

    public init(directory: String?) { self.directory = directory }

    public static func directory(stateDirectory: String) -> String { stateDirectory + "/profiles" }

    func path(_ cell: String, _ versionID: String) -> String { "\(directory ?? "")/\(cell)@\(versionID).json" }

    /// Scores and learns one call; the deviations (empty: not anomalous).
    public func observe(
        cell: String, versionID: String, label: String, _ o: CallObservation, _ s: ResiliencePolicy.Anomaly
    ) -> [Deviation] {
        let key = "\(cell)@\(versionID)"
        let (deviations, save): ([Deviation], JSONValue?) = profiles.withLock { all in
            var p =
                all[key] ?? load(cell, versionID)
                ?? BehaviourProfile(cell: cell, versionID: versionID, label: label)
            let d = p.observe(o, s)
            var save: JSONValue? = nil
            if directory != nil, p.unsaved >= Self.saveEvery || (!d.isEmpty) || p.calls == s.warmupCalls {
                p.unsaved = 0
                save = p.json
            }
            all[key] = p
            return (d, save)
        }
        if let save { enqueue(path(cell, versionID), save) }
        return deviations
    }

    /// Snapshots waiting to be written (the newest per file), and whether
    /// a writer thread is draining them. A write takes about 0.5 ms here:
    /// kept off the call's path, one short-lived thread at a time.
    private let pending = Mutex<(files: [String: JSONValue], running: Bool)>(([:], false))
    /// Held while taking a snapshot and writing it, so that writes of one
    /// file happen in the order they were taken.
    private let writing = Mutex<Void>(())

    func enqueue(_ path: String, _ doc: JSONValue) {
        let start = pending.withLock { p -> Bool in
            p.files[path] = doc
            if p.running { return false }
            p.running = true
            return true
        }
        guard start else { return }
        let t = Thread { [self] in
            while writeOne(endIfEmpty: true) {}
        }
        t.name = "profile-save"
        t.start()
    }

    /// Writes one pending snapshot; false when there was none.
    private func writeOne(endIfEmpty: Bool) -> Bool {
        writing.withLock { _ in
            let next = pending.withLock { p -> (String, JSONValue)? in
                guard let (k, v) = p.files.first else {
                    if endIfEmpty { p.running = false }
                    return nil
                }
                p.files[k] = nil
                return (k, v)
            }
            guard let (path, doc) = next, let directory else { return false }
            // Best effort: a profile that cannot be written is relearned.
            try? Sys.makeDirectories(directory, mode: 0o700)
            try? Self.replace(path, Array(doc.serialized().utf8))
            return true
        }
    }

    /// Writes every pending snapshot now, and every profile changed since
    /// it was last written (tests; a clean stop).
    public func flush() {
        if directory != nil {
            let changed = profiles.withLock { all -> [(String, JSONValue)] in
                var out: [(String, JSONValue)] = []
                for (key, var p) in all where p.unsaved > 0 {
                    p.unsaved = 0
                    all[key] = p
                    out.append((path(p.cell, p.versionID), p.json))
                }
                return out
            }
            pending.withLock { for (path, doc) in changed { $0.files[path] = doc } }
        }
        while writeOne(endIfEmpty: false) {}
    }

    /// Whole or absent (a temporary file renamed over it), but not synced:
    /// this runs on the call's path, and a profile lost in a crash is only
    /// relearned (an fsync here cost milliseconds at p99).
    static func replace(_ path: String, _ bytes: [UInt8]) throws(SystemError) {
        // O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC; a name per
        // writer, so two threads saving the same profile do not interleave.
        let tmp = "\(path).\(UInt64.random(in: 0...UInt64.max)).tmp"
        let fd = try Sys.open(tmp, 0o1 | 0o100 | 0o1000 | 0o400000 | 0o2000000, mode: 0o600)
        do { try fd.writeAll(bytes) } catch {
            fd.close()
            try? Sys.unlink(tmp)
            throw error
        }
        fd.close()
        do { try Sys.rename(tmp, path) } catch {
            try? Sys.unlink(tmp)
            throw error
        }
    }

    public func profile(cell: String, versionID: String) -> BehaviourProfile? {
        profiles.withLock { $0["\(cell)@\(versionID)"] } ?? load(cell, versionID)
    }

    func load(_ cell: String, _ versionID: String) -> BehaviourProfile? {
        guard directory != nil, let bytes = try? readFile(path(cell, versionID), limit: 4 << 20),
            case .object(let o)? = try? JSONParser.parse(bytes)
        else { return nil }
        return BehaviourProfile(json: o)
    }

    /// Every profile on disk (insights).
    public static func all(directory: String) -> [BehaviourProfile] {
        guard let names = try? Sys.readdirNames(directory) else { return [] }
        return names.filter { $0.hasSuffix(".json") }.sorted().compactMap { n in
            guard let b = try? readFile("\(directory)/\(n)", limit: 4 << 20),
                case .object(let o)? = try? JSONParser.parse(b)
            else { return nil }
            return BehaviourProfile(json: o)
        }
    }
}
