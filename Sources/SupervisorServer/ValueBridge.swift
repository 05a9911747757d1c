import Foundation
import MCP
import StrictJSON

/// Converts between the SDK's `Value` and the supervisor's `JSONValue`.
extension JSONValue {
    public init(_ v: MCP.Value) {
        switch v {
        case .null: self = .null
        case .bool(let b): self = .bool(b)
        case .int(let i): self = .int(Int64(i))
        case .double(let d): self = .double(d)
        case .string(let s): self = .string(s)
        case .data(let mime, let d):
            self = .string("data:\(mime ?? "application/octet-stream");base64,\(d.base64EncodedString())")
        case .array(let a): self = .array(a.map(JSONValue.init))
        case .object(let o):
            self = .object(JSONObject(o.sorted { $0.key < $1.key }.map { ($0.key, JSONValue($0.value)) }))
        }
    }

    public var mcpValue: MCP.Value {
        switch self {
        case .null: return .null
        case .bool(let b): return .bool(b)
        case .int(let i): return .int(Int(i))
        case .double(let d): return .double(d)
        case .string(let s): return .string(s)
        case .array(let a): return .array(a.map(\.mcpValue))
        case .object(let o):
            var d: [String: MCP.Value] = [:]
            for (k, v) in o { d[k] = v.mcpValue }
            return .object(d)
        }
    }
}
