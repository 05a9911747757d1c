import CellKit
import StrictJSON

#if canImport(Glibc)
import Glibc
#endif

// Files under configured roots: fs_read, fs_list, fs_search (read-only
// roots) and fs_write (writable roots). The roots come from the manifest's
// filesystem section, passed by the supervisor as MCPS_READ_ROOTS and
// MCPS_WRITE_ROOTS; Landlock enforces them in the kernel whatever this code
// does, the checks here only turn a denial into a clear message.

// <fcntl.h>; hidden from Swift without _GNU_SOURCE (named as in C).
// swift-format-ignore: AlwaysUseLowerCamelCase
let O_PATH: Int32 = 0o10000000

struct ToolError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

func roots(_ name: String) -> [String] {
    guard let v = getenv(name) else { return [] }
    return String(cString: v).split(separator: ":").map(String.init)
}

/// Lexically normalised absolute path; refuses anything outside `roots`.
func resolve(_ path: String, in roots: [String]) throws -> String {
    guard path.hasPrefix("/") else { throw ToolError("path must be absolute: \(path)") }
    var parts: [Substring] = []
    for c in path.split(separator: "/") {
        if c == "." { continue }
        if c == ".." {
            if !parts.isEmpty { parts.removeLast() }
            continue
        }
        parts.append(c)
    }
    let p = "/" + parts.joined(separator: "/")
    guard roots.contains(where: { p == $0 || p.hasPrefix($0.hasSuffix("/") ? $0 : $0 + "/") }) else {
        throw ToolError("\(path) is outside the allowed roots (\(roots.joined(separator: ", ")))")
    }
    // No symlink may lead out: open each component with O_NOFOLLOW.
    var fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC)
    for (i, c) in parts.enumerated() {
        let last = i == parts.count - 1
        let next = openat(fd, String(c), O_PATH | O_NOFOLLOW | O_CLOEXEC | (last ? 0 : O_DIRECTORY))
        close(fd)
        if next < 0 {
            if errno == ENOENT && last { return p }
            if errno == ELOOP || errno == ENOTDIR {
                throw ToolError("\(path): a component is a symbolic link or not a directory")
            }
            throw ToolError("\(path): \(String(cString: strerror(errno)))")
        }
        fd = next
    }
    close(fd)
    return p
}

func readAll(_ path: String, offset: Int, limit: Int) throws -> (bytes: [UInt8], size: Int) {
    let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
    guard fd >= 0 else { throw ToolError("\(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var st = stat()
    fstat(fd, &st)
    guard st.st_mode & S_IFMT == S_IFREG else { throw ToolError("\(path) is not a regular file") }
    var out = [UInt8](repeating: 0, count: max(0, min(limit, Int(st.st_size) - offset)))
    var got = 0
    while got < out.count {
        let n = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + got, $0.count - got, off_t(offset + got)) }
        if n <= 0 { break }
        got += n
    }
    return (Array(out[0..<got]), Int(st.st_size))
}

