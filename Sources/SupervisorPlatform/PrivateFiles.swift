#if canImport(Glibc)
import Glibc
#endif

// Files only their owner may read (the secret store, the egress CA's key):
// created owner-only from the first byte, opened without following links,
// replaced by rename so that a reader sees the old value or the new one.

extension OpenFlags {
    /// O_WRONLY | O_CREAT | O_EXCL: a new file, never an existing one (nor a
    /// symlink planted at its name).
    public static let createExclusive = O_WRONLY | O_CREAT | O_EXCL
}

extension FileDescriptor {
    /// The corresponding C function is `fchmod`.
    public func chmod(mode: UInt32) throws(SystemError) {
        _ = try retrying("fchmod") { Glibc.fchmod(rawValue, mode) }
    }
}

extension Sys {
    /// Whether `fd` is a terminal. The corresponding C function is `isatty`.
    public static func isatty(_ fd: Int32) -> Bool { Glibc.isatty(fd) == 1 }

    /// Reads a whole file of at most `limit` bytes beneath `directory`
    /// without following any link (`openat2` with RESOLVE_BENEATH and
    /// RESOLVE_NO_SYMLINKS), with the identity of what was read: the caller
    /// checks its owner and mode on the very descriptor it read.
    public static func readBeneath(_ directory: FileDescriptor, _ name: String, limit: Int)
        throws(SystemError) -> (bytes: [UInt8], identity: FileIdentity)
    {
        let fd = try openBeneath(directory, name, flags: O_RDONLY | O_NOFOLLOW)
        defer { fd.close() }
        let id = try fd.stat()
        guard id.isRegularFile else { throw SystemError("read \(name)", errno: EINVAL) }
        guard id.size <= Int64(limit) else { throw SystemError("read \(name)", errno: EFBIG) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = try fd.read(&buf)
            if n == 0 { break }
            out += buf[0..<n]
            if out.count > limit { throw SystemError("read \(name)", errno: EFBIG) }
        }
        return (out, id)
    }
}

extension Errno {
    /// EEXIST: the name is taken.
    public static let exists = EEXIST
    /// ENOENT: no such file or directory.
    public static let noEntry = ENOENT
    /// ENOTEMPTY: a directory rename onto a directory that has entries.
    public static let notEmpty = ENOTEMPTY
}
