import StrictJSON

#if canImport(Glibc)
import Glibc
#endif

/// Writing a cell in Swift: read the request, report progress and logs, return
/// a result. See docs/cell-protocol.md for the wire format this implements.
///
/// The library avoids Foundation so a cell linked with `-static-executable`
/// starts in well under a millisecond.
public struct CellRequest: Sendable {
    public let id: String
    public let tool: String
    public let arguments: JSONObject
}

public enum LogLevel: String, Sendable {
    case debug, info, notice, warning, error, critical, alert, emergency
}

/// What a tool returns: text content plus optional structured content.
public struct CellReply: Sendable {
    public var text: [String]
    public var structuredContent: JSONValue?
    public var isError: Bool

    public static func text(_ s: String, structured: JSONValue? = nil) -> CellReply {
        CellReply(text: [s], structuredContent: structured, isError: false)
    }
    /// A tool error: the call ran but the tool failed (shown to the model as such).
    public static func error(_ message: String) -> CellReply {
        CellReply(text: [message], structuredContent: nil, isError: true)
    }
}

/// Channel back to the supervisor for progress and logs during a call.
public final class CellContext {
    public let request: CellRequest

    init(request: CellRequest) { self.request = request }

    public func progress(_ progress: Double, total: Double? = nil, message: String? = nil) {
        var o = JSONObject([("type", "progress"), ("id", .string(request.id)), ("progress", .double(progress))])
        if let total { o["total"] = .double(total) }
        if let message { o["message"] = .string(message) }
        Cell.send(.object(o))
    }

    public func log(_ level: LogLevel, _ message: String) {
        Cell.send(
            .object(
                JSONObject([
                    ("type", "log"), ("id", .string(request.id)),
                    ("level", .string(level.rawValue)), ("message", .string(message)),
                ])))
    }
}

public enum Cell {
    /// The fds the supervisor sets up (docs/cell-protocol.md).
    public static let requestFD: Int32 = 3
    public static let responseFD: Int32 = 4
    /// Largest request frame accepted.
    public static let maxRequestBytes = 16 << 20

    /// Reads the request, runs `handler`, sends the reply, exits 0.
    /// A thrown error becomes a tool error with the error's description.
    public static func main(_ handler: (CellRequest, CellContext) throws -> CellReply) -> Never {
        prime()
        let request: CellRequest
        switch readRequest() {
        case .success(let r): request = r
        case .failure(let message):
            writeStderr("cell: \(message)\n")
            exit(2)
        }
        let ctx = CellContext(request: request)
        let reply: CellReply
        do {
            reply = try handler(request, ctx)
        } catch {
            reply = .error("\(error)")
        }
        send(encode(reply, id: request.id))
        exit(0)
    }

    static func encode(_ reply: CellReply, id: String) -> JSONValue {
        if reply.isError {
            return .object(
                JSONObject([
                    ("type", "error"), ("id", .string(id)),
                    ("message", .string(reply.text.joined(separator: "\n"))),
                ]))
        }
        var o = JSONObject([("type", "result"), ("id", .string(id))])
        o["content"] = .array(reply.text.map { .object(JSONObject([("type", "text"), ("text", .string($0))])) })
        if let s = reply.structuredContent { o["structuredContent"] = s }
        return .object(o)
    }

    /// Runs the frame decoder and encoder once on a sample before blocking on
    /// the request: a worker started ahead of its call (docs/architecture.md,
    /// "Prespawn") then pages in that code while it waits, not after the call
    /// has arrived. Sends nothing.
    static func prime() {
        var decoder = FrameDecoder(maxFrame: 4096)
        let sample = JSONValue.object(
            JSONObject([
                ("type", "request"), ("id", "prime"), ("tool", "prime"),
                (
                    "arguments",
                    .object(
                        JSONObject([
                            ("text", "h\u{e9}llo \\ \"q\""), ("n", .int(-12)), ("x", .double(1.5)),
                            ("b", true), ("z", .null), ("a", .array([.int(1), "s"])),
                        ]))
                ),
            ]))
        _ = try? decoder.feed(FrameCodec.encode(sample))
        _ = FrameCodec.encode(encode(.text("prime", structured: sample), id: "prime"))
    }

    enum ReadResult {
        case success(CellRequest)
        case failure(String)
    }

    static func readRequest() -> ReadResult {
        var decoder = FrameDecoder(maxFrame: maxRequestBytes)
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(requestFD, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                return .failure("reading the request failed (errno \(errno))")
            }
            if n == 0 { return .failure("the supervisor closed the request pipe before a whole request arrived") }
            let frames: [JSONValue]
            do {
                frames = try buf.withUnsafeBytes { try decoder.feed(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            } catch {
                return .failure("bad request frame: \(error)")
            }
            guard let f = frames.first else { continue }
            guard case .object(let o) = f, o["type"] == "request",
                let id = o["id"]?.stringValue, let tool = o["tool"]?.stringValue,
                let args = o["arguments"]?.objectValue
            else { return .failure("the first frame is not a request") }
            return .success(CellRequest(id: id, tool: tool, arguments: args))
        }
    }

    /// Writes one frame to the supervisor. A failed write means the
    /// supervisor ended the call: exit quietly.
    public static func send(_ value: JSONValue) {
        let bytes = FrameCodec.encode(value)
        bytes.withUnsafeBytes { raw in
            var off = 0
            while off < raw.count {
                let n = write(responseFD, raw.baseAddress! + off, raw.count - off)
                if n < 0 {
                    if errno == EINTR { continue }
                    exit(3)
                }
                off += n
            }
        }
    }

    static func writeStderr(_ s: String) {
        var s = s
        s.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    }
}
