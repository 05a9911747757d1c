import CSupervisorShim

#if canImport(Glibc)
import Glibc
#endif

/// A failed system call: which operation, and the errno it returned.
public struct SystemError: Error, Equatable, Sendable, CustomStringConvertible {
    public let operation: String
    public let errno: Int32

    public init(_ operation: String, errno: Int32) {
        self.operation = operation
        self.errno = errno
    }

    public var description: String { "\(operation): \(Errno.describe(errno))" }
}

public enum Errno {
    /// "EPERM (Operation not permitted)".
    public static func describe(_ e: Int32) -> String {
        "\(name(e)) (\(String(cString: strerror(e))))"
    }

    public static func name(_ e: Int32) -> String {
        switch e {
        case EPERM: return "EPERM"
        case ENOENT: return "ENOENT"
        case ESRCH: return "ESRCH"
        case EINTR: return "EINTR"
        case EIO: return "EIO"
        case E2BIG: return "E2BIG"
        case ENOEXEC: return "ENOEXEC"
        case EBADF: return "EBADF"
        case ECHILD: return "ECHILD"
        case EAGAIN: return "EAGAIN"
        case ENOMEM: return "ENOMEM"
        case EACCES: return "EACCES"
        case EFAULT: return "EFAULT"
        case EEXIST: return "EEXIST"
        case ENOTDIR: return "ENOTDIR"
        case EISDIR: return "EISDIR"
        case EINVAL: return "EINVAL"
        case EMFILE: return "EMFILE"
        case ENOSPC: return "ENOSPC"
        case EROFS: return "EROFS"
        case EPIPE: return "EPIPE"
        case ENOSYS: return "ENOSYS"
        case ELOOP: return "ELOOP"
        case EXDEV: return "EXDEV"
        case EOPNOTSUPP: return "EOPNOTSUPP"
        case EFBIG: return "EFBIG"
        default: return "errno \(e)"
        }
    }

    /// The calling thread's errno.
    public static var current: Int32 { Glibc.errno }
}

/// Calls `body` until it does not fail with EINTR; turns -1 into SystemError.
@inline(__always)
func retrying<T: FixedWidthInteger>(_ operation: @autoclosure () -> String, _ body: () -> T) throws(SystemError) -> T {
    while true {
        let r = body()
        if r != -1 { return r }
        let e = Glibc.errno
        if e != EINTR { throw SystemError(operation(), errno: e) }
    }
}

/// An owned file descriptor. Closing is explicit: the code that opens a
/// descriptor is the code that decides when it ends.
public struct FileDescriptor: Hashable, Sendable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    public static let standardError = FileDescriptor(rawValue: 2)

    /// The corresponding C function is `close`. EINTR is not retried (on
    /// Linux the descriptor is gone either way).
    public func close() { _ = Glibc.close(rawValue) }

    /// The corresponding C function is `read`.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Int {
        try retrying("read") { Glibc.read(rawValue, buffer.baseAddress, buffer.count) }
    }

    /// The corresponding C function is `write`; writes everything.
    public func writeAll(_ bytes: [UInt8]) throws(SystemError) {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { raw in Glibc.write(rawValue, raw.baseAddress! + off, raw.count - off) }
            if n < 0 {
                let e = Glibc.errno
                if e == EINTR { continue }
                throw SystemError("write", errno: e)
            }
            off += n
        }
    }

    /// Reads into an array's storage; returns the byte count (0 at EOF).
    public func read(_ buffer: inout [UInt8]) throws(SystemError) -> Int {
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(rawValue, $0.baseAddress, $0.count) }
            if n >= 0 { return n }
            let e = Glibc.errno
            if e != EINTR { throw SystemError("read", errno: e) }
        }
    }

    /// Positional read into an array's storage.
    public func pread(_ buffer: inout [UInt8], offset: Int) throws(SystemError) -> Int {
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.pread(rawValue, $0.baseAddress, $0.count, off_t(offset)) }
            if n >= 0 { return n }
            let e = Glibc.errno
            if e != EINTR { throw SystemError("pread", errno: e) }
        }
    }

    /// The corresponding C function is `pread`.
    public func pread(into buffer: UnsafeMutableRawBufferPointer, offset: Int) throws(SystemError) -> Int {
        try retrying("pread") { Glibc.pread(rawValue, buffer.baseAddress, buffer.count, off_t(offset)) }
    }

    public func setNonBlocking() throws(SystemError) {
        let flags = try retrying("fcntl(F_GETFL)") { fcntl(rawValue, F_GETFL) }
        _ = try retrying("fcntl(F_SETFL)") { fcntl(rawValue, F_SETFL, flags | O_NONBLOCK) }
    }

    /// The corresponding C function is `fstat`.
    public func stat() throws(SystemError) -> FileIdentity {
        var st = Glibc.stat()
        _ = try retrying("fstat") { Glibc.fstat(rawValue, &st) }
        return FileIdentity(st)
    }

    /// The corresponding C function is `fchown`.
    public func chown(uid: UInt32, gid: UInt32) throws(SystemError) {
        _ = try retrying("fchown") { Glibc.fchown(rawValue, uid, gid) }
    }
}

