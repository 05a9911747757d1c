import Crypto
import StrictJSON
import SupervisorPlatform
import Synchronization

/// Why a cell cannot run at all, or cannot run this call.
public enum CellCannotRun: Error, Equatable, Sendable, CustomStringConvertible {
    /// The file on disk no longer has the bytes the manifest pins.
    case hashMismatch(path: String, expected: String, actual: String)
    /// The executable or script cannot be opened or read.
    case unreadable(path: String, reason: String)
    /// The host cannot give the protection the manifest asks for.
    case unsupported(String)
    /// The manifest's filesystem rules are unusable.
    case badPath(field: String, reason: String)
    /// The seccomp program cannot be built.
    case filter(String)
    /// A server cell whose tools were never listed and pinned.
    case unpinnedTools
    /// Preparing the worker in the supervisor failed (scratch directory,
    /// pipes, Landlock ruleset, receiving the seccomp listener).
    case setup(SystemError)
    /// The child failed a setup stage, or clone itself.
    case spawn(SpawnError)

    public var description: String {
        switch self {
        case .hashMismatch(let p, let e, let a): return "\(p): SHA-256 is \(a), the manifest pins \(e)"
        case .unreadable(let p, let r): return "\(p): \(r)"
        case .unsupported(let s): return "this host cannot sandbox the cell as declared: \(s)"
        case .badPath(let f, let r): return "\(f): \(r)"
        case .filter(let s): return "seccomp filter: \(s)"
        case .unpinnedTools:
            return "the server's tools are not pinned yet: `mcp-supervisor cell register` lists them and signs them in"
        case .setup(let e): return "preparing the worker: \(e)"
        case .spawn(let e): return e.description
        }
    }
}

/// The former name of `CellCannotRun`.
public typealias CellRefusal = CellCannotRun

public func sha256Hex(_ bytes: some Sequence<UInt8>) -> String {
    SHA256.hash(data: Array(bytes)).map { b in
        let h = String(b, radix: 16)
        return b < 16 ? "0" + h : h
    }.joined()
}

/// A verified, sealed copy of an executable or script. Verification is lazy
/// (first spawn, `verify()`, or a warm-up thread), so a supervisor with many
/// cells answers `initialize` without hashing them all first; cells that pin
/// the same file share one sealed copy.
final class VerifiedFile: Sendable {
    let path: String
    let sha256: String
    private struct Sealed {
        var fd: FileDescriptor?
        var identity: FileIdentity?
        /// Increases each time the sealed copy is replaced.
        var generation = 0
    }
    private let sealed = Mutex(Sealed())

    private static let cache = Mutex<[String: VerifiedFile]>([:])

    /// The shared instance for (path, sha256).
    static func shared(path: String, sha256: String) -> VerifiedFile {
        cache.withLock { cache in
            let key = path + "\u{0}" + sha256
            if let v = cache[key] { return v }
            let v = VerifiedFile(path: path, sha256: sha256)
            cache[key] = v
            return v
        }
    }

    private init(path: String, sha256: String) {
        self.path = path
        self.sha256 = sha256
    }

    deinit { sealed.withLock { $0.fd?.close() } }

    /// Verifies now (validate, doctor, warm-up).
    func verify() throws(CellRefusal) { _ = try current() }

    /// Opens the file, hashes the open descriptor and, if it matches, copies
    /// exactly those bytes into a sealed memfd (which can never change).
    private static func load(path: String, expected: String) throws(CellRefusal) -> (FileDescriptor, FileIdentity) {
        let fd: FileDescriptor
        do { fd = try Sys.open(path, OpenFlags.readOnly) } catch {
            throw .unreadable(path: path, reason: error.description)
        }
        defer { fd.close() }
        do {
            let before = try fd.stat()
            guard before.isRegularFile else { throw CellRefusal.unreadable(path: path, reason: "not a regular file") }
            let sealed = try Sys.sealedCopy(of: fd, name: baseName(of: path))
            // Hash the sealed copy: these are the bytes that will be exec'd.
            var hasher = SHA256()
            var buf = [UInt8](repeating: 0, count: 1 << 16)
            var off = 0
            while true {
                let n = try sealed.pread(&buf, offset: off)
                if n == 0 { break }
                hasher.update(data: buf[0..<n])
                off += n
            }
            let actual = hasher.finalize().map { b in (b < 16 ? "0" : "") + String(b, radix: 16) }.joined()
            guard actual == expected else {
                sealed.close()
                throw CellRefusal.hashMismatch(path: path, expected: expected, actual: actual)
            }
            return (sealed, before)
        } catch let e as CellRefusal {
            throw e
        } catch {
            throw .unreadable(path: path, reason: "\(error)")
        }
    }

