import CSupervisorShim

#if canImport(Glibc)
import Glibc
#endif

/// Landlock (landlock(7)): unprivileged file, TCP and scope restrictions.
public enum Landlock {
    /// The kernel's Landlock ABI version, or nil when Landlock is unavailable
    /// (with the errno that said so).
    public static func abi() -> Result<Int, SystemError> {
        let v = mcps_landlock_abi()
        if v < 0 { return .failure(SystemError("landlock_create_ruleset", errno: Glibc.errno)) }
        return .success(Int(v))
    }

    public struct Access: OptionSet, Sendable, Hashable {
        public let rawValue: UInt64
        public init(rawValue: UInt64) { self.rawValue = rawValue }

        public static let execute = Access(rawValue: 1 << 0)
        public static let writeFile = Access(rawValue: 1 << 1)
        public static let readFile = Access(rawValue: 1 << 2)
        public static let readDir = Access(rawValue: 1 << 3)
        public static let removeDir = Access(rawValue: 1 << 4)
        public static let removeFile = Access(rawValue: 1 << 5)
        public static let makeChar = Access(rawValue: 1 << 6)
        public static let makeDir = Access(rawValue: 1 << 7)
        public static let makeReg = Access(rawValue: 1 << 8)
        public static let makeSock = Access(rawValue: 1 << 9)
        public static let makeFifo = Access(rawValue: 1 << 10)
        public static let makeBlock = Access(rawValue: 1 << 11)
        public static let makeSym = Access(rawValue: 1 << 12)
        public static let refer = Access(rawValue: 1 << 13)  // ABI 2
        public static let truncate = Access(rawValue: 1 << 14)  // ABI 3
        public static let ioctlDev = Access(rawValue: 1 << 15)  // ABI 5

        /// Rights that make sense on a single file (not a directory).
        public static let fileRights: Access = [.execute, .writeFile, .readFile, .truncate, .ioctlDev]

        public static let read: Access = [.readFile, .readDir]
        public static let readExecute: Access = [.readFile, .readDir, .execute]
        public static let readWrite: Access = [
            .readFile, .readDir, .writeFile, .removeDir, .removeFile, .makeDir, .makeReg, .makeSym, .truncate,
        ]

        /// Every file right the given ABI knows: all of them are handled, so
        /// anything not granted by a rule is denied.
        public static func handled(abi: Int) -> Access {
            var a = Access(rawValue: (1 << 13) - 1)
            if abi >= 2 { a.insert(.refer) }
            if abi >= 3 { a.insert(.truncate) }
            if abi >= 5 { a.insert(.ioctlDev) }
            return a
        }
    }

    public static let netBindTCP: UInt64 = 1 << 0
    public static let netConnectTCP: UInt64 = 1 << 1
    public static let scopeAbstractUnixSocket: UInt64 = 1 << 0
    public static let scopeSignal: UInt64 = 1 << 1

    /// A ruleset under construction. Closed by the owner after the spawn.
    public struct Ruleset {
        public let fd: FileDescriptor
        public let abi: Int

        /// Handles every file right of `abi`, all TCP bind/connect (ABI 4) and
        /// both scopes (ABI 6): deny by default.
        public static func create(abi: Int) throws(SystemError) -> Ruleset {
            let fs = Access.handled(abi: abi).rawValue
            let net: UInt64 = abi >= 4 ? netBindTCP | netConnectTCP : 0
            let scoped: UInt64 = abi >= 6 ? scopeAbstractUnixSocket | scopeSignal : 0
            let fd = mcps_landlock_create_ruleset(fs, net, scoped)
            if fd < 0 { throw SystemError("landlock_create_ruleset", errno: Glibc.errno) }
            return Ruleset(fd: FileDescriptor(rawValue: fd), abi: abi)
        }

        /// Allows `access` beneath `pathFD` (an O_PATH descriptor). For a
        /// regular file only file rights are kept.
        public func allow(_ pathFD: FileDescriptor, _ access: Access, isDirectory: Bool) throws(SystemError) {
            let a = rights(access, isDirectory: isDirectory)
            if a.isEmpty { return }
            if mcps_landlock_add_path_rule(fd.rawValue, pathFD.rawValue, a.rawValue) != 0 {
                throw SystemError("landlock_add_rule", errno: Glibc.errno)
            }
        }

        /// The part of `access` a rule can grant with this ABI (for a
        /// regular file, file rights only).
        public func rights(_ access: Access, isDirectory: Bool) -> Access {
            let a = access.intersection(Access.handled(abi: abi))
            return isDirectory ? a : a.intersection(.fileRights)
        }

        public func allowConnect(port: UInt16) throws(SystemError) {
            if mcps_landlock_add_net_rule(fd.rawValue, UInt64(port), netConnectTCP) != 0 {
                throw SystemError("landlock_add_rule(net)", errno: Glibc.errno)
            }
        }
    }

    /// Opens a path with O_PATH for use in rules.
    public static func openPath(_ path: String) throws(SystemError) -> FileDescriptor {
        FileDescriptor(rawValue: try retrying("open \(path)") { mcps_open_path(path) })
    }
}
