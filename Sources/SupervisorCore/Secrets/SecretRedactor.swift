import Foundation
import StrictJSON

/// Replaces the values of a call's secrets with `[secret:NAME]` in
/// everything the call hands back or records: result content, error text,
/// the worker's stderr and log messages, network decisions. It looks for
/// each value's exact bytes and its base64 forms (standard and URL-safe,
/// at each of the three alignments a value can have inside a longer
/// base64 text), and for a value cut at either end of a text (what is kept
/// of a stream's tail, or of a clipped message). It is a safety net behind
/// the real control (an injected secret never reaches the worker):
/// another encoding (hex, URL-escaping, a value split in two) passes
/// (docs/secrets.md).
public struct SecretRedactor: Sendable {
    struct Pattern: Sendable {
        let bytes: [UInt8]
        let marker: [UInt8]
    }

    /// Longest first, so a full base64 form wins over its core.
    let patterns: [Pattern]
    /// The raw values, for cuts at the ends of a text.
    let values: [Pattern]

    /// The shortest part of a value recognised where a text was cut.
    static let minimumEdge = 4
    /// A shifted base64 core shorter than this would match ordinary text.
    static let minimumCore = 8

    public init(_ secrets: [(name: String, value: [UInt8])]) {
        var patterns: [Pattern] = []
        var values: [Pattern] = []
        for (name, value) in secrets where !value.isEmpty {
            let marker = Array("[secret:\(name)]".utf8)
            values.append(Pattern(bytes: value, marker: marker))
            var forms: [[UInt8]] = [value]
            for shift in 0..<3 {
                let encoded = Array(Data([UInt8](repeating: 0, count: shift) + value).base64EncodedString().utf8)
                // Characters determined by the value's bits alone.
                let start = (8 * shift + 5) / 6
                let end = (8 * (shift + value.count)) / 6
                if shift == 0 { forms.append(encoded) }
                if end - start >= Self.minimumCore { forms.append(Array(encoded[start..<end])) }
            }
            for f in forms.dropFirst() {
                let urlSafe = f.map { $0 == 0x2B ? 0x2D : $0 == 0x2F ? 0x5F : $0 }
                if urlSafe != f { forms.append(urlSafe) }
            }
            for f in forms where !patterns.contains(where: { $0.bytes == f }) {
                patterns.append(Pattern(bytes: f, marker: marker))
            }
        }
        self.patterns = patterns.sorted { $0.bytes.count > $1.bytes.count }
        self.values = values
    }

    public var isEmpty: Bool { patterns.isEmpty }

    // MARK: text

    public func redact(_ s: String) -> String {
        guard !patterns.isEmpty, !s.isEmpty else { return s }
        let text = Array(s.utf8)
        var out: [UInt8] = []
        out.reserveCapacity(text.count)
        var i = 0
        var changed = false
        scan: while i < text.count {
            for p in patterns where p.bytes[0] == text[i] && i + p.bytes.count <= text.count {
                if text[i..<(i + p.bytes.count)].elementsEqual(p.bytes) {
                    out += p.marker
                    i += p.bytes.count
                    changed = true
                    continue scan
                }
            }
            out.append(text[i])
            i += 1
        }
        // A value cut where the text begins (the tail of a stream) or ends
        // (a clipped message).
        for v in values where v.bytes.count > Self.minimumEdge {
            for n in stride(from: v.bytes.count - 1, through: Self.minimumEdge, by: -1)
            where out.count >= n && out[0..<n].elementsEqual(v.bytes.suffix(n)) {
                out.replaceSubrange(0..<n, with: v.marker)
                changed = true
                break
            }
            for n in stride(from: v.bytes.count - 1, through: Self.minimumEdge, by: -1)
            where out.count >= n && out.suffix(n).elementsEqual(v.bytes.prefix(n)) {
                out.replaceSubrange((out.count - n)..<out.count, with: v.marker)
                changed = true
                break
            }
        }
        return changed ? String(decoding: out, as: UTF8.self) : s
    }

    /// Every string of `v`, keys included.
    public func redact(_ v: JSONValue) -> JSONValue {
        guard !patterns.isEmpty else { return v }
        switch v {
        case .string(let s): return .string(redact(s))
        case .array(let a): return .array(a.map(redact))
        case .object(let o): return .object(redact(o))
        default: return v
        }
    }

    public func redact(_ o: JSONObject) -> JSONObject {
        guard !patterns.isEmpty else { return o }
        var out = JSONObject()
        for (k, v) in o { out[redact(k)] = redact(v) }
        return out
    }

    // MARK: what a call produces

    public func redact(_ outcome: CallOutcome) -> CallOutcome {
        guard !patterns.isEmpty else { return outcome }
        switch outcome {
        case .success(let r):
            return .success(
                CellResult(content: r.content.map(redact), structuredContent: r.structuredContent.map(redact)))
        case .toolError(let m): return .toolError(redact(m))
        case .protocolViolation(let m): return .protocolViolation(redact(m))
        case .definitionDrift(let d): return .definitionDrift(redact(d))
        case .refused(.arguments(let m)): return .refused(.arguments(redact(m)))
        case .timeout, .cancelled, .sandboxViolation, .killedBySignal, .limitExceeded, .cannotRun:
            return outcome
        }
    }

    public func redact(_ report: CallReport) -> CallReport {
        guard !patterns.isEmpty else { return report }
        var r = report
        r.outcome = redact(report.outcome)
        r.diagnostics = redact(report.diagnostics)
        r.refusedServerRequests = report.refusedServerRequests.map(redact)
        return r
    }

    public func redact(_ m: WorkerMessage) -> WorkerMessage {
        guard !patterns.isEmpty else { return m }
        switch m {
        case .progress(let p, let t, let message): return .progress(progress: p, total: t, message: message.map(redact))
        case .log(let level, let message, let data):
            return .log(level: level, message: redact(message), data: data.map(redact))
        }
    }

    /// A host name is text the worker chose: it could carry a value out
    /// through the network events.
    public func redact(_ d: NetworkDecision) -> NetworkDecision {
        guard !patterns.isEmpty else { return d }
        var r = d
        r.host = redact(d.host)
        r.refusal = d.refusal.map(redact)
        return r
    }
}
