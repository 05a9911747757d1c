import StrictJSON
import SupervisorCore

/// Checks every client message before the MCP SDK sees it, and answers what
/// the SDK would get wrong (ENGINEERING-NOTES: parse errors with a random id,
/// tools/call without a name as -32603, invalid params of the methods it
/// decodes as -32603) per JSON-RPC 2.0 and MCP 2025-11-25. It also keeps the
/// connection's `ProtocolEra` and applies the rules of 2026-07-28, whose
/// requests never reach the SDK (`ModernDispatcher`).
public struct MessageGate: Sendable {
    public enum Decision: Equatable, Sendable {
        /// Pass the message to the SDK unchanged. `request` is the id of a
        /// request that now awaits an answer; `cancels` the id a
        /// notifications/cancelled withdraws (its answer will never come).
        case forward(request: String?, cancels: String?)
        /// Drop it silently (a notification that must not be answered).
        case drop(reason: String)
        /// Answer with this JSON-RPC error and do not forward.
        case reply(JSONValue)
        /// A well-formed tools/call after initialize, for the call pipeline:
        /// the id and the params object.
        case call(id: JSONValue, params: JSONObject)
        /// A request of the modern era with a valid envelope (and, for
        /// tools/call, well-formed params), for the `ModernDispatcher`.
        case modern(ModernRequest)
        /// A modern-era notifications/cancelled: withdraw this request id.
        case cancel(String)
    }

    /// A modern request the gate has checked.
    public struct ModernRequest: Equatable, Sendable {
        public var id: JSONValue
        public var method: String
        public var params: JSONObject
        public var envelope: ModernEnvelope
    }

    /// The methods of 2026-07-28 this server serves; anything else in the
    /// modern era (ping, logging/setLevel: removed) is method-not-found.
    static let modernMethods: Set<String> = ["server/discover", "tools/list", "tools/call", "subscriptions/listen"]

    public static let parseError = -32700
    public static let invalidRequest = -32600
    public static let methodNotFound = -32601
    public static let invalidParams = -32602

    public let maxMessageBytes: Int
    /// Set once an initialize request went through.
    public private(set) var initializeSeen = false
    /// Chosen by the first request that is served (`ProtocolEra`).
    public private(set) var era = ProtocolEra.undecided
    /// The protocolVersion the client asked for in initialize.
    public private(set) var requestedProtocolVersion: String?

    public init(maxMessageBytes: Int) {
        self.maxMessageBytes = maxMessageBytes
    }

    public static func error(id: JSONValue, code: Int, message: String) -> JSONValue {
        .object(
            JSONObject([
                ("jsonrpc", "2.0"), ("id", id),
                ("error", .object(JSONObject([("code", .int(Int64(code))), ("message", .string(message))]))),
            ]))
    }

    public func oversized(_ n: Int) -> JSONValue {
        Self.error(
            id: .null, code: Self.invalidRequest,
            message: "Invalid Request: message of \(n) bytes exceeds the limit of \(maxMessageBytes) bytes")
    }

