import StrictJSON

/// A tool served by an existing command-line program (docs/manifest.md,
/// "command"): the worker's argv is built from the validated arguments, with
/// no shell; its stdout is the result and its exit status decides success.
public struct CommandTemplate: Sendable, Equatable {
    /// One argv element of the template.
    public indirect enum Element: Sendable, Equatable {
        /// Text with `{name}` placeholders; an element whose placeholders
        /// name an absent argument is left out.
        case text([Piece])
        /// `{"if": "name", "then": [...]}`: the elements, when the argument
        /// is present and not false.
        case conditional(name: String, then: [Element])
    }

    public enum Piece: Sendable, Equatable {
        case literal(String)
        case argument(String)
    }

    public var argv: [Element]
    /// An argument whose value is the program's stdin (a string as is, any
    /// other JSON value serialized).
    public var stdin: String?
    /// Exit statuses that mean success.
    public var successExitCodes: [Int32]

    /// Why arguments cannot be turned into a command line.
    public struct Refusal: Error, Equatable, Sendable, CustomStringConvertible {
        public let message: String
        public var description: String { message }
    }

    /// The argv and stdin for one call.
    public func build(arguments: JSONObject) throws(Refusal) -> (argv: [String], stdin: [UInt8]) {
        var out: [String] = []
        var optionsEnded = false
        try Self.render(argv, arguments, into: &out, optionsEnded: &optionsEnded)
        var input: [UInt8] = []
        if let name = stdin, let v = arguments[name] {
            if case .string(let s) = v { input = Array(s.utf8) } else { input = v.serializedBytes() }
        }
        return (out, input)
    }

    private static func render(
        _ elements: [Element], _ args: JSONObject, into out: inout [String],
        optionsEnded: inout Bool
    ) throws(Refusal) {
        for e in elements {
            switch e {
            case .conditional(let name, let then):
                guard let v = args[name], v != .bool(false), v != .null else { continue }
                try render(then, args, into: &out, optionsEnded: &optionsEnded)
            case .text(let pieces):
                if pieces == [.literal("--")] {
                    optionsEnded = true
                    out.append("--")
                    continue
                }
                // A whole-element array argument expands to one element each.
                if pieces.count == 1, case .argument(let name) = pieces[0], case .array(let items)? = args[name] {
                    for (i, item) in items.enumerated() {
                        let s = try text(of: item, "\(name)[\(i)]")
                        try checkOption(s, name: "\(name)[\(i)]", optionsEnded: optionsEnded)
                        out.append(s)
                    }
                    continue
                }
                var s = ""
                var missing = false
                for p in pieces {
                    switch p {
                    case .literal(let l): s += l
                    case .argument(let name):
                        guard let v = args[name], v != .null else {
                            missing = true
                            break
                        }
                        s += try text(of: v, name)
                    }
                }
                if missing { continue }
                // Only text that starts with an argument can turn into an
                // option; a template's own prefix (--max-count=) cannot.
                if case .argument(let name)? = pieces.first {
                    try checkOption(s, name: name, optionsEnded: optionsEnded)
                }
                out.append(s)
            }
        }
    }

    private static func text(of v: JSONValue, _ name: String) throws(Refusal) -> String {
        let s: String
        switch v {
        case .string(let t): s = t
        case .int, .double: s = v.serialized()
        case .bool(let b): s = b ? "true" : "false"
        default:
            throw Refusal(
                message:
                    "argument \"\(name)\" is \(v.typeName); a command-line argument must be a string, number or boolean"
            )
        }
        if s.utf8.contains(0) { throw Refusal(message: "argument \"\(name)\" contains a NUL byte") }
        return s
    }

    private static func checkOption(_ s: String, name: String, optionsEnded: Bool) throws(Refusal) {
        if !optionsEnded && s.hasPrefix("-") {
            throw Refusal(
                message:
                    "argument \"\(name)\" starts with \"-\" and would be read as an option (\"\(CellProtocol.clip(s))\"); options are fixed by the cell's manifest"
            )
        }
    }

