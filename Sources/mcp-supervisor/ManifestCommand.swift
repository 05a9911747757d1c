import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif
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
            abstract: "Write the SHA-256 of each manifest's executable (and script and libraries) into the manifest. Run after building a cell; then sign it.")

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
                    for (key, spec) in [("executable", m.executable), ("script", m.script)] {
                        guard let spec, case .object(var o)? = doc[key] else { continue }
                        let digest = sha256Hex(try readFile(spec.path, limit: 1 << 30))
                        if o["sha256"]?.stringValue != digest {
                            o["sha256"] = .string(digest)
                            doc[key] = .object(o)
                            changed = true
                        }
                    }
                    if !m.libraries.isEmpty, case .array(var libs)? = doc["libraries"] {
                        for (i, spec) in m.libraries.enumerated() {
                            guard case .object(var o) = libs[i] else { continue }
                            let digest = sha256Hex(try readFile(spec.path, limit: 1 << 30))
                            if o["sha256"]?.stringValue != digest {
                                o["sha256"] = .string(digest)
                                libs[i] = .object(o)
                                changed = true
                            }
                        }
                        doc["libraries"] = .array(libs)
                    }
                    if changed {
                        let out = Array(JSONValue.object(doc).prettySerialized().utf8)
                        let fd = try Sys.open(f + ".tmp", 0o1 | 0o100 | 0o1000, mode: 0o644)
                        try fd.writeAll(out)
                        fd.close()
                        if rename(f + ".tmp", f) != 0 { throw SystemError("rename", errno: Errno.current) }
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
