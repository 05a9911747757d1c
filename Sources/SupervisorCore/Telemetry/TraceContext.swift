import StrictJSON

/// A W3C trace context (https://www.w3.org/TR/trace-context/) as an MCP
/// client propagates it in a request's `params._meta` (`traceparent`,
/// `tracestate`): the call's span becomes a child of the client's.
public struct TraceContext: Sendable, Equatable {
    /// 32 lowercase hex digits, not all zero.
    public let traceID: String
    /// The client's span: 16 lowercase hex digits, not all zero.
    public let parentSpanID: String
    public let sampled: Bool
    /// `tracestate`, passed on unchanged when it is well-formed enough to
    /// carry (printable ASCII, at most 512 bytes, as the specification
    /// allows a vendor to truncate); otherwise dropped.
    public let traceState: String?

    /// Parses a `traceparent` header value (version 00, or a later version
    /// read as 00 as the specification says); nil when it is malformed, in
    /// which case the call starts a trace of its own.
    public init?(traceparent: String, tracestate: String? = nil) {
        let parts = traceparent.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count >= 4, parts[0].count == 2, parts[1].count == 32, parts[2].count == 16, parts[3].count == 2,
            [parts[0], parts[1], parts[2], parts[3]].allSatisfy(Self.isLowerHex),
            parts[0] != "ff", parts[0] != "00" || parts.count == 4,
            parts[1].contains(where: { $0 != "0" }), parts[2].contains(where: { $0 != "0" }),
            let flags = UInt8(parts[3], radix: 16)
        else { return nil }
        traceID = String(parts[1])
        parentSpanID = String(parts[2])
        sampled = flags & 1 == 1
        if let s = tracestate, !s.isEmpty, s.utf8.count <= 512, s.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) {
            traceState = s
        } else {
            traceState = nil
        }
    }

    /// The context of `_meta`, if it carries a valid `traceparent`.
    public init?(meta: JSONObject?) {
        guard let p = meta?["traceparent"]?.stringValue else { return nil }
        self.init(traceparent: p, tracestate: meta?["tracestate"]?.stringValue)
    }

    static func isLowerHex(_ s: Substring) -> Bool {
        s.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
    }

    /// A random, non-zero identifier of `bytes` bytes (8 or 16), in
    /// lowercase hex: one `getrandom` per 8 bytes.
    static func randomID(bytes: Int) -> String {
        var g = SystemRandomNumberGenerator()
        while true {
            var raw: [UInt8] = []
            raw.reserveCapacity(bytes)
            for _ in 0..<(bytes + 7) / 8 {
                withUnsafeBytes(of: g.next() as UInt64) { raw += $0 }
            }
            raw.removeLast(raw.count - bytes)
            if raw.contains(where: { $0 != 0 }) { return hex(raw) }
        }
    }

    static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