/// What identifies a file's contents without reading them: if any of these
/// change, the file must be hashed again. ctime cannot be set by a user, so a
/// rewrite that restores mtime is still seen.
public struct FileIdentity: Equatable, Sendable {
    public let device: UInt64
    public let inode: UInt64
    public let size: Int64
    public let mode: UInt32
    public let uid: UInt32
    public let mtimeNanoseconds: Int64
    public let ctimeNanoseconds: Int64

    init(_ st: stat) {
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
        size = Int64(st.st_size)
        mode = UInt32(st.st_mode)
        uid = st.st_uid
        mtimeNanoseconds = Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec)
        ctimeNanoseconds = Int64(st.st_ctim.tv_sec) * 1_000_000_000 + Int64(st.st_ctim.tv_nsec)
    }

    public var isDirectory: Bool { mode & UInt32(S_IFMT) == UInt32(S_IFDIR) }
    public var isRegularFile: Bool { mode & UInt32(S_IFMT) == UInt32(S_IFREG) }
}

public enum Sys {
    /// The corresponding C function is `open`, always with O_CLOEXEC.
    public static func open(_ path: String, _ flags: Int32, mode: UInt32 = 0) throws(SystemError) -> FileDescriptor {
        FileDescriptor(rawValue: try retrying("open \(path)") { Glibc.open(path, flags | O_CLOEXEC, mode) })
    }

    /// openat2(2) with RESOLVE flags: used to open artifacts beneath a directory
    /// without following links out of it.
    public static func openBeneath(_ dir: FileDescriptor, _ path: String, flags: Int32, mode: UInt32 = 0)
        throws(SystemError) -> FileDescriptor
    {
        // RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS
        let resolve: UInt64 = 0x08 | 0x02 | 0x04
        return FileDescriptor(
            rawValue: try retrying("openat2 \(path)") {
                mcps_openat2(dir.rawValue, path, UInt64(flags | O_CLOEXEC), UInt64(mode), resolve)
            })
    }

    /// The corresponding C function is `stat` (follows symlinks).
    public static func stat(_ path: String) throws(SystemError) -> FileIdentity {
        var st = Glibc.stat()
        _ = try retrying("stat \(path)") { fstatat(AT_FDCWD, path, &st, 0) }
        return FileIdentity(st)
    }

    /// The corresponding C function is `lstat`.
    public static func lstat(_ path: String) throws(SystemError) -> FileIdentity {
        var st = Glibc.stat()
        _ = try retrying("lstat \(path)") { fstatat(AT_FDCWD, path, &st, AT_SYMLINK_NOFOLLOW) }
        return FileIdentity(st)
    }

    /// pipe2(O_CLOEXEC): (read end, write end).
    public static func pipe() throws(SystemError) -> (read: FileDescriptor, write: FileDescriptor) {
        var fds: [Int32] = [-1, -1]
        _ = try retrying("pipe2") { mcps_pipe_cloexec(&fds) }
        return (FileDescriptor(rawValue: fds[0]), FileDescriptor(rawValue: fds[1]))
    }

