import Crypto
import SupervisorPlatform
import Synchronization

/// A directory tree a server cell executes or imports (a Python
/// site-packages, a node_modules), pinned by a digest of everything in it.
///
/// The digest is SHA-256 over the sorted walk, links not followed, of one
/// line per entry: `<relative path>\0<f|l|d>\0<SHA-256 of the bytes | link
/// target | "">\0<x if any execute bit | "">\n`. Compiled caches (`.pyc`)
/// are part of it: they are code the interpreter runs.
///
/// Verified fully when first needed; after that an inotify monitor on every
/// directory of the tree says whether anything changed (one read(2) per
/// spawn), and any change means a full re-walk before the next spawn: a
/// mismatch refuses the cell. If the kernel refuses the watches, every
/// spawn re-walks (slower, never less checked).
public final class PackageTree: Sendable {
    let path: String
    let sha256: String
    private struct State {
        var monitor: TreeChangeMonitor?
        var verified = false
        var generation = 0
    }
    private let state = Mutex(State())

    /// Trees larger than this are refused (a digest over a whole disk is a
    /// mistake, not a package).
    static let maxEntries = 200_000

    private static let cache = Mutex<[String: PackageTree]>([:])

    /// The shared instance for (path, sha256): cell versions that pin the
    /// same tree share its verification.
    static func shared(path: String, sha256: String) -> PackageTree {
        cache.withLock { cache in
            let key = path + "\u{0}" + sha256
            if let t = cache[key] { return t }
            let t = PackageTree(path: path, sha256: sha256)
            cache[key] = t
            return t
        }
    }

    private init(path: String, sha256: String) {
        self.path = path
        self.sha256 = sha256
    }

    /// The tree's generation after making sure it still has the pinned
    /// digest: re-walked only if something changed since the last walk.
    func current() throws(CellCannotRun) -> Int {
        try state.withLock { s throws(CellCannotRun) -> Int in
            if s.verified, let m = s.monitor, !m.changed() { return s.generation }
            // Walk, watch, walk again: a change between the first walk and
            // the watches is caught by the second walk, any later one by
            // the monitor.
            let (digest, directories) = try Self.walk(path)
            guard digest == sha256 else {
                s.verified = false
                throw CellCannotRun.hashMismatch(path: path + "/ (package tree)", expected: sha256, actual: digest)
            }
            s.monitor = try? TreeChangeMonitor(directories: directories)
            if s.monitor != nil, let (again, _) = try? Self.walk(path), again != digest {
                s.verified = false
                throw CellCannotRun.hashMismatch(path: path + "/ (package tree)", expected: sha256, actual: again)
            }
            s.verified = true
            s.generation += 1
            return s.generation
        }
    }

    /// The digest of the tree at `root` and the list of its directories.
    static func walk(_ root: String) throws(CellCannotRun) -> (digest: String, directories: [String]) {
        var hasher = SHA256()
        var directories: [String] = []
        var entries = 0
        func visit(_ dir: String, _ rel: String) throws(CellCannotRun) {
            directories.append(dir)
            let names: [String]
            do {
                names = try Sys.readdirNames(dir).sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
            } catch { throw .unreadable(path: dir, reason: error.description) }
            for n in names {
                entries += 1
                if entries > maxEntries {
                    throw .unreadable(path: root, reason: "more than \(maxEntries) entries: not a package tree")
                }
                let full = dir + "/" + n
                let r = rel.isEmpty ? n : rel + "/" + n
                let st: FileIdentity
                do { st = try Sys.lstat(full) } catch { throw .unreadable(path: full, reason: error.description) }
                var line: String
                if st.isDirectory {
                    line = "\(r)\0d\0\0"
                } else if st.isSymbolicLink {
                    let target: String
                    do { target = try Sys.readlink(full) } catch {
                        throw .unreadable(path: full, reason: error.description)
                    }
                    line = "\(r)\0l\0\(target)\0"
                } else if st.isRegularFile {
                    line = "\(r)\0f\0\(try fileDigest(full))\0"
                } else {
                    throw .unreadable(path: full, reason: "neither a file, a directory nor a link")
                }
                line += (st.isExecutable && !st.isSymbolicLink ? "x" : "") + "\n"
                hasher.update(data: Array(line.utf8))
                if st.isDirectory { try visit(full, r) }
            }
        }
        let top: FileIdentity
        do { top = try Sys.stat(root) } catch { throw .unreadable(path: root, reason: error.description) }
        guard top.isDirectory else { throw .unreadable(path: root, reason: "not a directory") }
        try visit(root, "")
        let digest = hasher.finalize().map { b in (b < 16 ? "0" : "") + String(b, radix: 16) }.joined()
        return (digest, directories)
    }

    static func fileDigest(_ path: String) throws(CellCannotRun) -> String {
        let fd: FileDescriptor
        do { fd = try Sys.open(path, OpenFlags.readOnly | OpenFlags.noFollow) } catch {
            throw .unreadable(path: path, reason: error.description)
        }
        defer { fd.close() }
        var hasher = SHA256()
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n: Int
            do { n = try fd.read(&buf) } catch { throw .unreadable(path: path, reason: error.description) }
            if n == 0 { break }
            hasher.update(data: buf[0..<n])
        }
        return hasher.finalize().map { b in (b < 16 ? "0" : "") + String(b, radix: 16) }.joined()
    }

    /// The digest `manifest pin` records.
    public static func digest(of path: String) throws(CellCannotRun) -> String { try walk(path).digest }
}
