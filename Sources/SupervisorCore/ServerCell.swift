import StrictJSON

/// The supervisor's version, as `--version` and MCP peers see it.
public enum SupervisorVersion {
    public static let string = "0.1.0"
}

/// An existing MCP stdio server run as a cell (docs/gateway.md): how it is
/// started and what it may import. Everything else (limits, files,
/// syscalls, phases) is the ordinary manifest.
public struct ServerSpec: Sendable, Equatable {
    public enum Lifecycle: String, Sendable, CaseIterable {
        /// One fresh server per call: started (ahead of the call when
        /// prespawn is on), initialized, handed one `tools/call`, killed.
        case perCall
        /// One server per client session, for servers whose start-up is too
        /// slow for a call; wiped when the session ends.
        case session
    }

    public var lifecycle: Lifecycle
    /// Clients see the server's tool `t` as `<toolPrefix>_<t>`.
    public var toolPrefix: String
    /// From spawn to `initialize` and `tools/list` answered.
    public var startupTimeoutMilliseconds: Int
    /// Directory trees the server executes or imports (its installed
    /// packages), each pinned by a tree digest (`PackageTree`).
    public var packages: [CellManifest.Executable]

    public func exposedName(_ serverToolName: String) -> String { "\(toolPrefix)_\(serverToolName)" }

    static func parse(_ r: FieldReader, cellName: String, dir: String) throws(ConfigError) -> ServerSpec {
        let lifecycle: Lifecycle = try r.choice("lifecycle", default: .perCall)
        let defaultPrefix = String(cellName.map { $0 == "." ? "_" : $0 })
        let prefix = try r.optionalString("toolPrefix") ?? defaultPrefix
        guard !prefix.isEmpty, prefix.utf8.count <= 64,
            prefix.utf8.allSatisfy({
                ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x5F
                    || $0 == 0x2D
            })
        else {
            throw r.error("toolPrefix", "must be 1-64 characters of A-Z a-z 0-9 _ -, found \"\(prefix)\"")
        }
        let startup = try r.int(
            "startupTimeoutMilliseconds", default: 15_000, range: 100...600_000, unit: "ms")
        var packages: [CellManifest.Executable] = []
        for (i, v) in (try r.array("packages") ?? []).enumerated() {
            // {path, sha256} as an executable's: the tree digest `manifest pin` writes.
            packages.append(
                try CellManifest.parseExecutable(
                    try FieldReader(file: r.file, path: r.field("packages[\(i)]"), value: v), dir: dir))
        }
        try r.finish()
        return ServerSpec(
            lifecycle: lifecycle, toolPrefix: prefix, startupTimeoutMilliseconds: startup, packages: packages)
    }
}

/// Tool definitions compared the way drift is judged: whole objects,
/// member order ignored.
public enum ToolDefinitions {
    /// Serialization with object members sorted by key at every level.
    public static func canonical(_ v: JSONValue) -> String {
        switch v {
        case .object(let o):
            let members = o.keys.sorted().map { k in JSONValue.string(k).serialized() + ":" + canonical(o[k]!) }
            return "{" + members.joined(separator: ",") + "}"
        case .array(let a):
            return "[" + a.map(canonical).joined(separator: ",") + "]"
        default:
            return v.serialized()
        }
    }

    /// What differs between the pinned tools and those a server lists now,
    /// one line per tool (nil: identical). Names are the server's.
    public static func diff(pinned: [JSONObject], listed: [JSONObject]) -> String? {
        func byName(_ l: [JSONObject]) -> [String: JSONObject] {
            var d: [String: JSONObject] = [:]
            for t in l { d[t["name"]?.stringValue ?? "(no name)"] = t }
            return d
        }
        let (a, b) = (byName(pinned), byName(listed))
        var lines: [String] = []
        for n in b.keys.sorted() where a[n] == nil { lines.append("added tool \"\(CellProtocol.clip(n))\"") }
        for n in a.keys.sorted() where b[n] == nil { lines.append("removed tool \"\(CellProtocol.clip(n))\"") }
        for n in a.keys.sorted() {
            guard let old = a[n], let new = b[n] else { continue }
            let fields = Set(old.keys).union(new.keys).sorted().filter { k in
                old[k].map(canonical) != new[k].map(canonical)
            }
            if !fields.isEmpty {
                // Each changed field with its old and new value, shortened:
                // enough for an operator to see what the server now claims.
                func shown(_ v: JSONValue?) -> String {
                    guard let v else { return "(none)" }
                    let text = v.stringValue.map { JSONValue.string($0).serialized() } ?? canonical(v)
                    return text.count > 160 ? String(text.prefix(160)) + "…" : text
                }
                lines.append(
                    "changed tool \"\(CellProtocol.clip(n))\": "
                        + fields.map { k in
                            "\(CellProtocol.clip(k)) \(CellProtocol.sanitize(shown(old[k]))) → \(CellProtocol.sanitize(shown(new[k])))"
                        }.joined(separator: ", "))
            }
        }
        if lines.isEmpty && pinned.count != listed.count { lines.append("a tool is listed twice") }
        return lines.isEmpty ? nil : lines.joined(separator: "; ")
    }
}

