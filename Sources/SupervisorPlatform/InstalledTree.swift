import CSupervisorShim
import Glibc

extension Sys {
    /// Whether `fd` is a terminal. The corresponding C function is `isatty`.
    public static func isTerminal(_ fd: Int32) -> Bool { Glibc.isatty(fd) == 1 }

    /// Hands a tree a sandboxed installer wrote over to its keeper: every
    /// entry (links not followed) owned by `uid`:`gid`, no write access
    /// for group or others, no setuid/setgid/sticky bit, readable by all
    /// (directories and executables searchable), so that workers of any
    /// uid can import it and none can change it. Refused, before anything
    /// is changed: a file with more than one hard link (it may be another
    /// file of the system, which must not change hands) and anything that
    /// is neither a file, a directory nor a link.
    /// `chown`: false when the caller cannot change owners (not root); the
    /// modes are still set.
    public static func sealInstalledTree(_ root: String, uid: UInt32, gid: UInt32, chown: Bool) throws(SystemError) {
        var entries: [(path: String, mode: UInt32, isLink: Bool)] = []
        func visit(_ path: String) throws(SystemError) {
            var st = Glibc.stat()
            _ = try retrying("lstat \(path)") { fstatat(AT_FDCWD, path, &st, AT_SYMLINK_NOFOLLOW) }
            let kind = UInt32(st.st_mode) & UInt32(S_IFMT)
            switch kind {
            case UInt32(S_IFLNK):
                entries.append((path, 0, true))
            case UInt32(S_IFREG):
                guard st.st_nlink == 1 else {
                    throw SystemError(
                        "\(path) has \(st.st_nlink) hard links (an installed file has one)", errno: EMLINK)
                }
                entries.append((path, 0o644 | (UInt32(st.st_mode) & 0o111 != 0 ? 0o111 : 0), false))
            case UInt32(S_IFDIR):
                entries.append((path, 0o755, false))
                for name in try readdirNames(path).sorted() { try visit(path + "/" + name) }
            default:
                throw SystemError("\(path) is neither a file, a directory nor a link", errno: EINVAL)
            }
        }
        try visit(root)
        for e in entries {
            if chown {
                _ = try retrying("lchown \(e.path)") { fchownat(AT_FDCWD, e.path, uid, gid, AT_SYMLINK_NOFOLLOW) }
            }
            if e.isLink { continue }
            // 0755 for directories and executables (any execute bit, as
            // the tree digest counts it), else 0644.
            _ = try retrying("chmod \(e.path)") { fchmodat(AT_FDCWD, e.path, mode_t(e.mode), 0) }
        }
    }
}
