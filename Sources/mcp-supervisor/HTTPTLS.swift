import NIOCore
import NIOSSL

/// TLS for `serve --http` from the configured certificate chain and private
/// key (PEM files), with SwiftNIO's NIOSSL. TLS 1.2 at least.
enum HTTPTLS {
    struct Problem: Error, CustomStringConvertible {
        let description: String
    }

    /// What adds TLS to a new connection, or nil without TLS. The files
    /// are read once, at start: a bad file is a refusal to start.
    static func handlerFactory(_ files: HTTPConfiguration.TLSFiles?) throws -> (@Sendable (Channel) throws -> Void)? {
        guard let files else { return nil }
        let chain: [NIOSSLCertificate]
        do { chain = try NIOSSLCertificate.fromPEMFile(files.certificate) } catch {
            throw Problem(
                description: "tls.certificate \(files.certificate): not a readable PEM certificate (\(error))")
        }
        guard !chain.isEmpty else { throw Problem(description: "tls.certificate \(files.certificate): no certificate") }
        let key: NIOSSLPrivateKey
        do { key = try NIOSSLPrivateKey(file: files.privateKey, format: .pem) } catch {
            throw Problem(description: "tls.privateKey \(files.privateKey): not a readable PEM private key (\(error))")
        }
        var conf = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        conf.minimumTLSVersion = .tlsv12
        let context: NIOSSLContext
        do { context = try NIOSSLContext(configuration: conf) } catch {
            throw Problem(description: "tls: the certificate and the key do not make a TLS context (\(error))")
        }
        return { channel in try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context)) }
    }
}
