import ArgumentParser
import StrictJSON
import SupervisorCore
import SupervisorPlatform

struct Manifest: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "manifest",
        abstract: "Work with manifest files.",
        subcommands: [Pin.self])

    struct Pin: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Write the SHA-256 of each manifest's executable (and script and libraries) into the manifest. Run after building a cell; then sign it."
        )

        @Argument(help: "Manifest files.")
        var files: [String]

        func run() throws {
            var failed = false
            for f in files.map(SupervisorSettings.absolute) {
                do {
                    let bytes = try readFile(f, limit: 1 << 20)
                    guard case .object(var doc) = try JSONParser.parse(bytes) else {
                        printError("error: \(f): not a JSON object")
                        failed = true
                        continue
                    }
                    // Parse fully first: pinning never hides another error.
                    let m = try CellManifest.parse(bytes: bytes, path: f, manifestSHA256: "")
                    var changed = false
                    // Writes the file's digest into one {path, sha256} object.
                    func pin(_ spec: CellManifest.Executable, _ value: JSONValue?) throws -> JSONValue? {
                        guard case .object(var o)? = value else { return value }
                        let digest = sha256Hex(try readFile(spec.path, limit: 1 << 30))
                        if o["sha256"]?.stringValue == digest { return value }
                        o["sha256"] = .string(digest)
                        changed = true
                        return .object(o)
                    }
                    doc["executable"] = try pin(m.executable, doc["executable"])
                    if let script = m.script { doc["script"] = try pin(script, doc["script"]) }
                    if case .array(var libs)? = doc["libraries"] {
                        for (i, spec) in m.libraries.enumerated() { libs[i] = try pin(spec, libs[i])! }
                        doc["libraries"] = .array(libs)
                    }
                    if changed {
                        let out = Array(JSONValue.object(doc).prettySerialized().utf8)
                        let fd = try Sys.open(f + ".tmp", 0o1 | 0o100 | 0o1000, mode: 0o644)
                        try fd.writeAll(out)
                        fd.close()
                        try Sys.rename(f + ".tmp", f)
                        print("pinned: \(f)")
                    } else {
                        print("unchanged: \(f)")
                    }
                } catch {
                    printError("error: \(f): \(error)")
                    failed = true
                }
            }
            if failed { throw ExitCode(1) }
        }
    }
}
