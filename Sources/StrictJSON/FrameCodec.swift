/// Length-prefixed frames: a 4-byte big-endian length, then that many bytes of
/// UTF-8 JSON. Shared by the supervisor (decoding untrusted worker output) and
/// by cells (decoding the supervisor's request).
public enum FrameError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The declared length is zero.
    case emptyFrame
    /// The declared length exceeds the limit; nothing was allocated for it.
    case frameTooLarge(declared: UInt32, limit: Int)
    /// The stream ended inside the 4-byte length prefix.
    case truncatedLength(have: Int)
    /// The stream ended before the declared body was complete.
    case truncatedBody(declared: Int, have: Int)
    /// The body is not valid JSON (includes invalid UTF-8 and duplicate keys).
    case invalidJSON(JSONParseError)

    public var description: String {
        switch self {
        case .emptyFrame: return "frame length is zero"
        case .frameTooLarge(let d, let l): return "frame length \(d) exceeds the limit of \(l) bytes"
        case .truncatedLength(let h): return "stream ended inside a frame length prefix (\(h) of 4 bytes)"
        case .truncatedBody(let d, let h): return "stream ended inside a frame body (\(h) of \(d) bytes)"
        case .invalidJSON(let e): return "frame body is not valid JSON: \(e)"
        }
    }
}

public enum FrameCodec {
    /// Encodes one frame.
    public static func encode(_ value: JSONValue) -> [UInt8] {
        var body = value.serializedBytes()
        let n = UInt32(body.count)
        var out: [UInt8] = [UInt8(n >> 24), UInt8(n >> 16 & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF)]
        out.reserveCapacity(4 + body.count)
        out.append(contentsOf: body)
        body.removeAll()
        return out
    }
}

/// Incremental decoder: feed it bytes as they arrive, take whole frames out.
/// Memory stays bounded by `maxFrame` + 4 bytes whatever the peer writes: an
/// oversized length is rejected from its prefix, before any allocation.
public struct FrameDecoder: Sendable {
    public let maxFrame: Int
    public let maxDepth: Int
    private var buffer: [UInt8] = []
    private var expected: Int? = nil

    public init(maxFrame: Int, maxDepth: Int = JSONParser.defaultMaxDepth) {
        self.maxFrame = maxFrame
        self.maxDepth = maxDepth
    }

    /// Appends bytes and returns every complete frame now available.
    /// After an error the decoder must not be used again: there is no
    /// resynchronisation on a length-prefixed stream.
    public mutating func feed(_ bytes: UnsafeRawBufferPointer) throws(FrameError) -> [JSONValue] {
        var frames: [JSONValue] = []
        var input = bytes[...]
        while !input.isEmpty {
            if expected == nil {
                let need = 4 - buffer.count
                let take = min(need, input.count)
                buffer.append(contentsOf: input.prefix(take))
                input = input.dropFirst(take)
                if buffer.count < 4 { break }
                let n = UInt32(buffer[0]) << 24 | UInt32(buffer[1]) << 16 | UInt32(buffer[2]) << 8 | UInt32(buffer[3])
                buffer.removeAll(keepingCapacity: true)
                if n == 0 { throw .emptyFrame }
                if Int(n) > maxFrame { throw .frameTooLarge(declared: n, limit: maxFrame) }
                expected = Int(n)
                buffer.reserveCapacity(Int(n))
            }
            let want = expected! - buffer.count
            let take = min(want, input.count)
            buffer.append(contentsOf: input.prefix(take))
            input = input.dropFirst(take)
            if buffer.count == expected! {
                do {
                    frames.append(try JSONParser.parse(buffer, maxDepth: maxDepth))
                } catch {
                    throw .invalidJSON(error)
                }
                buffer.removeAll(keepingCapacity: false)
                expected = nil
            }
        }
        return frames
    }

    public mutating func feed(_ bytes: [UInt8]) throws(FrameError) -> [JSONValue] {
        var copy = bytes
        let result: Result<[JSONValue], FrameError> = copy.withUnsafeMutableBytes { raw in
            do throws(FrameError) { return .success(try feed(UnsafeRawBufferPointer(raw))) } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    /// Call at end of stream: throws if it ended inside a frame.
    public func finish() throws(FrameError) {
        if let e = expected { throw .truncatedBody(declared: e, have: buffer.count) }
        if !buffer.isEmpty { throw .truncatedLength(have: buffer.count) }
    }

    /// The declared length of the frame being assembled (0 between frames):
    /// what the decoder has reserved memory for.
    public var pendingFrameLength: Int { expected ?? 0 }

    /// True when no partial frame is buffered.
    public var isAtBoundary: Bool { expected == nil && buffer.isEmpty }
}
