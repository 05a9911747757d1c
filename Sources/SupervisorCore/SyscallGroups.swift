import StrictJSON
import SupervisorPlatform

/// Named sets of syscalls, defined as data in `policies/syscall-groups.json`,
/// from which each cell's allowlist is built.
public struct SyscallGroups: Sendable {
    /// One allowlist entry: a syscall, optionally restricted to some values
    /// of one argument (compared on the low 32 bits, as the kernel does for
    /// ioctl request numbers).
    public struct Entry: Sendable, Equatable {
        public let name: String
        public let argument: Int?
        public let values: [UInt64]
    }

    public private(set) var groups: [String: [Entry]]
    public let sourcePath: String

    /// Calls every worker may make, whatever its manifest says: the last
    /// steps of the child's setup run under the filter (docs/architecture.md).
    public static let mandatory = ["execveat", "sendmsg", "close", "exit", "exit_group", "rt_sigreturn"]

    /// Calls never allowed, whatever a manifest or group says: they escape or
    /// weaken the sandbox (io_uring bypasses seccomp; the others change
    /// namespaces, mount, load code into the kernel, or reach other processes).
    public static let forbidden: Set<String> = [
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

    public static func load(path: String) throws(ConfigError) -> SyscallGroups {
        let bytes: [UInt8]
        do { bytes = try readFile(path) } catch { throw ConfigError(file: path, field: "", message: "cannot read: \(error)") }
        let doc: JSONValue
        do { doc = try JSONParser.parse(bytes) } catch { throw ConfigError(file: path, field: "", message: "not valid JSON: \(error)") }
        let r = try FieldReader(file: path, path: "", value: doc)
        _ = try r.optionalString("description")
        guard let g = try r.object("groups") else { throw r.error("groups", "required field is missing") }
        var groups: [String: [Entry]] = [:]
        for (name, v) in g.object {
            _ = g.raw(name)
            guard CellManifest.isValidName(name) else { throw g.error(name, "group names must match \(CellManifest.namePattern)") }
            guard case .array(let items) = v else { throw g.error(name, "expected an array of syscalls") }
            var entries: [Entry] = []
            for (i, item) in items.enumerated() {
                let field = "groups.\(name)[\(i)]"
                let entry: Entry
                switch item {
                case .string(let s):
                    entry = Entry(name: s, argument: nil, values: [])
                case .object:
                    let e = try FieldReader(file: path, path: field, value: item)
                    let n = try e.string("name")
                    let arg = try e.int("argument", default: 0, range: 0...5)
                    guard let vals = try e.array("values"), !vals.isEmpty else { throw e.error("values", "required: a non-empty array of integers") }
                    var nums: [UInt64] = []
                    for v in vals {
                        guard let x = v.intValue, x >= 0 else { throw e.error("values", "expected non-negative integers") }
                        nums.append(UInt64(x))
                    }
                    try e.finish()
                    entry = Entry(name: n, argument: arg, values: nums)
                default:
                    throw ConfigError(file: path, field: field, message: "expected a syscall name or {name, argument, values}")
                }
                guard Seccomp.number(of: entry.name) != nil else {
                    throw ConfigError(file: path, field: field, message: "unknown syscall \"\(entry.name)\" on this architecture")
                }
                guard !forbidden.contains(entry.name) else {
                    throw ConfigError(file: path, field: field, message: "\"\(entry.name)\" is never allowed in a worker")
                }
                entries.append(entry)
            }
            groups[name] = entries
        }
        try r.finish()
        return SyscallGroups(groups: groups, sourcePath: path)
    }

    /// Resolves a manifest's groups and extra syscalls into an allowlist.
    public func entries(for manifest: CellManifest) throws(ConfigError) -> [Entry] {
        var out: [Entry] = []
        for (i, g) in manifest.syscallGroups.enumerated() {
            guard let es = groups[g] else {
                throw ConfigError(file: manifest.sourcePath, field: "syscalls.groups[\(i)]",
                                  message: "unknown syscall group \"\(g)\" (defined: \(groups.keys.sorted().joined(separator: ", ")))")
            }
            out.append(contentsOf: es)
        }
        for (i, n) in manifest.syscallAllow.enumerated() {
            guard Seccomp.number(of: n) != nil else {
                throw ConfigError(file: manifest.sourcePath, field: "syscalls.allow[\(i)]", message: "unknown syscall \"\(n)\"")
            }
            guard !Self.forbidden.contains(n) else {
                throw ConfigError(file: manifest.sourcePath, field: "syscalls.allow[\(i)]", message: "\"\(n)\" is never allowed in a worker")
            }
            if ["clone", "fork", "vfork", "execve"].contains(n) {
                throw ConfigError(file: manifest.sourcePath, field: "syscalls.allow[\(i)]",
                                  message: "\"\(n)\" is controlled by limits.processes, not listed directly")
            }
            out.append(Entry(name: n, argument: nil, values: []))
        }
        return out
    }
}

/// Reads a whole file (manifests, policies, keys: small files).
public func readFile(_ path: String, limit: Int = 16 << 20) throws(SystemError) -> [UInt8] {
    let fd = try Sys.open(path, 0)
    defer { fd.close() }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = try fd.read(&buf)
        if n == 0 { break }
        out.append(contentsOf: buf[0..<n])
        if out.count > limit { throw SystemError("read \(path): larger than \(limit) bytes", errno: 27) }
    }
    return out
}

