import ArgumentParser
import Foundation
import NIOCore
import NIOPosix
import SupervisorCore
import SupervisorPlatform
import Synchronization

/// `mcp-supervisor dashboard`: a read-only web page on loopback showing what
/// the state directory holds (docs/operations.md, "Dashboard").
struct Dashboard: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "A read-only page on loopback: recent calls, violations, latency per tool, cells, quarantine, the log's "
            + "verification. Prints its URL (with a token) at start.",
        discussion: """
            Reads the state directory (the security log, the trust ledger, quarantine records) and, with \
            --metrics-file, the metrics file a running server writes; it changes nothing and may run beside \
            `run` or on its own. Listens only on a loopback address. Every request needs the token of the URL \
            printed at start (a new one each start); the page keeps it in a cookie. Ctrl-C stops it.
            """)

    @OptionGroup var stateOptions: StateOptions

    @Option(
        name: .long,
        help: "Loopback address and port to listen on: 127.0.0.1:PORT or [::1]:PORT (port 0: any free port).")
    var listen = "127.0.0.1:8766"

    @Option(
        name: .customLong(Setting.metricsFile.flag),
        help: ArgumentHelp(
            "The metrics file a running server writes (its --metrics-file; default: metricsFile of the "
                + "configuration file, if any)."))
    var metricsFile: String?

    @Option(name: .long, help: "How many recent calls and violations the page lists.") var recent = 200

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Seconds between two verifications of a log that keeps changing (it is verified again at the "
                + "first request after each change once this has passed)."))
    var verifyIntervalSeconds = 10

    func validate() throws {
        do { _ = try ListenAddress.parse(listen) } catch { throw ValidationError(error.description) }
        guard (1...10_000).contains(recent) else { throw ValidationError("--recent \(recent): expected 1–10000") }
        guard (1...86_400).contains(verifyIntervalSeconds) else {
            throw ValidationError("--verify-interval-seconds \(verifyIntervalSeconds): expected 1–86400")
        }
    }

    func run() throws {
        let settings = stateOptions.settings()
        let state = settings.stateDirectory
        guard (try? Sys.stat(state))?.isDirectory == true else {
            printError(
                "error: no state directory \(state)\(stateDirectoryNote(settings)): nothing to show; pass "
                    + "--state-dir (the one `run` uses)")
            throw ExitCode(1)
        }
        let requested = try ListenAddress.parse(listen)
        let source = DashboardSource(
            DashboardSource.Options(
                stateDirectory: state,
                metricsFile: metricsFile.map(SupervisorSettings.absolute) ?? settings.metricsFile,
                ledgerPath: settings.ledgerPath, recent: recent, verifyIntervalSeconds: Double(verifyIntervalSeconds)))
        let token = DashboardAccess.newToken()

        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
        let slot = DashboardAppSlot()
        let channel: Channel
        do {
            channel = try DashboardApp.bind(requested, group: group, slot: slot)
        } catch {
            printError(
                "error: cannot listen on \(requested.hostForURL):\(requested.port): \(describeError(error))"
                    + (requested.port != 0 ? "; pass another --listen port (or port 0 for any free one)" : ""))
            throw ExitCode(1)
        }
        let bound = requested.withPort(channel.localAddress?.port ?? requested.port)
        slot.app = DashboardApp(
            access: DashboardAccess(token: token, listen: bound), source: source, pool: pool)
        let base = "http://\(bound.hostForURL):\(bound.port)/"
        print(base + "?token=" + token)
        fflush(nil)
        printError(
            "mcp-supervisor dashboard: \(base), read-only, state directory \(state)"
                + (source.options.metricsFile.map { ", metrics file \($0)" } ?? "")
                + "; open the URL printed on stdout (the token is new at each start); Ctrl-C stops")
        try channel.closeFuture.wait()
    }
}

/// The app, set right after the bind (the access rules need the bound port,
/// known only then with port 0). A connection that comes before it cannot
/// hold the token, which is printed after; it is answered 503.
final class DashboardAppSlot: Sendable {
    private let value = Mutex<DashboardApp?>(nil)

    var app: DashboardApp? {
        get { value.withLock { $0 } }
        set { value.withLock { $0 = newValue } }
    }
}
