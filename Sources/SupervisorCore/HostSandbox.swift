import SupervisorPlatform

/// What this kernel and this process can give a worker, probed once at start.
public struct KernelFeatures: Sendable {
    public var seccompAPILevel: Int
    public var seccompUserNotification: Bool
    public var landlockABI: Int?
    public var landlockError: String?
    public var isRoot: Bool
    public var canDropBoundingSet: Bool
    public var userNamespaces: Bool
    public var userNamespaceError: String?
    public var pidNamespaces: Bool
    public var pidNamespaceError: String?
    public var memfdExec: Bool
    /// A network namespace per worker (with a user namespace when not
    /// root): what egress through the proxy needs.
    public var netNamespaces = false
    public var netNamespaceError: String? = nil

    public static func probe() -> KernelFeatures {
        let api = Seccomp.apiLevel
        var f = KernelFeatures(
            seccompAPILevel: api, seccompUserNotification: api >= 6, landlockABI: nil, landlockError: nil,
            isRoot: Sys.geteuid() == 0, canDropBoundingSet: Sys.hasEffectiveCapability(8 /* CAP_SETPCAP */),
            userNamespaces: false, userNamespaceError: nil, pidNamespaces: false, pidNamespaceError: nil,
            memfdExec: true)
        switch Landlock.abi() {
        case .success(let v): f.landlockABI = v
        case .failure(let e): f.landlockError = e.description
        }
        switch Sys.canClone(flags: Namespaces.user | Namespaces.pid) {
        case .success: f.userNamespaces = true
        case .failure(let e): f.userNamespaceError = e.description
        }
        switch Sys.canClone(flags: f.isRoot ? Namespaces.pid : Namespaces.user | Namespaces.pid) {
        case .success: f.pidNamespaces = true
        case .failure(let e): f.pidNamespaceError = e.description
        }
        switch Sys.canClone(flags: f.isRoot ? Namespaces.net : Namespaces.user | Namespaces.net) {
        case .success: f.netNamespaces = true
        case .failure(let e): f.netNamespaceError = e.description
        }
        if let v = try? readFile("/proc/sys/vm/memfd_noexec"), let s = String(validating: v, as: UTF8.self) {
            f.memfdExec = s.hasPrefix("0")
        }
        return f
    }
}

/// Where and as whom workers run.
public struct HostSandbox: Sendable {
    public let features: KernelFeatures
    /// uid/gid of workers. Root runs them as an unprivileged user (nobody by
    /// default); a normal user runs them under its own ids.
    public let workerUID: UInt32
    public let workerGID: UInt32
    /// Parent of the per-call scratch directories.
    public let scratchRoot: String
    /// Directories a manifest may never expose to a worker (the supervisor's
    /// state: keys, ledger, security log).
    public let protectedPaths: [String]
    /// Grace between SIGTERM and SIGKILL at the deadline.
    public let terminationGraceMilliseconds: Int

    public init(
        features: KernelFeatures, workerUID: UInt32? = nil, workerGID: UInt32? = nil, scratchRoot: String,
        protectedPaths: [String], terminationGraceMilliseconds: Int = 200
    ) {
        self.features = features
        self.workerUID = workerUID ?? (features.isRoot ? Setting.workerUid.identityRootDefault : Sys.getuid())
        self.workerGID = workerGID ?? (features.isRoot ? Setting.workerGid.identityRootDefault : Sys.getgid())
        self.scratchRoot = scratchRoot
        self.protectedPaths = protectedPaths
        self.terminationGraceMilliseconds = terminationGraceMilliseconds
    }

    /// True when workers share the supervisor's uid: then only Landlock's
    /// signal scope keeps a worker from signalling the supervisor.
    public var workersShareSupervisorUID: Bool { workerUID == Sys.geteuid() }

    /// Creates the scratch root: owned by the supervisor, not a symlink,
    /// traversable (not listable) by the worker uid.
    public func prepareScratchRoot() throws(SystemError) {
        try Sys.makeDirectories(scratchRoot, mode: 0o711)
        let st = try Sys.lstat(scratchRoot)
        guard st.isDirectory, st.uid == Sys.geteuid() else {
            throw SystemError(
                "scratch root \(scratchRoot) is not a directory owned by this user", errno: Errno.notPermitted)
        }
        try Sys.chmod(scratchRoot, mode: 0o711)
        removeStaleScratch()
    }

    /// Removes the scratch directories of supervisors that no longer run
    /// (killed with SIGKILL: their workers died with them, their tmpfs
    /// mounts went with the workers' mount namespaces, the directories
    /// stayed). A directory is named `<pid>-<n>-<call>`; one whose pid still
    /// runs belongs to another supervisor sharing this root and is kept.
    /// Never follows links. Returns the names removed.
    @discardableResult
    public func removeStaleScratch() -> [String] {
        guard let names = try? Sys.readdirNames(scratchRoot) else { return [] }
        let me = Sys.getpid()
        var removed: [String] = []
        for name in names {
            guard let dash = name.firstIndex(of: "-"), let pid = Int32(name[..<dash]), pid > 0, pid != me else {
                continue
            }
            if (try? Sys.stat("/proc/\(pid)")) != nil { continue }
            if (try? Sys.removeTree(scratchRoot + "/" + name)) != nil { removed.append(name) }
        }
        return removed
    }

    /// Why the sandbox this host gives cannot run `cell`, or nil if it can.
    /// Fail closed: a cell never runs with less than its manifest declares.
    public func refusal(for manifest: CellManifest) -> String? {
        guard let abi = features.landlockABI else {
            return
                "Landlock is not available (\(features.landlockError ?? "unknown error")); enable it with the kernel command line lsm=...,landlock (Linux 5.13 or later)"
        }
        if workersShareSupervisorUID && abi < 6 {
            return
                "workers run under the supervisor's own uid, which needs Landlock ABI 6 (signal and abstract-socket scopes, Linux 6.12) to keep them from signalling it; this kernel has ABI \(abi). Run the supervisor as root (workers then run as nobody) or upgrade the kernel"
        }
        if !features.isRoot && !features.userNamespaces {
            return
                "every worker's scratch directory is a tmpfs bounded by limits.scratchMiB and limits.scratchFiles in the worker's own mount namespace, which an unprivileged supervisor can only create inside a user namespace: \(features.userNamespaceError ?? "unavailable"); enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 or user.max_user_namespaces > 0) or run the supervisor as root"
        }
        if manifest.limits.processes == .processes && !features.pidNamespaces {
            return
                "limits.processes is \"processes\", which needs a PID namespace so the whole process tree dies with the call: \(features.pidNamespaceError ?? "unavailable")\(features.isRoot ? "" : "; enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 or user.max_user_namespaces > 0)")"
        }
        if manifest.network.usesProxy && !features.netNamespaces {
            return
                "network.egress is \"proxy\", which runs the worker in a network namespace of its own so that the egress proxy is the only endpoint it can reach: \(features.netNamespaceError ?? "unavailable"); use a kernel built with CONFIG_NET_NS\(features.isRoot ? "" : " and enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 or user.max_user_namespaces > 0)"), or run the supervisor as root"
        }
        if features.seccompAPILevel < 3 {
            return
                "seccomp filters with kill-process are not available (libseccomp API level \(features.seccompAPILevel)); a kernel built with CONFIG_SECCOMP_FILTER is required"
        }
        return nil
    }
}
