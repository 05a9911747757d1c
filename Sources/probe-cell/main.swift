import CProbe
import CellKit
import StrictJSON

#if canImport(Glibc)
import Glibc
#endif

// The probe cell tries one forbidden (or allowed) thing per call and reports
// what happened, so the system tests can prove how the sandbox stops it.
// A call that the kernel stops never returns: the supervisor records why.

func errnoText(_ r: Int) -> String { r < 0 ? "errno \(-r)" : "ok \(r)" }

func readFile(_ path: String) -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    if fd < 0 { return "errno \(errno)" }
    defer { close(fd) }
    var buf = [UInt8](repeating: 0, count: 64)
    let n = read(fd, &buf, 64)
    return n < 0 ? "errno \(errno)" : "read \(n)"
}

func writeFile(_ path: String, bytes: Int) -> String {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    if fd < 0 { return "errno \(errno)" }
    defer { close(fd) }
    let chunk = [UInt8](repeating: 0x41, count: 65536)
    var left = max(bytes, 1)
    while left > 0 {
        let n = write(fd, chunk, min(left, chunk.count))
        if n < 0 { return "errno \(errno)" }
        left -= n
    }
    return "wrote \(max(bytes, 1))"
}

// Run as a command cell (argv instead of frames): `probe-cell int80` or
// `probe-cell x32` makes that call and prints what it returned.
if let arg = probe_command_argument().map({ String(cString: $0) }) {
    switch arg {
    case "int80": print(errnoText(probe_int80_getpid()))
    case "x32": print(errnoText(probe_syscall(0x4000_0000 | 39, 0, 0, 0, 0, 0, 0)))
    default: print("unknown command \(arg)")
    }
    exit(0)
}

