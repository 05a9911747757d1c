import StrictJSON

/// Validates tool arguments and structured output against the subset of JSON
/// Schema (2020-12) that manifests may use.
///
/// Written here because no maintained JSON Schema validator is available as a
/// Swift package. The subset is enforced both ways: `checkSchema` refuses a
/// manifest that uses a keyword outside it, so no schema silently promises a
/// check that is not made. Supported keywords are listed in docs/manifest.md.
/// Where a value breaks its schema and how: `path` is the dotted location
/// (`arguments.tags[0]`), `reason` what is wrong there.
public struct SchemaViolation: Error, Equatable, Sendable, CustomStringConvertible {
    public let path: String
    public let reason: String

    public init(path: String, reason: String) {
        self.path = path
        self.reason = reason
    }

    public var description: String { "\(path): \(reason)" }
}

public enum SchemaValidator {
    static let assertionKeywords: Set<String> = [
        "type", "properties", "required", "additionalProperties", "items", "enum", "const",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
        "minItems", "maxItems", "uniqueItems", "pattern", "anyOf", "oneOf", "allOf", "not",
        "minProperties", "maxProperties", "$ref", "$defs", "definitions",
    ]
    static let annotationKeywords: Set<String> = [
        "$schema", "$id", "$comment", "title", "description", "default", "examples", "format",
        "readOnly", "writeOnly", "deprecated",
    ]
    static let typeNames: Set<String> = ["null", "boolean", "integer", "number", "string", "array", "object"]

    /// Checks that a schema only uses supported keywords with well-formed values.
    public static func checkSchema(_ schema: JSONObject, file: String, field: String) throws(ConfigError) {
        try checkSchema(schema, file: file, field: field, root: schema)
    }

    /// The schema a local reference names (`#/$defs/Name`,
    /// `#/definitions/Name`, or `#` itself), or nil.
    static func resolve(_ ref: String, in root: JSONObject) -> JSONValue? {
        if ref == "#" { return .object(root) }
        for prefix in ["#/$defs/", "#/definitions/"] where ref.hasPrefix(prefix) {
            let name = String(ref.dropFirst(prefix.count)).replacingOccurrences(of: "~1", with: "/")
                .replacingOccurrences(of: "~0", with: "~")
            return root[String(prefix.dropFirst(2).dropLast())]?[name]
        }
        return nil
    }

    static func checkSchema(_ schema: JSONObject, file: String, field: String, root: JSONObject)
        throws(ConfigError)
    {
        func fail(_ f: String, _ m: String) -> ConfigError { ConfigError(file: file, field: f, message: m) }
        for (k, v) in schema {
            let f = "\(field).\(k)"
            if annotationKeywords.contains(k) { continue }
            guard assertionKeywords.contains(k) else {
                throw fail(
                    f,
                    "unsupported JSON Schema keyword (supported: \(assertionKeywords.sorted().joined(separator: ", ")))"
                )
            }
            switch k {
            case "type":
                let names: [JSONValue] = v.arrayValue ?? [v]
                for n in names {
                    guard let s = n.stringValue, typeNames.contains(s) else {
                        throw fail(f, "unknown type \(n.serialized())")
                    }
                }
            case "properties":
                guard let props = v.objectValue else { throw fail(f, "expected an object") }
                for (pk, pv) in props {
                    guard let po = pv.objectValue else { throw fail("\(f).\(pk)", "expected a schema object") }
                    try checkSchema(po, file: file, field: "\(f).\(pk)", root: root)
                }
            case "required":
                guard let a = v.arrayValue, a.allSatisfy({ $0.stringValue != nil }) else {
                    throw fail(f, "expected an array of strings")
                }
            case "additionalProperties", "items", "not":
                if case .bool = v { continue }
                guard let o = v.objectValue else { throw fail(f, "expected a schema object or a boolean") }
                try checkSchema(o, file: file, field: f, root: root)
            case "anyOf", "oneOf", "allOf":
                guard let a = v.arrayValue, !a.isEmpty else { throw fail(f, "expected a non-empty array of schemas") }
                for (i, e) in a.enumerated() {
                    guard let o = e.objectValue else { throw fail("\(f)[\(i)]", "expected a schema object") }
                    try checkSchema(o, file: file, field: "\(f)[\(i)]", root: root)
                }
            case "enum":
                guard let a = v.arrayValue, !a.isEmpty else { throw fail(f, "expected a non-empty array") }
            case "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum":
                guard v.doubleValue != nil else { throw fail(f, "expected a number") }
            case "minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties":
                guard let i = v.intValue, i >= 0 else { throw fail(f, "expected a non-negative integer") }
            case "uniqueItems":
                guard v.boolValue != nil else { throw fail(f, "expected true or false") }
            case "$defs", "definitions":
                guard let defs = v.objectValue else { throw fail(f, "expected an object of schemas") }
                for (dk, dv) in defs {
                    guard let d = dv.objectValue else { throw fail("\(f).\(dk)", "expected a schema object") }
                    try checkSchema(d, file: file, field: "\(f).\(dk)", root: root)
                }
            case "$ref":
                // Only references inside the schema itself: nothing is fetched.
                guard let r = v.stringValue, resolve(r, in: root)?.objectValue != nil else {
                    throw fail(f, "expected a reference to a schema in this schema's $defs (\"#/$defs/Name\")")
                }
            case "pattern":
                guard let p = v.stringValue else { throw fail(f, "expected a string") }
                do { _ = try Regex(p) } catch { throw fail(f, "not a valid regular expression") }
            default: break
            }
        }
    }

