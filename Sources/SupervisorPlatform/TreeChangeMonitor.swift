import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Notices any change below a set of directories without blocking: one
/// inotify instance watches every directory of the trees (added, removed,
/// renamed, written, attributes); `drainChanges` reads what the kernel
/// queued, non-blocking, in one read(2) when nothing happened. A package
/// tree with hundreds of directories costs one system call per check
/// instead of a stat of each of its thousands of files.
///
/// Directories created after the watch starts are not watched themselves,
/// but their creation is an event: whoever sees `true` re-walks the trees
/// and starts a new monitor.
public final class TreeChangeMonitor: Sendable {
    private let fd: Int32
    /// Set once a change was seen, so every later check says so too (a
    /// caller that failed to act on it sees it again).
    private let seen = Mutex(false)

    /// Watches every directory in `directories` (the caller lists all of
    /// a tree's directories). Fails if the kernel refuses a watch (for
    /// instance max_user_watches is reached): the caller must then check
    /// another way, never less.
    public init(directories: [String]) throws(SystemError) {
        let fd = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
        guard fd >= 0 else { throw SystemError("inotify_init1", errno: errno) }
        let mask = UInt32(
            IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
                | IN_DELETE_SELF | IN_MOVE_SELF | IN_DONT_FOLLOW)
        for d in directories where inotify_add_watch(fd, d, mask) < 0 {
            let e = errno
            close(fd)
            throw SystemError("inotify_add_watch \(d)", errno: e)
        }
        self.fd = fd
    }

    deinit { close(fd) }

    /// Whether anything changed below the trees since the monitor started.
    public func changed() -> Bool {
        seen.withLock { seen in
            if seen { return true }
            var buf = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n > 0 {
                    seen = true
                    continue
                }
                if n < 0 && errno == EINTR { continue }
                // EAGAIN: the queue is empty. Any other error: the monitor
                // can no longer vouch for the trees.
                if n < 0 && errno != EAGAIN { seen = true }
                return seen
            }
        }
    }
}

extension FileIdentity {
    public var isSymbolicLink: Bool { mode & UInt32(S_IFMT) == UInt32(S_IFLNK) }
    /// Any of the execute bits.
    public var isExecutable: Bool { mode & 0o111 != 0 }
}

extension Sys {
    /// The target of a symbolic link. The corresponding C function is `readlink`.
    public static func readlink(_ path: String) throws(SystemError) -> String {
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = Glibc.readlink(path, &buf, buf.count - 1)
        guard n >= 0 else { throw SystemError("readlink \(path)", errno: errno) }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