    /// The sealed descriptor to exec, and its generation. Costs one stat
    /// when the file is unchanged; if anything about it changed (ctime
    /// cannot be forged) the file is verified again and a mismatch refuses
    /// the call.
    func current() throws(CellRefusal) -> (fd: FileDescriptor, generation: Int) {
        let now: FileIdentity
        do { now = try Sys.stat(path) } catch { throw .unreadable(path: path, reason: error.description) }
        return try sealed.withLock { s throws(CellRefusal) -> (fd: FileDescriptor, generation: Int) in
            if let fd = s.fd, now == s.identity { return (fd, s.generation) }
            let (fd, id) = try Self.load(path: path, expected: sha256)
            s.fd?.close()
            s.fd = fd
            s.identity = id
            s.generation += 1
            return (fd, s.generation)
        }
    }
}

/// What an interpreted cell's worker reads on stdin: its libraries, then
/// its script, each verified; joined in one sealed memfd that is rebuilt
/// whenever a part is re-verified.
final class ProgramInput: Sendable {
    let parts: [VerifiedFile]
    /// The joined copy and the parts' generations it was built from.
    private let joined = Mutex<(fd: FileDescriptor?, generations: [Int])>((nil, []))

    init(parts: [VerifiedFile]) { self.parts = parts }
    deinit { joined.withLock { $0.fd?.close() } }

    func verify() throws(CellRefusal) { for p in parts { try p.verify() } }

    /// A new read-only open file description of the sealed input at offset
    /// 0 (each worker reads with its own offset; the caller closes it), and
    /// the parts' generations. One stat per part.
    func freshReadDescriptor() throws(CellRefusal) -> (fd: FileDescriptor, generations: [Int]) {
        var fds: [FileDescriptor] = []
        var gens: [Int] = []
        for p in parts {
            let (fd, g) = try p.current()
            fds.append(fd)
            gens.append(g)
        }
        var sealed = fds[0]
        if parts.count > 1 {
            sealed = try joined.withLock { joined throws(CellRefusal) -> FileDescriptor in
                if joined.fd == nil || gens != joined.generations {
                    do {
                        let j = try Sys.sealedCopy(of: fds, name: baseName(of: parts.last!.path))
                        joined.fd?.close()
                        joined = (j, gens)
                    } catch {
                        throw .unreadable(path: parts.last!.path, reason: "joining libraries and script: \(error)")
                    }
                }
                return joined.fd!
            }
        }
        do { return (try Sys.open("/proc/self/fd/\(sealed.rawValue)", OpenFlags.readOnly), gens) } catch {
            throw .unreadable(path: parts.last!.path, reason: "reopen of the sealed copy failed: \(error)")
        }
    }
}

/// Everything about one cell version that can be computed once: the sealed
/// executable, the compiled seccomp program, the Landlock path handles.
/// Per call, only the scratch directory and the ruleset fd are new.
public final class PreparedCell: Sendable {
    public let manifest: CellManifest
    public let seccomp: SeccompProgram
    /// SHA-256 of `seccomp`'s bytes, for enforcement receipts.
    public let seccompSHA256: String
    let executable: VerifiedFile
    let script: ProgramInput?
    /// A server cell's package trees.
    let packages: [PackageTree]
    /// (O_PATH fd, rights, is directory) for each manifest path.
    let pathRules: [(FileDescriptor, Landlock.Access, Bool)]
    public let allowlist: [String]
    /// The filters of a profiled worker, compiled at its first use.
    private let profiled = Mutex<ProfiledFilters?>(nil)
    private let groups: SyscallGroups
    private let features: KernelFeatures

