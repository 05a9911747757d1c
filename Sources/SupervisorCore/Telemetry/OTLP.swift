import Foundation
import StrictJSON
import SupervisorPlatform

/// Where OTLP/HTTP goes: `http://HOST[:PORT][/PATH]`, the base to which
/// `/v1/traces` and `/v1/logs` are added, as `OTEL_EXPORTER_OTLP_ENDPOINT`
/// is read by OpenTelemetry SDKs. Plain HTTP only: a collector on the
/// loopback (or beside the supervisor) adds TLS and authentication.
public struct OTLPEndpoint: Sendable, Equatable, CustomStringConvertible {
    public let host: String
    public let port: Int
    /// Without a trailing slash ("" for none).
    public let basePath: String

    public var description: String { "http://\(host.contains(":") ? "[\(host)]" : host):\(port)\(basePath)" }

    /// What is wrong with a setting's value.
    public struct Problem: Error, CustomStringConvertible {
        public let description: String
    }

    static func fail(_ why: String) -> Result<OTLPEndpoint, Problem> { .failure(Problem(description: why)) }

    /// Parses the setting's value; the error says what is wrong with it.
    public static func parse(_ s: String) -> Result<OTLPEndpoint, Problem> {
        if s.hasPrefix("https://") {
            return fail(
                "https is not supported: point it at an OpenTelemetry Collector on this host (http://127.0.0.1:4318), "
                    + "which forwards with TLS")
        }
        guard s.hasPrefix("http://") else { return fail("expected http://HOST[:PORT][/PATH], found \"\(s)\"") }
        let rest = s.dropFirst("http://".count)
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<slash]
        var path = String(rest[slash...])
        while path.hasSuffix("/") { path.removeLast() }
        guard !path.contains("?"), !path.contains("#"), !path.contains(" ") else {
            return fail("the path may not carry a query, a fragment or spaces: \"\(s)\"")
        }
        guard !authority.contains("@") else { return fail("credentials in the URL are not supported: \"\(s)\"") }
        var host: Substring
        var portText: Substring? = nil
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { return fail("unclosed [ in \"\(s)\"") }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if after.hasPrefix(":") {
                portText = after.dropFirst()
            } else if !after.isEmpty {
                return fail("unexpected \"\(after)\" after the address in \"\(s)\"")
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = authority[..<colon]
            portText = authority[authority.index(after: colon)...]
        } else {
            host = authority
        }
        guard !host.isEmpty else { return fail("no host in \"\(s)\"") }
        var port = 4318
        if let p = portText {
            guard let n = Int(p), (1...65535).contains(n) else { return fail("bad port \"\(p)\" in \"\(s)\"") }
            port = n
        }
        return .success(OTLPEndpoint(host: String(host), port: port, basePath: path))
    }
}

/// One POST over a fresh connection (HTTP/1.1, `Connection: close`): a
/// batch a second at most, so a kept-alive connection would save little and
/// need more code. Connect and every read and write are bounded (1 s,
/// 2 s); this runs on an export thread only.
enum HTTPPost {
    static func send(_ body: [UInt8], to endpoint: OTLPEndpoint, path: String) -> String? {
        let address: IPAddress
        if let a = IPAddress(literal: endpoint.host) {
            address = a
        } else {
            do {
                guard let a = try Network.resolve(endpoint.host).first else { return "\(endpoint.host): no address" }
                address = a
            } catch { return "\(error)" }
        }
        let fd: FileDescriptor
        do { fd = try Network.connect(address, port: endpoint.port, timeoutMilliseconds: 1000) } catch {
            return "\(error)"
        }
        defer { fd.close() }
        let host = endpoint.host.contains(":") ? "[\(endpoint.host)]" : endpoint.host
        let head =
            "POST \(endpoint.basePath)\(path) HTTP/1.1\r\nHost: \(host):\(endpoint.port)\r\n"
            + "Content-Type: application/json\r\nContent-Length: \(body.count)\r\nConnection: close\r\n"
            + "User-Agent: mcp-supervisor\r\n\r\n"
        do {
            try fd.setSocketTimeouts(milliseconds: 2000)
            try fd.writeAll(Array(head.utf8) + body)
        } catch { return "\(error)" }
        // Only the status line matters; the body (an ExportServiceResponse
        // with a partial success, if any) is not read beyond the first KiB.
        var response: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1024)
        while response.count < 1024, !response.contains(0x0A) {
            let n: Int
            do { n = try fd.read(&buffer) } catch { return "no answer: \(error)" }
            if n == 0 { break }
            response += buffer.prefix(n)
        }
        let line = String(decoding: response.prefix { $0 != 0x0D && $0 != 0x0A }, as: UTF8.self)
        let parts = line.split(separator: " ")
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]) else {
            return "not an HTTP answer: \"\(line.prefix(80))\""
        }
        return (200..<300).contains(status) ? nil : "HTTP \(status) from \(endpoint)\(path)"
    }
}

/// An attribute value of the OTLP data model (the kinds used here).
enum AttributeValue: Sendable {
    case string(String)
    case int(Int64)
    case bool(Bool)

