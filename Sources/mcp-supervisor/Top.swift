import ArgumentParser
import Foundation
import StrictJSON
import SupervisorCore

/// A live terminal view of a running server, from its metrics file
/// (`run --metrics-file`): per tool the calls, calls per second, p50/p99
/// latency and the outcomes that were not a success; refusals, violations,
/// workers. The numbers since the server started; `audit stats` reads the
/// security log instead (docs/operations.md).
struct Top: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Live view of a running server's calls, latency, refusals and violations (from --metrics-file).")

    @Option(
        name: .customLong(Setting.metricsFile.flag),
        help: "The metrics file the server writes (its --metrics-file, or metricsFile in the configuration file).")
    var metricsFile: String?

    @Option(name: .long, help: ArgumentHelp(CommonOptions.configHelp)) var config: String?

    @Option(name: .long, help: "Seconds between refreshes.") var interval = 2

    @Flag(name: .long, help: "Print one screen and exit (no terminal control).") var once = false

    @Flag(name: .long, help: "Print the per-tool rows once, as JSON.") var json = false

    func validate() throws {
        guard (1...3600).contains(interval) else { throw ValidationError("--interval \(interval): expected 1–3600 s") }
    }

    func run() throws {
        var path = metricsFile.map(SupervisorSettings.absolute)
        if path == nil {
            do {
                path = try SupervisorSettings.resolve(configurationFile: config, flags: []).metricsFile
            } catch {
                printError("error: configuration: \(error)")
                throw ExitCode(1)
            }
        }
        guard let path else {
            printError(
                "error: no metrics file: start the server with --metrics-file FILE (or metricsFile in its "
                    + "configuration file) and give the same path here")
            throw ExitCode(1)
        }
        var previous: (MetricsSnapshot, Date)? = nil
        while true {
            let now = Date()
            let snap: MetricsSnapshot
            do {
                snap = try MetricsSnapshot(text: String(decoding: try readFile(path), as: UTF8.self))
            } catch {
                printError("error: \(path): \(error)")
                throw ExitCode(1)
            }
            if json {
                let rows: [JSONValue] = snap.tools.map { r in
                    .object(
                        JSONObject([
                            ("tool", .string(r.tool)), ("calls", .int(Int64(r.calls))),
                            (
                                "outcomes",
                                .object(
                                    JSONObject(
                                        r.outcomes.sorted { $0.key < $1.key }.map { ($0.key, .int(Int64($0.value))) }))
                            ),
                            ("p50Seconds", r.p50Seconds.map { .double($0) } ?? .null),
                            ("p99Seconds", r.p99Seconds.map { .double($0) } ?? .null),
                        ]))
                }
                print(JSONValue.array(rows).serialized())
                return
            }
            let age = (try? FileManager.default.attributesOfItem(atPath: path)[.modificationDate] as? Date) ?? nil
            let header =
                "mcp-supervisor top — \(path)"
                + (age.map { ", written \(Int(now.timeIntervalSince($0).rounded())) s ago" } ?? "")
            let body = snap.screen(
                previous: previous?.0, elapsedSeconds: previous.map { now.timeIntervalSince($0.1) } ?? 0)
            if once {
                print(header + "\n\n" + body)
                return
            }
            // Clear the screen and home the cursor, then draw (unbuffered).
            FileHandle.standardOutput.write(Data(("\u{1B}[H\u{1B}[2J" + header + "\n\n" + body + "\n").utf8))
            previous = (snap, now)
            Thread.sleep(forTimeInterval: TimeInterval(interval))
        }
    }
}
