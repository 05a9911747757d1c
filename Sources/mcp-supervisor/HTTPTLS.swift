import NIOCore

/// TLS for `serve --http` from the configured certificate chain and key
/// (PEM files).
enum HTTPTLS {
    struct Problem: Error, CustomStringConvertible {
        let description: String
    }

    /// What adds TLS to a new connection, or nil without TLS.
    static func handlerFactory(_ files: HTTPConfiguration.TLSFiles?) throws -> (@Sendable (Channel) throws -> Void)? {
        guard let files else { return nil }
        throw Problem(description: "tls: not available in this build (\(files.certificate))")
    }
}
