import StrictJSON

/// One entry of a manifest's `secrets` (docs/secrets.md): which secret,
/// where its value comes from, and the one use the cell gets of it.
public struct SecretBinding: Sendable, Equatable, CustomStringConvertible {
    public enum Source: Sendable, Equatable, CustomStringConvertible {
        /// `<state>/secrets/NAME`, read at every call.
        case store
        /// A variable of the supervisor's environment, as it was at start.
        case environment(String)

        public var description: String {
            switch self {
            case .store: return "store"
            case .environment(let v): return "supervisor environment $\(v)"
            }
        }
    }

    public enum Use: Sendable, Equatable, CustomStringConvertible {
        /// Preferred: the egress proxy sets `header` to `format` (with
        /// `{secret}` replaced by the value) on each request to host:port;
        /// the worker never holds the value.
        case inject(
            host: String, port: Int, header: String, format: String, scheme: CredentialInjection.Scheme = .https)
        /// Fallback: the worker's environment variable `variable` holds the
        /// value.
        case environment(variable: String)

        public var description: String {
            switch self {
            case .inject(let h, let p, let header, let format, let scheme):
                let host = h.contains(":") ? "[\(h)]" : h
                return "inject header \(header): \(format) on \(scheme.rawValue) requests to \(host):\(p)"
            case .environment(let v): return "environment variable \(v) of the worker"
            }
        }
    }

    public var name: String
    public var source: Source
    public var use: Use

    /// One line for `cell show`, the permission diff and `secret list`
    /// (never a value).
    public var description: String { "\(name) (\(source)): \(use)" }

    /// The placeholder a format replaces with the secret's value.
    public static let placeholder = "{secret}"

    /// Headers the proxy must never set for a cell: they frame the request
    /// or the connection, or address the proxy itself.
    static let forbiddenHeaders: Set<String> = [
        "host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer",
        "proxy-authorization", "proxy-authenticate", "proxy-connection", "expect",
    ]

    /// An HTTP field name (RFC 9110 token).
    static func isHeaderName(_ s: String) -> Bool {
        let u = Array(s.utf8)
        guard !u.isEmpty, u.count <= 64 else { return false }
        let extra = Array("!#$%&'*+-.^_`|~".utf8)
        return u.allSatisfy {
            ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || extra.contains($0)
        }
    }

    /// Parses the manifest's `secrets` array. `network` is the cell's
    /// allowlist (an injection's host must be on it); `environment` the
    /// variables the manifest already passes or sets (a secret's variable
    /// may not shadow one); `viaProxy` whether the cell's connections pass
    /// through the egress proxy (only then can a header be injected).
    static func parseAll(
        _ value: JSONValue?, file: String, network: NetworkAccess, environment: Set<String>, viaProxy: Bool
    ) throws(ConfigError) -> [SecretBinding] {
        guard let value else { return [] }
        guard case .array(let entries) = value else {
            throw ConfigError(file: file, field: "secrets", message: "expected an array, found \(value.typeName)")
        }
        var out: [SecretBinding] = []
        for (i, e) in entries.enumerated() {
            let r = try FieldReader(file: file, path: "secrets[\(i)]", value: e)
            let b = try parse(r, network: network, environment: environment, viaProxy: viaProxy)
            for other in out {
                if other == b { throw r.error("name", "the same secret and use are declared twice") }
                if other.name == b.name && other.source != b.source {
                    throw r.error(
                        "source",
                        "secret \(b.name) is declared with another source in an earlier entry (\(other.source))")
                }
                if case .environment(let v) = b.use, case .environment(let w) = other.use, v == w {
                    throw r.error("env", "variable \(v) already receives secret \(other.name)")
                }
                if case .inject(let h, let p, let hd, _, _) = b.use,
                    case .inject(let h2, let p2, let hd2, _, _) = other.use,
                    h == h2, p == p2, hd.lowercased() == hd2.lowercased()
                {
                    throw r.error("inject.header", "header \(hd) for \(h):\(p) is already set by secret \(other.name)")
                }
            }
            out.append(b)
        }
        return out
    }

