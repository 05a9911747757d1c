import MCP
import StrictJSON
import SupervisorCore

/// Which revision family a stdio connection speaks. The first request
/// decides (docs/architecture.md, "Protocol"): `initialize` starts the
/// handshake era (2024-11-05 … 2025-11-25, served with the MCP SDK); a
/// request whose `_meta` carries `io.modelcontextprotocol/protocolVersion`
/// starts the modern era (2026-07-28, stateless, served by
/// `ModernDispatcher`). A connection never changes era once chosen.
public enum ProtocolEra: String, Sendable {
    /// No request has chosen yet.
    case undecided
    case handshake
    case modern
}

/// The per-request context of a modern request, from `params._meta`.
/// Nothing in it carries over to the next request.
public struct ModernEnvelope: Sendable, Equatable {
    public static let protocolVersionKey = "io.modelcontextprotocol/protocolVersion"
    public static let clientCapabilitiesKey = "io.modelcontextprotocol/clientCapabilities"
    public static let clientInfoKey = "io.modelcontextprotocol/clientInfo"
    public static let logLevelKey = "io.modelcontextprotocol/logLevel"
    public static let serverInfoKey = "io.modelcontextprotocol/serverInfo"
    public static let subscriptionIDKey = "io.modelcontextprotocol/subscriptionId"

    /// The modern revisions spoken.
    public static let supportedVersions = ["2026-07-28"]
    /// Every revision this server speaks: the modern ones and the handshake
    /// versions of the MCP SDK, newest first.
    public static var allVersions: [String] { supportedVersions + Version.supported.sorted(by: >) }
    /// Reserved by the spec for an unsupported protocol version.
    public static let unsupportedVersion = -32022

    public var protocolVersion: String
    public var clientCapabilities: JSONObject
    /// Self-declared and client-supplied: bounded before it is recorded.
    public var clientName: String?
    public var clientVersion: String?
    /// Send `notifications/message` for this request at or above this
    /// level; none when nil.
    public var logLevel: String?

    /// True when `params._meta` names a protocol version: the request is
    /// meant for the modern era, valid or not.
    static func isEnveloped(_ params: JSONObject?) -> Bool {
        params?["_meta"]?[protocolVersionKey] != nil
    }

    /// Reads and checks the envelope; the error is a JSON-RPC error object
    /// (without id) naming what is wrong.
    static func parse(_ params: JSONObject?) -> Result<ModernEnvelope, EnvelopeError> {
        guard let metaValue = params?["_meta"] else {
            return .failure(.invalid("a request of protocol 2026-07-28 needs \"_meta\" with \(protocolVersionKey)"))
        }
        guard case .object(let meta) = metaValue else { return .failure(.invalid("\"_meta\" must be an object")) }
        guard let v = meta[protocolVersionKey] else {
            return .failure(.invalid("\"_meta\" needs \(protocolVersionKey)"))
        }
        guard case .string(let version) = v else {
            return .failure(.invalid("\(protocolVersionKey) must be a string"))
        }
        guard case .object(let caps)? = meta[clientCapabilitiesKey] else {
            return .failure(.invalid("\"_meta\" needs \(clientCapabilitiesKey), an object"))
        }
        var envelope = ModernEnvelope(protocolVersion: version, clientCapabilities: caps)
        if let info = meta[clientInfoKey] {
            guard case .object(let i) = info, case .string(let name)? = i["name"], case .string(let ver)? = i["version"]
            else {
                return .failure(.invalid("\(clientInfoKey) must be an object with a string \"name\" and \"version\""))
            }
            envelope.clientName = name
            envelope.clientVersion = ver
        }
        if let l = meta[logLevelKey] {
            guard case .string(let level) = l, MessageGate.logLevels.contains(level) else {
                return .failure(
                    .invalid("\(logLevelKey) must be one of " + MessageGate.logLevels.joined(separator: ", ")))
            }
            envelope.logLevel = level
        }
        guard supportedVersions.contains(version) else { return .failure(.unsupported(requested: version)) }
        return .success(envelope)
    }

    init(protocolVersion: String, clientCapabilities: JSONObject) {
        self.protocolVersion = protocolVersion
        self.clientCapabilities = clientCapabilities
    }
}

/// Why a modern request's envelope is refused.
enum EnvelopeError: Error, Equatable {
    /// -32602 Invalid params.
    case invalid(String)
    /// -32022 with `data: {supported, requested}`.
    case unsupported(requested: String)

    /// `supported`: what the connection can still speak.
    func reply(id: JSONValue, supported: [String]) -> JSONValue {
        switch self {
        case .invalid(let why):
            return MessageGate.error(id: id, code: MessageGate.invalidParams, message: "Invalid params: \(why)")
        case .unsupported(let requested):
            return Self.unsupportedVersion(id: id, requested: requested, supported: supported)
        }
    }

    /// -32022: the versions this connection can speak, and the one asked for.
    static func unsupportedVersion(id: JSONValue, requested: String?, supported: [String]) -> JSONValue {
        let shown = requested.map { SecurityEvent.bounded($0) }
        let data = JSONValue.object(
            JSONObject([
                ("supported", .array(supported.map { .string($0) })),
                ("requested", shown.map { .string($0) } ?? .null),
            ]))
        return .object(
            JSONObject([
                ("jsonrpc", "2.0"), ("id", id),
                (
                    "error",
                    .object(
                        JSONObject([
                            ("code", .int(Int64(ModernEnvelope.unsupportedVersion))),
                            ("message", .string("Unsupported protocol version")),
                            ("data", data),
                        ]))
                ),
            ]))
    }
}
