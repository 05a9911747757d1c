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
    private let name: String

    /// The corresponding C functions are `inotify_init1` and `inotify_add_watch`.
    public init(path: String) throws(SystemError) {
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        name = slash.map { String(path[path.index(after: $0)...]) } ?? path
        let fd = inotify_init1(Int32(IN_CLOEXEC))
        guard fd >= 0 else { throw SystemError("inotify_init1", errno: errno) }
        let mask = UInt32(IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_ATTRIB | IN_MOVED_FROM)
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
                if String(decoding: nameBytes, as: UTF8.self) == name { hit = true }
                if mask & UInt32(IN_IGNORED) != 0 || mask & UInt32(IN_Q_OVERFLOW) != 0 {
                    // Watch removed (directory deleted) or events lost: report a change.
                    hit = true
                    gone = mask & UInt32(IN_IGNORED) != 0
                }
                off = start + len
            }
            if gone { return hit }
            if hit { return true }
        }
    }
}
