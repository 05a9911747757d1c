import ArgumentParser
import Crypto
import Foundation
import StrictJSON
import SupervisorCore
import SupervisorPlatform

struct Audit: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Read and verify the security event log.",
        subcommands: [Tail.self, Query.self, Verify.self, Stats.self, RotateKey.self])

    struct Location: ParsableArguments {
        /// The state directory (security/, keys/) and the configuration file.
        @OptionGroup var stateOptions: StateOptions

        var state: String { stateOptions.settings().stateDirectory }
        var logDirectory: String { state + "/security" }

        /// The log's records; a state directory without a log is named with
        /// where it came from, never a bare `opendir … ENOENT`.
        func records() throws -> [LogRecord] {
            try requireLog()
            return try SecurityLogReader.records(directory: logDirectory)
        }

        func requireLog() throws {
            guard (try? Sys.stat(logDirectory))?.isDirectory == true else {
                printError(
                    "error: no security log in \(logDirectory): no supervisor has run with the state directory "
                        + "\(state)\(stateDirectoryNote(stateOptions.settings())); pass --state-dir to read another")
                throw ExitCode(1)
            }
        }
    }

    /// One readable line per record.
    static func render(_ r: LogRecord) -> String {
        var parts = ["\(r.time) #\(r.seq) \(r.type)"]
        for (k, v) in r.object where !["seq", "time", "type", "prev"].contains(k) {
            let text: String
            switch v {
            case .string(let s): text = s.contains(" ") ? "\"\(s)\"" : s
            default: text = v.serialized()
            }
            parts.append("\(k)=\(text.count > 200 ? String(text.prefix(200)) + "…" : text)")
        }
        return parts.joined(separator: " ")
    }

    struct Tail: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show the newest records, readable, newest last.")
        @OptionGroup var location: Location
        @Option(name: [.customShort("n"), .long], help: "How many records.") var lines = 20
        @Flag(name: .shortAndLong, help: "Keep printing new records as they are written.") var follow = false
        @Flag(name: .long, help: "Print the records as JSON Lines.") var json = false

        func show(_ r: LogRecord) { print(json ? JSONValue.object(r.object).serialized() : Audit.render(r)) }

        func run() throws {
            // Watched before the first read, so that no record written in
            // between is missed; then each wait blocks on inotify.
            try location.requireLog()
            let watcher = follow ? try FileChangeWatcher(directory: location.logDirectory) : nil
            var records = try location.records()
            for r in records.suffix(lines) { show(r) }
            guard let watcher else { return }
            fflush(nil)
            var last = records.last?.seq ?? 0
            while watcher.waitForChange() {
                records = (try? SecurityLogReader.records(directory: location.logDirectory)) ?? []
                for r in records where r.seq > last {
                    show(r)
                    last = r.seq
                }
                fflush(nil)
            }
            printError("audit tail: \(location.logDirectory) can no longer be watched (removed?)")
            throw ExitCode(1)
        }
    }

    struct Filter: ParsableArguments {
        @Option(name: .long, help: "Event type (e.g. call.end, sandbox.violation).") var type: [String] = []
        @Option(name: .long, help: "Cell name.") var cell: String?
        @Option(name: .long, help: "Tool name.") var tool: String?
        @Option(name: .long, help: "Principal (e.g. uid:1000).") var principal: String?
        @Option(name: .long, help: "Tenant (of an HTTP caller, docs/http.md): only its records.") var tenant: String?
        @Option(name: .long, help: "Outcome (success, tool_error, timeout, sandbox_violation, ...).") var outcome:
            String?
        @Option(
            name: .long,
            help: ArgumentHelp(
                "Records at or after this time: RFC 3339 (2026-11-22T10:00:00Z), a date (2026-11-22, UTC) or a time "
                    + "ago (90s, 15m, 2h, 1d, 1w)."))
        var since: String?
        @Option(name: .long, help: "Records before this time (the same forms as --since).") var until: String?

        /// The bounds in the log's own time format; anything else is refused.
        mutating func validate() throws {
            since = try since.map { try TimeBound.parse($0) }
            until = try until.map { try TimeBound.parse($0) }
            for t in type where SecurityEventType(rawValue: t) == nil {
                throw ValidationError(
                    "unknown event type \(t); known: \(SecurityEventType.allCases.map(\.rawValue).joined(separator: ", "))"
                )
            }
        }

        func matches(_ r: LogRecord) -> Bool {
            if !type.isEmpty && !type.contains(r.type) { return false }
            if let cell, r["cell"]?.stringValue != cell { return false }
            if let tool, r["tool"]?.stringValue != tool { return false }
            if let principal, r["principal"]?.stringValue != principal { return false }
            if let tenant, r["tenant"]?.stringValue != tenant { return false }
            if let outcome, r["outcome"]?.stringValue != outcome { return false }
            // RFC 3339 UTC strings of one format compare in time order
            // (validate() wrote the bounds in the log's format).
            if let since, r.time < since { return false }
            if let until, r.time >= until { return false }
            return true
        }

        func records(_ location: Location) throws -> [LogRecord] {
            try location.records().filter(matches)
        }
    }

    struct Query: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Records matching filters, as text or JSON Lines.")
        @OptionGroup var location: Location
        @OptionGroup var filter: Filter
        @Flag(name: .long, help: "Print the records as JSON Lines.") var json = false

        func run() throws {
            for r in try filter.records(location) {
                print(json ? JSONValue.object(r.object).serialized() : Audit.render(r))
            }
        }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Check the chain, the sequence, the checkpoints and their signatures, and that a signed checkpoint covers every record. Exits 1 naming the first problem."
        )
        @OptionGroup var location: Location
        @Option(name: .long, help: "Checkpoint file to check against (e.g. a copy kept elsewhere); it must exist.")
        var checkpoints: String?
        @Option(
            name: .long,
            help:
                "A public key of the log (e.g. a copy kept elsewhere); repeat for keys of earlier rotations. Default: keys/log-signing*.pub."
        )
        var publicKey: [String] = []
        @Option(
            name: .customLong("instance"),
            help: ArgumentHelp(
                "The state directory of one instance of a deployment; repeat for each. Each log is checked against "
                    + "its own keys (keys/log-signing*.pub), one line per instance; exits 1 if any fails.",
                valueName: "STATE_DIR"))
        var instances: [String] = []
        @OptionGroup var output: JSONOutput

        func validate() throws {
            if !instances.isEmpty && (checkpoints != nil || !publicKey.isEmpty) {
                throw ValidationError("--checkpoints and --public-key name one log's files: not with --instance")
            }
        }

        func run() throws {
            if !instances.isEmpty { return try verifyInstances() }
            var keys: [String: Curve25519.Signing.PublicKey] = [:]
            do {
                if publicKey.isEmpty {
                    keys = try LogSigningKey.publicKeys(stateDirectory: location.state)
                } else {
                    for path in publicKey.map(SupervisorSettings.absolute) {
                        let k = try LogSigningKey.loadPublic(path: path)
                        keys[LogSigningKey.keyID(k)] = k
                    }
                }
            } catch {
                printError("audit verify: FAILED: unreadable: \(error)")
                throw ExitCode(1)
            }
            let v = SecurityLogReader.verify(
                directory: location.logDirectory, publicKeys: keys,
                checkpointsPath: checkpoints.map(SupervisorSettings.absolute))
            output.emit(
                .object(
                    JSONObject([
                        ("ok", .bool(v.problem == nil)), ("problem", v.problem.map { .string("\($0)") } ?? .null),
                        ("records", .int(Int64(v.records))), ("files", .int(Int64(v.files))),
                        ("lastSeq", .int(v.lastSeq)), ("checkpoints", .int(Int64(v.checkpoints))),
                        ("keyIds", .array(v.keyIDs.sorted().map { .string($0) })),
                        (
                            "unsignedTails",
                            .array(
                                v.unsignedTails.map {
                                    .object(
                                        JSONObject([
                                            ("seq", .int($0.seq)), ("from", .int($0.from)), ("to", .int($0.to)),
                                        ]))
                                })
                        ),
                    ])))
            if let p = v.problem {
                printError("audit verify: FAILED: \(p)")
                throw ExitCode(1)
            }
            for t in v.unsignedTails where !output.json {
                print(
                    "note: records \(t.from)...\(t.to) had no checkpoint when their writer stopped; the next start checkpointed them (log.unsigned_tail, record \(t.seq))"
                )
            }
            output.text(
                "audit verify: OK: \(v.records) records in \(v.files) file(s), chain intact through record \(v.lastSeq), \(v.checkpoints) signed checkpoint(s) valid (key\(v.keyIDs.count == 1 ? "" : "s") \(v.keyIDs.sorted().joined(separator: ", "))), every record covered"
            )
        }

        /// Every instance's log against that instance's keys: a deployment
        /// has one hash chain and one signing key per instance, so no log
        /// vouches for another.
        func verifyInstances() throws {
            var rows: [JSONValue] = []
            var failed: [String] = []
            for dir in instances.map(SupervisorSettings.absolute) {
                let line: String
                var problem: String?
                var v: LogVerification?
                if (try? Sys.stat(dir + "/security"))?.isDirectory != true {
                    problem = "no security log in \(dir)/security"
                } else {
                    do {
                        let keys = try LogSigningKey.publicKeys(stateDirectory: dir)
                        let r = SecurityLogReader.verify(
                            directory: dir + "/security", publicKeys: keys, checkpointsPath: nil)
                        v = r
                        problem = r.problem.map { "\($0)" }
                    } catch { problem = "unreadable keys in \(dir)/keys: \(error)" }
                }
                if let problem {
                    line = "\(dir): FAILED: \(problem)"
                    failed.append(dir)
                } else if let v {
                    line =
                        "\(dir): OK: \(v.records) records, chain intact through record \(v.lastSeq), "
                        + "\(v.checkpoints) signed checkpoint(s) (key\(v.keyIDs.count == 1 ? "" : "s") "
                        + "\(v.keyIDs.sorted().joined(separator: ", "))), every record covered"
                } else {
                    line = ""
                }
                if problem != nil { printError("audit verify: " + line) } else { output.text("audit verify: " + line) }
                rows.append(
                    .object(
                        JSONObject([
                            ("instance", .string(dir)), ("ok", .bool(problem == nil)),
                            ("problem", problem.map { .string($0) } ?? .null),
                            ("records", .int(Int64(v?.records ?? 0))), ("lastSeq", .int(v?.lastSeq ?? 0)),
                            ("checkpoints", .int(Int64(v?.checkpoints ?? 0))),
                        ])))
            }
            output.emit(.array(rows))
            if !failed.isEmpty {
                printError(
                    "audit verify: FAILED: \(failed.count) of \(instances.count) instance log(s): "
                        + failed.joined(separator: ", "))
                throw ExitCode(1)
            }
        }
    }

    struct RotateKey: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rotate-key",
            abstract:
                "Replace the log's signing key (e.g. after it was lost). Recorded as a log.key_rotated event; old public keys stay for verify.",
            discussion: """
                Refused while a supervisor or a trust command has the log open. If the old private key is still \
                present, it signs a last checkpoint first; it is then replaced. Every public key the log was signed \
                with stays in <state>/keys/log-signing-<keyId>.pub, so `audit verify` checks checkpoints of both keys.
                """)
        @OptionGroup var location: Location
        @Option(name: .long, help: "Why the key is replaced (recorded).") var reason: String = ""

        func run() throws {
            do {
                let (old, new) = try LogSigningKey.rotate(stateDirectory: location.state, reason: reason)
                print("log signing key rotated: \(old ?? "(unknown)") → \(new)")
            } catch {
                printError("audit rotate-key: \(error)")
                throw ExitCode(1)
            }
        }
    }

    struct Stats: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Counts by event type, cell and outcome; calls, p50/p99 latency, refusals and violations per tool.",
            discussion: """
                Latency is call.end's durationMicroseconds (the worker's part of the call). \
                --window 15m (s, m, h, d) keeps the records of the last 15 minutes; --since/--until take RFC 3339 times.
                """)
        @OptionGroup var location: Location
        @OptionGroup var filter: Filter
        @Option(name: .long, help: "Only the records of this last span of time: N followed by s, m, h or d (e.g. 15m).")
        var window: String?
        @Flag(name: .long, help: "Print JSON.") var json = false

        func validate() throws {
            if let window, Stats.seconds(window) == nil {
                throw ValidationError("--window \(window): expected a number followed by s, m, h or d (e.g. 15m)")
            }
        }

        /// "15m" → 900.
        static func seconds(_ w: String) -> Int? {
            guard let unit = w.last, let n = Int(w.dropLast()), n > 0 else { return nil }
            switch unit {
            case "s": return n
            case "m": return n * 60
            case "h": return n * 3600
            case "d": return n * 86400
            default: return nil
            }
        }

        /// The log's own time format (RFC 3339, UTC, microseconds), which
        /// compares as text in time order.
        static func logTime(_ d: Date) -> String {
            let f = DateFormatter()
            f.locale = Locale(identifier: "en_US_POSIX")
            f.timeZone = TimeZone(identifier: "UTC")
            f.dateFormat = "yyyy-MM-dd'T'HH:mm:ss"
            return f.string(from: d) + ".000000Z"
        }

        func run() throws {
            var byType: [String: Int] = [:]
            var byCell: [String: Int] = [:]
            var byOutcome: [String: Int] = [:]
            var total = 0
            var breakerRecords: [Insights.Record] = []
            var calls = CallStats()
            let since = window.flatMap(Stats.seconds).map { Stats.logTime(Date().addingTimeInterval(-Double($0))) }
            for r in try filter.records(location) {
                if let since, r.time < since { continue }
                total += 1
                if r.type == SecurityEventType.cellBreaker.rawValue {
                    breakerRecords.append(Insights.Record(type: r.type, time: r.time, fields: r.object))
                }
                byType[r.type, default: 0] += 1
                if let c = r["cell"]?.stringValue { byCell[c, default: 0] += 1 }
                if let o = r["outcome"]?.stringValue { byOutcome[o, default: 0] += 1 }
                calls.add(type: r.type, r.object)
            }
            // The last state each breaker reached (docs/resilience.md).
            let breakers = Insights.breakerStates(breakerRecords)
            func obj(_ d: [String: Int]) -> JSONValue {
                .object(JSONObject(d.sorted { $0.key < $1.key }.map { ($0.key, .int(Int64($0.value))) }))
            }
            if json {
                var o = JSONObject([
                    ("records", .int(Int64(total))), ("byType", obj(byType)),
                    ("byCell", obj(byCell)), ("byOutcome", obj(byOutcome)),
                    (
                        "breakers",
                        .array(
                            breakers.map {
                                .object(
                                    JSONObject([
                                        ("cell", .string($0.cell)), ("cellVersion", .string($0.version)),
                                        ("state", .string($0.state)), ("since", .string($0.time)),
                                    ]))
                            })
                    ),
                ])
                for (k, v) in calls.json { o[k] = v }
                if let since { o["since"] = .string(since) }
                print(JSONValue.object(o).serialized())
                return
            }
            print("records: \(total)\(since.map { " since \($0)" } ?? "")")
            for (title, d) in [("by type", byType), ("by cell", byCell), ("by outcome (call.end)", byOutcome)] {
                print("\(title):")
                for (k, n) in d.sorted(by: { $0.value > $1.value || ($0.value == $1.value && $0.key < $1.key) }) {
                    print("  \(k): \(n)")
                }
            }
            print("calls:")
            print(calls.table.split(separator: "\n").map { "  " + $0 }.joined(separator: "\n"))
            if !breakers.isEmpty {
                print("breakers (last state):")
                for b in breakers { print("  \(b.cell) \(b.version): \(b.state) since \(b.time)") }
            }
        }
    }
}
