import StrictJSON

/// The frames of the cell protocol (docs/cell-protocol.md), decoded strictly.
public enum CellProtocol {
    public static let logLevels: Set<String> = [
        "debug", "info", "notice", "warning", "error", "critical", "alert", "emergency",
    ]

    public enum Frame: Equatable, Sendable {
        case message(WorkerMessage)
        case result(CellResult)
        case error(String)
    }

    public struct Violation: Error, Equatable, Sendable, CustomStringConvertible {
        public let message: String
        public var description: String { message }
        init(_ m: String) { message = m }
    }

    /// The one request frame the supervisor sends.
    public static func request(callID: String, tool: String, arguments: JSONObject) -> JSONValue {
        .object(
            JSONObject([
                ("type", "request"), ("id", .string(callID)), ("tool", .string(tool)),
                ("arguments", .object(arguments)),
            ]))
    }

    /// Decodes one frame from a worker working on `callID`.
    public static func decode(_ v: JSONValue, callID: String) throws(Violation) -> Frame {
        guard case .object(let o) = v else { throw Violation("frame is \(v.typeName), not an object") }
        guard case .string(let type)? = o["type"] else { throw Violation("frame has no string \"type\"") }
        guard case .string(let id)? = o["id"] else { throw Violation("\(type) frame has no string \"id\"") }
        guard id == callID else { throw Violation("\(type) frame names call \"\(clip(id))\", not this call") }
        func allowOnly(_ keys: Set<String>) throws(Violation) {
            for k in o.keys where !keys.contains(k) {
                throw Violation("\(type) frame has unknown field \"\(clip(k))\"")
            }
        }
        switch type {
        case "progress":
            try allowOnly(["type", "id", "progress", "total", "message"])
            guard let p = o["progress"]?.doubleValue else {
                throw Violation("progress frame needs a number \"progress\"")
            }
            var total: Double? = nil
            if let t = o["total"] {
                guard let td = t.doubleValue else { throw Violation("progress \"total\" must be a number") }
                total = td
            }
            var message: String? = nil
            if let m = o["message"] {
                guard let s = m.stringValue else { throw Violation("progress \"message\" must be a string") }
                message = sanitize(s)
            }
            return .message(.progress(progress: p, total: total, message: message))
        case "log":
            try allowOnly(["type", "id", "level", "message", "data"])
            guard let level = o["level"]?.stringValue, logLevels.contains(level) else {
                throw Violation("log frame needs a \"level\" (one of \(logLevels.sorted().joined(separator: ", ")))")
            }
            guard let m = o["message"]?.stringValue else { throw Violation("log frame needs a string \"message\"") }
            return .message(.log(level: level, message: sanitize(m), data: o["data"]))
        case "result":
            try allowOnly(["type", "id", "content", "structuredContent"])
            guard let items = o["content"]?.arrayValue else {
                throw Violation("result frame needs an array \"content\"")
            }
            var content: [JSONValue] = []
            for (i, item) in items.enumerated() {
                content.append(try contentItem(item, index: i))
            }
            var structured: JSONValue? = nil
            if let s = o["structuredContent"] {
                guard case .object = s else { throw Violation("result \"structuredContent\" must be an object") }
                structured = s
            }
            return .result(CellResult(content: content, structuredContent: structured))
        case "error":
            try allowOnly(["type", "id", "message"])
            guard let m = o["message"]?.stringValue else { throw Violation("error frame needs a string \"message\"") }
            return .error(sanitize(m))
        default:
            throw Violation("unknown frame type \"\(clip(type))\"")
        }
    }

    static func contentItem(_ v: JSONValue, index i: Int) throws(Violation) -> JSONValue {
        guard case .object(let c) = v, let t = c["type"]?.stringValue else {
            throw Violation("content[\(i)] must be an object with a \"type\"")
        }
        switch t {
        case "text":
            guard c.count == 2, let text = c["text"]?.stringValue else {
                throw Violation("content[\(i)]: a text item is {type, text}")
            }
            return .object(JSONObject([("type", "text"), ("text", .string(sanitize(text)))]))
        case "image":
            guard c.count == 3, let data = c["data"]?.stringValue, let mime = c["mimeType"]?.stringValue,
                mime.hasPrefix("image/")
            else { throw Violation("content[\(i)]: an image item is {type, data (base64), mimeType image/*}") }
            return .object(
                JSONObject([("type", "image"), ("data", .string(data)), ("mimeType", .string(sanitize(mime)))]))
        default:
            throw Violation("content[\(i)]: unsupported content type \"\(clip(t))\"")
        }
    }

    /// Output is data (threat T10): remove C0/C1 control characters (so no
    /// ANSI escape survives) and bidirectional/invisible format characters,
    /// keeping newline and tab.
    public static func sanitize(_ s: String) -> String {
        if s.unicodeScalars.allSatisfy({ ($0.value >= 0x20 && $0.value < 0x7F) || $0.value == 0x0A || $0.value == 0x09 }
        ) {
            return s
        }
        var out = String.UnicodeScalarView()
        for u in s.unicodeScalars where CellManifest.hiddenCharacter(in: String(u)) == nil {
            out.append(u)
        }
        return String(out)
    }

    static func clip(_ s: String) -> String {
        let c = sanitize(s)
        return c.unicodeScalars.count > 64 ? String(String.UnicodeScalarView(c.unicodeScalars.prefix(64))) + "…" : c
    }
}
