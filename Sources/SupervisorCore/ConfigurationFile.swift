import StrictJSON
import SupervisorPlatform

/// The optional configuration file (docs/configuration.md): a JSON object
/// whose fields are the keys of `Setting.all`, every one optional. Flags
/// override it; relative paths are relative to the file's directory;
/// unknown fields are errors, so a typo never falls back to a default.
public enum ConfigurationFile {
    /// `$XDG_CONFIG_HOME/mcp-supervisor/config.json`, else
    /// `~/.config/mcp-supervisor/config.json`, if it exists.
    public static func defaultPath() -> String? {
        var candidates: [String] = []
        if let x = Sys.getenv("XDG_CONFIG_HOME") { candidates.append(x + "/mcp-supervisor/config.json") }
        if let h = Sys.getenv("HOME") { candidates.append(h + "/.config/mcp-supervisor/config.json") }
        return candidates.first { (try? Sys.stat($0)) != nil }
    }

    /// Sets each field the file at `path` holds in `settings`.
    public static func load(path: String, into settings: inout SupervisorSettings) throws(ConfigError) {
        let bytes: [UInt8]
        do { bytes = try readFile(path, limit: 1 << 20) } catch {
            throw ConfigError(file: path, field: "", message: "cannot read: \(error)")
        }
        let doc: JSONValue
        do { doc = try JSONParser.parse(bytes) } catch {
            throw ConfigError(file: path, field: "", message: "not valid JSON: \(error)")
        }
        guard case .object(let fields) = doc else {
            throw ConfigError(file: path, field: "", message: "expected an object, found \(doc.typeName)")
        }
        let directory = directoryName(of: path)
        for (key, value) in fields {
            guard let setting = Setting.named(key: key) else {
                throw ConfigError(file: path, field: key, message: "unknown field")
            }
            try setting.apply(value, file: path, directory: directory, to: &settings)
        }
        settings.configurationFile = path
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