    /// `discovering`: a server cell being registered, whose tools are not
    /// pinned yet (its one worker lists them; it serves no call).
    public init(manifest: CellManifest, groups: SyscallGroups, host: HostSandbox, discovering: Bool = false)
        throws(CellRefusal)
    {
        if let why = host.refusal(for: manifest) { throw .unsupported(why) }
        if manifest.server != nil && manifest.tools.isEmpty && !discovering {
            throw .unpinnedTools
        }
        self.manifest = manifest
        self.groups = groups
        features = host.features
        packages = (manifest.server?.packages ?? []).map { PackageTree.shared(path: $0.path, sha256: $0.sha256) }
        executable = VerifiedFile.shared(path: manifest.executable.path, sha256: manifest.executable.sha256)
        script = manifest.script.map { s in
            ProgramInput(
                parts: (manifest.libraries + [s]).map { VerifiedFile.shared(path: $0.path, sha256: $0.sha256) })
        }

        (seccomp, allowlist) = try Self.compileSeccomp(manifest: manifest, groups: groups, features: host.features)
        seccompSHA256 = sha256Hex(seccomp.bytes)

        var pr: [(FileDescriptor, Landlock.Access, Bool)] = []
        let fs = manifest.filesystem
        for (key, list, access) in [
            ("read", fs.read, Landlock.Access.read), ("write", fs.write, .readWrite),
            ("execute", fs.execute, .readExecute),
        ] {
            for (i, p) in list.enumerated() {
                let field = "filesystem.\(key)[\(i)]"
                let real: String
                do { real = try Sys.realpath(p) } catch {
                    throw .badPath(field: field, reason: "\(p): \(error.description)")
                }
                for protected in host.protectedPaths
                where protected == real || protected.hasPrefix(real == "/" ? "/" : real + "/") {
                    throw .badPath(field: field, reason: "\(p) contains the supervisor's state directory \(protected)")
                }
                do {
                    let fd = try Landlock.openPath(real)
                    let st = try fd.stat()
                    pr.append((fd, access, st.isDirectory))
                } catch {
                    throw .badPath(field: field, reason: "\(p): \(error.description)")
                }
            }
        }
        pathRules = pr
    }

    /// What a worker run with the syscall profiler gets (docs/resilience.md,
    /// "Syscall profiler"): the profiler's program, installed first with
    /// the listener, and the same allowlist as `seccomp` but killing what
    /// it refuses (the one listener is the profiler's, so a refused call
    /// cannot be handed to the supervisor to name).
    public struct ProfiledFilters: Sendable {
        public let profiler: SeccompProgram
        public let allowlist: SeccompProgram
        /// SHA-256 of `allowlist`'s bytes, for enforcement receipts.
        public let allowlistSHA256: String
    }

    /// The calls the profiler's program lets through unseen: those the
    /// child makes between installing it and exec (the allowlist, sent
    /// listener, exec, or the exit of a failed setup). Every allowlist
    /// allows them (`SyscallGroups.mandatory`) except `seccomp`, which the
    /// allowlist installed after it kills.
    public static let profilerPassing = SyscallGroups.mandatory + ["seccomp"]
    static let profilerProgram = Seccomp.profilerProgram(passing: profilerPassing)

    /// The profiled worker's filters; nil when the host has no seccomp user
    /// notification (the caller runs the worker unprofiled then).
    public func profiledFilters() throws(CellRefusal) -> ProfiledFilters? {
        guard features.seccompUserNotification else { return nil }
        if let p = profiled.withLock({ $0 }) { return p }
        let (program, _) = try Self.compileSeccomp(
            manifest: manifest, groups: groups, features: features, killing: true)
        let p = ProfiledFilters(
            profiler: Self.profilerProgram, allowlist: program, allowlistSHA256: sha256Hex(program.bytes))
        profiled.withLock { $0 = p }
        return p
    }

