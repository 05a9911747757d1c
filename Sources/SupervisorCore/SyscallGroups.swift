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

    /// Calls never allowed, whatever a manifest or group says (the filter
    /// compiler enforces it: `SeccompConfinement`): they reach the network,
    /// leave IPC objects behind, or escape or weaken the sandbox.
    public static var forbidden: Set<String> {
        SeccompConfinement.network.union(SeccompConfinement.ipc).union(SeccompConfinement.sandbox)
    }

    /// Why a manifest or group may not list `name`, or nil if it may.
    public static func refusal(_ name: String) -> String? {
        switch SeccompConfinement.reason(name) {
        case .network?:
            return
                "\"\(name)\" is never allowed: network access comes only from the manifest's \"network\" declaration "
                + "(connected sockets from the supervisor's broker, docs/manifest.md 'network')"
        case .ipc?:
            return "\"\(name)\" is never allowed: System V IPC objects and POSIX message queues outlive the call, "
                + "so they would carry state into the next one"
        case .sandbox?:
            return "\"\(name)\" is never allowed in a worker"
        case nil:
            return nil
        }
    }

    public static func load(path: String) throws(ConfigError) -> SyscallGroups {
        let bytes: [UInt8]
        do { bytes = try readFile(path) } catch {
            throw ConfigError(file: path, field: "", message: "cannot read: \(error)")
        }
        let doc: JSONValue
        do { doc = try JSONParser.parse(bytes) } catch {
            throw ConfigError(file: path, field: "", message: "not valid JSON: \(error)")
        }
        let r = try FieldReader(file: path, path: "", value: doc)
        _ = try r.optionalString("description")
        guard let g = try r.object("groups") else { throw r.error("groups", "required field is missing") }
        var groups: [String: [Entry]] = [:]
        for (name, v) in g.object {
            _ = g.raw(name)
            guard CellManifest.isValidName(name) else {
                throw g.error(name, "group names must match \(CellManifest.namePattern)")
            }
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
                    guard let vals = try e.array("values"), !vals.isEmpty else {
                        throw e.error("values", "required: a non-empty array of integers")
                    }
                    var nums: [UInt64] = []
                    for v in vals {
                        guard let x = v.intValue, x >= 0 else {
                            throw e.error("values", "expected non-negative integers")
                        }
                        nums.append(UInt64(x))
                    }
                    try e.finish()
                    entry = Entry(name: n, argument: arg, values: nums)
                default:
                    throw ConfigError(
                        file: path, field: field, message: "expected a syscall name or {name, argument, values}")
                }
                guard Seccomp.number(of: entry.name) != nil else {
                    throw ConfigError(
                        file: path, field: field, message: "unknown syscall \"\(entry.name)\" on this architecture")
                }
                if let why = refusal(entry.name) { throw ConfigError(file: path, field: field, message: why) }
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
                throw ConfigError(
                    file: manifest.sourcePath, field: "syscalls.groups[\(i)]",
                    message: "unknown syscall group \"\(g)\" (defined: \(groups.keys.sorted().joined(separator: ", ")))"
                )
            }
            out.append(contentsOf: es)
        }
        for (i, n) in manifest.syscallAllow.enumerated() {
            guard Seccomp.number(of: n) != nil else {
                throw ConfigError(
                    file: manifest.sourcePath, field: "syscalls.allow[\(i)]", message: "unknown syscall \"\(n)\"")
            }
            // Never-allowed calls are refused when the manifest is parsed, and
            // the filter compiler drops them whatever reaches it.
            if ["clone", "fork", "vfork", "execve"].contains(n) {
                throw ConfigError(
                    file: manifest.sourcePath, field: "syscalls.allow[\(i)]",
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
        /// Network calls: never allowed; network access comes only from the
        /// manifest's `network` declaration.
        public var network: [String] = []
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
                    groups[g]?.contains { $0.name == "ioctl" && $0.argument == 1 && $0.values.contains(request) }
                        == true
                }
                if p.addGroups.contains(where: coversRequest) { continue }
                if let g = groups.keys.filter({ !have.contains($0) && coversRequest($0) }).sorted().first {
                    p.addGroups.append(g)
                } else {
                    p.unmatchedIoctls.append(request)
                }
                continue
            }
            switch SeccompConfinement.reason(name) {
            case .network?:
                if !p.network.contains(name) { p.network.append(name) }
                continue
            case .ipc?, .sandbox?:
                if !p.forbidden.contains(name) { p.forbidden.append(name) }
                continue
            case nil:
                break
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
