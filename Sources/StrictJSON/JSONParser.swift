/// A strict RFC 8259 parser.
///
/// Written here because no maintained Swift JSON library rejects duplicate
/// object keys, bounds nesting depth and refuses invalid UTF-8 with a byte
/// offset — and all three matter when the input comes from an untrusted cell or
/// is a signed manifest whose meaning must not depend on which duplicate wins.
/// It uses no Foundation, so static cells can link it and still start fast.
public struct JSONParseError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Reason: Equatable, Sendable {
        case unexpectedEnd
        case unexpectedByte(UInt8)
        case invalidUTF8
        case invalidEscape
        case invalidNumber
        case controlCharacterInString
        case duplicateKey(String)
        case tooDeep(limit: Int)
        case trailingData
    }
    public let reason: Reason
    /// Byte offset in the input at which the problem was found.
    public let offset: Int
    /// Line and column (1-based; the column counts bytes) of `offset`, for
    /// people reading a file in an editor; 0 when not known.
    public var line = 0
    public var column = 0

    public init(reason: Reason, offset: Int) {
        self.reason = reason
        self.offset = offset
    }

    /// This error with the line and column of its offset in `bytes`.
    func located(in bytes: UnsafeBufferPointer<UInt8>) -> JSONParseError {
        var e = self
        e.line = 1
        var lineStart = 0
        for i in 0..<min(offset, bytes.count) where bytes[i] == 0x0A {
            e.line += 1
            lineStart = i + 1
        }
        e.column = offset - lineStart + 1
        return e
    }

    public var description: String {
        let what: String
        switch reason {
        case .unexpectedEnd: what = "unexpected end of input"
        case .unexpectedByte(let b):
            what =
                b >= 0x20 && b < 0x7f
                ? "unexpected character '\(Character(Unicode.Scalar(b)))'" : "unexpected byte 0x\(String(b, radix: 16))"
        case .invalidUTF8: what = "invalid UTF-8"
        case .invalidEscape: what = "invalid escape sequence"
        case .invalidNumber: what = "invalid number"
        case .controlCharacterInString: what = "unescaped control character in string"
        case .duplicateKey(let k): what = "duplicate key \"\(k)\""
        case .tooDeep(let limit): what = "nesting deeper than \(limit) levels"
        case .trailingData: what = "data after the JSON value"
        }
        return line > 0 ? "\(what) at line \(line), column \(column) (byte \(offset))" : "\(what) at byte \(offset)"
    }
}

public struct JSONParser {
    public static let defaultMaxDepth = 64

    /// Parses exactly one JSON value (surrounding whitespace allowed).
    public static func parse(_ bytes: [UInt8], maxDepth: Int = defaultMaxDepth) throws(JSONParseError) -> JSONValue {
        try bytes.withUnsafeBufferPointer { buf throws(JSONParseError) in
            var p = JSONParser(buf, maxDepth: maxDepth)
            do throws(JSONParseError) {
                p.skipWhitespace()
                let v = try p.parseValue(depth: 0)
                p.skipWhitespace()
                if p.pos != buf.count { throw JSONParseError(reason: .trailingData, offset: p.pos) }
                return v
            } catch {
                throw error.located(in: buf)
            }
        }
    }

    public static func parse(_ text: String, maxDepth: Int = defaultMaxDepth) throws(JSONParseError) -> JSONValue {
        try parse(Array(text.utf8), maxDepth: maxDepth)
    }

    private let buf: UnsafeBufferPointer<UInt8>
    private var pos = 0
    private let maxDepth: Int

    private init(_ buf: UnsafeBufferPointer<UInt8>, maxDepth: Int) {
        self.buf = buf
        self.maxDepth = maxDepth
    }

    private func fail(_ r: JSONParseError.Reason, at: Int? = nil) -> JSONParseError {
        JSONParseError(reason: r, offset: at ?? pos)
    }

    private mutating func skipWhitespace() {
        while pos < buf.count {
            switch buf[pos] {
            case 0x20, 0x09, 0x0A, 0x0D: pos += 1
            default: return
            }
        }
    }

    private func peek() throws(JSONParseError) -> UInt8 {
        guard pos < buf.count else { throw fail(.unexpectedEnd) }
        return buf[pos]
    }

