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
    /// The directories the executable's own files are found in, by its own
    /// path and never by the working directory (a client may start the
    /// server anywhere, and a `policies/` that happened to lie in the working
    /// directory must not loosen the sandbox): `<prefix>/share/mcp-supervisor`
    /// for an installed `<prefix>/bin/mcp-supervisor` (`make install`), else
    /// the checkout it was built in (`<repo>/.build/<triple>/<config>/`).
    public static func shareDirectories() -> [String] {
        guard let exe = try? Sys.realpath("/proc/self/exe") else { return [] }
        let bin = directoryName(of: exe)
        var checkout = exe
        for _ in 0..<4 { checkout = directoryName(of: checkout) }
        let share =
            directoryName(of: bin) == "/" ? "/share/mcp-supervisor" : directoryName(of: bin) + "/share/mcp-supervisor"
        // A binary too near the root has no checkout around it.
        return checkout == "/" ? [share] : [share, checkout]
    }

    /// The directory holding `name` (`manifests`, `policies`, `cells`) for a
    /// default: the first of `shareDirectories()` that has it; else where an
    /// installed binary would look (so that an error names that path).
    public static func defaultDirectory(_ name: String) -> String {
        let candidates = shareDirectories().map { $0 + "/" + name }
        return candidates.first { (try? Sys.stat($0))?.isDirectory == true } ?? candidates.first ?? name
    }

    /// Where the defaults of `name` were looked for, for messages.
    public static func defaultSearchText(_ name: String) -> String {
        shareDirectories().map { $0 + "/" + name }.joined(separator: ", then ")
    }
}