    /// A close-on-exec unix socketpair of the given type.
    public static func socketPair(type: Int32) throws(SystemError) -> (FileDescriptor, FileDescriptor) {
        var fds: [Int32] = [-1, -1]
        _ = try retrying("socketpair") { socketpair(AF_UNIX, type | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) }
        return (FileDescriptor(rawValue: fds[0]), FileDescriptor(rawValue: fds[1]))
    }

    /// The corresponding C function is `mkdir`.
    public static func mkdir(_ path: String, mode: UInt32) throws(SystemError) {
        _ = try retrying("mkdir \(path)") { Glibc.mkdir(path, mode) }
    }

    /// Creates `path` and its missing parents with `mode` (`mkdir -p`). A
    /// component another process creates at the same moment is fine (EEXIST
    /// on a directory); one that exists but is not a directory is an error.
    public static func makeDirectories(_ path: String, mode: UInt32) throws(SystemError) {
        var p = ""
        for c in path.split(separator: "/") {
            p += "/" + c
            if Glibc.mkdir(p, mode) == 0 { continue }
            let e = Glibc.errno
            guard e == EEXIST, let st = try? stat(p), st.isDirectory else {
                throw SystemError("mkdir \(p)", errno: e == EEXIST ? ENOTDIR : e)
            }
        }
    }

    /// The corresponding C function is `chmod`.
    public static func chmod(_ path: String, mode: UInt32) throws(SystemError) {
        _ = try retrying("chmod \(path)") { Glibc.chmod(path, mode) }
    }

    /// The corresponding C function is `realpath`.
    public static func realpath(_ path: String) throws(SystemError) -> String {
        guard let p = Glibc.realpath(path, nil) else { throw SystemError("realpath \(path)", errno: Glibc.errno) }
        defer { free(p) }
        return String(cString: p)
    }

