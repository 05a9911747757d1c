import CSupervisorShim

#if canImport(Glibc)
import Glibc
#endif

/// The child's setup stages in spawn.c, in the order they run: a mirror of
/// the C `mcps_stage` (same raw values, same names as `mcps_stage_name`; a
/// test checks both ways, so a stage added in C fails the tests until it is
/// added here).
public enum SpawnStage: Int32, Sendable, CaseIterable, CustomStringConvertible {
    /// No stage: never the stage of a failure (a value this build does not
    /// know is reported as `none` too).
    case none = 0
    case clone = 1
    case signals = 2
    case userNamespace = 3
    case fileDescriptors = 4
    case session = 5
    case rlimits = 6
    case boundingSet = 7
    case ids = 8
    case capabilities = 9
    case parentDeathSignal = 10
    case chdir = 11
    case noNewPrivileges = 12
    case landlock = 13
    case signalMask = 14
    case seccomp = 15
    case listener = 16
    case exec = 17
    /// Private mounts and the bounded scratch tmpfs (runs after `session`,
    /// before `rlimits`).
    case scratchMount = 18
    /// In the worker's network namespace: `lo` up, the egress listener
    /// made and sent to the supervisor (runs after `session`, before
    /// `scratchMount`).
    case egressListener = 19

    /// The stage's name in messages and the security log (as `mcps_stage_name`).
    public var description: String {
        switch self {
        case .none: return "none"
        case .clone: return "clone"
        case .signals: return "signals"
        case .userNamespace: return "user-namespace"
        case .fileDescriptors: return "file-descriptors"
        case .session: return "setsid"
        case .rlimits: return "rlimits"
        case .boundingSet: return "capability-bounding-set"
        case .ids: return "uid-gid"
        case .capabilities: return "capabilities"
        case .parentDeathSignal: return "parent-death-signal"
        case .chdir: return "chdir-scratch"
        case .noNewPrivileges: return "no-new-privs"
        case .landlock: return "landlock"
        case .signalMask: return "signal-mask"
        case .seccomp: return "seccomp"
        case .listener: return "seccomp-listener"
        case .exec: return "exec"
        case .scratchMount: return "scratch-mount"
        case .egressListener: return "egress-listener"
        }
    }

    /// The C side's name for a raw stage value ("unknown" for none): what
    /// the mirror test compares against.
    public static func shimName(_ raw: Int32) -> String { String(cString: mcps_stage_name(raw)) }
}

/// A spawn that failed in the child's setup (or in clone itself): the stage
/// and the errno the child reported over its close-on-exec pipe.
public struct SpawnError: Error, Equatable, Sendable, CustomStringConvertible {
    public let stage: SpawnStage
    public let errno: Int32

    public init(stage: SpawnStage, errno: Int32) {
        self.stage = stage
        self.errno = errno
    }

    public var description: String { "worker setup failed at stage \(stage): \(Errno.describe(errno))" }
}

/// What the child needs; see `mcps_spawn_config` in supervisor_shim.h.
public struct SpawnRequest {
    public var executable: FileDescriptor
    public var argv: [String]
    public var environment: [String]
    public var stdin: FileDescriptor
    public var stdout: FileDescriptor
    public var stderr: FileDescriptor
    public var request: FileDescriptor
    public var response: FileDescriptor
    public var workingDirectory: String
    public var namespaceFlags: Int32 = 0
    public var uidMap: String? = nil
    public var gidMap: String? = nil
    public var rlimits: [(resource: Int32, soft: UInt64, hard: UInt64)] = []
    public var dropBoundingSet = false
    public var changeIDs: (uid: UInt32, gid: UInt32)? = nil
    public var landlockRuleset: FileDescriptor? = nil
    public var seccompProgram: SeccompProgram? = nil
    public var seccompNotifySocket: FileDescriptor? = nil
    /// The syscall profiler's program (`Seccomp.profilerProgram`), installed
    /// before `seccompProgram` with the listener; needs `seccompNotifySocket`,
    /// and `seccompProgram` must then kill what it refuses.
    public var seccompProfilerProgram: SeccompProgram? = nil
    /// The worker's end of its connection-broker socket; becomes fd 5.
    public var broker: FileDescriptor? = nil
    /// A tmpfs mounted on the scratch directory in the worker's own mount
    /// namespace (namespaceFlags must hold `Namespaces.mount`), and the
    /// Landlock rights granted beneath it (`mcps_spawn_config.scratch_dir`).
    public var scratchMount: ScratchMount? = nil
    /// The egress stage (`mcps_spawn_config.egress_socket_fd`): the child
    /// sends a TCP listener on 127.0.0.1:`port`, made in its own network
    /// namespace (namespaceFlags must hold `Namespaces.net`), over `socket`.
    public var egressListener: (socket: FileDescriptor, port: UInt16)? = nil