    static func parse(_ r: FieldReader, network: NetworkAccess, environment: Set<String>, viaProxy: Bool)
        throws(ConfigError) -> SecretBinding
    {
        let name = try r.string("name")
        guard SecretName.isValid(name) else { throw r.error("name", "must be \(SecretName.rule), found \"\(name)\"") }
        var source = Source.store
        switch r.raw("source") {
        case nil, .string("store")?: source = .store
        case .object?:
            let s = try r.object("source")!
            let variable = try s.string("environment")
            guard CellManifest.isEnvName(variable) else {
                throw s.error("environment", "not a valid variable name: \"\(variable)\"")
            }
            try s.finish()
            source = .environment(variable)
        case let v?:
            throw r.error("source", "expected \"store\" or {\"environment\": \"VARIABLE\"}, found \(v.serialized())")
        }
        let inject = try r.object("inject")
        let env = try r.optionalString("env")
        let use: Use
        switch (inject, env) {
        case (nil, nil), (.some, .some):
            throw r.error("inject", "give exactly one use: \"inject\" (preferred) or \"env\"")
        case (let i?, nil):
            guard viaProxy else {
                throw r.error(
                    "inject",
                    "a header can only be injected into requests that pass through the egress proxy "
                        + "(network.egress \"proxy\", a server cell's default); this cell's connections come from "
                        + "the connection broker and carry its own TLS: use \"env\" or network.egress \"proxy\"")
            }
            let hostText = try i.string("host")
            let host: NetworkAccess.Host
            switch NetworkAccess.Host.parse(hostText) {
            case .success(let h): host = h
            case .failure(let f): throw i.error("host", f.message)
            }
            guard !host.pattern.hasPrefix("*.") else {
                throw i.error("host", "name one host, not a wildcard: the credential goes to that host only")
            }
            guard
                network.hosts.contains(where: { $0.matches(host: host.pattern, literal: host.address, port: host.port) }
                )
            else {
                throw i.error(
                    "host", "\(hostText) is not on the cell's network.connect allowlist: list it there as well")
            }
            let header = try i.string("header")
            guard isHeaderName(header) else { throw i.error("header", "not an HTTP header name: \"\(header)\"") }
            guard !forbiddenHeaders.contains(header.lowercased()) else {
                throw i.error("header", "\(header) frames the request or addresses the proxy; it cannot carry a secret")
            }
            let format = try i.optionalString("format") ?? placeholder
            guard format.components(separatedBy: placeholder).count == 2 else {
                throw i.error("format", "must contain \(placeholder) exactly once, found \"\(format)\"")
            }
            guard format.utf8.count <= 256, format.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value < 0x7F })
            else {
                throw i.error("format", "must be at most 256 printable ASCII characters (no line breaks)")
            }
            let schemeText = try i.optionalString("scheme") ?? "https"
            guard let scheme = CredentialInjection.Scheme(rawValue: schemeText) else {
                throw i.error("scheme", "must be \"https\" (the default) or \"http\", found \"\(schemeText)\"")
            }
            try i.finish()
            use = .inject(host: host.pattern, port: host.port, header: header, format: format, scheme: scheme)
        case (nil, let v?):
            guard CellManifest.isEnvName(v) else { throw r.error("env", "not a valid variable name: \"\(v)\"") }
            guard !environment.contains(v) else {
                throw r.error("env", "\(v) is also in the manifest's environment; a variable has one source")
            }
            guard !["HOME", "TMPDIR"].contains(v), !v.hasPrefix("MCPS_") else {
                throw r.error("env", "\(v) is set by the supervisor")
            }
            use = .environment(variable: v)
        }
        try r.finish()
        return SecretBinding(name: name, source: source, use: use)
    }
}

extension SecretBinding {
    /// The binding as `cell show --json` and `secret list --json` give it.
    public var json: JSONValue {
        var o = JSONObject([("name", .string(name))])
        switch source {
        case .store: o["source"] = "store"
        case .environment(let v): o["source"] = .object(JSONObject([("environment", .string(v))]))
        }
        switch use {
        case .inject(let h, let p, let header, let format, let scheme):
            o["inject"] = .object(
                JSONObject([
                    ("host", .string(h.contains(":") ? "[\(h)]:\(p)" : "\(h):\(p)")), ("header", .string(header)),
                    ("format", .string(format)), ("scheme", .string(scheme.rawValue)),
                ]))
        case .environment(let v): o["env"] = .string(v)
        }
        return .object(o)
    }
}