    public mutating func check(_ line: [UInt8]) -> Decision {
        let value: JSONValue
        do {
            value = try JSONParser.parse(line)
        } catch {
            return .reply(Self.error(id: .null, code: Self.parseError, message: "Parse error: \(error)"))
        }
        guard case .object(let o) = value else {
            if case .array = value {
                return .reply(
                    Self.error(
                        id: .null, code: Self.invalidRequest,
                        message: "Invalid Request: JSON-RPC batches are not supported (MCP 2025-06-18 and later)"))
            }
            return .reply(
                Self.error(
                    id: .null, code: Self.invalidRequest,
                    message: "Invalid Request: expected a JSON-RPC object, found \(value.typeName)"))
        }
        // The id, if any, must be a string or an integer (not null, not a fraction).
        var id: JSONValue = .null
        var hasValidID = false
        if let raw = o["id"] {
            switch raw {
            case .string, .int:
                id = raw
                hasValidID = true
            default:
                return .reply(
                    Self.error(
                        id: .null, code: Self.invalidRequest,
                        message: "Invalid Request: id must be a string or an integer, found \(raw.typeName)"))
            }
        }
        guard o["jsonrpc"] == "2.0" else {
            return .reply(
                Self.error(id: id, code: Self.invalidRequest, message: "Invalid Request: \"jsonrpc\" must be \"2.0\""))
        }
        guard let methodValue = o["method"] else {
            // A response to a request of ours.
            if hasValidID && (o["result"] != nil || o["error"] != nil) { return .forward(request: nil, cancels: nil) }
            return .reply(Self.error(id: id, code: Self.invalidRequest, message: "Invalid Request: no \"method\""))
        }
        guard case .string(let method) = methodValue else {
            return .reply(
                Self.error(id: id, code: Self.invalidRequest, message: "Invalid Request: \"method\" must be a string"))
        }
        if let p = o["params"] {
            guard case .object = p else {
                if hasValidID {
                    return .reply(
                        Self.error(
                            id: id, code: Self.invalidParams, message: "Invalid params: \"params\" must be an object"))
                }
                return .drop(reason: "notification \(method) with non-object params")
            }
        }
        // (JSONValue is nil-literal-expressible: no id must be spelled `.none`.)
        let requestID: JSONValue? = hasValidID ? .some(id) : .none
        if era != .handshake, let decision = checkModern(method: method, id: requestID, o["params"]) {
            return decision
        }
        if era == .handshake && hasValidID {
            if method == "server/discover" { return .modern(Self.plainDiscover(id: id, o["params"]?.objectValue)) }
            if ModernEnvelope.isEnveloped(o["params"]?.objectValue) {
                return .reply(
                    Self.error(
                        id: id, code: Self.invalidRequest,
                        message: "Invalid Request: this connection was initialized (protocol "
                            + "\(SecurityEvent.bounded(requestedProtocolVersion ?? "?", maxBytes: 64))); "
                            + "requests of protocol 2026-07-28 are not accepted on it"
                    ))
            }
        }
        if !hasValidID {
            // Notifications are never answered. Before initialize only
            // "initialized" may arrive; anything else is dropped.
            if !initializeSeen && method != "notifications/initialized" {
                return .drop(reason: "notification \(method) before initialize")
            }
            if method == "notifications/cancelled", case .object(let p)? = o["params"], let r = p["requestId"] {
                return .forward(request: nil, cancels: r.serialized())
            }
            return .forward(request: nil, cancels: nil)
        }
        if !initializeSeen && method != "initialize" && method != "ping" {
            // (The SDK drops these without an answer.)
            return .reply(
                Self.error(
                    id: id, code: Self.invalidRequest,
                    message: "Invalid Request: the server is not initialized; send initialize first"))
        }
        if let problem = Self.sdkParamsProblem(method, o["params"]?.objectValue) {
            return .reply(Self.error(id: id, code: Self.invalidParams, message: "Invalid params: \(problem)"))
        }
        switch method {
        case "initialize":
            // Only the first initialize of a connection may reach the SDK:
            // two written in one go would both be served otherwise.
            if initializeSeen {
                return .reply(
                    Self.error(id: id, code: Self.invalidRequest, message: "Invalid Request: already initialized"))
            }
            initializeSeen = true
            era = .handshake
            requestedProtocolVersion = o["params"]?["protocolVersion"]?.stringValue
        case "tools/call":
            if let problem = Self.toolsCallProblem(o["params"]?.objectValue) {
                return .reply(Self.error(id: id, code: Self.invalidParams, message: "Invalid params: \(problem)"))
            }
            return .call(id: id, params: o["params"]?.objectValue ?? JSONObject())
        default:
            break
        }
        return .forward(request: id.serialized(), cancels: nil)
    }

