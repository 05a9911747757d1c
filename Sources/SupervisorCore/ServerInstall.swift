import StrictJSON

/// What `server add` installs and runs (docs/gateway.md, "Adding a server
/// with one command"): the parts that need no process, file or network, so
/// that they are unit-tested on their own.
public enum ServerSource: Sendable, Equatable, CustomStringConvertible {
    /// `pypi:NAME[==VERSION]`: a distribution from a package index.
    case index(name: String, version: String?)
    /// A local project directory (with a pyproject.toml or setup.py) or a
    /// wheel/sdist file.
    case local(path: String)
    /// A command already on this machine (`server add --name N -- CMD ARGS`).
    case command(argv: [String])

    public var description: String {
        switch self {
        case .index(let n, let v): return "pypi:\(n)\(v.map { "==\($0)" } ?? "")"
        case .local(let p): return p
        case .command(let a): return a.joined(separator: " ")
        }
    }

    public struct Invalid: Error, Sendable, CustomStringConvertible {
        public let description: String
        init(_ d: String) { description = d }
    }

    /// The source named by SPEC (nil with a command) or by the command
    /// after `--`. A local path must be absolute (the caller makes it so).
    public static func parse(spec: String?, command: [String]) throws(Invalid) -> ServerSource {
        if !command.isEmpty {
            guard spec == nil else {
                throw Invalid("give either SPEC or a command after --, not both (found \"\(spec!)\" and a command)")
            }
            return .command(argv: command)
        }
        guard let spec, !spec.isEmpty else {
            throw Invalid("name what to add: pypi:NAME[==VERSION], a local path, or -- COMMAND ARGS")
        }
        if spec.hasPrefix("pypi:") {
            let rest = String(spec.dropFirst(5))
            let parts = rest.split(separator: "=", omittingEmptySubsequences: false).map(String.init)
            let name: String
            var version: String? = nil
            if parts.count == 1 {
                name = rest
            } else if parts.count == 3, parts[1].isEmpty {
                name = parts[0]
                version = parts[2]
            } else {
                throw Invalid("\"\(spec)\": expected pypi:NAME or pypi:NAME==VERSION")
            }
            guard isDistributionName(name) else {
                throw Invalid(
                    "\"\(name)\" is not a package name (letters, digits, and . _ - between them; PEP 508)")
            }
            if let v = version {
                guard isVersion(v) else {
                    throw Invalid("\"\(v)\" is not a version (digits, letters and . + ! -, as pip spells them)")
                }
            }
            return .index(name: name, version: version)
        }
        if spec.hasPrefix("/") { return .local(path: spec) }
        throw Invalid(
            "\"\(spec)\" is neither pypi:NAME[==VERSION] nor a path; a command goes after --: "
                + "server add --name NAME -- COMMAND ARGS")
    }

    /// PEP 508 names: ASCII letters and digits, with `.` `_` `-` inside.
    public static func isDistributionName(_ s: String) -> Bool {
        let u = Array(s.utf8)
        guard !u.isEmpty, u.count <= 128 else { return false }
        func alnum(_ c: UInt8) -> Bool {
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A)
        }
        guard alnum(u.first!), alnum(u.last!) else { return false }
        return u.allSatisfy { alnum($0) || $0 == 0x2E || $0 == 0x5F || $0 == 0x2D }
    }

    /// A version as pip accepts after `==`: no spaces, operators or commas.
    static func isVersion(_ s: String) -> Bool {
        let u = Array(s.utf8)
        guard !u.isEmpty, u.count <= 64 else { return false }
        return u.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2E
                || c == 0x2B || c == 0x21 || c == 0x2D || c == 0x2A
        }
    }

    /// PEP 503 normalization: lowercase, runs of `-_.` as one `-`.
    public static func normalized(_ name: String) -> String {
        var out = ""
        var pendingDash = false
        for ch in name.lowercased() {
            if ch == "-" || ch == "_" || ch == "." {
                pendingDash = true
            } else {
                if pendingDash && !out.isEmpty { out.append("-") }
                pendingDash = false
                out.append(ch)
            }
        }
        return out
    }

    /// The cell name `server add` gives a distribution when none is given:
    /// its normalized name without an `mcp-server-` prefix or `-mcp`
    /// suffix (`mcp-server-fetch` → `fetch`), so that tools read
    /// `fetch_fetch` rather than `mcp-server-fetch_fetch`.
    public static func defaultCellName(distribution: String) -> String {
        var n = normalized(distribution)
        for p in ["mcp-server-", "mcp-"] where n.hasPrefix(p) && n.count > p.count {
            n.removeFirst(p.count)
            break
        }
        for s in ["-mcp-server", "-mcp"] where n.hasSuffix(s) && n.count > s.count {
            n.removeLast(s.count)
            break
        }
        return n
    }
}

/// A package index URL and the one endpoint the install may reach.
public struct PackageIndexURL: Sendable, Equatable {
    public let url: String
    public let scheme: String
    public let host: String
    public let port: Int