Cell.main { request, ctx in
    let a = request.arguments
    let action = a["action"]?.stringValue ?? ""
    func int(_ k: String, _ d: Int64 = 0) -> Int64 { a[k]?.intValue ?? d }
    func str(_ k: String) -> String { a[k]?.stringValue ?? "" }
    switch action {
    case "syscall":
        let args = (a["args"]?.arrayValue ?? []).map { $0.intValue ?? 0 } + Array(repeating: 0, count: 6)
        let r = probe_syscall(
            Int(int("nr")), Int(args[0]), Int(args[1]), Int(args[2]), Int(args[3]), Int(args[4]), Int(args[5]))
        return .text(errnoText(r))
    case "int80":
        return .text(errnoText(probe_int80_getpid()))
    case "read":
        return .text(readFile(str("path")))
    case "write":
        return .text(writeFile(str("path"), bytes: Int(int("bytes", 1))))
    case "fork":
        return .text(errnoText(probe_fork()))
    case "thread":
        let r = probe_thread()
        return .text(r == 0 ? "ok" : "errno \(r)")
    case "alloc":
        return .text(errnoText(probe_alloc(UInt(int("bytes")), a["keep"] == .bool(true) ? 1 : 0)))
    case "spin":
        probe_spin(Int32(int("threads", 1)), a["seconds"]?.doubleValue ?? 1)
        return .text("spun")
    case "catch-sigxcpu":
        // A worker that hits its CPU limit, catches SIGXCPU and then ends
        // on its own terms: an error frame, or exit(exit) from the handler.
        if probe_spin_catching_sigxcpu(a["seconds"]?.doubleValue ?? 5, Int32(int("exit", -1))) != 0 {
            return .error("caught SIGXCPU")
        }
        return .text("no SIGXCPU")
    case "sleep":
        if a["ignoreTerm"]?.boolValue == true { probe_ignore_sigterm() }
        usleep(UInt32(int("ms", 1000)) * 1000)
        return .text("slept")
    case "progress":
        for i in 0..<int("steps", 3) {
            ctx.progress(Double(i + 1), total: Double(int("steps", 3)), message: "step \(i + 1)")
            ctx.log(.info, "did step \(i + 1)")
        }
        return .text("done")
    case "fds":
        var fds = [Int32](repeating: 0, count: 64)
        let n = probe_open_fds(&fds, 64)
        return .text(fds[0..<Int(n)].map { String($0) }.joined(separator: ","))
    case "stderr":
        let line = [UInt8](repeating: 0x45, count: 1023) + [0x0A]
        var left = int("bytes", 1024)
        while left > 0 {
            _ = write(2, line, min(Int(left), line.count))
            left -= Int64(line.count)
        }
        return .text("wrote stderr")
    case "raw":
        // Writes the given bytes (hex) to the response pipe and exits.
        let hex = Array(str("hex").utf8)
        var bytes: [UInt8] = []
        var i = 0
        func nib(_ c: UInt8) -> UInt8 { c <= 57 ? c - 48 : (c | 0x20) - 87 }
        while i + 1 < hex.count {
            bytes.append(nib(hex[i]) << 4 | nib(hex[i + 1]))
            i += 2
        }
        _ = write(Cell.responseFD, bytes, bytes.count)
        // Then hang (past the deadline, if asked) before exiting.
        if a["ignoreTerm"]?.boolValue == true { probe_ignore_sigterm() }
        if int("sleepMs") > 0 { usleep(UInt32(int("sleepMs")) * 1000) }
        exit(Int32(int("exit", 0)))
    case "frame-flood":
        // One frame declaring `bytes` and sending them: a JSON string.
        let n = Int(int("bytes", 1 << 20))
        var out: [UInt8] = [UInt8(n >> 24 & 0xFF), UInt8(n >> 16 & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF), 0x22]
        var left = n - 2
        let chunk = [UInt8](repeating: 0x41, count: 65536)
        while left > 0 {
            let k = min(left, chunk.count)
            out += chunk[0..<k]
            left -= k
            if out.count >= 65536 || left == 0 {
                if left == 0 { out.append(0x22) }
                var off = 0
                while off < out.count {
                    let w = out[off...].withUnsafeBytes { write(Cell.responseFD, $0.baseAddress, $0.count) }
                    if w <= 0 { exit(3) }
                    off += w
                }
                out.removeAll(keepingCapacity: true)
            }
        }
        exit(0)
    case "exit":
        exit(Int32(int("code", 0)))
    case "signal-parent":
        return .text(errnoText(probe_syscall(62, Int(int("pid")), Int(SIGKILL), 0, 0, 0, 0)))
    case "symlink-out":
        // Plants a link in scratch pointing at a secret; the supervisor must
        // not follow it when it wipes scratch.
        let r = symlink(str("target"), "escape")
        return .text(r == 0 ? "linked" : "errno \(errno)")
    case "leave":
        var out: [String] = []
        for p in ["left-behind", "/tmp/mcps-left-behind", "/dev/shm/mcps-left-behind"] {
            out.append("\(p): \(writeFile(p, bytes: 1))")
        }
        return .text(out.joined(separator: "; "))
    case "echo":
        return .text(str("text"))
    case "udp":
        return .text(errnoText(probe_udp_send(Int32(int("port")))))
    case "unix-connect":
        return .text(errnoText(probe_unix_connect(str("path"))))
    case "tcp-connect":
        let host = str("host")
        return .text(errnoText(probe_tcp_connect(host.isEmpty ? "127.0.0.1" : host, Int32(int("port")))))
    case "raw-socket":
        return .text(errnoText(probe_raw_socket()))
    case "pair-sendmsg":
        return .text(errnoText(probe_pair_sendmsg(Int32(int("type")), str("path"))))
    case "memfd-exec":
        return .text(errnoText(probe_memfd_exec(UInt32(int("flags")))))
    case "scratch-exec":
        return .text(errnoText(probe_scratch_exec(a["anonymous"] == .bool(true) ? 1 : 0)))
    case "fill":
        var e: Int32 = 0
        let n = probe_fill(str("path"), Int(int("bytes")), &e)
        return .text("wrote \(n) errno \(e)")
    case "many-files":
        var e: Int32 = 0
        let n = probe_many_files(Int(int("count")), &e)
        return .text("created \(n) errno \(e)")
    default:
        return .error("unknown action '\(action)'")
    }
}