    /// Parses a tool's `command` object; every placeholder must name a
    /// property of the tool's input schema.
    static func parse(_ r: FieldReader, properties: Set<String>) throws(ConfigError) -> CommandTemplate {
        guard let items = try r.array("argv") else { throw r.error("argv", "required field is missing") }
        let argv = try parseElements(items, r, field: r.field("argv"), properties: properties)
        guard !argv.isEmpty else { throw r.error("argv", "must contain at least argv[0]") }
        guard case .text(let first) = argv[0],
            first.allSatisfy({ if case .literal = $0 { return true } else { return false } })
        else {
            throw ConfigError(file: r.file, field: r.field("argv[0]"), message: "argv[0] must be fixed text")
        }
        let stdin = try r.optionalString("stdin")
        if let stdin, !properties.contains(stdin) {
            throw r.error("stdin", "names \"\(stdin)\", which is not a property of the tool's inputSchema")
        }
        var codes: [Int32] = [0]
        if let c = try r.array("successExitCodes") {
            codes = []
            for (i, v) in c.enumerated() {
                guard case .int(let n) = v, (0...255).contains(n) else {
                    throw ConfigError(
                        file: r.file, field: r.field("successExitCodes[\(i)]"), message: "expected an exit status 0-255"
                    )
                }
                codes.append(Int32(n))
            }
            guard !codes.isEmpty else { throw r.error("successExitCodes", "must list at least one status") }
        }
        try r.finish()
        return CommandTemplate(argv: argv, stdin: stdin, successExitCodes: codes)
    }

    private static func parseElements(
        _ items: [JSONValue], _ r: FieldReader, field: String,
        properties: Set<String>
    ) throws(ConfigError) -> [Element] {
        var out: [Element] = []
        for (i, item) in items.enumerated() {
            let f = "\(field)[\(i)]"
            switch item {
            case .string(let s):
                out.append(.text(try parsePieces(s, file: r.file, field: f, properties: properties)))
            case .object:
                let c = try FieldReader(file: r.file, path: f, value: item)
                let name = try c.string("if")
                guard properties.contains(name) else {
                    throw c.error("if", "names \"\(name)\", which is not a property of the tool's inputSchema")
                }
                guard let then = try c.array("then") else { throw c.error("then", "required field is missing") }
                let inner = try parseElements(then, c, field: c.field("then"), properties: properties)
                try c.finish()
                out.append(.conditional(name: name, then: inner))
            default:
                throw ConfigError(
                    file: r.file, field: f, message: "expected a string or {\"if\", \"then\"}, found \(item.typeName)")
            }
        }
        return out
    }

    static func parsePieces(_ s: String, file: String, field: String, properties: Set<String>) throws(ConfigError)
        -> [Piece]
    {
        var pieces: [Piece] = []
        var literal = ""
        var it = s.makeIterator()
        while let c = it.next() {
            if c == "}" { throw ConfigError(file: file, field: field, message: "unmatched \"}\" in \"\(s)\"") }
            guard c == "{" else {
                literal.append(c)
                continue
            }
            var name = ""
            var closed = false
            while let d = it.next() {
                if d == "}" {
                    closed = true
                    break
                }
                name.append(d)
            }
            guard closed, !name.isEmpty else {
                throw ConfigError(file: file, field: field, message: "unterminated or empty placeholder in \"\(s)\"")
            }
            guard properties.contains(name) else {
                throw ConfigError(
                    file: file, field: field,
                    message: "placeholder {\(name)} is not a property of the tool's inputSchema")
            }
            if !literal.isEmpty { pieces.append(.literal(literal)) }
            literal = ""
            pieces.append(.argument(name))
        }
        if !literal.isEmpty || pieces.isEmpty { pieces.append(.literal(literal)) }
        if s.utf8.contains(0) { throw ConfigError(file: file, field: field, message: "contains a NUL byte") }
        return pieces
    }
}
