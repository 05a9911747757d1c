import SupervisorPlatform

/// The rule for secret names (docs/secrets.md): they name files in the
/// store, appear in manifests, events and `[secret:NAME]` markers, so they
/// are plain and can never be a path (`.`, `..`, `/`) or a temporary file.
public enum SecretName {
    public static let rule = "1-64 characters of letters, digits, '_' and '-', starting with a letter"

    public static func isValid(_ s: String) -> Bool {
        let u = Array(s.utf8)
        guard let f = u.first, u.count <= 64, (f >= 0x41 && f <= 0x5A) || (f >= 0x61 && f <= 0x7A) else {
            return false
        }
        return u.allSatisfy {
            ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x5F
                || $0 == 0x2D
        }
    }
}

/// Why the secret store cannot be used, or a value cannot be stored. The
/// message names the path and says how to fix it; it never holds a value.
public struct SecretStoreError: Error, Sendable, Equatable, CustomStringConvertible {
    public let description: String
    init(_ d: String) { description = d }
}

/// Secrets kept under the state directory (`<state>/secrets/NAME`, one file
/// per secret): the directory mode 0700, each file 0600, both owned by the
/// user the supervisor runs as. Anything else is refused, not repaired: a
/// store another user could read or write may already have leaked or been
/// replaced, which only its owner can judge. Writes go through a new file
/// and a rename, so a reader sees the old value or the new one.
public struct SecretStore: Sendable {
    public let directory: String
    let stateDirectory: String
    /// The longest value stored (a token, a key; not a file store).
    public static let maxValueBytes = 64 << 10

    public static func directory(stateDirectory: String) -> String { stateDirectory + "/secrets" }

    public init(stateDirectory: String) {
        self.stateDirectory = stateDirectory
        directory = Self.directory(stateDirectory: stateDirectory)
    }

    /// The value a `secret set` input holds: one trailing newline (LF or
    /// CRLF, as `echo` and editors leave) is dropped; the rest must be
    /// non-empty UTF-8 without NUL (an environment variable cannot carry
    /// NUL) and at most `maxValueBytes`.
    public static func value(fromInput input: [UInt8]) throws(SecretStoreError) -> [UInt8] {
        var v = input
        if v.last == 0x0A {
            v.removeLast()
            if v.last == 0x0D { v.removeLast() }
        }
        guard !v.isEmpty else { throw SecretStoreError("the value is empty") }
        guard v.count <= maxValueBytes else {
            throw SecretStoreError("the value is \(v.count) bytes; at most \(maxValueBytes) are stored")
        }
        guard String(validating: v, as: UTF8.self) != nil else { throw SecretStoreError("the value is not UTF-8") }
        guard !v.contains(0) else { throw SecretStoreError("the value contains a NUL byte") }
        return v
    }

    // MARK: checks

    /// What is wrong with the ownership or mode of `id` (at `path`), or nil.
    static func problem(_ path: String, _ id: FileIdentity, directory: Bool) -> String? {
        let me = Sys.geteuid()
        let mode = String(id.mode & 0o7777, radix: 8)
        let want = directory ? "0700" : "0600"
        if id.uid != me {
            return "\(path) is owned by uid \(id.uid), not by the user the supervisor runs as (uid \(me)): "
                + "secrets another user controls are not used. If the directory is yours, run: "
                + "chown -R \(me) \(path) && chmod \(directory ? "700" : "600") \(path)"
        }
        if directory ? !id.isDirectory : !id.isRegularFile {
            return "\(path) is not a \(directory ? "directory" : "regular file")"
        }
        if id.mode & 0o077 != 0 {
            return "\(path) has mode 0\(mode); the secret store must be \(want) (owner only): its values may have "
                + "been read by others, so consider replacing them. Run: "
                + (directory ? "chmod 700 \(path) && chmod 600 \(path)/*" : "chmod 600 \(path)")
        }
        return nil
    }

