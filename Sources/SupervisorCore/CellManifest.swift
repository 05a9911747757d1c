import Foundation
import StrictJSON
import SupervisorPlatform

/// A cell's manifest: what it is, which tools it serves, and everything it may
/// do. Every field, its unit and its default is documented in docs/manifest.md.
public struct CellManifest: Sendable {
    public struct Executable: Sendable, Equatable {
        /// Absolute path (a relative one in the file is resolved against the
        /// manifest's directory).
        public var path: String
        /// Lower-case hex SHA-256 of the file's bytes.
        public var sha256: String
    }

    public struct Tool: Sendable, Equatable {
        public var name: String
        public var title: String?
        public var description: String
        public var inputSchema: JSONObject
        public var outputSchema: JSONObject?
        public var annotations: JSONObject?
        /// Set for a tool served by an existing program (no frame protocol).
        public var command: CommandTemplate? = nil
        /// A server cell's tool: its name as the server knows it (`name` is
        /// the name clients see, under the cell's prefix) and its pinned
        /// definition exactly as the server listed it at registration.
        public var serverName: String? = nil
        public var pinned: JSONObject? = nil
    }

    public enum ProcessMode: String, Sendable, CaseIterable {
        /// One thread, no children: clone/fork/vfork are not allowed at all.
        case none
        /// Threads only: clone with CLONE_THREAD and without namespace flags.
        case threads
        /// Child processes: the worker gets its own PID namespace.
        case processes
    }

    public struct Limits: Sendable, Equatable {
        public var timeoutMilliseconds = 10_000
        public var cpuSeconds = 10
        public var memoryMiB = 512
        public var openFiles = 64
        public var fileSizeMiB = 16
        public var outputKiB = 1024
        public var frameKiB = 1024
        public var processes = ProcessMode.none
        public var maxProcesses = 32
        /// The scratch directory's size and entry count (a per-worker tmpfs:
        /// the kernel answers ENOSPC beyond them).
        public var scratchMiB = 64
        public var scratchFiles = 4096
        public init() {}
    }

    public struct Filesystem: Sendable, Equatable {
        public var read: [String] = []
        public var write: [String] = []
        public var execute: [String] = []
    }

    public enum SideEffects: String, Sendable, CaseIterable {
        case none, reads, writes, external

        /// Cells that change the world ("actuators").
        public var isActuator: Bool { self == .writes || self == .external }
    }

    public var name: String
    public var version: String
    public var description: String
    public var executable: Executable
    /// An interpreted cell's program, verified like the executable and given
    /// to the worker on stdin (e.g. `python3 -I -`).
    public var script: Executable?
    /// Files given to the interpreter on stdin before the script (a cell
    /// library such as cells/python/mcpcell.py), each verified like it.
    public var libraries: [Executable]
    public var argv: [String]
    /// Environment variables copied from the supervisor's environment if set.
    public var environmentPass: [String]
    /// Environment variables with fixed values.
    public var environmentSet: [(String, String)]
    public var tools: [Tool]
    public var limits: Limits
    public var filesystem: Filesystem
    public var network: NetworkAccess
    /// The worker's working directory for command tools (default: its
    /// scratch directory, which stays HOME and TMPDIR).
    public var workingDirectory: String?
    public var syscallGroups: [String]
    public var syscallAllow: [String]
    public var sideEffects: SideEffects
    /// Workflow phases the cell may run in; empty means every phase.
    public var phases: [String]
    /// Resources the cell changes, as templates over its arguments
    /// (`"file:{path}"`): two calls naming the same resource never overlap.
    public var resources: [String]
    /// Set for an existing MCP server run as a cell (docs/gateway.md).
    public var server: ServerSpec? = nil

    /// Where the manifest was read from.
    public var sourcePath: String
    /// SHA-256 of the manifest file's exact bytes.
    public var manifestSHA256: String

    public static let namePattern = "[A-Za-z0-9_.-]{1,128}"