    var json: JSONValue {
        switch self {
        case .string(let s): return .object(JSONObject([("stringValue", .string(s))]))
        // int64 is a decimal string in the protobuf JSON mapping.
        case .int(let i): return .object(JSONObject([("intValue", .string(String(i)))]))
        case .bool(let b): return .object(JSONObject([("boolValue", .bool(b))]))
        }
    }
}

/// One finished span.
struct SpanData: Sendable {
    enum Kind: Int {
        case internalSpan = 1
        case server = 2
    }
    var traceID: String
    var spanID: String
    var parentSpanID: String?
    var traceState: String?
    var name: String
    var kind: Kind
    var startUnixNanoseconds: UInt64
    var endUnixNanoseconds: UInt64
    var attributes: [(String, AttributeValue)]
    /// Set for a span that failed: OTLP status ERROR with this message.
    var error: String?
}

/// The OTLP/JSON encoding (the protobuf JSON mapping of
/// `opentelemetry.proto.collector.{trace,logs}.v1.Export*ServiceRequest`,
/// https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding):
/// lowerCamelCase field names, trace and span ids as hex strings (not
/// base64), 64-bit integers as decimal strings, enums as integers.
enum OTLPJSON {
    static func attributes(_ a: [(String, AttributeValue)]) -> JSONValue {
        .array(a.map { .object(JSONObject([("key", .string($0.0)), ("value", $0.1.json)])) })
    }

    static func resource(_ r: [(String, AttributeValue)]) -> JSONValue {
        .object(JSONObject([("attributes", attributes(r))]))
    }

    static let scope = JSONValue.object(JSONObject([("name", "mcp-supervisor")]))

    static func traces(_ spans: [SpanData], resource r: [(String, AttributeValue)]) -> [UInt8] {
        let encoded: [JSONValue] = spans.map { s in
            var o = JSONObject([("traceId", .string(s.traceID)), ("spanId", .string(s.spanID))])
            if let t = s.traceState { o["traceState"] = .string(t) }
            if let p = s.parentSpanID { o["parentSpanId"] = .string(p) }
            o["name"] = .string(s.name)
            o["kind"] = .int(Int64(s.kind.rawValue))
            o["startTimeUnixNano"] = .string(String(s.startUnixNanoseconds))
            o["endTimeUnixNano"] = .string(String(s.endUnixNanoseconds))
            o["attributes"] = attributes(s.attributes)
            if let e = s.error {
                o["status"] = .object(JSONObject([("code", 2), ("message", .string(e))]))
            }
            return .object(o)
        }
        let scopeSpans = JSONValue.object(JSONObject([("scope", scope), ("spans", .array(encoded))]))
        let rs = JSONValue.object(JSONObject([("resource", resource(r)), ("scopeSpans", .array([scopeSpans]))]))
        return JSONValue.object(JSONObject([("resourceSpans", .array([rs]))])).serializedBytes()
    }

    /// Security log records as log records: the body is the record's line
    /// exactly as the log holds it (so a receiver can check the chain:
    /// SHA-256 of a line is the next record's `prev`), with its `seq` and
    /// `type` also as attributes and `type` as the event name.
    static func logs(_ records: [DurableRecord], resource r: [(String, AttributeValue)]) -> [UInt8] {
        let encoded: [JSONValue] = records.map { rec in
            let (number, text) = severity(rec.type)
            let t = String(rec.writtenUnixNanoseconds)
            return .object(
                JSONObject([
                    ("timeUnixNano", .string(t)), ("observedTimeUnixNano", .string(t)),
                    ("severityNumber", .int(number)), ("severityText", .string(text)),
                    (
                        "body",
                        .object(JSONObject([("stringValue", .string(String(decoding: rec.line, as: UTF8.self)))]))
                    ),
                    (
                        "attributes",
                        attributes([
                            ("mcp_supervisor.security_log.seq", .int(Int64(rec.seq))),
                            ("mcp_supervisor.security_log.type", .string(rec.type)),
                        ])
                    ),
                    ("eventName", .string(rec.type)),
                ]))
        }
        let scopeLogs = JSONValue.object(JSONObject([("scope", scope), ("logRecords", .array(encoded))]))
        let rl = JSONValue.object(JSONObject([("resource", resource(r)), ("scopeLogs", .array([scopeLogs]))]))
        return JSONValue.object(JSONObject([("resourceLogs", .array([rl]))])).serializedBytes()
    }

    /// WARN for what a SIEM should look at first (violations, refusals of
    /// trust, the log's own trouble), INFO for the rest.
    static func severity(_ type: String) -> (Int64, String) {
        warn.contains(type) ? (13, "WARN") : (9, "INFO")
    }

    static let warn: Set<String> = [
        "sandbox.violation", "log.torn_tail", "log.unsigned_tail", "log.recovered", "cell.cannot_run",
        "cell.refused", "cell.drift", "cell.anomaly", "cell.breaker", "ledger.refused", "network.refused",
        "call.interrupted", "supervisor.unsigned_mode",
    ]
}