    /// Removes `path` and everything below it without following symlinks
    /// (every step is relative to an fd opened with O_NOFOLLOW). A worker can
    /// plant links in its scratch directory; none of them is followed out.
    public static func removeTree(_ path: String) throws(SystemError) {
        let dir = try retrying("open \(path)") { Glibc.open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
        try removeContents(of: dir, name: path)
        _ = try retrying("rmdir \(path)") { Glibc.rmdir(path) }
    }

    private static func removeContents(of directory: Int32, name: String) throws(SystemError) {
        // fdopendir takes ownership of the descriptor.
        guard let d = fdopendir(directory) else {
            let e = Glibc.errno
            Glibc.close(directory)
            throw SystemError("fdopendir \(name)", errno: e)
        }
        defer { closedir(d) }
        var entries: [(String, Bool)] = []
        while let ent = readdir(d) {
            let n = withUnsafeBytes(of: ent.pointee.d_name) { raw in
                String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
            }
            if n == "." || n == ".." { continue }
            entries.append((n, ent.pointee.d_type == UInt8(DT_DIR)))
        }
        let fd = dirfd(d)
        for (n, isDir) in entries {
            if isDir {
                // A directory may be unreadable (mode 000) to its owner: the
                // supervisor owns the tree's root and can make it readable.
                let sub = Glibc.openat(fd, n, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                if sub < 0 {
                    _ = fchmodat(fd, n, 0o700, 0)
                }
                let sub2 = sub >= 0 ? sub : Glibc.openat(fd, n, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                if sub2 < 0 { throw SystemError("open \(name)/\(n)", errno: Glibc.errno) }
                try removeContents(of: sub2, name: "\(name)/\(n)")
                _ = try retrying("rmdir \(name)/\(n)") { unlinkat(fd, n, AT_REMOVEDIR) }
            } else {
                _ = try retrying("unlink \(name)/\(n)") { unlinkat(fd, n, 0) }
            }
        }
    }

    public static var uid: UInt32 { getuid() }
    public static var gid: UInt32 { getgid() }
    public static var pid: Int32 { getpid() }

    /// Number of open file descriptors of this process (from /proc/self/fd).
    public static func openDescriptorCount() -> Int {
        guard let d = opendir("/proc/self/fd") else { return -1 }
        defer { closedir(d) }
        var n = 0
        while readdir(d) != nil { n += 1 }
        return n - 3  // ".", "..", and the directory's own fd
    }

    public static func setNonDumpable() { _ = mcps_set_non_dumpable() }

    public static func lastCapability() -> Int32 { mcps_cap_last_cap() }

    public static func hasEffectiveCapability(_ cap: Int32) -> Bool { mcps_has_effective_cap(cap) != 0 }

    /// Whether clone(flags) works for this process (namespace probes).
    public static func canClone(flags: Int32) -> Result<Void, SystemError> {
        if mcps_probe_clone(flags) == 0 { return .success(()) }
        return .failure(SystemError("clone", errno: Glibc.errno))
    }

    /// A sealed memfd holding `source`'s bytes: its contents can no longer
    /// change, so bytes verified once are the bytes exec'd every time.
    public static func sealedCopy(of source: FileDescriptor, name: String) throws(SystemError) -> FileDescriptor {
        try sealedCopy(of: [source], name: name)
    }

    /// One sealed memfd holding the sources' contents one after another.
    public static func sealedCopy(of sources: [FileDescriptor], name: String) throws(SystemError) -> FileDescriptor {
        let mfd = try retrying("memfd_create") { mcps_memfd_sealable(name) }
        let out = FileDescriptor(rawValue: mfd)
        do {
            let chunk = 1 << 20
            let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 16)
            defer { buf.deallocate() }
            for source in sources {
                var offset = 0
                while true {
                    let n = try source.pread(into: buf, offset: offset)
                    if n == 0 { break }
                    try out.writeAll(Array(UnsafeRawBufferPointer(rebasing: buf[0..<n])))
                    offset += n
                }
            }
            _ = try retrying("fcntl(F_ADD_SEALS)") { mcps_memfd_seal(mfd) }
        } catch {
            out.close()
            throw error
        }
        return out
    }
}

/// Events of poll(2).
public struct PollEvents: OptionSet, Sendable {
    public let rawValue: Int16
    public init(rawValue: Int16) { self.rawValue = rawValue }
    /// POLLIN.
    public static let readable = PollEvents(rawValue: Int16(POLLIN))
    /// POLLOUT.
    public static let writable = PollEvents(rawValue: Int16(POLLOUT))
    /// POLLHUP: the other end is gone (reported whether asked for or not).
    public static let hangUp = PollEvents(rawValue: Int16(POLLHUP))
    /// POLLERR (reported whether asked for or not).
    public static let error = PollEvents(rawValue: Int16(POLLERR))
}

/// poll(2) over a small set of descriptors.
public struct PollSet {
    var fds: [pollfd] = []
    public init() {}

    public mutating func removeAll() { fds.removeAll(keepingCapacity: true) }

    @discardableResult
    public mutating func add(_ fd: FileDescriptor, events: PollEvents = .readable) -> Int {
        fds.append(pollfd(fd: fd.rawValue, events: events.rawValue, revents: 0))
        return fds.count - 1
    }

    /// What the last `wait` reported for the descriptor added at `i`.
    public func events(_ i: Int) -> PollEvents { PollEvents(rawValue: fds[i].revents) }

    /// Waits up to `timeoutMilliseconds` (-1: forever). Returns the number of
    /// ready descriptors (0 on timeout).
    public mutating func wait(timeoutMilliseconds: Int32) throws(SystemError) -> Int {
        let n = fds.count
        return Int(
            try retrying("poll") {
                fds.withUnsafeMutableBufferPointer { Glibc.poll($0.baseAddress, nfds_t(n), timeoutMilliseconds) }
            })
    }

    public func isReadable(_ i: Int) -> Bool { fds[i].revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 }
}

/// Monotonic clock in nanoseconds.
public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