extension SyscallGroups {
    /// What learn mode proposes for the syscalls a cell made outside its
    /// allowlist: the fewest extra groups (smallest first) that cover them,
    /// single syscalls for the rest, and what no manifest can allow.
    public struct Proposal: Sendable, Equatable {
        public var addGroups: [String] = []
        public var addAllow: [String] = []
        /// Controlled by limits.processes rather than listed.
        public var processCalls: [String] = []
        /// Never allowed (the cell must do without them).
        public var forbidden: [String] = []
        /// ioctl request numbers no group allows: add a group entry
        /// {"name": "ioctl", "argument": 1, "values": [...]} for them.
        public var unmatchedIoctls: [UInt64] = []
    }

    public func proposal(for learned: [String], manifest: CellManifest) -> Proposal {
        var p = Proposal()
        let have = Set(manifest.syscallGroups)
        for name in learned {
            // "ioctl(21537)": a group whose conditioned ioctl entry has it.
            if name.hasPrefix("ioctl("), let request = UInt64(name.dropFirst(6).dropLast()) {
                func coversRequest(_ g: String) -> Bool {
                    groups[g]?.contains { $0.name == "ioctl" && $0.argument == 1 && $0.values.contains(request) } == true
                }
                if p.addGroups.contains(where: coversRequest) { continue }
                if let g = groups.keys.filter({ !have.contains($0) && coversRequest($0) }).sorted().first {
                    p.addGroups.append(g)
                } else {
                    p.unmatchedIoctls.append(request)
                }
                continue
            }
            if Self.forbidden.contains(name) {
                p.forbidden.append(name)
                continue
            }
            if ["clone", "fork", "vfork", "execve", "wait4", "waitid", "kill", "tgkill", "tkill"].contains(name) {
                p.processCalls.append(name)
                continue
            }
            // A group that lists the call without an argument condition (a
            // conditioned entry, like base's ioctl, was already offered).
            func covers(_ g: String) -> Bool { groups[g]?.contains { $0.name == name && $0.argument == nil } == true }
            if p.addGroups.contains(where: covers) { continue }
            let candidates = groups.keys.filter { !have.contains($0) && covers($0) }
                .sorted { (groups[$0]!.count, $0) < (groups[$1]!.count, $1) }
            if let g = candidates.first {
                p.addGroups.append(g)
            } else if !p.addAllow.contains(name) {
                p.addAllow.append(name)
            }
        }
        return p
    }
}