/// The supervisor's side of the MCP conversation with one server process,
/// over its stdin/stdout (newline-delimited JSON-RPC): `initialize`,
/// `notifications/initialized`, `tools/list` (compared with the pinned
/// definitions, or returned when registering), then at most one
/// `tools/call`. Decoding is as strict as for frames: a bounded line, one
/// response per request and only to a request it was sent, nothing after
/// the call's answer, no resynchronisation after a malformed line.
struct ServerConversation: Sendable {
    enum Phase: Equatable, Sendable {
        case initializing, listing, ready, calling, done
    }

    enum Event {
        case send([UInt8])
        case message(WorkerMessage)
        /// Initialized and its tools match the pinned ones.
        case ready
        /// Registering: the server's tools as it listed them.
        case listed([JSONObject])
        /// Its tools differ from the pinned ones (the difference).
        case drift(String)
        case final(CellProtocol.Frame)
    }

    static let protocolVersion = "2025-11-25"
    static let knownVersions: Set<String> = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"]
    static let maxPages = 64
    static let maxTools = 1024

    private(set) var phase = Phase.initializing
    /// nil: registering (the listing is the result).
    let pinned: [JSONObject]?
    let maxLine: Int
    private var line: [UInt8] = []
    private var listedTools: [JSONObject] = []
    private var pages = 0
    private var outstanding: Int64 = 1
    private var nextID: Int64 = 1
    private var callToken = ""
    /// Methods of requests the server sent to the client, refused.
    private(set) var refusedRequests: [String] = []
    private(set) var serverInfo: String? = nil
    /// A session's server: after a call's answer it is ready for the next
    /// call instead of done.
    var reusable = false

    init(pinned: [JSONObject]?, maxLine: Int) {
        self.pinned = pinned
        self.maxLine = maxLine
    }

    /// Bytes held for an incomplete line.
    var pendingLineLength: Int { line.count }

    static func encode(_ v: JSONValue) -> [UInt8] { v.serializedBytes() + [0x0A] }

    private mutating func request(_ method: String, _ params: JSONObject?) -> [UInt8] {
        nextID += 1
        outstanding = nextID
        var m = JSONObject([("jsonrpc", "2.0"), ("id", .int(nextID)), ("method", .string(method))])
        if let params { m["params"] = .object(params) }
        return Self.encode(.object(m))
    }

    /// The first bytes to send: `initialize`.
    mutating func start() -> [UInt8] {
        phase = .initializing
        return request(
            "initialize",
            JSONObject([
                ("protocolVersion", .string(Self.protocolVersion)),
                ("capabilities", .object(JSONObject())),
                (
                    "clientInfo",
                    .object(JSONObject([("name", "mcp-supervisor"), ("version", .string(SupervisorVersion.string))]))
                ),
            ]))
    }

    /// The one `tools/call`, once ready; `token` names its progress.
    mutating func call(tool: String, arguments: JSONObject, token: String) -> [UInt8] {
        precondition(phase == .ready)
        phase = .calling
        callToken = token
        return request(
            "tools/call",
            JSONObject([
                ("name", .string(tool)), ("arguments", .object(arguments)),
                ("_meta", .object(JSONObject([("progressToken", .string(token))]))),
            ]))
    }

    /// Feeds bytes from the server's stdout; returns what follows from the
    /// complete lines among them.
    mutating func feed(_ bytes: ArraySlice<UInt8>) throws(CellProtocol.Violation) -> [Event] {
        var events: [Event] = []
        var rest = bytes
        while let nl = rest.firstIndex(of: 0x0A) {
            line.append(contentsOf: rest[rest.startIndex..<nl])
            rest = rest[(nl + 1)...]
            if line.count > maxLine { throw tooLong() }
            let l = line
            line.removeAll(keepingCapacity: true)
            // Blank lines (and a CR before the newline) carry nothing.
            if l.allSatisfy({ $0 == 0x20 || $0 == 0x0D || $0 == 0x09 }) { continue }
            try handle(l, into: &events)
            if phase == .done, !rest.isEmpty, !rest.allSatisfy({ $0 == 0x0A || $0 == 0x0D }) {
                throw CellProtocol.Violation("the server wrote after the call's answer")
            }
        }
        line.append(contentsOf: rest)
        if line.count > maxLine { throw tooLong() }
        return events
    }

