import ArgumentParser
import Foundation
import StrictJSON
import SupervisorCore
import SupervisorPlatform

/// `--json` for every command that prints data: one JSON document on stdout
/// (diagnostics stay on stderr), so scripts never parse the text form.
struct JSONOutput: ParsableArguments {
    @Flag(name: .long, help: "Print the result as JSON on stdout.") var json = false

    /// Prints `line` in the text form only.
    func text(_ line: @autoclosure () -> String) {
        if !json { print(line()) }
    }

    func emit(_ value: JSONValue) {
        if json { print(value.serialized()) }
    }
}

/// Loads the syscall groups of the effective policies directory; when the
/// file cannot be read, says where the directory was looked for and how to
/// name it, never only the path that was tried.
func loadSyscallGroups(_ s: SupervisorSettings, prefix: String = "error") throws -> SyscallGroups {
    do { return try SyscallGroups.load(path: s.syscallGroupsPath) } catch {
        printError("\(prefix): \(error)")
        if (try? Sys.stat(s.syscallGroupsPath)) == nil {
            printError(
                "hint: the policies directory is --policies (or `policies` in the configuration file), else "
                    + "\(SupervisorSettings.defaultSearchText("policies")), found from the executable's own path, "
                    + "whatever the working directory; install with `make install` or pass --policies DIR")
        }
        throw ExitCode(2)
    }
}

/// One readable line for any error: Foundation's file errors
/// (`Error Domain=NSCocoaErrorDomain Code=260 …`) become "cannot read PATH:
/// no such file or directory"; the supervisor's own errors describe
/// themselves.
func describeError(_ error: Error) -> String {
    let ns = error as NSError
    guard ns.domain == NSCocoaErrorDomain else { return "\(error)" }
    let path =
        (ns.userInfo[NSFilePathErrorKey] as? String)
        ?? (ns.userInfo[NSURLErrorKey] as? URL)?.path ?? "a file"
    var reason = ""
    if let u = ns.userInfo[NSUnderlyingErrorKey] as? NSError, u.domain == NSPOSIXErrorDomain {
        reason = Errno.describe(Int32(u.code))
    }
    let verb: String
    switch ns.code {
    case NSFileNoSuchFileError, NSFileReadNoSuchFileError:
        verb = "cannot read"
        if reason.isEmpty { reason = "no such file or directory" }
    case NSFileReadNoPermissionError: verb = "cannot read"
    case NSFileWriteNoPermissionError, NSFileWriteFileExistsError, NSFileWriteOutOfSpaceError,
        NSFileWriteVolumeReadOnlyError, NSFileWriteUnknownError:
        verb = "cannot write"
    default: verb = ns.code >= 640 ? "cannot write" : "cannot read"
    }
    if reason.isEmpty, (try? Sys.stat(path))?.isDirectory == true { reason = "it is a directory" }
    // Foundation's own text ("The operation could not be completed. (NSCocoaErrorDomain error 512.)") says
    // nothing more than the code.
    if reason.isEmpty { reason = "file system error (code \(ns.code))" }
    return "\(verb) \(path): \(reason)"
}

/// The command that fixes a cell whose file no longer has the pinned
/// digest, for `validate`, `doctor` and `call`.
func hashMismatchFix(_ error: Error, manifest: String) -> String? {
    guard case CellCannotRun.hashMismatch? = error as? CellCannotRun else { return nil }
    return "fix: if the new file is the one you mean to run, pin it and register the new version: "
        + "`mcp-supervisor manifest pin \(manifest)`, then `mcp-supervisor cell sign \(manifest) --key KEY` and "
        + "`mcp-supervisor cell register \(manifest) --key KEY` (for the bundled cells of a checkout: "
        + "`make register`)"
}

/// A `--since`/`--until` bound: an RFC 3339 time (`2026-11-22T10:00:00Z`,
/// an offset, fractional seconds), a date (`2026-11-22`, midnight UTC), or a
/// time before now (`90s`, `15m`, `2h`, `1d`, `1w`). Anything else is an
/// error: a bound that silently matched nothing would read as "no events".
enum TimeBound {
    /// The bound as the log's own time format (UTC, `Z`), which compares in
    /// time order as a string.
    static func parse(_ text: String, now: Date = Date()) throws -> String {
        let t = text.trimmingCharacters(in: .whitespaces)
        if let d = relative(t, now: now) ?? absolute(t) { return logTime(d) }
        throw ValidationError(
            "cannot read the time \"\(text)\": give an RFC 3339 time (2026-11-22T10:00:00Z, "
                + "2026-11-22T11:00:00+01:00), a date (2026-11-22) or a time ago (90s, 15m, 2h, 1d, 1w)")
    }

    static func relative(_ t: String, now: Date) -> Date? {
        guard let unit = t.last, let n = Int(t.dropLast()), n >= 0, n <= 100_000_000 else { return nil }
        let seconds: Int
        switch unit {
        case "s": seconds = 1
        case "m": seconds = 60
        case "h": seconds = 3600
        case "d": seconds = 86400
        case "w": seconds = 7 * 86400
        default: return nil
        }
        return now.addingTimeInterval(-Double(n * seconds))
    }

    static func absolute(_ t: String) -> Date? {
        let full = ISO8601DateFormatter()
        full.formatOptions = [.withInternetDateTime]
        if let d = full.date(from: t) { return d }
        full.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let d = full.date(from: t) { return d }
        let day = ISO8601DateFormatter()
        day.formatOptions = [.withFullDate]
        day.timeZone = TimeZone(identifier: "UTC")
        if t.count == 10, let d = day.date(from: t) { return d }
        return nil
    }

    /// The log's own format (`2026-11-22T10:00:00.123456Z`: UTC, six
    /// fractional digits), so that the bound compares with its records as
    /// strings, in time order.
    static func logTime(_ d: Date) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        f.timeZone = TimeZone(identifier: "UTC")
        let seconds = d.timeIntervalSince1970.rounded(.down)
        let micro = Int(((d.timeIntervalSince1970 - seconds) * 1e6).rounded(.down))
        let digits = String(micro)
        let whole = f.string(from: Date(timeIntervalSince1970: seconds))
        return whole.dropLast() + "." + String(repeating: "0", count: 6 - digits.count) + digits + "Z"
    }
}

/// `CELL:VERSION`: one argument naming a registered version, the form every
/// `cell` command accepts (`cell diff`, `activate`, `revoke`, `rollback --to`).
func splitCellVersion(_ spec: String) -> (cell: String, version: String)? {
    guard let i = spec.lastIndex(of: ":"), i != spec.startIndex else { return nil }
    let v = spec[spec.index(after: i)...]
    guard !v.isEmpty else { return nil }
    return (String(spec[..<i]), String(v))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// reader sees the old file or the new one; errors name the path and errno.
func writeFileAtomically(_ path: String, _ bytes: [UInt8], mode: UInt32 = 0o644) throws {
    let tmp = path + ".tmp"
    do {
        let fd = try Sys.open(tmp, 0o1 | 0o100 | 0o1000, mode: mode)
        defer { fd.close() }
        try fd.writeAll(bytes)
        try Sys.rename(tmp, path)
    } catch {
        throw TrustCommandError("cannot write \(path): \(error)")
    }
}