    static func isValidName(_ s: String) -> Bool {
        let u = Array(s.utf8)
        guard !u.isEmpty && u.count <= 128 else { return false }
        return u.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x5F || c == 0x2E
                || c == 0x2D
        }
    }

    /// Text a model reads must not hide instructions: no control characters
    /// (ANSI escapes), bidirectional overrides, zero-width or tag characters
    /// (threat T4).
    static func hiddenCharacter(in s: String) -> Unicode.Scalar? {
        for u in s.unicodeScalars {
            let v = u.value
            if v == 0x0A || v == 0x09 { continue }
            if v < 0x20 || (v >= 0x7F && v < 0xA0) { return u }
            if (0x200B...0x200F).contains(v) || (0x202A...0x202E).contains(v) || (0x2060...0x2069).contains(v)
                || v == 0xFEFF || (0xE0000...0xE007F).contains(v)
            {
                return u
            }
        }
        return nil
    }
}

extension CellManifest {
    /// Parses a manifest strictly. `bytes` are the file's exact contents.
    public static func parse(bytes: [UInt8], path: String, manifestSHA256: String) throws(ConfigError) -> CellManifest {
        let doc: JSONValue
        do {
            doc = try JSONParser.parse(bytes)
        } catch {
            throw ConfigError(file: path, field: "", message: "not valid JSON: \(error)")
        }
        let r = try FieldReader(file: path, path: "", value: doc)
        let dir = directoryName(of: path)

        let name = try r.string("name")
        guard isValidName(name) else { throw r.error("name", "must match \(namePattern), found \"\(name)\"") }
        let version = try r.string("version")
        guard !version.isEmpty, version.utf8.count <= 64, hiddenCharacter(in: version) == nil else {
            throw r.error("version", "must be 1-64 printable characters")
        }
        let description = try r.string("description")
        try checkText(description, r, "description", max: 4096)

        guard let ex = try r.object("executable") else { throw r.missing("executable") }
        let executable = try parseExecutable(ex, dir: dir)
        let script = try r.object("script").map { (s) throws(ConfigError) in try parseExecutable(s, dir: dir) }
        var libraries: [Executable] = []
        if let libs = try r.array("libraries") {
            guard script != nil else {
                throw r.error(
                    "libraries", "libraries are given to an interpreter before the script: declare \"script\" too")
            }
            for (i, l) in libs.enumerated() {
                libraries.append(
                    try parseExecutable(try FieldReader(file: path, path: "libraries[\(i)]", value: l), dir: dir))
            }
        }

        let argv = try r.stringArray("argv", default: [baseName(of: executable.path)])
        guard !argv.isEmpty else { throw r.error("argv", "must contain at least argv[0]") }

        var pass: [String] = []
        var set: [(String, String)] = []
        if let env = try r.object("environment") {
            pass = try env.stringArray("pass", default: [])
            for (i, n) in pass.enumerated() where !isEnvName(n) {
                throw ConfigError(
                    file: path, field: "environment.pass[\(i)]", message: "not a valid variable name: \"\(n)\"")
            }
            if let s = try env.object("set") {
                for (k, v) in s.object {
                    _ = s.raw(k)
                    guard isEnvName(k) else { throw s.error(k, "not a valid variable name") }
                    guard case .string(let str) = v else { throw s.error(k, "expected a string, found \(v.typeName)") }
                    set.append((k, str))
                }
            }
            try env.finish()
        }

        // A server cell (an existing MCP server): its tools are the server's
        // own definitions, pinned verbatim by registration (none yet before).
        let server = try r.object("server").map { (o) throws(ConfigError) in
            try ServerSpec.parse(o, cellName: name, dir: dir)
        }
        guard let toolValues = try r.array("tools") else { throw r.missing("tools") }
        guard !toolValues.isEmpty || server != nil else {
            throw r.error("tools", "a cell must declare at least one tool")
        }
        var tools: [Tool] = []
        for (i, tv) in toolValues.enumerated() {
            let t = try FieldReader(file: path, path: "tools[\(i)]", value: tv)
            let tool = try parseTool(t, server: server)
            if tools.contains(where: { $0.name == tool.name }) {
                throw t.error("name", "duplicate tool name \"\(tool.serverName ?? tool.name)\"")
            }
            tools.append(tool)
        }

        var limits = Limits()
        if let l = try r.object("limits") {
            limits.timeoutMilliseconds = try l.int(
                "timeoutMilliseconds", default: limits.timeoutMilliseconds, range: 10...3_600_000, unit: "ms")
            limits.cpuSeconds = try l.int("cpuSeconds", default: limits.cpuSeconds, range: 1...3600, unit: "s")
            limits.memoryMiB = try l.int("memoryMiB", default: limits.memoryMiB, range: 16...65536, unit: "MiB")
            limits.openFiles = try l.int("openFiles", default: limits.openFiles, range: 16...65536)
            limits.fileSizeMiB = try l.int("fileSizeMiB", default: limits.fileSizeMiB, range: 0...65536, unit: "MiB")
            limits.outputKiB = try l.int("outputKiB", default: limits.outputKiB, range: 1...1_048_576, unit: "KiB")
            limits.frameKiB = try l.int("frameKiB", default: limits.frameKiB, range: 1...65536, unit: "KiB")
            limits.processes = try l.choice("processes", default: limits.processes)
            limits.maxProcesses = try l.int("maxProcesses", default: limits.maxProcesses, range: 1...4096)
            limits.scratchMiB = try l.int("scratchMiB", default: limits.scratchMiB, range: 1...65536, unit: "MiB")
            limits.scratchFiles = try l.int("scratchFiles", default: limits.scratchFiles, range: 16...1_000_000)
            try l.finish()
            if limits.frameKiB > limits.outputKiB {
                throw ConfigError(
                    file: path, field: "limits.frameKiB",
                    message: "\(limits.frameKiB) KiB exceeds limits.outputKiB (\(limits.outputKiB) KiB)")
            }
        }

        var fs = Filesystem()
        if let f = try r.object("filesystem") {
            fs.read = try f.stringArray("read", default: [])
            fs.write = try f.stringArray("write", default: [])
            fs.execute = try f.stringArray("execute", default: [])
            // A relative path is resolved against the manifest's directory
            // (like executable.path).
            for (i, p) in fs.read.enumerated() where !p.hasPrefix("/") { fs.read[i] = normalize(dir + "/" + p) }
            for (i, p) in fs.write.enumerated() where !p.hasPrefix("/") { fs.write[i] = normalize(dir + "/" + p) }
            for (i, p) in fs.execute.enumerated() where !p.hasPrefix("/") { fs.execute[i] = normalize(dir + "/" + p) }
            for (key, list) in [("read", fs.read), ("write", fs.write), ("execute", fs.execute)] {
                for (i, p) in list.enumerated() where p.isEmpty || p == "/" && key == "write" {
                    throw ConfigError(
                        file: path, field: "filesystem.\(key)[\(i)]",
                        message: "must name a directory or file below /, found \"\(p)\"")
                }
            }
            try f.finish()
        }

        let network = try NetworkAccess.parse(r.raw("network"), file: path, serverCell: server != nil)
        var workingDirectory = try r.optionalString("workingDirectory")
        if let w = workingDirectory {
            let abs = w.hasPrefix("/") ? normalize(w) : normalize(dir + "/" + w)
            guard (fs.read + fs.write).contains(where: { abs == $0 || abs.hasPrefix($0 == "/" ? "/" : $0 + "/") })
            else {
                throw r.error("workingDirectory", "\(abs) is not under a filesystem.read or filesystem.write path")
            }
            workingDirectory = abs
        }
        let commandTools = tools.filter { $0.command != nil }.count
        if commandTools != 0 && commandTools != tools.count {
            throw r.error(
                "tools", "either every tool of a cell has a \"command\" or none has: one worker speaks one protocol")
        }
        if commandTools > 0 && script != nil {
            throw r.error("script", "a command cell runs its program directly; it has no script")
        }
        if let server {
            if script != nil {
                throw r.error("script", "a server cell runs the server's own program; it has no script")
            }
            for (i, p) in server.packages.enumerated()
            where !fs.read.contains(where: { p.path == $0 || p.path.hasPrefix($0 == "/" ? "/" : $0 + "/") }) {
                throw ConfigError(
                    file: path, field: "server.packages[\(i)].path",
                    message:
                        "\(p.path) is not under a filesystem.read path: the server must be able to read what it imports"
                )
            }
        }

        var groups: [String] = []
        var allow: [String] = []
        if let s = try r.object("syscalls") {
            groups = try s.stringArray("groups", default: [])
            allow = try s.stringArray("allow", default: [])
            for (i, n) in allow.enumerated() {
                if let why = SyscallGroups.refusal(n) {
                    throw ConfigError(file: path, field: "syscalls.allow[\(i)]", message: why)
                }
            }
            try s.finish()
        }

        let sideEffects: SideEffects = try r.choice("sideEffects", default: nil)
        let phases = try r.stringArray("phases", default: [])
        for (i, p) in phases.enumerated() where !isValidName(p) {
            throw ConfigError(file: path, field: "phases[\(i)]", message: "must match \(namePattern)")
        }
        let resources = try r.stringArray("resources", default: [])
        for (i, t) in resources.enumerated() where t.isEmpty || t.count > 256 {
            throw ConfigError(file: path, field: "resources[\(i)]", message: "must be 1-256 characters")
        }
        if sideEffects.isActuator && phases.isEmpty {
            throw r.error(
                "phases", "a cell with side effects \"\(sideEffects.rawValue)\" must list the phases it may run in")
        }
        try r.finish()

        return CellManifest(
            name: name, version: version, description: description, executable: executable, script: script,
            libraries: libraries,
            argv: argv, environmentPass: pass, environmentSet: set, tools: tools, limits: limits, filesystem: fs,
            network: network, workingDirectory: workingDirectory, syscallGroups: groups, syscallAllow: allow,
            sideEffects: sideEffects, phases: phases,
            resources: resources, server: server,
            sourcePath: path, manifestSHA256: manifestSHA256)
    }

