import Crypto
import Foundation
import SupervisorPlatform
import SwiftASN1
import Synchronization
import X509

/// Why the egress CA cannot be created or used; names the path and the fix.
public struct InterceptionCAError: Error, Sendable, CustomStringConvertible {
    public let description: String
    init(_ d: String) { description = d }
}

/// The per-install certificate authority with which the egress proxy
/// terminates TLS for the hosts a cell has a credential injection for
/// (docs/secrets.md, "Terminating TLS"). Created on first need under the
/// state directory (`<state>/egress-ca/`: `ca.key`, mode 0600, and
/// `ca.pem`), ECDSA P-256. Leaf certificates are made per host (the name
/// or IP address as subjectAltName), valid for `leafValiditySeconds`, and
/// kept in memory only. Deleting the directory rotates the CA: the next
/// supervisor makes a new one. The key never leaves the state directory
/// and is never given to a worker; the certificate is all a cell gets.
public final class PerInstallCA: InterceptionAuthority {
    public let directory: String
    /// The certificate the cell is told to trust: the published copy when
    /// there is one (a worker cannot read the state directory), else
    /// `<directory>/ca.pem`.
    public let caCertificatePath: String
    /// The CA certificate, PEM (what a cell is told to trust).
    public let caCertificatePEM: String
    private let caKey: P256.Signing.PrivateKey
    private let caCertificate: Certificate
    private let cache = Mutex<[String: (chain: String, key: String, notAfter: Date)]>([:])

    /// How long a leaf certificate is valid (1 day); one with less than
    /// `leafRenewSeconds` left is replaced.
    public static let leafValiditySeconds: TimeInterval = 86_400
    static let leafRenewSeconds: TimeInterval = 3_600
    /// The CA's own validity (10 years): it is rotated by deleting its
    /// directory, not by expiry.
    static let caValiditySeconds: TimeInterval = 10 * 365 * 86_400
    /// Leaves are backdated a little, for clocks of cells that lag.
    static let backdateSeconds: TimeInterval = 300

    public static func directory(stateDirectory: String) -> String { stateDirectory + "/egress-ca" }

    /// Loads the CA of `stateDirectory`, creating it if there is none.
    /// Refuses a directory or key readable by others, or owned by another
    /// user: a key others could read lets them impersonate every host a
    /// cell trusts it for.
    /// `publishIn`: a directory workers can traverse (the scratch root),
    /// where a copy of the certificate, never the key, is written as
    /// `egress-ca.pem` (mode 0644) for cells to be given.
    public convenience init(stateDirectory: String, publishIn: String? = nil) throws(InterceptionCAError) {
        try self.init(directory: Self.directory(stateDirectory: stateDirectory), publishIn: publishIn)
    }

    public init(directory: String, publishIn: String? = nil) throws(InterceptionCAError) {
        self.directory = directory
        let certificatePath = directory + "/ca.pem"
        let keyPath = directory + "/ca.key"
        if (try? Sys.lstat(directory)) == nil { try Self.create(directory) }
        // Checked on every load: permissions may have changed since.
        for (path, isDirectory) in [(directory, true), (keyPath, false)] {
            let id: FileIdentity
            do { id = try Sys.lstat(path) } catch {
                throw InterceptionCAError(
                    "cannot use the egress CA: \(error); to make a new one, remove \(directory)")
            }
            if let p = SecretStore.problem(path, id, directory: isDirectory) {
                throw InterceptionCAError("the egress CA cannot be used: \(p)")
            }
        }
        do {
            let keyPEM = String(decoding: try readFile(keyPath, limit: 1 << 16), as: UTF8.self)
            let certPEM = String(decoding: try readFile(certificatePath, limit: 1 << 16), as: UTF8.self)
            caKey = try P256.Signing.PrivateKey(pemRepresentation: keyPEM)
            caCertificate = try Certificate(pemEncoded: certPEM)
            caCertificatePEM = certPEM
        } catch {
            throw InterceptionCAError(
                "the egress CA in \(directory) cannot be read (\(error)); to make a new one, remove \(directory)")
        }
        guard caCertificate.publicKey == Certificate.PublicKey(caKey.publicKey) else {
            throw InterceptionCAError(
                "the egress CA's key and certificate in \(directory) do not match; to make a new one, remove "
                    + directory)
        }
        guard let publishIn else {
            caCertificatePath = certificatePath
            return
        }
        // Replaced by rename, so a worker reading it sees one whole
        // certificate; rewritten at every load (a rotated CA replaces it).
        let published = publishIn + "/egress-ca.pem"
        let tmp = "\(published).tmp-\(Sys.getpid())-\(UInt32.random(in: 0...UInt32.max))"
        do {
            let fd = try Sys.open(tmp, OpenFlags.createExclusive | OpenFlags.noFollow, mode: 0o644)
            defer { fd.close() }
            try fd.chmod(mode: 0o644)
            // A bundle: the worker's TLS library reads this file instead of
            // its default store, so the system roots come first (tunnels to
            // hosts without a credential still verify), then this CA.
            try fd.writeAll(Self.systemRoots() + Array(caCertificatePEM.utf8))
            try Sys.rename(tmp, published)
        } catch {
            try? Sys.unlink(tmp)
            throw InterceptionCAError("cannot publish the egress CA's certificate as \(published): \(error)")
        }
        caCertificatePath = published
    }

