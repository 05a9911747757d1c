import Foundation
import StrictJSON
import SupervisorPlatform
import Synchronization

/// Where the trust ledger stood when the security log last recorded it
/// (a `ledger.loaded` or `ledger.entry` record; `SecurityLog.ledgerAnchorAtOpen`):
/// its entry count and the SHA-256 of its last line. The ledger only grows,
/// so a ledger with fewer entries, or another line at the anchored index,
/// was rolled back or rewritten (which could bring a revoked cell back).
public struct LedgerAnchor: Sendable, Equatable {
    public let entries: Int
    /// SHA-256 of line `entries`; nil in records that predate it.
    public let head: String?
    /// The security log record that holds the anchor (0: not yet written).
    public let seq: Int64

    public init(entries: Int, head: String?, seq: Int64) {
        self.entries = entries
        self.head = head
        self.seq = seq
    }

    /// Why `ledger` (read from `path`) is not a continuation of this
    /// anchor, or nil.
    public func rollback(of ledger: LedgerState, path: String) -> String? {
        let n = ledger.lineHashes.count
        let at = seq > 0 ? " at record \(seq)" : ""
        if n < entries {
            return "the trust ledger \(path) has \(n) entries, but the security log recorded \(entries)\(at): it was "
                + "rolled back (entries removed, which can bring back revoked cells and keys). Restore the ledger with "
                + "every entry; until then no cell is served"
        }
        if let head, entries > 0, ledger.lineHashes[entries - 1] != head {
            return "entry \(entries) of the trust ledger \(path) is not the one the security log recorded\(at) "
                + "(SHA-256 \(head.prefix(16))…): the ledger was rewritten. Restore the ledger; until then no cell is served"
        }
        return nil
    }

    /// The `ledger.loaded` record for a ledger the supervisor is about to serve.
    public static func loadedEvent(_ ledger: LedgerState, path: String) -> SecurityEvent {
        SecurityEvent(
            .ledgerLoaded,
            JSONObject([
                ("ledger", .string(path)), ("entries", .int(Int64(ledger.lineHashes.count))),
                ("head", .string(ledger.head)),
            ]))
    }
}

/// Checks each ledger load against the last anchor, and anchors each load
/// that passes in the security log. Used at start and on every reload.
public final class LedgerGuard: Sendable {
    let path: String
    let log: SecurityLog
    /// The last anchor, and whether a load was anchored since start.
    private let state: Mutex<(anchor: LedgerAnchor?, anchoredOnce: Bool)>

    public init(path: String, log: SecurityLog, anchor: LedgerAnchor?) {
        self.path = path
        self.log = log
        state = Mutex((anchor, false))
    }

    /// Why `ledger` must not be served (recorded as `ledger.rolled_back`),
    /// or nil. A damaged ledger is left to the fold, which refuses every cell.
    public func refusal(_ ledger: LedgerState) -> String? {
        if let p = StatePermissions.problem(path: directoryName(of: path)) ?? StatePermissions.problem(path: path) {
            return p
        }
        guard ledger.damaged == nil else { return nil }
        let (current, first) = state.withLock { ($0.anchor, !$0.anchoredOnce) }
        if let a = current, let why = a.rollback(of: ledger, path: path) {
            log.appendAndWait([
                SecurityEvent(
                    .ledgerRolledBack,
                    JSONObject([
                        ("ledger", .string(path)), ("entries", .int(Int64(ledger.lineHashes.count))),
                        ("anchoredEntries", .int(Int64(a.entries))),
                        ("anchoredHead", a.head.map { .string($0) } ?? .null),
                        ("anchorSeq", .int(a.seq)), ("reason", .string(why)),
                    ]))
            ])
            return why
        }
        let now = LedgerAnchor(entries: ledger.lineHashes.count, head: ledger.lineHashes.last, seq: 0)
        if first || current?.entries != now.entries || current?.head != now.head {
            log.appendAndWait([LedgerAnchor.loadedEvent(ledger, path: path)])
        }
        state.withLock { $0 = (now, true) }
        return nil
    }
}

/// Files whose integrity the supervisor's trust rests on must be writable
/// only by their owner: the state directory, the trust ledger and its
/// directory, the keys directory and its files, the log directory.
public enum StatePermissions {
    /// Why `path` may not be trusted (writable by group or others), or nil
    /// (also when it does not exist).
    public static func problem(path: String) -> String? {
        guard let st = try? Sys.stat(path), st.mode & 0o022 != 0 else { return nil }
        let mode = String(st.mode & 0o7777, radix: 8)
        return "\(path) is writable by its group or by others (mode 0\(mode)): anyone with that access could change "
            + "what the supervisor trusts or records. Run: chmod go-w \(path)"
    }

    /// Every such problem under a state directory.
    public static func problems(stateDirectory s: String) -> [String] {
        var paths = [s, s + "/trust", Ledger.path(stateDirectory: s), s + "/keys", s + "/security"]
        let keys = (try? FileManager.default.contentsOfDirectory(atPath: s + "/keys")) ?? []
        paths += keys.sorted().map { s + "/keys/" + $0 }
        return paths.compactMap(problem(path:))
    }
}

extension CellRegistry {
    /// No cell, and why: what a refused ledger serves.
    public static func refusingAll(ledger path: String, because why: String) -> CellRegistry {
        CellRegistry(cells: [], problems: [CellProblem(path: path, message: "every cell is refused: \(why)")])
    }
}