    /// One entry of `tools`; for a server cell, one of the server's own
    /// definitions, exposed under the cell's prefix.
    private static func parseTool(_ t: FieldReader, server: ServerSpec?) throws(ConfigError) -> Tool {
        let tname = try t.string("name")
        guard isValidName(tname) else { throw t.error("name", "must match \(namePattern), found \"\(tname)\"") }
        let title = try t.optionalString("title")
        if let title { try checkText(title, t, "title", max: 256) }
        // MCP makes a tool's description optional; a cell's tool needs one.
        let tdesc = server != nil && !t.has("description") ? "" : try t.string("description")
        if !(server != nil && tdesc.isEmpty) { try checkText(tdesc, t, "description", max: 4096) }
        guard let input = t.raw("inputSchema") else { throw t.missing("inputSchema") }
        guard case .object(let inputObj) = input, inputObj["type"] == "object" else {
            throw t.error("inputSchema", "must be a JSON Schema object with \"type\": \"object\"")
        }
        try SchemaValidator.checkSchema(inputObj, file: t.file, field: t.field("inputSchema"))
        var output: JSONObject? = nil
        if let o = t.raw("outputSchema") {
            guard case .object(let oo) = o, oo["type"] == "object" else {
                throw t.error("outputSchema", "must be a JSON Schema object with \"type\": \"object\"")
            }
            try SchemaValidator.checkSchema(oo, file: t.file, field: t.field("outputSchema"))
            output = oo
        }
        var annotations: JSONObject? = nil
        if let a = t.raw("annotations") {
            guard case .object(let ao) = a else { throw t.error("annotations", "expected an object") }
            let known: Set<String> = [
                "title", "readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint",
            ]
            for (k, v) in ao {
                guard known.contains(k) else {
                    throw ConfigError(file: t.file, field: t.field("annotations.\(k)"), message: "unknown annotation")
                }
                if k == "title" {
                    guard case .string = v else {
                        throw ConfigError(
                            file: t.file, field: t.field("annotations.title"), message: "expected a string")
                    }
                } else {
                    guard case .bool = v else {
                        throw ConfigError(
                            file: t.file, field: t.field("annotations.\(k)"), message: "expected true or false")
                    }
                }
            }
            annotations = ao
        }
        var command: CommandTemplate? = nil
        if let c = try t.object("command") {
            let props = Set(inputObj["properties"]?.objectValue?.keys ?? [])
            command = try CommandTemplate.parse(c, properties: props)
        }
        if let server {
            // The server's definition is pinned whole (fields the
            // supervisor does not serve, such as icons, included): it is
            // what every spawned server must list again.
            guard command == nil else {
                throw t.error("command", "a server cell's tools are served by the server, not by a command")
            }
            return Tool(
                name: server.exposedName(tname), title: title, description: tdesc, inputSchema: inputObj,
                outputSchema: output, annotations: annotations, serverName: tname, pinned: t.object)
        }
        try t.finish()
        return Tool(
            name: tname, title: title, description: tdesc, inputSchema: inputObj,
            outputSchema: output, annotations: annotations, command: command)
    }

