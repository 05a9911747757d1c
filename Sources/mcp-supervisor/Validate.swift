import ArgumentParser
import StrictJSON
import SupervisorCore
import SupervisorPlatform

struct Validate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check manifests: syntax, every field, syscall groups, and that the executable matches its SHA-256.")

    @OptionGroup var options: CommonOptions

    @OptionGroup var output: JSONOutput

    @Argument(help: "Manifest files (default: every *.json in --manifests).")
    var files: [String] = []

    func run() throws {
        let s = try options.settings()
        let groups = try loadSyscallGroups(s)
        let paths: [String]
        do {
            paths =
                files.isEmpty
                ? try CellRegistry.manifestFiles(in: s.manifestsDirectory) : files.map(SupervisorSettings.absolute)
        } catch {
            printError("error: cannot list the manifests directory \(s.manifestsDirectory): \(error)")
            throw ExitCode(1)
        }
        let host = options.host(s, features: KernelFeatures.probe())
        var failed = 0
        var results: [JSONValue] = []
        for p in paths {
            var r = JSONObject([("path", .string(p))])
            do {
                let m = try CellRegistry.loadManifest(path: p)
                r["cell"] = .string(m.name)
                r["version"] = .string(m.version)
                r["tools"] = .array(m.tools.map { .string($0.name) })
                try PreparedCell(manifest: m, groups: groups, host: host).verifyFiles()
                r["ok"] = true
                output.text(
                    "ok: \(p): cell \(m.name) \(m.version), tools: \(m.tools.map(\.name).joined(separator: ", "))")
            } catch {
                // Every problem of the file that can be found, each naming
                // its field (not only the parser's first).
                var problems = ["\(p): \(error)"]
                if let e = error as? ConfigError {
                    let all = (try? readFile(p, limit: 1 << 20)).map {
                        ManifestDiagnostics.problems(bytes: $0, path: p)
                    }
                    problems = (all?.isEmpty == false ? all! : e.all).map(\.description)
                }
                r["ok"] = false
                r["errors"] = .array(problems.map { .string($0) })
                if let fix = hashMismatchFix(error, manifest: p) { r["fix"] = .string(fix) }
                if !output.json {
                    for e in problems { printError("error: \(e)") }
                    if let fix = r["fix"]?.stringValue { printError(fix) }
                }
                failed += 1
            }
            results.append(.object(r))
        }
        if paths.isEmpty { printError("error: no manifests found in \(s.manifestsDirectory)") }
        output.emit(
            .object(
                JSONObject([
                    ("manifests", .string(s.manifestsDirectory)), ("ok", .bool(failed == 0 && !paths.isEmpty)),
                    ("results", .array(results)),
                ])))
        if failed > 0 || paths.isEmpty { throw ExitCode(1) }
    }
}