    /// `host:port` as `network.connect` takes it.
    public var endpoint: String { (host.contains(":") ? "[\(host)]" : host) + ":\(port)" }

    /// Where a known index's pages link to for the files themselves:
    /// PyPI serves its simple pages from pypi.org and the archives from
    /// files.pythonhosted.org.
    public var fileHosts: [String] { host == "pypi.org" && scheme == "https" ? ["files.pythonhosted.org:443"] : [] }

    /// Parses an http(s) URL: scheme, host (name, IPv4 or [IPv6]), optional
    /// port and path. No user information: credentials do not go on a
    /// command line.
    public static func parse(_ url: String) throws(ServerSource.Invalid) -> PackageIndexURL {
        let scheme: String
        if url.hasPrefix("https://") {
            scheme = "https"
        } else if url.hasPrefix("http://") {
            scheme = "http"
        } else {
            throw ServerSource.Invalid("--index-url \(url): expected an http:// or https:// URL")
        }
        let rest = url.dropFirst(scheme.count + 3)
        let authority = String(rest.prefix { $0 != "/" && $0 != "?" && $0 != "#" })
        guard !authority.isEmpty, !authority.contains("@") else {
            throw ServerSource.Invalid(
                "--index-url \(url): expected http(s)://HOST[:PORT]/PATH with no user name or password")
        }
        var host = authority
        var port = scheme == "https" ? 443 : 80
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else {
                throw ServerSource.Invalid("--index-url \(url): an IPv6 address needs its closing ]")
            }
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            if after.hasPrefix(":") {
                guard let p = Int(after.dropFirst()), (1...65535).contains(p) else {
                    throw ServerSource.Invalid("--index-url \(url): the port must be 1-65535")
                }
                port = p
            } else if !after.isEmpty {
                throw ServerSource.Invalid("--index-url \(url): unexpected \"\(after)\" after the address")
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = String(authority[..<colon])
            guard let p = Int(authority[authority.index(after: colon)...]), (1...65535).contains(p) else {
                throw ServerSource.Invalid("--index-url \(url): the port must be 1-65535")
            }
            port = p
        }
        host = host.lowercased()
        guard !host.isEmpty,
            host.utf8.allSatisfy({ c in
                (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x7A) || c == 0x2E || c == 0x2D || c == 0x3A
            })
        else { throw ServerSource.Invalid("--index-url \(url): \"\(host)\" is not a host name or address") }
        guard url.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }), !url.contains("{"), !url.contains("}") else {
            throw ServerSource.Invalid("--index-url \(url): spaces, braces and non-ASCII characters are not accepted")
        }
        return PackageIndexURL(url: url, scheme: scheme, host: host, port: port)
    }
}

/// A distribution's console scripts (`entry_points.txt`, section
/// `[console_scripts]`): how its command starts.
public struct ConsoleScript: Sendable, Equatable {
    public let name: String
    public let module: String
    /// The callable inside the module (`main`, `cli.main`).
    public let attribute: String

    /// The entries of `[console_scripts]`; entries whose module or
    /// attribute are not dotted Python identifiers are skipped (they could
    /// not be imported, and they are spliced into a `-c` program).
    public static func parse(entryPoints text: String) -> [ConsoleScript] {
        var out: [ConsoleScript] = []
        var inSection = false
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            let line = raw.trimmingCharacters(in: " \t\r")
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("[") {
                inSection = line == "[console_scripts]"
                continue
            }
            guard inSection, let eq = line.firstIndex(of: "=") else { continue }
            let name = line[..<eq].trimmingCharacters(in: " \t")
            var value = line[line.index(after: eq)...].trimmingCharacters(in: " \t")
            // Extras (`module:func [extra]`) do not change what runs.
            if let b = value.firstIndex(of: "[") { value = value[..<b].trimmingCharacters(in: " \t") }
            let parts = value.split(separator: ":", omittingEmptySubsequences: false).map {
                $0.trimmingCharacters(in: " \t")
            }
            guard parts.count == 2, isDottedIdentifier(parts[0]), isDottedIdentifier(parts[1]), !name.isEmpty else {
                continue
            }
            out.append(ConsoleScript(name: name, module: parts[0], attribute: parts[1]))
        }
        return out
    }

    static func isDottedIdentifier(_ s: String) -> Bool {
        !s.isEmpty
            && s.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { part in
                guard let f = part.utf8.first, !(f >= 0x30 && f <= 0x39) else { return false }
                return part.utf8.allSatisfy { c in
                    (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x5F
                }
            }
    }

    /// The program `python -c` runs: what pip's generated script does.
    public var program: String {
        let top = attribute.split(separator: ".").first.map(String.init) ?? attribute
        return "import sys; from \(module) import \(top); sys.exit(\(attribute)())"
    }

    /// Which console script starts the server: the one named `preferred`
    /// if given, else the only one, else the one named like the
    /// distribution.
    public static func choose(
        _ scripts: [ConsoleScript], distribution: String, preferred: String?
    ) throws(ServerSource.Invalid) -> ConsoleScript {
        if let preferred {
            guard let s = scripts.first(where: { $0.name == preferred }) else {
                throw ServerSource.Invalid(
                    "\(distribution) has no console script \"\(preferred)\" (it has: "
                        + "\(scripts.map(\.name).joined(separator: ", ")))")
            }
            return s
        }
        if scripts.count == 1 { return scripts[0] }
        let n = ServerSource.normalized(distribution)
        if let s = scripts.first(where: { ServerSource.normalized($0.name) == n }) { return s }
        if scripts.isEmpty {
            throw ServerSource.Invalid(
                "\(distribution) declares no console script ([console_scripts] in its entry_points.txt), so "
                    + "there is no command that starts it as a server; add it as a command instead: "
                    + "server add --name NAME -- COMMAND ARGS")
        }
        throw ServerSource.Invalid(
            "\(distribution) has several console scripts (\(scripts.map(\.name).joined(separator: ", "))): "
                + "name the one that starts the server with --entry-point")
    }
}

