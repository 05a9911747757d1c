import StrictJSON

/// A bad input file (manifest, policy, syscall groups, configuration): which
/// file, which field (a dotted path such as `tools[0].inputSchema`), and what
/// is wrong with it.
public struct ConfigError: Error, Equatable, Sendable, CustomStringConvertible {
    public let file: String
    public let field: String
    public let message: String
    /// More problems of the same file found together with this one (every
    /// unknown field of an object), so one run shows them all.
    public var others: [ConfigError] = []

    public init(file: String, field: String, message: String) {
        self.file = file
        self.field = field
        self.message = message
    }

    /// This problem and the others found with it.
    public var all: [ConfigError] {
        var first = self
        first.others = []
        return [first] + others.flatMap(\.all)
    }

    public var description: String {
        let one = field.isEmpty ? "\(file): \(message)" : "\(file): \(field): \(message)"
        return ([one] + others.map(\.description)).joined(separator: "\n")
    }

    /// The name in `known` that `name` is most likely a misspelling of
    /// (edit distance at most 2, and less than half the name; case ignored).
    public static func closest(to name: String, in known: some Sequence<String>) -> String? {
        let a = Array(name.lowercased())
        guard !a.isEmpty else { return nil }
        var best: (String, Int)? = nil
        for k in known where k != name {
            let b = Array(k.lowercased())
            var row = Array(0...b.count)
            for i in 1...a.count {
                var prev = row[0]
                row[0] = i
                for j in stride(from: 1, through: b.count, by: 1) {
                    let cur = row[j]
                    row[j] = min(row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] == b[j - 1] ? 0 : 1))
                    prev = cur
                }
            }
            let d = row[b.count]
            if d <= 2, d * 2 < max(a.count, b.count), best == nil || d < best!.1 { best = (k, d) }
        }
        return best?.0
    }
}

/// Reads one JSON object strictly: every key must be consumed, types must
/// match, and errors carry the file and the dotted path of the field.
public final class FieldReader {
    public let file: String
    public let path: String
    public let object: JSONObject
    private var used: Set<String> = []

    public init(file: String, path: String, value: JSONValue) throws(ConfigError) {
        self.file = file
        self.path = path
        guard case .object(let o) = value else {
            throw ConfigError(file: file, field: path, message: "expected an object, found \(value.typeName)")
        }
        self.object = o
    }

    public func field(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    public func error(_ key: String, _ message: String) -> ConfigError {
        ConfigError(file: file, field: field(key), message: message)
    }

    public func has(_ key: String) -> Bool { object.contains(key) }

    public func raw(_ key: String) -> JSONValue? {
        used.insert(key)
        return object[key]
    }

    public func required(_ key: String) throws(ConfigError) -> JSONValue {
        guard let v = raw(key) else { throw missing(key) }
        return v
    }

    /// "required field is missing", naming a present field that looks like
    /// a misspelling of it.
    public func missing(_ key: String) -> ConfigError {
        let typo = ConfigError.closest(to: key, in: object.keys.filter { !used.contains($0) })
        return error(key, "required field is missing" + (typo.map { " (found \"\($0)\", misspelt?)" } ?? ""))
    }

    public func string(_ key: String) throws(ConfigError) -> String {
        let v = try required(key)
        guard case .string(let s) = v else { throw error(key, "expected a string, found \(v.typeName)") }
        return s
    }

    public func optionalString(_ key: String) throws(ConfigError) -> String? {
        guard let v = raw(key) else { return nil }
        guard case .string(let s) = v else { throw error(key, "expected a string, found \(v.typeName)") }
        return s
    }

    public func bool(_ key: String, default d: Bool) throws(ConfigError) -> Bool {
        guard let v = raw(key) else { return d }
        guard case .bool(let b) = v else { throw error(key, "expected true or false, found \(v.typeName)") }
        return b
    }

    /// An integer within `range`, or the default when absent.
    public func int(_ key: String, default d: Int, range: ClosedRange<Int>, unit: String = "") throws(ConfigError)
        -> Int
    {
        guard let v = raw(key) else { return d }
        guard case .int(let i) = v else {
            throw error(key, "expected an integer\(unit.isEmpty ? "" : " (\(unit))"), found \(v.typeName)")
        }
        guard i >= Int64(range.lowerBound) && i <= Int64(range.upperBound) else {
            throw error(
                key, "\(i) is out of range \(range.lowerBound)...\(range.upperBound)\(unit.isEmpty ? "" : " \(unit)")")
        }
        return Int(i)
    }

    public func stringArray(_ key: String, default d: [String]? = nil) throws(ConfigError) -> [String] {
        guard let v = raw(key) else {
            if let d { return d }
            throw missing(key)
        }
        guard case .array(let a) = v else { throw error(key, "expected an array of strings, found \(v.typeName)") }
        var out: [String] = []
        for (i, e) in a.enumerated() {
            guard case .string(let s) = e else {
                throw ConfigError(
                    file: file, field: "\(field(key))[\(i)]", message: "expected a string, found \(e.typeName)")
            }
            out.append(s)
        }
        return out
    }

    public func object(_ key: String) throws(ConfigError) -> FieldReader? {
        guard let v = raw(key) else { return nil }
        return try FieldReader(file: file, path: field(key), value: v)
    }

    public func array(_ key: String) throws(ConfigError) -> [JSONValue]? {
        guard let v = raw(key) else { return nil }
        guard case .array(let a) = v else { throw error(key, "expected an array, found \(v.typeName)") }
        return a
    }

    /// One of `choices`, or the default.
    public func choice<T: RawRepresentable & CaseIterable>(_ key: String, default d: T?) throws(ConfigError) -> T
    where T.RawValue == String {
        guard let v = raw(key) else {
            if let d { return d }
            throw missing(key)
        }
        let all = T.allCases.map(\.rawValue).joined(separator: ", ")
        guard case .string(let s) = v, let t = T(rawValue: s) else {
            throw error(key, "expected one of \(all), found \(v.serialized())")
        }
        return t
    }

    /// Throws if the object has keys nobody read (unknown fields are errors,
    /// so a typo never silently falls back to a default).
    /// Every unknown field of the object is reported at once, each with the
    /// known field it is likely a misspelling of.
    public func finish() throws(ConfigError) {
        let unknown = object.keys.filter { !used.contains($0) }
        guard !unknown.isEmpty else { return }
        let known = used.filter { !object.contains($0) }
        let errors = unknown.map { k in
            ConfigError(
                file: file, field: field(k),
                message: "unknown field"
                    + (ConfigError.closest(to: k, in: known).map { " (did you mean \"\($0)\"?)" } ?? ""))
        }
        var first = errors[0]
        first.others = Array(errors.dropFirst())
        throw first
    }
}