    public init(
        executable: FileDescriptor, argv: [String], environment: [String], stdin: FileDescriptor,
        stdout: FileDescriptor, stderr: FileDescriptor, request: FileDescriptor,
        response: FileDescriptor, workingDirectory: String
    ) {
        self.executable = executable
        self.argv = argv
        self.environment = environment
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.request = request
        self.response = response
        self.workingDirectory = workingDirectory
    }
}

/// A per-worker tmpfs on the scratch directory: the kernel bounds its bytes
/// and inodes.
public struct ScratchMount: Sendable {
    public var directory: String
    public var sizeBytes: UInt64
    /// Files, directories and links, the tmpfs root not counted.
    public var files: UInt64
    public var uid: UInt32
    public var gid: UInt32
    /// Landlock rights beneath the tmpfs root.
    public var access: Landlock.Access

    public init(directory: String, sizeBytes: UInt64, files: UInt64, uid: UInt32, gid: UInt32, access: Landlock.Access)
    {
        self.directory = directory
        self.sizeBytes = sizeBytes
        self.files = files
        self.uid = uid
        self.gid = gid
        self.access = access
    }

    /// tmpfs options: nr_inodes counts the root directory too.
    public var options: String {
        "size=\(sizeBytes),nr_inodes=\(files + 1),mode=0700,uid=\(uid),gid=\(gid)"
    }
}

public enum Namespaces {
    // <linux/sched.h>; Glibc's Swift overlay hides them without _GNU_SOURCE.
    public static let mount: Int32 = 0x0002_0000
    public static let uts: Int32 = 0x0400_0000
    public static let ipc: Int32 = 0x0800_0000
    public static let user: Int32 = 0x1000_0000
    public static let pid: Int32 = 0x2000_0000
    public static let net: Int32 = 0x4000_0000
}

public enum Resource {
    public static let cpu = Int32(RLIMIT_CPU.rawValue)
    public static let addressSpace = Int32(RLIMIT_AS.rawValue)
    public static let openFiles = Int32(RLIMIT_NOFILE.rawValue)
    public static let fileSize = Int32(RLIMIT_FSIZE.rawValue)
    public static let processes: Int32 = 6  // RLIMIT_NPROC
    public static let core = Int32(RLIMIT_CORE.rawValue)
}

/// How a process ended, with its resource usage.
public struct ProcessExit: Equatable, Sendable {
    public enum Status: Equatable, Sendable {
        case exited(Int32)
        case signaled(Int32)
    }
    public let status: Status
    public let userCPUNanoseconds: UInt64
    public let systemCPUNanoseconds: UInt64
    /// Peak resident set size.
    public let maxRSSBytes: UInt64
}

/// A running worker, addressed only through its pidfd (no PID reuse races).
public final class WorkerProcess: @unchecked Sendable {
    // @unchecked: `reaped` is touched only by the thread that owns the worker (the spawning thread, then the
    // call's, handed over under the prespawner's lock); one owner at a time.
    public let pid: Int32
    public let pidfd: FileDescriptor
    private var reaped = false

    init(pid: Int32, pidfd: FileDescriptor) {
        self.pid = pid
        self.pidfd = pidfd
    }

