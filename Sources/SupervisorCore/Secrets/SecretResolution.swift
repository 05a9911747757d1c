import Crypto
import Foundation
import StrictJSON
import Synchronization

/// Why a call cannot have one of its cell's secrets: its name and the
/// reason, never its value. The call ends as `cell.cannot_run`
/// (kind `secret_unavailable`, docs/secrets.md).
public struct SecretUnavailable: Error, Sendable, Equatable, CustomStringConvertible {
    public let name: String
    public let reason: String
    public var description: String { "secret \(name) is not available: \(reason)" }
}

/// Where the values of secrets come from when a call needs them: the
/// secret store (read at every call, so `secret set` and `secret remove`
/// take effect at the next call) and the supervisor's environment as it
/// was when the supervisor started.
public final class SecretSources: Sendable {
    public let store: SecretStore?
    let environment: [String: String]
    private let authority = Mutex<PerInstallCA?>(nil)

    public init(store: SecretStore?, environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.store = store
        self.environment = environment
    }

    /// No store, no environment: every secret is unavailable.
    public static let none = SecretSources(store: nil, environment: [:])

    /// The per-install CA of the store's state directory, created on first
    /// need (the first cell whose HTTPS requests get a header) and kept for
    /// the life of the process; its certificate published in `publishIn`
    /// (see `PerInstallCA.init`) by the call that creates it.
    public func interceptionAuthority(publishIn: String? = nil) throws(InterceptionCAError) -> PerInstallCA {
        guard let store else { throw InterceptionCAError("this command has no state directory") }
        if let ca = authority.withLock({ $0 }) { return ca }
        let ca = try PerInstallCA(stateDirectory: store.stateDirectory, publishIn: publishIn)
        return authority.withLock { held in
            if held == nil { held = ca }
            return held!
        }
    }

    /// The value of one secret.
    func value(of b: SecretBinding) -> Result<[UInt8], SecretUnavailable> {
        switch b.source {
        case .store:
            guard let store else {
                return .failure(SecretUnavailable(name: b.name, reason: "this command has no secret store"))
            }
            do {
                guard let v = try store.value(b.name) else {
                    return .failure(
                        SecretUnavailable(
                            name: b.name,
                            reason: "it is not in the secret store \(store.directory); set it with "
                                + "`mcp-supervisor secret set \(b.name)`"))
                }
                return .success(v)
            } catch {
                return .failure(SecretUnavailable(name: b.name, reason: error.description))
            }
        case .environment(let variable):
            guard let v = environment[variable], !v.isEmpty else {
                return .failure(
                    SecretUnavailable(
                        name: b.name, reason: "the supervisor's environment had no $\(variable) when it started"))
            }
            return .success(Array(v.utf8))
        }
    }

    /// Every secret `manifest` binds, resolved for one call (or one worker
    /// started ahead of its call): the headers for the egress proxy, the
    /// worker's variables, and the redactor that keeps the values out of
    /// everything the call returns or records. The first secret missing
    /// fails the whole call: a cell never runs with part of its secrets.
    public func resolve(_ manifest: CellManifest) -> Result<ResolvedSecrets, SecretUnavailable> {
        guard !manifest.secrets.isEmpty else { return .success(.none) }
        var values: [String: [UInt8]] = [:]
        var injections: [CredentialInjection] = []
        var environment: [(String, String)] = []
        for b in manifest.secrets {
            let value: [UInt8]
            if let v = values[b.name] {
                value = v
            } else {
                switch self.value(of: b) {
                case .failure(let e): return .failure(e)
                case .success(let v): value = v
                }
                values[b.name] = value
            }
            let text = String(decoding: value, as: UTF8.self)
            switch b.use {
            case .inject(let host, let port, let header, let format, let scheme):
                // A line break in a header would let the value add headers
                // (or a request) of its own.
                guard text.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value != 0x7F }) else {
                    return .failure(
                        SecretUnavailable(
                            name: b.name,
                            reason: "its value contains a control character (a line break?), which an HTTP header "
                                + "cannot carry"))
                }
                injections.append(
                    CredentialInjection(
                        host: host, port: port, headerName: header,
                        headerValue: format.replacingOccurrences(of: SecretBinding.placeholder, with: text),
                        secretName: b.name, scheme: scheme))
            case .environment(let variable):
                guard !value.contains(0) else {
                    return .failure(SecretUnavailable(name: b.name, reason: "its value contains a NUL byte"))
                }
                environment.append((variable, text))
            }
        }
        return .success(
            ResolvedSecrets(
                injections: injections, environment: environment,
                redactor: SecretRedactor(values.sorted { $0.key < $1.key }.map { ($0.key, $0.value) })))
    }
}

/// A cell's secrets resolved for one call. Held in memory only; never
/// logged.
public struct ResolvedSecrets: Sendable {
    /// For the egress proxy: the headers it adds per host.
    public let injections: [CredentialInjection]
    /// For the worker's environment (the `env` fallback).
    public let environment: [(String, String)]
    public let redactor: SecretRedactor

    public static let none = ResolvedSecrets(injections: [], environment: [], redactor: SecretRedactor([]))

    /// Identifies the values in the worker's environment, so that a worker
    /// started ahead of its call with other values (a secret set or removed
    /// since) is not used.
    /// The proxy's injections count too: a prespawned worker's listener was
    /// attached with the values of its start.
    var environmentDigest: String {
        guard !environment.isEmpty || !injections.isEmpty else { return "" }
        var h = SHA256()
        for (k, v) in environment { h.update(data: Array("\(k)=\(v)\u{0}".utf8)) }
        for i in injections { h.update(data: Array("\(i.host):\(i.port) \(i.headerName)=\(i.headerValue)\u{0}".utf8)) }
        return h.finalize().map { String($0, radix: 16) }.joined()
    }
}