func listDirectory(_ path: String) throws -> [(name: String, isDir: Bool, size: Int)] {
    guard let d = opendir(path) else { throw ToolError("\(path): \(String(cString: strerror(errno)))") }
    defer { closedir(d) }
    var out: [(String, Bool, Int)] = []
    while let e = readdir(d) {
        let n = withUnsafeBytes(of: e.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
        if n == "." || n == ".." { continue }
        var st = stat()
        let full = path == "/" ? "/" + n : path + "/" + n
        let isDir = lstat(full, &st) == 0 && st.st_mode & S_IFMT == S_IFDIR
        out.append((n, isDir, Int(st.st_size)))
    }
    return out.sorted { $0.0 < $1.0 }
}

Cell.main { request, _ in
    let a = request.arguments
    func str(_ k: String) -> String { a[k]?.stringValue ?? "" }
    func int(_ k: String, _ d: Int) -> Int { a[k]?.intValue.map(Int.init) ?? d }
    do {
        switch request.tool {
        case "fs_read":
            let p = try resolve(str("path"), in: roots("MCPS_READ_ROOTS"))
            let (bytes, size) = try readAll(p, offset: int("offset", 0), limit: int("maxBytes", 65536))
            let text = String(decoding: bytes, as: UTF8.self)
            return .text(
                text,
                structured: .object(
                    JSONObject([
                        ("path", .string(p)), ("size", .int(Int64(size))),
                        ("offset", .int(Int64(int("offset", 0)))), ("bytes", .int(Int64(bytes.count))),
                    ])))
        case "fs_list":
            let root = try resolve(str("path"), in: roots("MCPS_READ_ROOTS"))
            let maxDepth = int("depth", 1)
            let maxEntries = int("maxEntries", 500)
            var lines: [String] = []
            var entries: [JSONValue] = []
            var truncated = false
            func walk(_ dir: String, _ depth: Int) throws {
                for e in try listDirectory(dir) {
                    if entries.count >= maxEntries {
                        truncated = true
                        return
                    }
                    let full = dir == "/" ? "/" + e.name : dir + "/" + e.name
                    lines.append(String(repeating: "  ", count: depth) + e.name + (e.isDir ? "/" : ""))
                    entries.append(
                        .object(
                            JSONObject([
                                ("path", .string(full)), ("type", .string(e.isDir ? "directory" : "file")),
                                ("size", .int(Int64(e.size))),
                            ])))
                    if e.isDir && depth + 1 < maxDepth { try? walk(full, depth + 1) }
                }
            }
            try walk(root, 0)
            if truncated { lines.append("… (more than \(maxEntries) entries)") }
            return .text(
                lines.joined(separator: "\n"),
                structured: .object(JSONObject([("entries", .array(entries)), ("truncated", .bool(truncated))])))
        case "fs_search":
            let root = try resolve(str("path"), in: roots("MCPS_READ_ROOTS"))
            let re: Regex<AnyRegexOutput>
            do { re = try Regex(str("pattern")) } catch {
                throw ToolError("not a valid regular expression: \(str("pattern"))")
            }
            let maxResults = int("maxResults", 100)
            var matches: [JSONValue] = []
            var lines: [String] = []
            var truncated = false
            func search(_ dir: String, _ depth: Int) {
                guard depth < 16, let list = try? listDirectory(dir) else { return }
                for e in list {
                    if matches.count >= maxResults {
                        truncated = true
                        return
                    }
                    let full = dir == "/" ? "/" + e.name : dir + "/" + e.name
                    if e.isDir {
                        search(full, depth + 1)
                        continue
                    }
                    guard e.size <= 4 << 20, let (bytes, _) = try? readAll(full, offset: 0, limit: 4 << 20) else {
                        continue
                    }
                    for (i, line) in String(decoding: bytes, as: UTF8.self).split(
                        separator: "\n", omittingEmptySubsequences: false
                    ).enumerated()
                    where (try? re.firstMatch(in: String(line))) != nil {
                        if matches.count >= maxResults {
                            truncated = true
                            break
                        }
                        let l = String(line.prefix(400))
                        lines.append("\(full):\(i + 1): \(l)")
                        matches.append(
                            .object(
                                JSONObject([
                                    ("path", .string(full)), ("line", .int(Int64(i + 1))), ("text", .string(l)),
                                ])))
                    }
                }
            }
            search(root, 0)
            if truncated { lines.append("… (stopped at \(maxResults) matches)") }
            return .text(
                lines.isEmpty ? "no matches" : lines.joined(separator: "\n"),
                structured: .object(JSONObject([("matches", .array(matches)), ("truncated", .bool(truncated))])))
        case "fs_write":
            let p = try resolve(str("path"), in: roots("MCPS_WRITE_ROOTS"))
            let slash = p.lastIndex(of: "/")!
            let tmp = String(p[..<slash]) + "/.mcps-write-\(getpid())"
            let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw ToolError("\(p): \(String(cString: strerror(errno)))") }
            var content = str("content")
            let ok = content.withUTF8 { buf -> Bool in
                var off = 0
                while off < buf.count {
                    let n = write(fd, buf.baseAddress! + off, buf.count - off)
                    if n <= 0 { return false }
                    off += n
                }
                return fsync(fd) == 0
            }
            close(fd)
            // Atomic replace: readers see the old or the new file, never half.
            guard ok, rename(tmp, p) == 0 else {
                unlink(tmp)
                throw ToolError("\(p): \(String(cString: strerror(errno)))")
            }
            return .text(
                "wrote \(content.utf8.count) bytes to \(p)",
                structured: .object(JSONObject([("path", .string(p)), ("bytes", .int(Int64(content.utf8.count)))])))
        default:
            return .error("unknown tool \(request.tool)")
        }
    } catch {
        return .error("\(error)")
    }
}