    static func parseExecutable(_ r: FieldReader, dir: String) throws(ConfigError) -> Executable {
        var p = try r.string("path")
        guard !p.isEmpty else { throw r.error("path", "must not be empty") }
        if !p.hasPrefix("/") { p = normalize(dir + "/" + p) }
        let sha = try r.string("sha256")
        guard sha.utf8.count == 64, sha.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) })
        else {
            throw r.error(
                "sha256", "must be 64 lower-case hex digits (`mcp-supervisor manifest pin \(r.file)` writes it)")
        }
        try r.finish()
        return Executable(path: p, sha256: sha)
    }

    private static func checkText(_ s: String, _ r: FieldReader, _ key: String, max: Int) throws(ConfigError) {
        guard !s.isEmpty else { throw r.error(key, "must not be empty") }
        guard s.unicodeScalars.count <= max else { throw r.error(key, "longer than \(max) characters") }
        if let u = hiddenCharacter(in: s) {
            throw r.error(
                key, "contains the hidden or control character U+\(String(u.value, radix: 16, uppercase: true))")
        }
    }

    static func isEnvName(_ s: String) -> Bool {
        let u = Array(s.utf8)
        guard let f = u.first, !(f >= 0x30 && f <= 0x39) else { return false }
        return u.allSatisfy {
            ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x5F
        }
    }
}

extension CellManifest {
    /// The resources a call with `arguments` changes: each template with
    /// `{name}` replaced by that argument's value.
    public func resources(for arguments: JSONObject) -> [String] {
        resources.map { t in
            var out = t
            for (k, v) in arguments {
                let text: String
                if case .string(let s) = v { text = s } else { text = v.serialized() }
                out = out.replacingOccurrences(of: "{\(k)}", with: text)
            }
            return "\(name):\(out)"
        }
    }
}

func directoryName(of path: String) -> String {
    guard let i = path.lastIndex(of: "/") else { return "." }
    return i == path.startIndex ? "/" : String(path[..<i])
}

func baseName(of path: String) -> String {
    guard let i = path.lastIndex(of: "/") else { return path }
    return String(path[path.index(after: i)...])
}

/// Removes "." and ".." components lexically.
func normalize(_ path: String) -> String {
    var parts: [Substring] = []
    for c in path.split(separator: "/", omittingEmptySubsequences: true) {
        if c == "." { continue }
        if c == ".." {
            if !parts.isEmpty { parts.removeLast() }
            continue
        }
        parts.append(c)
    }
    return (path.hasPrefix("/") ? "/" : "") + parts.joined(separator: "/")
}