    /// The seccomp program every worker of `manifest` gets (compiled once
    /// per cell version, in the parent), and the allowlist's names.
    /// `killing`: what it refuses kills the worker at once, even where the
    /// kernel could hand it to the supervisor to name (a profiled worker).
    public static func compileSeccomp(
        manifest: CellManifest, groups: SyscallGroups, features: KernelFeatures, killing: Bool = false
    ) throws(CellRefusal) -> (SeccompProgram, [String]) {
        let entries: [SyscallGroups.Entry]
        do { entries = try groups.entries(for: manifest) } catch { throw .filter(error.description) }
        var rules: [SeccompRule] = []
        var names: [String] = []
        func add(_ name: String, _ action: SeccompRule.Action = .allow, _ cond: SeccompRule.Condition? = nil) {
            guard let nr = Seccomp.number(of: name) else { return }
            rules.append(SeccompRule(number: nr, action: action, condition: cond))
            if !names.contains(name) { names.append(name) }
        }
        var seen = Set<String>()
        for n in SyscallGroups.mandatory {
            add(n)
            seen.insert(n)
        }
        for e in entries {
            if e.argument != nil {
                for v in e.values {
                    add(
                        e.name, .allow,
                        SeccompRule.Condition(argument: e.argument!, mask: 0xFFFF_FFFF, value: v & 0xFFFF_FFFF))
                }
            } else if !seen.contains(e.name) {
                seen.insert(e.name)
                add(e.name)
            }
        }
        // Namespace flags are never allowed on clone.
        let namespaceFlags: UInt64 = 0x7E02_0080
        let cloneThread: UInt64 = 0x0001_0000
        switch manifest.limits.processes {
        case .none:
            break
        case .threads:
            add(
                "clone", .allow,
                SeccompRule.Condition(argument: 0, mask: namespaceFlags | cloneThread, value: cloneThread))
            add("clone3", .fail(errno: Errno.noFunction))
        case .processes:
            add("clone", .allow, SeccompRule.Condition(argument: 0, mask: namespaceFlags, value: 0))
            add("clone3", .fail(errno: Errno.noFunction))
            for n in ["fork", "vfork", "execve", "wait4", "waitid", "kill", "tgkill", "tkill"] where !seen.contains(n) {
                seen.insert(n)
                add(n)
            }
        }
        do {
            let program = try Seccomp.compile(
                rules, defaultAction: features.seccompUserNotification && !killing ? .notify : .killProcess,
                proxyEgress: manifest.network.usesProxy)
            return (program, names)
        } catch {
            throw .filter(error.description)
        }
    }

    deinit { for (fd, _, _) in pathRules { fd.close() } }

    /// Hashes and seals the executable (and script) now instead of at the
    /// first spawn.
    public func verifyFiles() throws(CellRefusal) {
        try executable.verify()
        try script?.verify()
        for p in packages { _ = try p.current() }
    }

    /// What a spawn needs from the verified files, after one stat of each:
    /// the executable to exec, the worker's stdin (interpreted cells) and
    /// the files' generations (compared when a prespawned worker is taken).
    func filesForSpawn() throws(CellRefusal) -> (executable: FileDescriptor, stdin: FileDescriptor?, generations: [Int])
    {
        let (exe, g) = try executable.current()
        var trees: [Int] = []
        for p in packages { trees.append(try p.current()) }
        guard let script else { return (exe, nil, [g] + trees) }
        let (fd, gens) = try script.freshReadDescriptor()
        return (exe, fd, [g] + trees + gens)
    }

    /// The generations of the verified executable and script parts, after
    /// a stat of each (a changed file is verified again, or refused).
    func fileGenerations() throws(CellRefusal) -> [Int] {
        var out = [try executable.current().generation]
        for p in packages { out.append(try p.current()) }
        for p in script?.parts ?? [] { out.append(try p.current().generation) }
        return out
    }

    public var name: String { manifest.name }
    public var version: String { manifest.version }
}
