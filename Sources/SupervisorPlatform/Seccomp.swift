import CSupervisorShim
#if canImport(Glibc)
import Glibc
#endif

/// A compiled classic-BPF seccomp program, ready to install in a child.
public struct SeccompProgram: Sendable {
    public let bytes: [UInt8]
    public let instructionCount: Int
}

/// One allowlist entry, by native syscall number.
public struct SeccompRule: Equatable, Sendable {
    public enum Action: Equatable, Sendable {
        case allow
        case fail(errno: Int32)
    }
    public struct Condition: Equatable, Sendable {
        public let argument: Int
        public let mask: UInt64
        public let value: UInt64
        public init(argument: Int, mask: UInt64, value: UInt64) {
            self.argument = argument
            self.mask = mask
            self.value = value
        }
    }
    public let number: Int32
    public let action: Action
    public let condition: Condition?

    public init(number: Int32, action: Action = .allow, condition: Condition? = nil) {
        self.number = number
        self.action = action
        self.condition = condition
    }
}

public enum Seccomp {
    public enum DefaultAction: Int32, Sendable {
        case killProcess = 0
        /// The supervisor receives the denied call, names it, kills the worker.
        case notify = 1
        case log = 2
    }

    public struct CompileError: Error, CustomStringConvertible {
        public let errno: Int32
        public var description: String { "libseccomp could not compile the filter: \(Errno.describe(errno))" }
    }

    /// Native syscall number for a name (libseccomp's table), nil if unknown.
    public static func number(of name: String) -> Int32? {
        let n = mcps_seccomp_syscall_number(name)
        return n < 0 ? nil : n
    }

    /// The name of a syscall number on an audit architecture.
    public static func name(of nr: Int32, arch: UInt32 = nativeArchitecture) -> String {
        var buf = [CChar](repeating: 0, count: 64)
        if mcps_seccomp_syscall_name(nr, arch, &buf, 64) == 0 {
            return String(nulTerminated: buf)
        }
        return "syscall \(nr)"
    }

    public static var nativeArchitecture: UInt32 { mcps_seccomp_native_arch() }

    public static func architectureName(_ arch: UInt32) -> String {
        switch arch {
        case 0xC000_003E: return "x86_64"
        case 0x4000_0003: return "i386"
        case 0xC000_00B7: return "aarch64"
        default: return "arch 0x\(String(arch, radix: 16))"
        }
    }

    public static var apiLevel: Int { Int(mcps_seccomp_api_level()) }

    public static func compile(_ rules: [SeccompRule], defaultAction: DefaultAction) throws(CompileError) -> SeccompProgram {
        let raw = rules.map { r -> mcps_seccomp_rule in
            var m = mcps_seccomp_rule()
            m.nr = r.number
            switch r.action {
            case .allow: m.errno_action = -1
            case .fail(let e): m.errno_action = e
            }
            if let c = r.condition {
                m.arg_index = Int32(c.argument)
                m.arg_mask = c.mask
                m.arg_value = c.value
            } else {
                m.arg_index = -1
            }
            return m
        }
        var program: UnsafeMutableRawPointer? = nil
        var length = 0
        let rc = raw.withUnsafeBufferPointer {
            mcps_seccomp_compile($0.baseAddress, Int32($0.count), defaultAction.rawValue, &program, &length)
        }
        guard rc == 0, let program else { throw CompileError(errno: -rc) }
        defer { free(program) }
        let bytes = Array(UnsafeRawBufferPointer(start: program, count: length * 8))
        return SeccompProgram(bytes: bytes, instructionCount: length)
    }
}

/// One denied syscall reported through the user-notification listener.
public struct SeccompNotification: Sendable, Equatable {
    public let id: UInt64
    public let pid: UInt32
    public let number: Int32
    public let architecture: UInt32
    public let arguments: [UInt64]

    public var syscallName: String { Seccomp.name(of: number, arch: architecture) }
}

/// The supervisor's end of a worker's seccomp listener.
public struct SeccompListener {
    public let fd: FileDescriptor
    private static let notifSize: UInt16 = {
        var n: UInt16 = 0, r: UInt16 = 0, d: UInt16 = 0
        return mcps_seccomp_notif_sizes(&n, &r, &d) == 0 ? max(n, 80) : 128
    }()

    /// Receives the listener the child sent over `socket` before it exec'd.
    public static func receive(from socket: FileDescriptor) throws(SystemError) -> SeccompListener {
        let fd = mcps_recv_fd(socket.rawValue)
        if fd < 0 { throw SystemError("receive seccomp listener", errno: Glibc.errno) }
        return SeccompListener(fd: FileDescriptor(rawValue: fd))
    }

    /// Reads one pending notification (call when the fd polls readable).
    public func receive() throws(SystemError) -> SeccompNotification {
        let size = Int(Self.notifSize)
        let buf = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
        defer { buf.deallocate() }
        var id: UInt64 = 0, pid: UInt32 = 0, nr: Int32 = 0, arch: UInt32 = 0
        var args = [UInt64](repeating: 0, count: 6)
        let rc = args.withUnsafeMutableBufferPointer {
            mcps_seccomp_notif_recv(fd.rawValue, buf, UInt16(size), &id, &pid, &nr, &arch, $0.baseAddress!)
        }
        if rc != 0 { throw SystemError("SECCOMP_IOCTL_NOTIF_RECV", errno: Glibc.errno) }
        return SeccompNotification(id: id, pid: pid, number: nr, architecture: arch, arguments: args)
    }

    /// Fails the call with `errno`.
    public func deny(_ n: SeccompNotification, errno: Int32) {
        _ = mcps_seccomp_notif_deny(fd.rawValue, n.id, errno)
    }

    /// Lets the syscall run (learn mode only: see supervisor_shim.h).
    public func allowOnce(_ n: SeccompNotification) {
        _ = mcps_seccomp_notif_continue(fd.rawValue, n.id)
    }
}
