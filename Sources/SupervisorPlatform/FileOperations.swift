#if canImport(Glibc)
import Glibc
#endif

extension FileDescriptor {
    /// The corresponding C function is `fdatasync`.
    public func dataSync() throws(SystemError) {
        _ = try retrying("fdatasync") { Glibc.fdatasync(rawValue) }
    }

    /// The corresponding C function is `fsync`.
    public func sync() throws(SystemError) {
        _ = try retrying("fsync") { Glibc.fsync(rawValue) }
    }

    /// The corresponding C function is `ftruncate`.
    public func truncate(to size: Int) throws(SystemError) {
        _ = try retrying("ftruncate") { Glibc.ftruncate(rawValue, off_t(size)) }
    }

    /// Writes the first `count` bytes of `bytes` (a test seam for a write
    /// cut short by a full disk); returns how many were written.
    public func writePrefix(_ bytes: [UInt8], count: Int) -> Int {
        let n = bytes.withUnsafeBytes { Glibc.write(rawValue, $0.baseAddress!, min(count, $0.count)) }
        return max(0, n)
    }
}

extension Sys {
    /// The corresponding C function is `rename`.
    public static func rename(_ from: String, _ to: String) throws(SystemError) {
        _ = try retrying("rename \(from) to \(to)") { Glibc.rename(from, to) }
    }

    /// The corresponding C function is `unlink`.
    public static func unlink(_ path: String) throws(SystemError) {
        _ = try retrying("unlink \(path)") { Glibc.unlink(path) }
    }
}