    /// Starts a worker; the whole setup sequence runs in C (spawn.c).
    public static func spawn(_ r: SpawnRequest) throws(SpawnError) -> WorkerProcess {
        let argv = r.argv.map { strdup($0) } + [nil]
        let envp = r.environment.map { strdup($0) } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        let limits = r.rlimits.map { mcps_rlimit(resource: $0.resource, soft: $0.soft, hard: $0.hard) }
        var result = mcps_spawn_result()
        let scratchDir = r.scratchMount.map { strdup($0.directory)! }
        let scratchOptions = r.scratchMount.map { strdup($0.options)! }
        defer {
            free(scratchDir)
            free(scratchOptions)
        }
        let rc: Int32 = r.workingDirectory.withCString { wd in
            withOptionalCString(r.uidMap) { uidMap in
                withOptionalCString(r.gidMap) { gidMap in
                    limits.withUnsafeBufferPointer { lim in
                        argv.withUnsafeBufferPointer { av in
                            envp.withUnsafeBufferPointer { ev in
                                withSeccomp(r.seccompProgram) { filter, len in
                                    withSeccomp(r.seccompProfilerProgram) { profiler, profilerLength in
                                        var c = mcps_spawn_config()
                                        c.exec_fd = r.executable.rawValue
                                        c.argv = av.baseAddress!
                                        c.envp = ev.baseAddress!
                                        c.stdin_fd = r.stdin.rawValue
                                        c.stdout_fd = r.stdout.rawValue
                                        c.stderr_fd = r.stderr.rawValue
                                        c.request_fd = r.request.rawValue
                                        c.response_fd = r.response.rawValue
                                        c.broker_fd = r.broker?.rawValue ?? -1
                                        c.egress_socket_fd = r.egressListener?.socket.rawValue ?? -1
                                        c.egress_port = r.egressListener?.port ?? 0
                                        c.workdir = wd
                                        c.scratch_dir = UnsafePointer(scratchDir)
                                        c.scratch_mount_options = UnsafePointer(scratchOptions)
                                        c.scratch_access = r.scratchMount?.access.rawValue ?? 0
                                        c.namespace_flags = r.namespaceFlags
                                        c.uid_map = uidMap
                                        c.gid_map = gidMap
                                        c.rlimits = lim.baseAddress
                                        c.rlimit_count = Int32(lim.count)
                                        c.drop_bounding_set = r.dropBoundingSet ? 1 : 0
                                        c.last_cap = lastCapability
                                        if let ids = r.changeIDs {
                                            c.change_ids = 1
                                            c.uid = ids.uid
                                            c.gid = ids.gid
                                        }
                                        c.landlock_ruleset_fd = r.landlockRuleset?.rawValue ?? -1
                                        c.seccomp_filter = filter
                                        c.seccomp_filter_len = len
                                        c.notify_socket_fd = r.seccompNotifySocket?.rawValue ?? -1
                                        c.seccomp_profiler_filter = profiler
                                        c.seccomp_profiler_filter_len = profilerLength
                                        c.parent_pid = getpid()
                                        return mcps_spawn(&c, &result)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        if rc != 0 {
            throw SpawnError(stage: SpawnStage(rawValue: result.stage) ?? .none, errno: result.error)
        }
        return WorkerProcess(pid: result.pid, pidfd: FileDescriptor(rawValue: result.pidfd))
    }

    /// Sends a signal through the pidfd. Harmless after exit (ESRCH ignored).
    public func signal(_ sig: Int32) {
        _ = mcps_pidfd_send_signal(pidfd.rawValue, sig)
    }

    /// The CPU time (user + system, all threads) the process has used so
    /// far: the clock `RLIMIT_CPU` is compared against. Nil once reaped or
    /// if the kernel refuses. Valid while the worker is not reaped (its pid
    /// cannot be reused before), including as a zombie.
    /// The corresponding C function is `clock_gettime` on the process's
    /// CPUCLOCK_PROF clock (`MAKE_PROCESS_CPUCLOCK(pid, 0)` in the kernel).
    public func cpuNanoseconds() -> UInt64? {
        guard !reaped else { return nil }
        let clock = clockid_t(~pid << 3)
        var ts = timespec()
        guard clock_gettime(clock, &ts) == 0 else { return nil }
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// Waits for the process to end and reaps it.
    public func wait() throws(SystemError) -> ProcessExit {
        var code: Int32 = 0
        var status: Int32 = 0
        var ru = rusage()
        if mcps_pidfd_wait(pidfd.rawValue, 0, &code, &status, &ru) < 0 {
            throw SystemError("waitid", errno: Glibc.errno)
        }
        reaped = true
        let s: ProcessExit.Status = code == CLD_EXITED ? .exited(status) : .signaled(status)
        func ns(_ tv: timeval) -> UInt64 { UInt64(tv.tv_sec) * 1_000_000_000 + UInt64(tv.tv_usec) * 1000 }
        return ProcessExit(
            status: s, userCPUNanoseconds: ns(ru.ru_utime), systemCPUNanoseconds: ns(ru.ru_stime),
            maxRSSBytes: UInt64(ru.ru_maxrss) * 1024)
    }

    /// Kills and reaps if still needed, then closes the pidfd.
    public func close() {
        if !reaped {
            signal(SIGKILL)
            _ = try? wait()
        }
        pidfd.close()
    }
}

/// Read once: /proc/sys/kernel/cap_last_cap does not change while running.
private let lastCapability = Sys.lastCapability()

private func withOptionalCString<R>(_ s: String?, _ body: (UnsafePointer<CChar>?) -> R) -> R {
    guard let s else { return body(nil) }
    return s.withCString { body($0) }
}

private func withSeccomp<R>(_ p: SeccompProgram?, _ body: (UnsafeRawPointer?, UInt16) -> R) -> R {
    guard let p else { return body(nil, 0) }
    return p.bytes.withUnsafeBytes { body($0.baseAddress, UInt16(p.instructionCount)) }
}

/// Signal names for messages.
public func signalName(_ sig: Int32) -> String {
    switch sig {
    case SIGHUP: return "SIGHUP"
    case SIGINT: return "SIGINT"
    case SIGQUIT: return "SIGQUIT"
    case SIGILL: return "SIGILL"
    case SIGTRAP: return "SIGTRAP"
    case SIGABRT: return "SIGABRT"
    case SIGBUS: return "SIGBUS"
    case SIGFPE: return "SIGFPE"
    case SIGKILL: return "SIGKILL"
    case SIGSEGV: return "SIGSEGV"
    case SIGPIPE: return "SIGPIPE"
    case SIGALRM: return "SIGALRM"
    case SIGTERM: return "SIGTERM"
    case SIGXCPU: return "SIGXCPU"
    case SIGXFSZ: return "SIGXFSZ"
    case SIGSYS: return "SIGSYS"
    case SIGSTOP: return "SIGSTOP"
    default: return "signal \(sig)"
    }
}