    /// The modern era's rules, for a connection not (yet) in the handshake
    /// era; nil when the message goes on to the handshake era's rules (an
    /// undecided connection and a message that does not choose the modern
    /// era). `id` is nil for a notification.
    mutating func checkModern(method: String, id: JSONValue?, _ paramsValue: JSONValue?) -> Decision? {
        let params = paramsValue?.objectValue
        guard let id else {
            // Of the client's notifications only notifications/cancelled is
            // left in 2026-07-28; the others are dropped unanswered.
            guard era == .modern else { return nil }
            if method == "notifications/cancelled", let r = params?["requestId"] { return .cancel(r.serialized()) }
            return .drop(reason: "notification \(method) in the 2026-07-28 era")
        }
        let enveloped = ModernEnvelope.isEnveloped(params)
        // An undecided connection goes on as before unless the request
        // chooses the modern era; server/discover is answered either way.
        if era == .undecided && !enveloped && method != "server/discover" { return nil }
        if era == .modern && method == "initialize" {
            let asked = params?["protocolVersion"]?.stringValue
            return .reply(
                EnvelopeError.unsupportedVersion(id: id, requested: asked, supported: ModernEnvelope.supportedVersions))
        }
        guard Self.modernMethods.contains(method) else {
            return .reply(
                Self.error(
                    id: id, code: Self.methodNotFound,
                    message: "Method not found: \(SecurityEvent.bounded(method, maxBytes: 64)) (protocol 2026-07-28)"))
        }
        if method == "server/discover" && !enveloped {
            // server/discover is always answered, even without an envelope;
            // it does not choose the era.
            return .modern(Self.plainDiscover(id: id, params))
        }
        let envelope: ModernEnvelope
        switch ModernEnvelope.parse(params) {
        case .failure(let e):
            // Once modern, only the modern versions remain; before, all.
            let left = era == .modern ? ModernEnvelope.supportedVersions : ModernEnvelope.allVersions
            return .reply(e.reply(id: id, supported: left))
        case .success(let e): envelope = e
        }
        if method == "tools/call", let problem = Self.toolsCallProblem(params) {
            return .reply(Self.error(id: id, code: Self.invalidParams, message: "Invalid params: \(problem)"))
        }
        era = .modern
        return .modern(ModernRequest(id: id, method: method, params: params ?? JSONObject(), envelope: envelope))
    }

    /// A server/discover answered without checking an envelope.
    static func plainDiscover(id: JSONValue, _ params: JSONObject?) -> ModernRequest {
        ModernRequest(
            id: id, method: "server/discover", params: params ?? JSONObject(),
            envelope: ModernEnvelope(protocolVersion: ModernEnvelope.supportedVersions[0], clientCapabilities: [:]))
    }

    /// What is wrong with a tools/call's params, or nil.
    static func toolsCallProblem(_ params: JSONObject?) -> String? {
        guard let params else { return "tools/call needs params with a tool \"name\"" }
        guard case .string? = params["name"] else { return "tools/call needs a string \"name\"" }
        if let a = params["arguments"], a.objectValue == nil { return "\"arguments\" must be an object" }
        if let m = params["_meta"], m.objectValue == nil { return "\"_meta\" must be an object" }
        return nil
    }

    /// The logging levels of MCP, lowest first.
    public static let logLevels = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]

    /// What is wrong with the params of a request the SDK decodes itself
    /// (its decoding errors would reach the client as -32603 with a
    /// Foundation message), or nil when the SDK can decode them.
    static func sdkParamsProblem(_ method: String, _ params: JSONObject?) -> String? {
        switch method {
        case "initialize":
            guard let params else { return "initialize needs params with a string \"protocolVersion\"" }
            guard case .string? = params["protocolVersion"] else {
                return "initialize needs a string \"protocolVersion\""
            }
            if let c = params["capabilities"], c.objectValue == nil { return "\"capabilities\" must be an object" }
            if let info = params["clientInfo"] {
                guard case .object(let i) = info, case .string? = i["name"], case .string? = i["version"] else {
                    return "\"clientInfo\" must be an object with a string \"name\" and \"version\""
                }
            }
        case "logging/setLevel":
            guard case .string(let level)? = params?["level"], logLevels.contains(level) else {
                return "logging/setLevel needs \"level\", one of " + logLevels.joined(separator: ", ")
            }
        case "tools/list":
            if let c = params?["cursor"] {
                guard case .string = c else { return "\"cursor\" must be a string" }
            }
        default:
            break
        }
        return nil
    }
}
