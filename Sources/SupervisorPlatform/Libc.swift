#if canImport(Glibc)
import Glibc
#endif

// Small libc calls for the rest of the supervisor, which never imports Glibc
// itself (tools/check-imports.sh). Each wrapper is named after its C
// function, in the manner of swift-system.

extension String {
    /// The text of a C string held in a fixed buffer, up to its first NUL
    /// (the whole buffer if it has none).
    public init(nulTerminated buffer: [CChar]) {
        let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        self = String(decoding: bytes, as: UTF8.self)
    }
}

extension Sys {
    /// The value of an environment variable; nil when it is unset or empty
    /// (an empty value never names a directory). The corresponding C
    /// function is `getenv`.
    public static func getenv(_ name: String) -> String? {
        guard let v = Glibc.getenv(name), v.pointee != 0 else { return nil }
        return String(cString: v)
    }

    /// The corresponding C function is `geteuid`.
    public static func geteuid() -> UInt32 { Glibc.geteuid() }

    /// The corresponding C function is `getuid`.
    public static func getuid() -> UInt32 { Glibc.getuid() }

    /// The corresponding C function is `getgid`.
    public static func getgid() -> UInt32 { Glibc.getgid() }

    /// The corresponding C function is `getegid`.
    public static func getegid() -> UInt32 { Glibc.getegid() }

    /// The corresponding C function is `getpid`.
    public static func getpid() -> Int32 { Glibc.getpid() }

    /// The working directory, or nil if it cannot be named (removed, or
    /// longer than PATH_MAX). The corresponding C function is `getcwd`.
    public static func getcwd() -> String? {
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard Glibc.getcwd(&buf, buf.count) != nil else { return nil }
        return String(nulTerminated: buf)
    }

    /// The kernel's release string (`6.18.0`). The corresponding C function
    /// is `uname`.
    public static func unameRelease() -> String {
        var uts = utsname()
        guard Glibc.uname(&uts) == 0 else { return "unknown" }
        return withUnsafeBytes(of: uts.release) { raw in
            String(nulTerminated: raw.bindMemory(to: CChar.self).map { $0 })
        }
    }

    /// Ignores a signal (`SIG_IGN`): for SIGPIPE, so a closed pipe is an
    /// EPIPE error instead of death, and before a dispatch source takes a
    /// signal over. The corresponding C function is `signal`.
    public static func ignoreSignal(_ sig: Int32) { _ = Glibc.signal(sig, SIG_IGN) }

    /// Ends the process at once with `status`, flushing stdio. The
    /// corresponding C function is `exit`.
    public static func exit(_ status: Int32) -> Never { Glibc.exit(status) }
}

/// Signal numbers the supervisor handles (`<signal.h>`).
public enum Signal {
    public static let hangUp = SIGHUP
    public static let interrupt = SIGINT
    public static let terminate = SIGTERM
    public static let pipe = SIGPIPE
    public static let kill = SIGKILL
}

extension Errno {
    /// EPERM.
    public static let notPermitted = EPERM
    /// ENOSYS: what a filtered `clone3` answers, so libc falls back to `clone`.
    public static let noFunction = ENOSYS
    /// EAGAIN (EWOULDBLOCK): nothing to read on a non-blocking descriptor.
    public static let wouldBlock = EAGAIN
}

/// Flags of `open(2)` the supervisor uses outside this module.
public enum OpenFlags {
    public static let readOnly = O_RDONLY
}

extension Sys {
    /// The names of the entries of a directory (without `.` and `..`),
    /// unsorted. The corresponding C functions are `opendir`, `readdir` and
    /// `closedir`.
    public static func readdirNames(_ directory: String) throws(SystemError) -> [String] {
        guard let d = Glibc.opendir(directory) else { throw SystemError("opendir \(directory)", errno: errno) }
        defer { Glibc.closedir(d) }
        var out: [String] = []
        while let e = Glibc.readdir(d) {
            let n = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(nulTerminated: raw.bindMemory(to: CChar.self).map { $0 })
            }
            if n != "." && n != ".." { out.append(n) }
        }
        return out
    }
}

extension Signal {
    /// SIGXCPU: sent at the soft `RLIMIT_CPU`.
    public static let cpuLimit = SIGXCPU
    /// SIGXFSZ: sent when a write passes `RLIMIT_FSIZE`.
    public static let fileSizeLimit = SIGXFSZ
    /// SIGSYS: what a seccomp filter's kill action leaves.
    public static let badSystemCall = SIGSYS
}

extension Errno {
    /// EINTR: a blocking call was interrupted by a signal.
    public static let interrupted = EINTR
}

extension OpenFlags {
    public static let directory = O_DIRECTORY
    public static let noFollow = O_NOFOLLOW
}

/// Socket types the supervisor creates pairs of (`<sys/socket.h>`).
public enum SocketType {
    /// SOCK_SEQPACKET: message boundaries kept, ancillary data (SCM_RIGHTS).
    public static let seqPacket = Int32(SOCK_SEQPACKET.rawValue)
}

extension FileDescriptor {
    /// One `read(2)` on a non-blocking descriptor: the byte count (0 at end
    /// of file), nil when nothing is ready (EAGAIN or EINTR), or the error.
    public func readAvailable(into buffer: UnsafeMutableRawBufferPointer) -> Result<Int, SystemError>? {
        let n = Glibc.read(rawValue, buffer.baseAddress, buffer.count)
        if n >= 0 { return .success(n) }
        let e = Glibc.errno
        if e == EAGAIN || e == EINTR { return nil }
        return .failure(SystemError("read", errno: e))
    }

    /// One `write(2)` on a non-blocking descriptor: the bytes written (0 when
    /// the pipe is full, EAGAIN or EINTR), or the error.
    public func writeAvailable(_ bytes: UnsafeRawBufferPointer) -> Result<Int, SystemError> {
        let n = Glibc.write(rawValue, bytes.baseAddress, bytes.count)
        if n >= 0 { return .success(n) }
        let e = Glibc.errno
        if e == EAGAIN || e == EINTR { return .success(0) }
        return .failure(SystemError("write", errno: e))
    }
}