    private mutating func expectLiteral(_ lit: StaticString, _ value: JSONValue) throws(JSONParseError) -> JSONValue {
        let n = lit.utf8CodeUnitCount
        let start = lit.utf8Start
        for i in 0..<n {
            guard pos + i < buf.count else { throw fail(.unexpectedEnd, at: buf.count) }
            if buf[pos + i] != start[i] { throw fail(.unexpectedByte(buf[pos + i]), at: pos + i) }
        }
        pos += n
        return value
    }

    private mutating func parseValue(depth: Int) throws(JSONParseError) -> JSONValue {
        let c = try peek()
        switch c {
        case UInt8(ascii: "{"): return try parseObject(depth: depth + 1)
        case UInt8(ascii: "["): return try parseArray(depth: depth + 1)
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): return try expectLiteral("true", .bool(true))
        case UInt8(ascii: "f"): return try expectLiteral("false", .bool(false))
        case UInt8(ascii: "n"): return try expectLiteral("null", .null)
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try parseNumber()
        default: throw fail(.unexpectedByte(c))
        }
    }

    private mutating func parseObject(depth: Int) throws(JSONParseError) -> JSONValue {
        if depth > maxDepth { throw fail(.tooDeep(limit: maxDepth)) }
        pos += 1
        var obj = JSONObject()
        // Duplicate keys: a linear look among the first members, a set past
        // them; a linear look per key would make a large object quadratic
        // (measured: 80,000 keys in 1 MiB took minutes of CPU).
        var seen: Set<String>? = nil
        skipWhitespace()
        if try peek() == UInt8(ascii: "}") {
            pos += 1
            return .object(obj)
        }
        while true {
            skipWhitespace()
            let keyStart = pos
            guard try peek() == UInt8(ascii: "\"") else { throw fail(.unexpectedByte(buf[pos])) }
            let key = try parseString()
            if seen == nil && obj.count >= 16 { seen = Set(obj.keys) }
            if seen != nil ? !seen!.insert(key).inserted : obj.contains(key) {
                throw fail(.duplicateKey(key), at: keyStart)
            }
            skipWhitespace()
            guard try peek() == UInt8(ascii: ":") else { throw fail(.unexpectedByte(buf[pos])) }
            pos += 1
            skipWhitespace()
            let v = try parseValue(depth: depth)
            obj.appendNew(key, v)
            skipWhitespace()
            let c = try peek()
            pos += 1
            if c == UInt8(ascii: "}") { return .object(obj) }
            if c != UInt8(ascii: ",") { throw fail(.unexpectedByte(c), at: pos - 1) }
        }
    }

    private mutating func parseArray(depth: Int) throws(JSONParseError) -> JSONValue {
        if depth > maxDepth { throw fail(.tooDeep(limit: maxDepth)) }
        pos += 1
        var arr: [JSONValue] = []
        skipWhitespace()
        if try peek() == UInt8(ascii: "]") {
            pos += 1
            return .array(arr)
        }
        while true {
            skipWhitespace()
            arr.append(try parseValue(depth: depth))
            skipWhitespace()
            let c = try peek()
            pos += 1
            if c == UInt8(ascii: "]") { return .array(arr) }
            if c != UInt8(ascii: ",") { throw fail(.unexpectedByte(c), at: pos - 1) }
        }
    }

    private mutating func parseHex4() throws(JSONParseError) -> UInt32 {
        guard pos + 4 <= buf.count else { throw fail(.unexpectedEnd, at: buf.count) }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = buf[pos]
            let d: UInt32
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt32(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt32(c - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt32(c - UInt8(ascii: "A") + 10)
            default: throw fail(.invalidEscape)
            }
            v = v << 4 | d
            pos += 1
        }
        return v
    }

    private mutating func parseString() throws(JSONParseError) -> String {
        pos += 1  // opening quote
        var out: [UInt8] = []
        var runStart = pos
        while true {
            guard pos < buf.count else { throw fail(.unexpectedEnd) }
            let c = buf[pos]
            if c == UInt8(ascii: "\"") {
                out.append(contentsOf: buf[runStart..<pos])
                pos += 1
                break
            }
            if c < 0x20 { throw fail(.controlCharacterInString) }
            if c == UInt8(ascii: "\\") {
                out.append(contentsOf: buf[runStart..<pos])
                let escStart = pos
                pos += 1
                guard pos < buf.count else { throw fail(.unexpectedEnd) }
                let e = buf[pos]
                pos += 1
                switch e {
                case UInt8(ascii: "\""): out.append(0x22)
                case UInt8(ascii: "\\"): out.append(0x5C)
                case UInt8(ascii: "/"): out.append(0x2F)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    var scalar = try parseHex4()
                    if scalar >= 0xD800 && scalar < 0xDC00 {
                        // A high surrogate must be followed by an escaped low surrogate.
                        guard pos + 2 <= buf.count, buf[pos] == UInt8(ascii: "\\"), buf[pos + 1] == UInt8(ascii: "u")
                        else { throw fail(.invalidEscape, at: escStart) }
                        pos += 2
                        let low = try parseHex4()
                        guard low >= 0xDC00 && low < 0xE000 else { throw fail(.invalidEscape, at: escStart) }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    } else if scalar >= 0xDC00 && scalar < 0xE000 {
                        throw fail(.invalidEscape, at: escStart)
                    }
                    guard let u = Unicode.Scalar(scalar) else { throw fail(.invalidEscape, at: escStart) }
                    out.append(contentsOf: Array(String(Character(u)).utf8))
                default: throw fail(.invalidEscape, at: escStart)
                }
                runStart = pos
                continue
            }
            if c < 0x80 {
                pos += 1
                continue
            }
            try skipUTF8Sequence()
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Validates one multi-byte UTF-8 sequence at `pos` (RFC 3629: no overlongs,
    /// no surrogates, nothing above U+10FFFF) and advances past it.
    private mutating func skipUTF8Sequence() throws(JSONParseError) {
        let b0 = buf[pos]
        let len: Int
        var lo: UInt8 = 0x80
        var hi: UInt8 = 0xBF
        switch b0 {
        case 0xC2...0xDF: len = 2
        case 0xE0:
            len = 3
            lo = 0xA0
        case 0xE1...0xEC, 0xEE...0xEF: len = 3
        case 0xED:
            len = 3
            hi = 0x9F
        case 0xF0:
            len = 4
            lo = 0x90
        case 0xF1...0xF3: len = 4
        case 0xF4:
            len = 4
            hi = 0x8F
        default: throw fail(.invalidUTF8)
        }
        guard pos + len <= buf.count else { throw fail(.invalidUTF8) }
        let b1 = buf[pos + 1]
        guard b1 >= lo && b1 <= hi else { throw fail(.invalidUTF8) }
        for i in 2..<max(2, len) where buf[pos + i] & 0xC0 != 0x80 {
            throw fail(.invalidUTF8)
        }
        pos += len
    }

    private mutating func parseNumber() throws(JSONParseError) -> JSONValue {
        let start = pos
        var isInteger = true
        if buf[pos] == UInt8(ascii: "-") { pos += 1 }
        guard pos < buf.count else { throw fail(.invalidNumber, at: start) }
        if buf[pos] == UInt8(ascii: "0") {
            pos += 1
        } else if buf[pos] >= UInt8(ascii: "1") && buf[pos] <= UInt8(ascii: "9") {
            while pos < buf.count && isDigit(buf[pos]) { pos += 1 }
        } else {
            throw fail(.invalidNumber, at: start)
        }
        if pos < buf.count && buf[pos] == UInt8(ascii: ".") {
            isInteger = false
            pos += 1
            guard pos < buf.count && isDigit(buf[pos]) else { throw fail(.invalidNumber, at: start) }
            while pos < buf.count && isDigit(buf[pos]) { pos += 1 }
        }
        if pos < buf.count && (buf[pos] == UInt8(ascii: "e") || buf[pos] == UInt8(ascii: "E")) {
            isInteger = false
            pos += 1
            if pos < buf.count && (buf[pos] == UInt8(ascii: "+") || buf[pos] == UInt8(ascii: "-")) { pos += 1 }
            guard pos < buf.count && isDigit(buf[pos]) else { throw fail(.invalidNumber, at: start) }
            while pos < buf.count && isDigit(buf[pos]) { pos += 1 }
        }
        let text = String(decoding: buf[start..<pos], as: UTF8.self)
        if isInteger, let i = Int64(text) { return .int(i) }
        guard let d = Double(text), d.isFinite else { throw fail(.invalidNumber, at: start) }
        return .double(d)
    }

    private func isDigit(_ c: UInt8) -> Bool { c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9") }
}
