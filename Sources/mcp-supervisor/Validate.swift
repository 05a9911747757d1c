import ArgumentParser
import SupervisorCore

struct Validate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check manifests: syntax, every field, syscall groups, and that the executable matches its SHA-256.")

    @OptionGroup var options: CommonOptions

    @Argument(help: "Manifest files (default: every *.json in --manifests).")
    var files: [String] = []

    func run() throws {
        let s = try options.settings()
        let groups: SyscallGroups
        do { groups = try SyscallGroups.load(path: s.syscallGroupsPath) } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
        let paths =
            files.isEmpty
            ? (try CellRegistry.manifestFiles(in: s.manifestsDirectory)) : files.map(SupervisorSettings.absolute)
        let host = options.host(s, features: KernelFeatures.probe())
        var failed = 0
        for p in paths {
            do {
                let m = try CellRegistry.loadManifest(path: p)
                try PreparedCell(manifest: m, groups: groups, host: host).verifyFiles()
                print("ok: \(p): cell \(m.name) \(m.version), tools: \(m.tools.map(\.name).joined(separator: ", "))")
            } catch let e as ConfigError {
                printError("error: \(e)")
                failed += 1
            } catch {
                printError("error: \(p): \(error)")
                failed += 1
            }
        }
        if paths.isEmpty { printError("error: no manifests found in \(s.manifestsDirectory)") }
        if failed > 0 || paths.isEmpty { throw ExitCode(1) }
    }
}