    /// Validates `value`; returns the first problem as "path: message", or nil.
    public static func validate(_ value: JSONValue, against schema: JSONObject, path: String = "arguments")
        -> SchemaViolation?
    {
        validate(value, against: schema, path: path, root: schema, depth: 0)
    }

    /// References followed without reaching a value's end (a schema that
    /// refers to itself forever) stop here.
    static let maxDepth = 64

    static func validate(_ value: JSONValue, against schema: JSONObject, path: String, root: JSONObject, depth: Int)
        -> SchemaViolation?
    {
        func validateSub(_ v: JSONValue, _ s: JSONValue, _ p: String) -> SchemaViolation? {
            SchemaValidator.validateSub(v, s, p, root: root, depth: depth + 1)
        }
        guard depth < maxDepth else {
            return SchemaViolation(path: path, reason: "the schema nests deeper than \(maxDepth) levels here")
        }
        if let r = schema["$ref"]?.stringValue {
            guard let target = resolve(r, in: root) else {
                return SchemaViolation(path: path, reason: "the schema refers to \(r), which it does not define")
            }
            if let err = validateSub(value, target, path) { return err }
        }
        if let t = schema["type"] {
            let names = (t.arrayValue ?? [t]).compactMap(\.stringValue)
            if !names.contains(where: { matches(value, type: $0) }) {
                return SchemaViolation(
                    path: path, reason: "expected \(names.joined(separator: " or ")), found \(value.typeName)")
            }
        }
        if let e = schema["enum"]?.arrayValue, !e.contains(where: { equalJSON($0, value) }) {
            return SchemaViolation(
                path: path, reason: "must be one of \(e.map { $0.serialized() }.joined(separator: ", "))")
        }
        if let c = schema["const"], !equalJSON(c, value) {
            return SchemaViolation(path: path, reason: "must be \(c.serialized())")
        }

        switch value {
        case .int, .double:
            let d = value.doubleValue!
            if let m = schema["minimum"]?.doubleValue, d < m {
                return SchemaViolation(path: path, reason: "must be >= \(fmt(m))")
            }
            if let m = schema["maximum"]?.doubleValue, d > m {
                return SchemaViolation(path: path, reason: "must be <= \(fmt(m))")
            }
            if let m = schema["exclusiveMinimum"]?.doubleValue, d <= m {
                return SchemaViolation(path: path, reason: "must be > \(fmt(m))")
            }
            if let m = schema["exclusiveMaximum"]?.doubleValue, d >= m {
                return SchemaViolation(path: path, reason: "must be < \(fmt(m))")
            }
        case .string(let s):
            let n = s.unicodeScalars.count
            if let m = schema["minLength"]?.intValue, n < m {
                return SchemaViolation(path: path, reason: "must be at least \(m) characters")
            }
            if let m = schema["maxLength"]?.intValue, n > m {
                return SchemaViolation(path: path, reason: "must be at most \(m) characters")
            }
            if let p = schema["pattern"]?.stringValue, let re = try? Regex(p), (try? re.firstMatch(in: s)) == nil {
                return SchemaViolation(path: path, reason: "does not match the pattern \(p)")
            }
        case .array(let a):
            if let m = schema["minItems"]?.intValue, a.count < m {
                return SchemaViolation(path: path, reason: "must have at least \(m) items")
            }
            if let m = schema["maxItems"]?.intValue, a.count > m {
                return SchemaViolation(path: path, reason: "must have at most \(m) items")
            }
            if schema["uniqueItems"]?.boolValue == true {
                for i in a.indices {
                    for j in a.indices where j > i && equalJSON(a[i], a[j]) {
                        return SchemaViolation(path: path, reason: "items must be unique")
                    }
                }
            }
            if let items = schema["items"] {
                for (i, e) in a.enumerated() {
                    if let err = validateSub(e, items, "\(path)[\(i)]") { return err }
                }
            }
        case .object(let o):
            if let m = schema["minProperties"]?.intValue, o.count < m {
                return SchemaViolation(path: path, reason: "must have at least \(m) properties")
            }
            if let m = schema["maxProperties"]?.intValue, o.count > m {
                return SchemaViolation(path: path, reason: "must have at most \(m) properties")
            }
            for r in schema["required"]?.arrayValue ?? [] {
                if let k = r.stringValue, !o.contains(k) {
                    return SchemaViolation(path: "\(path).\(k)", reason: "required property is missing")
                }
            }
            let props = schema["properties"]?.objectValue ?? JSONObject()
            for (k, v) in o {
                if let ps = props[k] {
                    if let err = validateSub(v, ps, "\(path).\(k)") { return err }
                } else if let ap = schema["additionalProperties"] {
                    if ap == .bool(false) { return SchemaViolation(path: "\(path).\(k)", reason: "unknown property") }
                    if let err = validateSub(v, ap, "\(path).\(k)") { return err }
                }
            }
        default: break
        }

        if let all = schema["allOf"]?.arrayValue {
            for s in all { if let err = validateSub(value, s, path) { return err } }
        }
        if let any = schema["anyOf"]?.arrayValue, !any.contains(where: { validateSub(value, $0, path) == nil }) {
            return SchemaViolation(path: path, reason: "does not match any of the allowed forms")
        }
        if let one = schema["oneOf"]?.arrayValue, one.filter({ validateSub(value, $0, path) == nil }).count != 1 {
            return SchemaViolation(path: path, reason: "must match exactly one of the allowed forms")
        }
        if let not = schema["not"], validateSub(value, not, path) == nil {
            return SchemaViolation(path: path, reason: "matches a forbidden form")
        }
        return nil
    }

    private static func validateSub(
        _ v: JSONValue, _ schema: JSONValue, _ path: String, root: JSONObject, depth: Int
    ) -> SchemaViolation? {
        switch schema {
        case .bool(true): return nil
        case .bool(false): return SchemaViolation(path: path, reason: "no value is allowed here")
        case .object(let o): return validate(v, against: o, path: path, root: root, depth: depth)
        default: return nil
        }
    }

    private static func matches(_ v: JSONValue, type: String) -> Bool {
        switch (type, v) {
        case ("null", .null), ("boolean", .bool), ("string", .string), ("array", .array), ("object", .object):
            return true
        case ("number", .int), ("number", .double): return true
        case ("integer", .int): return true
        case ("integer", .double(let d)): return d.rounded() == d
        default: return false
        }
    }

    /// JSON equality: 1 and 1.0 are the same number.
    static func equalJSON(_ a: JSONValue, _ b: JSONValue) -> Bool {
        if let x = a.doubleValue, let y = b.doubleValue { return x == y }
        return a == b
    }

    private static func fmt(_ d: Double) -> String {
        d.rounded() == d && abs(d) < 1e15 ? String(Int64(d)) : String(d)
    }
}
