/// The seam between the egress proxy (docs/egress.md) and the secret store
/// (docs/secrets.md): what the proxy needs to add a credential to a cell's
/// requests without the cell's process ever holding it.

/// One header the egress proxy sets on every request a worker sends to
/// `host:port` (replacing any header of that name the worker sent).
public struct CredentialInjection: Sendable, Equatable {
    /// How requests to the host travel. `https` (the default): the header
    /// is added only inside a TLS connection the proxy terminates, never to
    /// plain HTTP — a worker cannot make the value cross the network in
    /// clear by speaking HTTP to the host. `http`: only to plain HTTP
    /// requests, for a host the manifest says speaks plain HTTP.
    public enum Scheme: String, Sendable, Equatable {
        case https, http
    }

    /// Normalized (lower-case) host name or IP literal, as in the manifest's
    /// `network.connect` allowlist.
    public let host: String
    public let port: Int
    public let headerName: String
    /// The header's value, the secret already formatted (`Bearer …`). Never
    /// logged, never put in an event, an error or a result.
    public let headerValue: String
    /// The secret's name: what events and errors may say instead of the value.
    public let secretName: String
    public let scheme: Scheme

    public init(
        host: String, port: Int, headerName: String, headerValue: String, secretName: String, scheme: Scheme = .https
    ) {
        self.scheme = scheme
        self.host = host
        self.port = port
        self.headerName = headerName
        self.headerValue = headerValue
        self.secretName = secretName
    }
}

/// The per-install certificate authority with which the egress proxy
/// terminates TLS for hosts that have a `CredentialInjection`. The cell
/// trusts this CA (its certificate file is named in the cell's
/// `SSL_CERT_FILE` and similar variables); nothing else does.
public protocol InterceptionAuthority: Sendable {
    /// Path of the CA certificate (PEM) the cell is told to trust.
    var caCertificatePath: String { get }
    /// A certificate chain (leaf first) and private key for `host`, PEM,
    /// signed by the CA. May be cached; must be valid now.
    func leafCertificate(forHost host: String) throws -> (certificateChainPEM: String, privateKeyPEM: String)
}
