import StrictJSON
import SupervisorPlatform
import Synchronization

/// Server cell versions held back because their server listed other tools
/// than the pinned ones (a rug pull, or an upgrade behind the operator's
/// back). One file per version in `<state>/quarantine`, so every supervisor
/// sharing the state directory honours it, and it survives restarts; it
/// stays until an operator releases it (`mcp-supervisor cell release`).
public final class Quarantine: Sendable {
    public struct Record: Sendable {
        public let cell: String
        /// The version's id (its manifest's SHA-256).
        public let versionID: String
        public let label: String
        public let since: String
        public let difference: String
        public let path: String
        /// Why: "drift" (the server's tools changed) or "anomaly" (the
        /// version behaved unlike its profile, docs/resilience.md).
        public var reason: String = "drift"
    }

    /// nil: records live in this process only (tests).
    public let directory: String?
    private let memory = Mutex<[String: Record]>([:])

    public init(directory: String?) { self.directory = directory }

    public static func directory(stateDirectory: String) -> String { stateDirectory + "/quarantine" }

    func path(cell: String, versionID: String) -> String { "\(directory ?? "")/\(cell)@\(versionID).json" }

    /// The version's quarantine, if any: one stat when there is none.
    public func record(cell: String, versionID: String) -> Record? {
        let p = path(cell: cell, versionID: versionID)
        if let r = memory.withLock({ $0[p] }) { return r }
        guard directory != nil, (try? Sys.lstat(p)) != nil else { return nil }
        return Self.read(p)
            ?? Record(
                cell: cell, versionID: versionID, label: "?", since: "?",
                difference: "(the quarantine record cannot be read)", path: p)
    }

    /// Quarantines a version. Written with a rename: a record is whole or
    /// absent.
    public func add(
        cell: String, versionID: String, label: String, difference: String, reason: String = "drift"
    ) throws(SystemError) {
        let p = path(cell: cell, versionID: versionID)
        // In this process's memory when there is no directory, or when the
        // record cannot be written: the version is refused here either way.
        func remember() {
            memory.withLock {
                $0[p] = Record(
                    cell: cell, versionID: versionID, label: label, since: SecurityLog.timestamp(),
                    difference: difference, path: p, reason: reason)
            }
        }
        guard let directory else { return remember() }
        do { try Sys.makeDirectories(directory, mode: 0o700) } catch {
            remember()
            throw error
        }
        let doc = JSONValue.object(
            JSONObject([
                ("cell", .string(cell)), ("versionId", .string(versionID)), ("label", .string(label)),
                ("since", .string(SecurityLog.timestamp())), ("difference", .string(difference)),
                ("reason", .string(reason)),
            ]))
        do {
            try LogSigningKey.writeAtomically(p, Array(doc.prettySerialized().utf8), mode: 0o600)
        } catch {
            remember()
            throw (error as? SystemError) ?? SystemError("write \(p): \(error)", errno: 0)
        }
    }

    /// Every quarantined version.
    public func all() -> [Record] {
        guard let directory else { return memory.withLock { Array($0.values) }.sorted { $0.path < $1.path } }
        guard let names = try? Sys.readdirNames(directory) else { return [] }
        return names.filter { $0.hasSuffix(".json") }.sorted().compactMap { Self.read("\(directory)/\($0)") }
    }

    /// Releases every quarantined version of `cell` (or only `versionID`);
    /// returns what was released.
    public func release(cell: String, versionID: String? = nil) throws(SystemError) -> [Record] {
        var out: [Record] = []
        for r in all() where r.cell == cell && (versionID.map { r.versionID.hasPrefix($0) } ?? true) {
            if memory.withLock({ $0.removeValue(forKey: r.path) }) == nil { try Sys.unlink(r.path) }
            out.append(r)
        }
        return out
    }

    static func read(_ path: String) -> Record? {
        guard let bytes = try? readFile(path, limit: 1 << 20), case .object(let o)? = try? JSONParser.parse(bytes),
            let cell = o["cell"]?.stringValue, let id = o["versionId"]?.stringValue
        else { return nil }
        return Record(
            cell: cell, versionID: id, label: o["label"]?.stringValue ?? "?", since: o["since"]?.stringValue ?? "?",
            difference: o["difference"]?.stringValue ?? "", path: path, reason: o["reason"]?.stringValue ?? "drift")
    }
}