    /// The end of the server's stdout: a partial line is a broken message.
    func finish() throws(CellProtocol.Violation) {
        if !line.isEmpty { throw CellProtocol.Violation("the server's output ended inside a message") }
    }

    private func tooLong() -> CellProtocol.Violation {
        CellProtocol.Violation("a message from the server is longer than \(maxLine >> 10) KiB (limits.frameKiB)")
    }

    private mutating func handle(_ bytes: [UInt8], into events: inout [Event]) throws(CellProtocol.Violation) {
        let v: JSONValue
        do { v = try JSONParser.parse(bytes) } catch {
            throw CellProtocol.Violation("the server wrote a line that is not JSON: \(error)")
        }
        guard case .object(let m) = v, m["jsonrpc"] == "2.0" else {
            throw CellProtocol.Violation("the server wrote a line that is not a JSON-RPC 2.0 message")
        }
        if phase == .done { throw CellProtocol.Violation("the server wrote after the call's answer") }
        if let method = m["method"]?.stringValue {
            if let id = m["id"] {
                events.append(.send(answer(request: method, id: id)))
            } else {
                if let msg = notification(method, m["params"]?.objectValue) { events.append(.message(msg)) }
            }
            return
        }
        guard let id = m["id"]?.intValue, id == outstanding else {
            throw CellProtocol.Violation(
                "the server answered a request it was not sent (id \(CellProtocol.clip(m["id"]?.serialized() ?? "none")))"
            )
        }
        outstanding = -1
        if let e = m["error"] {
            let code = e["code"]?.intValue.map { "\($0)" } ?? "?"
            let text = CellProtocol.sanitize(e["message"]?.stringValue ?? "")
            if phase == .calling {
                phase = reusable ? .ready : .done
                events.append(.final(.error("the server answered with error \(code): \(String(text.prefix(2000)))")))
                return
            }
            throw CellProtocol.Violation(
                "the server refused \(phaseRequest) with error \(code): \(CellProtocol.clip(text))")
        }
        guard case .object(let result)? = m["result"] else {
            throw CellProtocol.Violation("the answer to \(phaseRequest) has no result object")
        }
        switch phase {
        case .initializing:
            guard let version = result["protocolVersion"]?.stringValue, Self.knownVersions.contains(version) else {
                throw CellProtocol.Violation(
                    "the server's initialize answer names no protocol version the supervisor speaks "
                        + "(\(Self.knownVersions.sorted().joined(separator: ", ")))")
            }
            guard result["capabilities"]?["tools"]?.objectValue != nil else {
                throw CellProtocol.Violation("the server does not offer tools (capabilities.tools is missing)")
            }
            if let info = result["serverInfo"]?.objectValue {
                serverInfo = CellProtocol.clip(
                    "\(info["name"]?.stringValue ?? "?") \(info["version"]?.stringValue ?? "")")
            }
            phase = .listing
            var out = Self.encode(["jsonrpc": "2.0", "method": "notifications/initialized"])
            out += request("tools/list", nil)
            events.append(.send(out))
        case .listing:
            guard let tools = result["tools"]?.arrayValue else {
                throw CellProtocol.Violation("the server's tools/list answer has no \"tools\" array")
            }
            for (i, t) in tools.enumerated() {
                guard case .object(let o) = t, o["name"]?.stringValue != nil else {
                    throw CellProtocol.Violation("tools[\(i)] of the server's tools/list is not a tool with a name")
                }
                listedTools.append(o)
            }
            pages += 1
            if listedTools.count > Self.maxTools {
                throw CellProtocol.Violation("the server lists more than \(Self.maxTools) tools")
            }
            if let cursor = result["nextCursor"], cursor != .null {
                guard pages < Self.maxPages, case .string = cursor else {
                    throw CellProtocol.Violation("the server's tools/list does not end within \(Self.maxPages) pages")
                }
                events.append(.send(request("tools/list", JSONObject([("cursor", cursor)]))))
                return
            }
            guard let pinned else {
                phase = .done
                events.append(.listed(listedTools))
                return
            }
            if let d = ToolDefinitions.diff(pinned: pinned, listed: listedTools) {
                phase = .done
                events.append(.drift(d))
                return
            }
            phase = .ready
            events.append(.ready)
        case .calling:
            phase = reusable ? .ready : .done
            events.append(.final(try Self.callResult(result)))
        case .ready, .done:
            throw CellProtocol.Violation("the server answered a request it was not sent")
        }
    }

