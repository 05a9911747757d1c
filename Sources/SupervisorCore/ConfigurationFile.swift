import StrictJSON
import SupervisorPlatform
#if canImport(Glibc)
import Glibc
#endif

/// The optional configuration file (docs/configuration.md). Every field is
/// optional; flags override it; relative paths are relative to the file.
public struct ConfigurationFile: Sendable {
    public var manifests: String?
    public var policies: String?
    public var stateDirectory: String?
    public var scratchDirectory: String?
    public var workerUID: UInt32?
    public var workerGID: UInt32?
    public var maxConcurrentCalls: Int?
    public var maxQueuedCalls: Int?
    public var toolsPageSize: Int?
    public var maxMessageBytes: Int?
    public var prespawn: Int?
    public var prespawnIdleSeconds: Int?
    public var logLevel: String?
    public var path: String?

    public init() {}

    public static let logLevels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]

    /// `$XDG_CONFIG_HOME/mcp-supervisor/config.json`, else
    /// `~/.config/mcp-supervisor/config.json`, if it exists.
    public static func defaultPath() -> String? {
        var candidates: [String] = []
        if let x = getenv("XDG_CONFIG_HOME"), x.pointee != 0 { candidates.append(String(cString: x) + "/mcp-supervisor/config.json") }
        if let h = getenv("HOME"), h.pointee != 0 { candidates.append(String(cString: h) + "/.config/mcp-supervisor/config.json") }
        return candidates.first { (try? Sys.stat($0)) != nil }
    }

    public static func load(path: String) throws(ConfigError) -> ConfigurationFile {
        let bytes: [UInt8]
        do { bytes = try readFile(path, limit: 1 << 20) } catch { throw ConfigError(file: path, field: "", message: "cannot read: \(error)") }
        let doc: JSONValue
        do { doc = try JSONParser.parse(bytes) } catch { throw ConfigError(file: path, field: "", message: "not valid JSON: \(error)") }
        let r = try FieldReader(file: path, path: "", value: doc)
        let dir = directoryName(of: path)
        func resolved(_ p: String?) -> String? { p.map { $0.hasPrefix("/") ? $0 : normalize(dir + "/" + $0) } }
        var c = ConfigurationFile()
        c.path = path
        c.manifests = resolved(try r.optionalString("manifests"))
        c.policies = resolved(try r.optionalString("policies"))
        c.stateDirectory = resolved(try r.optionalString("stateDirectory"))
        c.scratchDirectory = resolved(try r.optionalString("scratchDirectory"))
        if r.has("workerUid") { c.workerUID = UInt32(try r.int("workerUid", default: 0, range: 1...4_294_967_294)) }
        if r.has("workerGid") { c.workerGID = UInt32(try r.int("workerGid", default: 0, range: 1...4_294_967_294)) }
        if r.has("maxConcurrentCalls") { c.maxConcurrentCalls = try r.int("maxConcurrentCalls", default: 4, range: 1...256) }
        if r.has("maxQueuedCalls") { c.maxQueuedCalls = try r.int("maxQueuedCalls", default: 32, range: 0...65536) }
        if r.has("toolsPageSize") { c.toolsPageSize = try r.int("toolsPageSize", default: 50, range: 1...1000) }
        if r.has("maxMessageBytes") { c.maxMessageBytes = try r.int("maxMessageBytes", default: 4 << 20, range: 1024...(256 << 20), unit: "bytes") }
        if r.has("prespawn") { c.prespawn = try r.int("prespawn", default: 1, range: 0...16) }
        if r.has("prespawnIdleSeconds") { c.prespawnIdleSeconds = try r.int("prespawnIdleSeconds", default: 60, range: 1...86400, unit: "s") }
        if let l = try r.optionalString("logLevel") {
            guard logLevels.contains(l) else { throw r.error("logLevel", "expected one of \(logLevels.joined(separator: ", ")), found \"\(l)\"") }
            c.logLevel = l
        }
        try r.finish()
        return c
    }
}

extension SupervisorSettings {
    /// The directory holding `name` for a default: the working directory if it
    /// has one, else the checkout the executable was built in
    /// (`<repo>/.build/<triple>/<config>/mcp-supervisor`).
    public static func defaultDirectory(_ name: String) -> String {
        let here = absolute(name)
        if (try? Sys.stat(here))?.isDirectory == true { return here }
        if let exe = try? Sys.realpath("/proc/self/exe") {
            var p = exe
            for _ in 0..<4 { p = directoryName(of: p) }
            let candidate = p + "/" + name
            if (try? Sys.stat(candidate))?.isDirectory == true { return candidate }
        }
        return here
    }
}
