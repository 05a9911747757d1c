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
    /// The patterns grouped by their first byte, for the scan: the indices
    /// of `patterns` starting with byte b are `bucket[bucketStart[b]..<bucketStart[b + 1]]`
    /// (longest first); their bytes are `flat[offsets[i]..<offsets[i] + patterns[i].bytes.count]`.
    let bucketStart: [Int]
    let bucket: [Int]
    let flat: [UInt8]
    let offsets: [Int]

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
        let sorted = patterns.sorted { $0.bytes.count > $1.bytes.count }
        self.patterns = sorted
        self.values = values
        var flat: [UInt8] = []
        var offsets: [Int] = []
        for p in sorted {
            offsets.append(flat.count)
            flat += p.bytes
        }
        var starts = [Int](repeating: 0, count: 257)
        var bucket: [Int] = []
        for b in 0..<256 {
            starts[b] = bucket.count
            bucket += sorted.indices.filter { sorted[$0].bytes[0] == UInt8(b) }
        }
        starts[256] = bucket.count
        (self.flat, self.offsets, self.bucketStart, self.bucket) = (flat, offsets, starts, bucket)
    }

    public var isEmpty: Bool { patterns.isEmpty }

    // MARK: text

    public func redact(_ s: String) -> String {
        guard !patterns.isEmpty, !s.isEmpty else { return s }
        let replaced: [UInt8]? =
            s.utf8.withContiguousStorageIfAvailable { replacing(in: $0) }
            ?? Array(s.utf8).withUnsafeBufferPointer { replacing(in: $0) }
        guard let replaced else { return s }
        return String(decoding: replaced, as: UTF8.self)
    }

    /// The text with every pattern replaced and a value cut at either end
    /// replaced; nil when nothing was.
    private func replacing(in text: UnsafeBufferPointer<UInt8>) -> [UInt8]? {
        var out: [UInt8]? = nil
        var copied = 0
        var i = 0
        let n = text.count
        // One table lookup per byte; only the patterns starting with that
        // byte are compared, from their second byte on.
        flat.withUnsafeBufferPointer { flat in
            offsets.withUnsafeBufferPointer { offsets in
                bucketStart.withUnsafeBufferPointer { starts in
                    bucket.withUnsafeBufferPointer { bucket in
                        scan: while i < n {
                            let b = Int(text[i])
                            var k = starts[b]
                            let end = starts[b + 1]
                            while k < end {
                                let p = bucket[k]
                                let length = patterns[p].bytes.count
                                let at = offsets[p]
                                if i + length <= n {
                                    var j = 1
                                    while j < length && text[i + j] == flat[at + j] { j += 1 }
                                    if j == length {
                                        if out == nil { out = [] }
                                        out!.append(contentsOf: UnsafeBufferPointer(rebasing: text[copied..<i]))
                                        out!.append(contentsOf: patterns[p].marker)
                                        i += length
                                        copied = i
                                        continue scan
                                    }
                                }
                                k += 1
                            }
                            i += 1
                        }
                    }
                }
            }
        }
        if out != nil { out!.append(contentsOf: UnsafeBufferPointer(rebasing: text[copied..<n])) }
        return withEdgesReplaced(out ?? Array(text), changed: out != nil)
    }

    /// A value cut where the text begins (the tail of a stream) or ends (a
    /// clipped message): at least `minimumEdge` of its bytes.
    private func withEdgesReplaced(_ text: [UInt8], changed: Bool) -> [UInt8]? {
        var b = text
        var changed = changed
        for v in values where v.bytes.count > Self.minimumEdge {
            let value = v.bytes
            for k in stride(from: value.count - 1, through: Self.minimumEdge, by: -1)
            where b.count >= k && b[k - 1] == value[value.count - 1] && b[0..<k].elementsEqual(value.suffix(k)) {
                b.replaceSubrange(0..<k, with: v.marker)
                changed = true
                break
            }
            for k in stride(from: value.count - 1, through: Self.minimumEdge, by: -1)
            where b.count >= k && b[b.count - k] == value[0] && b.suffix(k).elementsEqual(value.prefix(k)) {
                b.replaceSubrange((b.count - k)..<b.count, with: v.marker)
                changed = true
                break
            }
        }
        return changed ? b : nil
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