extension String {
    fileprivate func trimmingCharacters(in set: String) -> String { Substring(self).trimmingCharacters(in: set) }
}

extension Substring {
    fileprivate func trimmingCharacters(in set: String) -> String {
        var s = self
        while let f = s.first, set.contains(f) { s.removeFirst() }
        while let l = s.last, set.contains(l) { s.removeLast() }
        return String(s)
    }
}

/// One distribution pip installed, from its `--report` (pip 22.2+,
/// https://pip.pypa.io/en/stable/reference/installation-report/).
public struct InstalledDistribution: Sendable, Equatable {
    public let name: String
    public let version: String
    /// Named on the command line (not pulled in as a dependency).
    public let requested: Bool
    public let url: String
    /// SHA-256 of the archive pip installed, when the report gives it.
    public let sha256: String?

    /// `name==version --hash=sha256:…`: a line of a hash-pinned
    /// requirements file (`pip install --require-hashes -r`).
    public var requirementLine: String {
        "\(name)==\(version)" + (sha256.map { " --hash=sha256:\($0)" } ?? "")
    }

    /// The distributions of a pip installation report.
    public static func parse(report bytes: [UInt8]) throws(ServerSource.Invalid) -> [InstalledDistribution] {
        guard let doc = try? JSONParser.parse(bytes), let install = doc["install"]?.arrayValue else {
            throw ServerSource.Invalid("pip's installation report is not a JSON object with an \"install\" list")
        }
        var out: [InstalledDistribution] = []
        for item in install {
            guard let name = item["metadata"]?["name"]?.stringValue,
                let version = item["metadata"]?["version"]?.stringValue,
                ServerSource.isDistributionName(name), ServerSource.isVersion(version)
            else { throw ServerSource.Invalid("pip's installation report lists an item without a valid name/version") }
            var sha: String? = nil
            if let h = item["download_info"]?["archive_info"]?["hashes"]?["sha256"]?.stringValue {
                sha = h
            } else if let h = item["download_info"]?["archive_info"]?["hash"]?.stringValue, h.hasPrefix("sha256=") {
                sha = String(h.dropFirst(7))
            }
            if let s = sha,
                s.count != 64 || !s.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) })
            {
                sha = nil
            }
            out.append(
                InstalledDistribution(
                    name: name, version: version, requested: item["requested"]?.boolValue ?? false,
                    url: item["download_info"]?["url"]?.stringValue ?? "", sha256: sha))
        }
        return out.sorted { ServerSource.normalized($0.name) < ServerSource.normalized($1.name) }
    }
}

extension CellManifest {
    /// Whether `s` may name a cell (`[A-Za-z0-9_.-]{1,128}`).
    public static func isValidCellName(_ s: String) -> Bool { isValidName(s) }
}

/// The ELF program interpreter (PT_INTERP) an executable names: the
/// dynamic loader a sandboxed worker must be allowed to execute, and whose
/// directory holds the libraries it loads.
public enum ELFInterpreter {
    /// nil for a static executable or anything that is not ELF64
    /// little-endian.
    public static func of(_ bytes: [UInt8]) -> String? {
        guard bytes.count >= 64, bytes[0..<4] == [0x7F, 0x45, 0x4C, 0x46], bytes[4] == 2, bytes[5] == 1 else {
            return nil
        }
        func u(_ at: Int, _ n: Int) -> Int? {
            guard at >= 0, at + n <= bytes.count else { return nil }
            var v = 0
            for i in (0..<n).reversed() { v = v << 8 | Int(bytes[at + i]) }
            return v
        }
        guard let phoff = u(0x20, 8), let phentsize = u(0x36, 2), let phnum = u(0x38, 2), phentsize >= 56 else {
            return nil
        }
        for i in 0..<min(phnum, 256) {
            let ph = phoff + i * phentsize
            guard let type = u(ph, 4), type == 3 else { continue }
            guard let off = u(ph + 8, 8), let size = u(ph + 0x20, 8), size > 1, size < 4096, off + size <= bytes.count
            else { return nil }
            let s = bytes[off..<(off + size)].prefix { $0 != 0 }
            return String(decoding: s, as: UTF8.self)
        }
        return nil
    }
}