    /// The system's CA bundle (Debian's, then Fedora's location), empty
    /// when there is none.
    static func systemRoots() -> [UInt8] {
        for path in ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"] {
            if var roots = try? readFile(path, limit: 16 << 20) {
                if roots.last != UInt8(ascii: "\n") { roots.append(UInt8(ascii: "\n")) }
                return roots
            }
        }
        return []
    }

    /// Makes a new CA in a temporary directory and renames it into place,
    /// so that two supervisors starting together end up with one CA (the
    /// loser's rename fails and it loads the winner's).
    static func create(_ directory: String) throws(InterceptionCAError) {
        let tmp = "\(directory).tmp-\(Sys.getpid())-\(UInt32.random(in: 0...UInt32.max))"
        do {
            let key = P256.Signing.PrivateKey()
            let name = try DistinguishedName {
                OrganizationName("mcp-supervisor")
                CommonName("mcp-supervisor egress CA (this installation only)")
            }
            let now = Date()
            let publicKey = Certificate.PublicKey(key.publicKey)
            let certificate = try Certificate(
                version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: publicKey,
                notValidBefore: now - backdateSeconds, notValidAfter: now + caValiditySeconds,
                issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                    Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                    SubjectKeyIdentifier(hash: publicKey)
                },
                issuerPrivateKey: Certificate.PrivateKey(key))
            let parent = directoryName(of: directory)
            try Sys.makeDirectories(parent, mode: 0o700)
            try Sys.mkdir(tmp, mode: 0o700)
            let dir = try Sys.open(tmp, OpenFlags.readOnly | OpenFlags.directory | OpenFlags.noFollow)
            defer { dir.close() }
            for (file, text, mode) in [
                ("ca.key", key.pemRepresentation, UInt32(0o600)),
                ("ca.pem", try certificate.serializeAsPEM().pemString, UInt32(0o644)),
            ] {
                let fd = try Sys.openBeneath(dir, file, flags: OpenFlags.createExclusive, mode: mode)
                defer { fd.close() }
                try fd.chmod(mode: mode)
                try fd.writeAll(Array((text + "\n").utf8))
                try fd.sync()
            }
            try dir.sync()
            do { try Sys.rename(tmp, directory) } catch {
                // Another process made it first: use that one.
                guard error.errno == Errno.exists || error.errno == Errno.notEmpty else { throw error }
                try? Sys.removeTree(tmp)
            }
        } catch let e as InterceptionCAError {
            throw e
        } catch {
            try? Sys.removeTree(tmp)
            throw InterceptionCAError("cannot create the egress CA in \(directory): \(error)")
        }
    }

    /// A leaf certificate for `host` (a DNS name or an IP literal), signed by
    /// the CA, with its own P-256 key; the same one until it nears expiry.
    public func leafCertificate(forHost host: String) throws -> (certificateChainPEM: String, privateKeyPEM: String) {
        let now = Date()
        if let c = cache.withLock({ $0[host] }), c.notAfter.timeIntervalSince(now) > Self.leafRenewSeconds {
            return (c.chain, c.key)
        }
        let key = P256.Signing.PrivateKey()
        let publicKey = Certificate.PublicKey(key.publicKey)
        let san: GeneralName
        if let ip = IPAddress(literal: host) {
            san = .ipAddress(ASN1OctetString(contentBytes: ArraySlice(ip.bytes)))
        } else {
            guard NetworkAccess.isHostName(host.lowercased()) else {
                throw InterceptionCAError("\"\(host)\" is not a host name or IP address")
            }
            san = .dnsName(host.lowercased())
        }
        let notAfter = now + Self.leafValiditySeconds
        let caSKI = try? caCertificate.extensions.subjectKeyIdentifier?.keyIdentifier
        let leaf = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: publicKey,
            notValidBefore: now - Self.backdateSeconds, notValidAfter: notAfter,
            issuer: caCertificate.subject,
            subject: try DistinguishedName { CommonName(String(host.prefix(64))) },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth])
                SubjectAlternativeNames([san])
                SubjectKeyIdentifier(hash: publicKey)
                AuthorityKeyIdentifier(keyIdentifier: caSKI ?? nil)
            },
            issuerPrivateKey: Certificate.PrivateKey(caKey))
        let chain = try leaf.serializeAsPEM().pemString + "\n" + caCertificatePEM
        let keyPEM = key.pemRepresentation
        cache.withLock { $0[host] = (chain, keyPEM, notAfter) }
        return (chain, keyPEM)
    }
}
