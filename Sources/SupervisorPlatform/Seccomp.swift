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
    /// Conditions that must all hold (at most two).
    public let conditions: [Condition]

    public init(number: Int32, action: Action = .allow, condition: Condition? = nil) {
        self.init(number: number, action: action, conditions: condition.map { [$0] } ?? [])
    }

    public init(number: Int32, action: Action = .allow, conditions: [Condition]) {
        precondition(conditions.count <= 2, "a rule takes at most two argument conditions")
        self.number = number
        self.action = action
        self.conditions = conditions
    }
}

/// What no filter ever allows, whatever its rules say: the compiler
/// enforces these, so confinement does not depend on a manifest (or a
/// syscall group) getting them right. Manifests and groups that list them
/// are refused earlier with a message; this is the guarantee behind it.
public enum SeccompConfinement {
    public enum Reason: Sendable, Equatable {
        /// Creates or reaches network endpoints: network access comes only
        /// from a manifest's `network` declaration (connected sockets from
        /// the supervisor's broker).
        case network
        /// Kernel IPC objects (System V shm/sem/msg, POSIX message queues)
        /// outlive the worker: a call would leave state for the next one.
        case ipc
        /// Escapes or weakens the sandbox (namespaces, mounts, kernel code,
        /// other processes' memory, io_uring, which bypasses seccomp).
        case sandbox
    }

    public static let network: Set<String> = ["socket", "connect", "bind", "listen", "accept", "accept4"]

    public static let ipc: Set<String> = [
        "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop", "semctl", "msgget", "msgsnd",
        "msgrcv", "msgctl", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify",
        "mq_getsetattr",
    ]

    public static let sandbox: Set<String> = [
        "io_uring_setup", "io_uring_enter", "io_uring_register", "ptrace", "process_vm_readv",
        "process_vm_writev", "pidfd_getfd", "unshare", "setns", "mount", "umount2", "pivot_root", "chroot",
        "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "personality",
        "modify_ldt", "open_by_handle_at", "name_to_handle_at", "init_module", "finit_module",
        "delete_module", "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff",
        "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "acct", "quotactl", "mount_setattr",
        "fsopen", "fsmount", "fsconfig", "fspick", "move_mount", "open_tree", "seccomp", "vhangup",
        "lookup_dcookie", "kcmp", "iopl", "ioperm", "syslog", "uselib", "sethostname", "setdomainname",
        "clone3", "fanotify_init", "memfd_secret",
    ]

    /// Why `name` is never allowed, or nil.
    public static func reason(_ name: String) -> Reason? {
        if network.contains(name) { return .network }
        if ipc.contains(name) { return .ipc }
        if sandbox.contains(name) { return .sandbox }
        return nil
    }

    /// Why syscall `number` (native) is never allowed, or nil.
    public static func reason(number: Int32) -> Reason? { byNumber[number] }

    private static let byNumber: [Int32: Reason] = {
        var out: [Int32: Reason] = [:]
        for (names, r) in [(network, Reason.network), (ipc, .ipc), (sandbox, .sandbox)] {
            for n in names { if let nr = Seccomp.number(of: n) { out[nr] = r } }
        }
        return out
    }()

    // Kernel constants (socket(2), memfd_create(2)).
    static let afUnix: UInt64 = 1
    static let afInet: UInt64 = 2
    static let afInet6: UInt64 = 10
    static let afNetlink: UInt64 = 16
    static let sockDgram: UInt64 = 2
    static let sockStream: UInt64 = 1
    static let sockSeqpacket: UInt64 = 5
    static let sockTypeFlags: UInt64 = 0x80000 | 0x800  // SOCK_CLOEXEC | SOCK_NONBLOCK
    static let mfdNoexecSeal: UInt64 = 0x0008
    static let mfdExec: UInt64 = 0x0010