    private var phaseRequest: String {
        switch phase {
        case .initializing: return "initialize"
        case .listing: return "tools/list"
        default: return "tools/call"
        }
    }

    /// A request from the server to the client. Only `ping` is answered;
    /// sampling, elicitation and roots are refused (and recorded): the
    /// server gets no model, no person and no view of the client's files.
    private mutating func answer(request method: String, id: JSONValue) -> [UInt8] {
        if method == "ping" {
            return Self.encode(["jsonrpc": "2.0", "id": id, "result": .object(JSONObject())])
        }
        if refusedRequests.count < 16 { refusedRequests.append(CellProtocol.clip(method)) }
        return Self.encode([
            "jsonrpc": "2.0", "id": id,
            "error": [
                "code": -32601,
                "message": .string(
                    "mcp-supervisor does not let this server make \(CellProtocol.clip(method)) requests"),
            ],
        ])
    }

    private func notification(_ method: String, _ params: JSONObject?) -> WorkerMessage? {
        switch method {
        case "notifications/progress":
            guard phase == .calling, let p = params, p["progressToken"]?.stringValue == callToken,
                let progress = p["progress"]?.doubleValue
            else { return nil }
            return .progress(
                progress: progress, total: p["total"]?.doubleValue,
                message: p["message"]?.stringValue.map(CellProtocol.sanitize))
        case "notifications/message":
            guard let p = params, let level = p["level"]?.stringValue, CellProtocol.logLevels.contains(level) else {
                return nil
            }
            let data = p["data"] ?? .null
            let text = data.stringValue ?? data.serialized()
            return .log(level: level, message: CellProtocol.sanitize(String(text.prefix(4096))), data: nil)
        default:
            return nil
        }
    }

    /// A `tools/call` result as a cell result: text and images pass
    /// (sanitized), a resource's text becomes text; anything else is
    /// refused rather than passed on unexamined.
    static func callResult(_ r: JSONObject) throws(CellProtocol.Violation) -> CellProtocol.Frame {
        guard let items = r["content"]?.arrayValue else {
            throw CellProtocol.Violation("the server's tools/call result has no \"content\" array")
        }
        var content: [JSONValue] = []
        for (i, item) in items.enumerated() {
            guard case .object(let c) = item, let type = c["type"]?.stringValue else {
                throw CellProtocol.Violation("content[\(i)] must be an object with a \"type\"")
            }
            switch type {
            case "text":
                guard let t = c["text"]?.stringValue else { throw CellProtocol.Violation("content[\(i)] has no text") }
                content.append(["type": "text", "text": .string(CellProtocol.sanitize(t))])
            case "image":
                guard let d = c["data"]?.stringValue, let mime = c["mimeType"]?.stringValue, mime.hasPrefix("image/")
                else { throw CellProtocol.Violation("content[\(i)]: an image needs data and an image/* mimeType") }
                content.append(["type": "image", "data": .string(d), "mimeType": .string(CellProtocol.sanitize(mime))])
            case "resource":
                guard let t = c["resource"]?["text"]?.stringValue else {
                    throw CellProtocol.Violation("content[\(i)]: only text resources are passed on")
                }
                content.append(["type": "text", "text": .string(CellProtocol.sanitize(t))])
            default:
                throw CellProtocol.Violation(
                    "content[\(i)]: content type \"\(CellProtocol.clip(type))\" is not passed on")
            }
        }
        if r["isError"]?.boolValue == true {
            let text = content.compactMap { $0["text"]?.stringValue }.joined(separator: "\n")
            return .error(String(text.prefix(4000)))
        }
        var structured: JSONValue? = nil
        if let s = r["structuredContent"], s != .null {
            guard case .object = s else {
                throw CellProtocol.Violation("the server's structuredContent is not an object")
            }
            structured = s
        }
        return .result(CellResult(content: content, structuredContent: structured))
    }
}

/// Why registration could not list a server's tools.
public struct DiscoveryError: Error, Sendable, CustomStringConvertible {
    public let description: String
    init(_ d: String) { description = d }
}
