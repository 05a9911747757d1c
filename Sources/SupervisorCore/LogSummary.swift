import StrictJSON

/// What a start needs to know about the whole log — the calls started and
/// not ended, and the last ledger anchor — kept current by the writer and
/// saved (unsigned) with every checkpoint line and `log.rotate` record. A
/// start then reads the newest checkpoint and the records after it, never
/// the whole history (docs/security-events.md, "Recovery at start").
struct LogSummary: Equatable, Sendable {
    var openCalls: [SecurityLog.OpenCall] = []
    var ledger: LedgerAnchor?

    init() {}

    /// From a checkpoint line or a log.rotate record; nil if it has none.
    init?(json o: JSONObject) {
        guard case .array(let calls)? = o["openCalls"] else { return nil }
        openCalls = calls.compactMap(SecurityLog.OpenCall.init(json:))
        if case .object(let l)? = o["ledger"], let n = l["entries"]?.intValue, let seq = l["seq"]?.intValue {
            ledger = LedgerAnchor(entries: Int(n), head: l["head"]?.stringValue, seq: seq)
        }
    }

    var json: JSONObject {
        var o = JSONObject([("openCalls", .array(openCalls.map(\.json)))])
        if let l = ledger {
            o["ledger"] = .object(
                JSONObject([
                    ("entries", .int(Int64(l.entries))),
                    ("head", l.head.map { .string($0) } ?? .null), ("seq", .int(l.seq)),
                ]))
        }
        return o
    }

    mutating func apply(type: String, seq: Int64, fields: JSONObject) {
        switch SecurityEventType(rawValue: type) {
        case .callStart?:
            guard let id = fields["callId"]?.stringValue else { return }
            var f = JSONObject()
            for k in SecurityLog.OpenCall.kept { if let v = fields[k] { f[k] = v } }
            openCalls.append(SecurityLog.OpenCall(callID: id, startSeq: seq, fields: f))
        case .callEnd?:
            // Call ids restart with each supervisor: the newest start with
            // this id is the one that ended.
            guard let id = fields["callId"]?.stringValue else { return }
            if let i = openCalls.lastIndex(where: { $0.callID == id }) { openCalls.remove(at: i) }
        case .callInterrupted?:
            guard let id = fields["callId"]?.stringValue else { return }
            let start = fields["startSeq"]?.intValue
            if let i = openCalls.lastIndex(where: { $0.callID == id && (start == nil || $0.startSeq == start) }) {
                openCalls.remove(at: i)
            }
        case .ledgerLoaded?:
            if let n = fields["entries"]?.intValue {
                ledger = LedgerAnchor(entries: Int(n), head: fields["head"]?.stringValue, seq: seq)
            }
        case .ledgerEntry?:
            if let n = fields["index"]?.intValue {
                ledger = LedgerAnchor(entries: Int(n), head: fields["head"]?.stringValue, seq: seq)
            }
        default:
            break
        }
    }

    private static let markers = [Array(#""type":"call."#.utf8), Array(#""type":"ledger."#.utf8)]

    /// One record line as written; only call.* and ledger.* records are parsed.
    mutating func apply(line: ArraySlice<UInt8>) {
        // The type is the third member: it stands near the start of the line.
        let window = line.prefix(160)
        guard Self.markers.contains(where: { SecurityLog.contains(window, $0) }),
            case .object(let o)? = try? JSONParser.parse(Array(line)), let type = o["type"]?.stringValue,
            let seq = o["seq"]?.intValue
        else { return }
        apply(type: type, seq: seq, fields: o)
    }
}