    /// The rules as the kernel gets them:
    /// - allow rules for never-allowed syscalls are dropped (the call takes
    ///   the default action: the supervisor names it and kills the worker);
    ///   errno rules stay (clone3 answers ENOSYS);
    /// - `socket(AF_UNIX, …)` fails with EACCES in every filter: glibc tries
    ///   one for nscd lookups and syslog() and falls back when it fails, so
    ///   ordinary programs keep working; every other family is a violation;
    /// - `socketpair` only for AF_UNIX stream or seqpacket pairs: a datagram
    ///   socket honours a destination address in sendmsg even on a pair, so
    ///   it would reach any datagram socket on the host (journald,
    ///   /dev/log); a stream socket refuses one and seqpacket ignores it;
    /// - `memfd_create` only with MFD_NOEXEC_SEAL and without MFD_EXEC: an
    ///   anonymous file can never become executable (Landlock does not
    ///   mediate memfds, so exec of one would run code nobody verified).
    /// - `proxyEgress` (a worker in a network namespace of its own whose
    ///   only endpoint is the egress proxy, docs/egress.md): `socket` for
    ///   AF_INET and AF_INET6 stream sockets, and `connect`; the namespace,
    ///   not the filter, decides where a connect can lead (only to the
    ///   proxy's listener). Datagram sockets (AF_INET, AF_INET6) and
    ///   AF_NETLINK fail with EACCES, as AF_UNIX does: a resolver's DNS
    ///   query or getaddrinfo's AI_ADDRCONFIG probe then fails and the
    ///   program goes on (the proxy resolves names). Nothing else: a raw or
    ///   packet socket, `bind`, `listen`, `accept` take the default action
    ///   (the supervisor names the call and kills the worker).
    public static func apply(_ rules: [SeccompRule], proxyEgress: Bool = false) -> [SeccompRule] {
        let socketpair = Seccomp.number(of: "socketpair")
        let memfd = Seccomp.number(of: "memfd_create")
        let low32: UInt64 = 0xFFFF_FFFF
        var out: [SeccompRule] = []
        var pairs = false
        var memfds = false
        for r in rules {
            if r.action == .allow {
                if reason(number: r.number) != nil { continue }
                if r.number == socketpair {
                    pairs = true
                    continue
                }
                if r.number == memfd {
                    memfds = true
                    continue
                }
            }
            out.append(r)
        }
        if let nr = Seccomp.number(of: "socket") {
            out.append(
                SeccompRule(
                    number: nr, action: .fail(errno: EACCES),
                    condition: .init(argument: 0, mask: low32, value: afUnix)))
        }
        if proxyEgress, let nr = Seccomp.number(of: "socket") {
            for family in [afInet, afInet6] {
                out.append(
                    SeccompRule(
                        number: nr,
                        conditions: [
                            .init(argument: 0, mask: low32, value: family),
                            .init(argument: 1, mask: low32 & ~sockTypeFlags, value: sockStream),
                        ]))
            }
            for family in [afInet, afInet6] {
                out.append(
                    SeccompRule(
                        number: nr, action: .fail(errno: EACCES),
                        conditions: [
                            .init(argument: 0, mask: low32, value: family),
                            .init(argument: 1, mask: low32 & ~sockTypeFlags, value: sockDgram),
                        ]))
            }
            out.append(
                SeccompRule(
                    number: nr, action: .fail(errno: EACCES),
                    condition: .init(argument: 0, mask: low32, value: afNetlink)
                ))
            if let c = Seccomp.number(of: "connect") { out.append(SeccompRule(number: c)) }
        }
        if pairs, let nr = socketpair {
            for type in [sockStream, sockSeqpacket] {
                out.append(
                    SeccompRule(
                        number: nr,
                        conditions: [
                            .init(argument: 0, mask: low32, value: afUnix),
                            .init(argument: 1, mask: low32 & ~sockTypeFlags, value: type),
                        ]))
            }
        }
        if memfds, let nr = memfd {
            out.append(
                SeccompRule(
                    number: nr,
                    condition: .init(
                        argument: 1, mask: mfdNoexecSeal | mfdExec,
                        value: mfdNoexecSeal)))
        }
        return out
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

    /// x32 syscalls arrive as AUDIT_ARCH_X86_64 with this bit in the number.
    public static let x32SyscallBit: Int32 = 0x4000_0000
    /// libseccomp's token for the x32 table (SCMP_ARCH_X32).
    static let x32Token: UInt32 = 0x4000_003E

    public static var apiLevel: Int { Int(mcps_seccomp_api_level()) }

    /// Compiles `rules` after `SeccompConfinement.apply`: whatever the
    /// rules say, the program never allows what that type excludes.
    /// `proxyEgress`: see `SeccompConfinement.apply`.
    public static func compile(_ rules: [SeccompRule], defaultAction: DefaultAction, proxyEgress: Bool = false)
        throws(CompileError) -> SeccompProgram
    {
        let raw = SeccompConfinement.apply(rules, proxyEgress: proxyEgress).map { r -> mcps_seccomp_rule in
            var m = mcps_seccomp_rule()
            m.nr = r.number
            switch r.action {
            case .allow: m.errno_action = -1
            case .fail(let e): m.errno_action = e
            }
            m.arg_index = -1
            m.arg2_index = -1
            if let c = r.conditions.first {
                m.arg_index = Int32(c.argument)
                m.arg_mask = c.mask
                m.arg_value = c.value
            }
            if r.conditions.count > 1 {
                let c = r.conditions[1]
                m.arg2_index = Int32(c.argument)
                m.arg2_mask = c.mask
                m.arg2_value = c.value
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

extension Seccomp {
    /// The syscall profiler's program (docs/resilience.md, "Syscall
    /// profiler"): every native call goes to the listener
    /// (SECCOMP_RET_USER_NOTIF), except `passing`, which it allows. Its only
    /// answers are allow and notify: installed under an allowlist that kills
    /// what it refuses, it can never let through a call the allowlist
    /// refuses, since the kernel takes the strictest answer of all filters
    /// (seccomp(2), "the return value ... with the highest precedence"). A
    /// call from another architecture is allowed here, and the allowlist
    /// kills it. `passing` are the calls the child makes after this filter
    /// and before the listener reaches the supervisor (installing the
    /// allowlist, sending the listener, exec); they are never notified.
    public static func profilerProgram(passing: [String]) -> SeccompProgram {
        let numbers = passing.compactMap { number(of: $0) }
        precondition(numbers.count < 250, "a jump offset is one byte")
        let k = UInt32(numbers.count)
        // struct sock_filter {u16 code; u8 jt; u8 jf; u32 k} (linux/filter.h), host order.
        var out: [UInt8] = []
        func op(_ code: UInt16, _ jt: UInt8, _ jf: UInt8, _ value: UInt32) {
            withUnsafeBytes(of: code) { out += $0 }
            out += [jt, jf]
            withUnsafeBytes(of: value) { out += $0 }
        }
        let load: UInt16 = 0x20  // BPF_LD | BPF_W | BPF_ABS
        let jumpIfEqual: UInt16 = 0x15  // BPF_JMP | BPF_JEQ | BPF_K
        let ret: UInt16 = 0x06  // BPF_RET | BPF_K
        op(load, 0, 0, 4)  // seccomp_data.arch
        op(jumpIfEqual, 0, UInt8(k + 2), nativeArchitecture)  // another architecture: allow (last)
        op(load, 0, 0, 0)  // seccomp_data.nr
        for (i, nr) in numbers.enumerated() {
            op(jumpIfEqual, UInt8(k - UInt32(i)), 0, UInt32(bitPattern: nr))
        }
        op(ret, 0, 0, returnUserNotification)
        op(ret, 0, 0, returnAllow)
        return SeccompProgram(bytes: out, instructionCount: out.count / 8)
    }

    /// SECCOMP_RET_USER_NOTIF and SECCOMP_RET_ALLOW (linux/seccomp.h).
    static let returnUserNotification: UInt32 = 0x7FC0_0000
    static let returnAllow: UInt32 = 0x7FFF_0000
}

/// One denied syscall reported through the user-notification listener.
public struct SeccompNotification: Sendable, Equatable {
    public let id: UInt64
    public let pid: UInt32
    public let number: Int32
    public let architecture: UInt32
    public let arguments: [UInt64]

    /// An x32 call: the native audit architecture with the x32 bit set.
    public var isX32: Bool {
        architecture == 0xC000_003E && number & Seccomp.x32SyscallBit != 0
    }

    /// A call made through the native syscall table (not i386, not x32).
    public var isNative: Bool { architecture == Seccomp.nativeArchitecture && !isX32 }

    public var syscallName: String {
        if isX32 { return Seccomp.name(of: number, arch: Seccomp.x32Token) }
        return Seccomp.name(of: number, arch: architecture)
    }

    /// "x86_64", "i386", "x32".
    public var architectureName: String { isX32 ? "x32" : Seccomp.architectureName(architecture) }
}

/// The supervisor's end of a worker's seccomp listener.
public struct SeccompListener {
    public let fd: FileDescriptor
    private static let notifSize: UInt16 = {
        var n: UInt16 = 0
        var r: UInt16 = 0
        var d: UInt16 = 0
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
        var id: UInt64 = 0
        var pid: UInt32 = 0
        var nr: Int32 = 0
        var arch: UInt32 = 0
        var args = [UInt64](repeating: 0, count: 6)
        let rc = args.withUnsafeMutableBufferPointer {
            mcps_seccomp_notif_recv(fd.rawValue, buf, UInt16(size), &id, &pid, &nr, &arch, $0.baseAddress!)
        }
        if rc != 0 { throw SystemError("SECCOMP_IOCTL_NOTIF_RECV", errno: Glibc.errno) }
        return SeccompNotification(id: id, pid: pid, number: nr, architecture: arch, arguments: args)
    }

    /// Fails the call with `errno` (learn mode: what no filter allows is
    /// recorded and refused, never run).
    public func deny(_ n: SeccompNotification, errno: Int32) {
        _ = mcps_seccomp_notif_deny(fd.rawValue, n.id, errno)
    }

    /// Asks the kernel to switch straight to the woken side on the same CPU
    /// for each notification and answer (SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP,
    /// Linux 6.6): the profiler answers every syscall. False on an older
    /// kernel, where the listener works as before.
    @discardableResult
    public func preferSynchronousWakeUp() -> Bool { mcps_seccomp_notif_sync_wakeup(fd.rawValue) == 0 }

    /// Lets the syscall run: learn mode (see supervisor_shim.h), and the
    /// syscall profiler, whose listener sees only calls the allowlist lets
    /// through (`Seccomp.profilerProgram`).
    public func allowOnce(_ n: SeccompNotification) {
        _ = mcps_seccomp_notif_continue(fd.rawValue, n.id)
    }
}
