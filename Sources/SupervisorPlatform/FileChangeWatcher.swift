import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Waits for changes to one file with inotify(7): a thread blocks in read(2)
/// until the kernel reports an event for the file's name in its directory
/// (written and closed, renamed over, created, deleted, attributes). Nothing
/// runs while nothing changes. The directory is watched, not the file, so a
/// file replaced by rename (how the ledger is written) is still seen.
public final class FileChangeWatcher: Sendable {
    private let fd: Int32
    /// The file watched in the directory; nil: any file in it.
    private let name: String?
    /// Set when the kernel removed the watch (the directory went away): that
    /// change is reported once, then every wait returns false at once
    /// instead of blocking on a descriptor that will never be readable.
    private let ended = Mutex(false)

    /// Watches one file. The corresponding C functions are `inotify_init1`
    /// and `inotify_add_watch`.
    public convenience init(path: String) throws(SystemError) {
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        try self.init(
            directory: directory, name: slash.map { String(path[path.index(after: $0)...]) } ?? path,
            mask: UInt32(IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_ATTRIB | IN_MOVED_FROM))
    }

    /// Watches every file of `directory`, including writes to a file kept
    /// open (a log being appended to).
    public convenience init(directory: String) throws(SystemError) {
        try self.init(
            directory: directory, name: nil,
            mask: UInt32(IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MOVED_FROM))
    }

    private init(directory: String, name: String?, mask: UInt32) throws(SystemError) {
        self.name = name
        let fd = inotify_init1(Int32(IN_CLOEXEC))
        guard fd >= 0 else { throw SystemError("inotify_init1", errno: errno) }
        guard inotify_add_watch(fd, directory, mask) >= 0 else {
            let e = errno
            close(fd)
            throw SystemError("inotify_add_watch \(directory)", errno: e)
        }
        self.fd = fd
    }

    deinit { close(fd) }

    /// Blocks until the watched file changes. Returns false if the watch
    /// cannot continue (the directory went away, or a read error).
    public func waitForChange() -> Bool {
        if ended.withLock({ $0 }) { return false }
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            var off = 0
            var hit = false
            var gone = false
            while off + MemoryLayout<inotify_event>.size <= n {
                let (mask, len) = buf.withUnsafeBytes { raw -> (UInt32, Int) in
                    let e = raw.loadUnaligned(fromByteOffset: off, as: inotify_event.self)
                    return (e.mask, Int(e.len))
                }
                let start = off + MemoryLayout<inotify_event>.size
                let nameBytes = buf[start..<min(start + len, n)].prefix { $0 != 0 }
                if name == nil || String(decoding: nameBytes, as: UTF8.self) == name { hit = true }
                if mask & UInt32(IN_IGNORED) != 0 || mask & UInt32(IN_Q_OVERFLOW) != 0 {
                    // Watch removed (directory deleted) or events lost: report a change.
                    hit = true
                    gone = mask & UInt32(IN_IGNORED) != 0
                }
                off = start + len
            }
            if gone {
                ended.withLock { $0 = true }
                return true
            }
            if hit { return true }
        }
    }
}