    /// Opens the store's directory after checking it (and that the state
    /// directory above it cannot be changed by others); nil when it does
    /// not exist and `create` is false.
    func openDirectory(create: Bool) throws(SecretStoreError) -> FileDescriptor? {
        if let p = StatePermissions.problem(path: stateDirectory) { throw SecretStoreError(p) }
        let fd: FileDescriptor
        do {
            fd = try Sys.open(directory, OpenFlags.readOnly | OpenFlags.directory | OpenFlags.noFollow)
        } catch  where error.errno == Errno.noEntry {
            guard create else { return nil }
            do {
                try Sys.makeDirectories(stateDirectory, mode: 0o700)
                do { try Sys.mkdir(directory, mode: 0o700) } catch  where error.errno == Errno.exists {}
                fd = try Sys.open(directory, OpenFlags.readOnly | OpenFlags.directory | OpenFlags.noFollow)
            } catch {
                throw SecretStoreError("cannot create the secret store \(directory): \(error)")
            }
        } catch {
            throw SecretStoreError("cannot open the secret store \(directory): \(error)")
        }
        let id: FileIdentity
        do { id = try fd.stat() } catch {
            fd.close()
            throw SecretStoreError("cannot examine the secret store \(directory): \(error)")
        }
        if let p = Self.problem(directory, id, directory: true) {
            fd.close()
            throw SecretStoreError(p)
        }
        return fd
    }

    // MARK: reading

    /// The names of the stored secrets, sorted; empty when there is no store.
    public func names() throws(SecretStoreError) -> [String] {
        guard let dir = try openDirectory(create: false) else { return [] }
        dir.close()
        let all: [String]
        do { all = try Sys.readdirNames(directory) } catch {
            throw SecretStoreError("cannot list the secret store \(directory): \(error)")
        }
        return all.filter(SecretName.isValid).sorted()
    }

    /// The value of `name`, or nil when it is not stored.
    public func value(_ name: String) throws(SecretStoreError) -> [UInt8]? {
        guard SecretName.isValid(name) else { throw SecretStoreError("\"\(name)\" is not a secret name") }
        guard let dir = try openDirectory(create: false) else { return nil }
        defer { dir.close() }
        let read: (bytes: [UInt8], identity: FileIdentity)
        do { read = try Sys.readBeneath(dir, name, limit: Self.maxValueBytes) } catch {
            if error.errno == Errno.noEntry { return nil }
            throw SecretStoreError("cannot read the secret \(name) from \(directory): \(error)")
        }
        if let p = Self.problem(directory + "/" + name, read.identity, directory: false) {
            throw SecretStoreError(p)
        }
        return read.bytes
    }

    // MARK: writing

    /// Stores `value` (already checked by `value(fromInput:)`) as `name`,
    /// replacing any value it had, atomically.
    public func set(_ name: String, value: [UInt8]) throws(SecretStoreError) {
        guard SecretName.isValid(name) else {
            throw SecretStoreError("\"\(name)\" is not a valid secret name (\(SecretName.rule))")
        }
        let dir = try openDirectory(create: true)!
        defer { dir.close() }
        // A dot-name is never a secret name, so no reader takes it for one.
        let tmp = ".\(name).tmp-\(Sys.getpid())-\(UInt32.random(in: 0...UInt32.max))"
        do {
            let fd = try Sys.openBeneath(dir, tmp, flags: OpenFlags.createExclusive | OpenFlags.noFollow, mode: 0o600)
            do {
                try fd.chmod(mode: 0o600)
                try fd.writeAll(value)
                try fd.sync()
                fd.close()
            } catch {
                fd.close()
                try? Sys.unlink(directory + "/" + tmp)
                throw error
            }
            try Sys.rename(directory + "/" + tmp, directory + "/" + name)
            try dir.sync()
        } catch {
            throw SecretStoreError("cannot store the secret \(name) in \(directory): \(error)")
        }
    }

    /// Removes `name`; false when it was not stored.
    public func remove(_ name: String) throws(SecretStoreError) -> Bool {
        guard SecretName.isValid(name) else { throw SecretStoreError("\"\(name)\" is not a secret name") }
        guard let dir = try openDirectory(create: false) else { return false }
        defer { dir.close() }
        do {
            try Sys.unlink(directory + "/" + name)
            try dir.sync()
        } catch {
            if error.errno == Errno.noEntry { return false }
            throw SecretStoreError("cannot remove the secret \(name) from \(directory): \(error)")
        }
        return true
    }
}
