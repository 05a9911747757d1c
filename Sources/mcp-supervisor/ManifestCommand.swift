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
                "Write the SHA-256 of each manifest's executable (and script and libraries) into the manifest. Run after building a cell; then sign it. A blank or missing \"sha256\" is filled in."
        )

        @Argument(help: "Manifest files.")
        var files: [String]

        @Option(
            help: ArgumentHelp(
                "Write the pinned copies into this directory (created if missing) instead of rewriting the files: "
                    + "their relative paths are made absolute, so a copy works from anywhere.",
                valueName: "dir"))
        var out: String?

        @Flag(
            help: ArgumentHelp(
                "Server cells: run each server once in its sandbox, show the tools it lists and write them into "
                    + "the manifest as its pinned definitions (replacing any there)."))
        var tools = false

        @OptionGroup var options: CommonOptions

        func run() throws {
            var failed = false
            let outDir = out.map(SupervisorSettings.absolute)
            if let outDir { try Sys.makeDirectories(outDir, mode: 0o755) }
            for f in files.map(SupervisorSettings.absolute) {
                do {
                    let bytes = try readFile(f, limit: 1 << 20)
                    let parsed: JSONValue
                    do { parsed = try JSONParser.parse(bytes) } catch {
                        printError("error: \(f): not valid JSON: \(error)")
                        failed = true
                        continue
                    }
                    guard case .object(var doc) = parsed else {
                        printError("error: \(f): not a JSON object")
                        failed = true
                        continue
                    }
                    // A new cell's author leaves "sha256" blank (or out):
                    // a placeholder lets the rest be checked, then the
                    // digest replaces it.
                    let blank = fillBlankDigests(&doc)
                    // Parse fully first: pinning never hides another error.
                    let m = try CellManifest.parse(
                        bytes: blank ? JSONValue.object(doc).serializedBytes() : bytes, path: f, manifestSHA256: "")
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
                    // A server cell's package trees: their tree digests.
                    if let server = m.server, case .object(var so)? = doc["server"],
                        case .array(var packages)? = so["packages"]
                    {
                        for (i, spec) in server.packages.enumerated() {
                            guard case .object(var o) = packages[i] else { continue }
                            let digest = try PackageTree.digest(of: spec.path)
                            if o["sha256"]?.stringValue != digest {
                                o["sha256"] = .string(digest)
                                changed = true
                            }
                            if outDir != nil { o["path"] = .string(spec.path) }
                            packages[i] = .object(o)
                        }
                        so["packages"] = .array(packages)
                        doc["server"] = .object(so)
                    }
                    if tools, m.server != nil {
                        let s = try options.settings()
                        let pinnedBytes = Array(JSONValue.object(doc).prettySerialized().utf8)
                        let pinned = try CellManifest.parse(bytes: pinnedBytes, path: f, manifestSHA256: "")
                        let (listed, info) = try ServerTools.discover(
                            pinned, settings: s, groups: try SyscallGroups.load(path: s.syscallGroupsPath))
                        printError(ServerTools.show(listed, manifest: pinned, serverInfo: info))
                        let before = doc["tools"]
                        doc["tools"] = .array(listed.map { .object($0) })
                        if before != doc["tools"] { changed = true }
                    } else if tools {
                        printError("note: \(f) is not a server cell; --tools changes nothing in it")
                    }
                    if let script = m.script { doc["script"] = try pin(script, doc["script"]) }
                    if case .array(var libs)? = doc["libraries"] {
                        for (i, spec) in m.libraries.enumerated() { libs[i] = try pin(spec, libs[i])! }
                        doc["libraries"] = .array(libs)
                    }
                    // A copy elsewhere keeps meaning what the original meant:
                    // every path the supervisor resolves is written absolute.
                    var dest = f
                    if let outDir {
                        absolutize(&doc, m)
                        dest = outDir + "/" + (f.split(separator: "/").last.map(String.init) ?? f)
                        let current = try? readFile(dest, limit: 1 << 20)
                        changed = current != Array(JSONValue.object(doc).prettySerialized().utf8)
                    }
                    if changed {
                        try writeFileAtomically(dest, Array(JSONValue.object(doc).prettySerialized().utf8))
                        // Diagnostics, not data: `make run` keeps stdout for MCP.
                        printError("pinned: \(dest)")
                    } else {
                        printError("unchanged: \(dest)")
                    }
                } catch {
                    printError("error: \(f): \(error)")
                    failed = true
                }
            }
            if failed { throw ExitCode(1) }
        }

        /// Puts a placeholder digest where a {path, sha256} object (executable,
        /// script, libraries, a server's package trees) has none or a blank
        /// one; true if there was any.
        private func fillBlankDigests(_ doc: inout JSONObject) -> Bool {
            var filled = false
            func fill(_ value: JSONValue?) -> JSONValue? {
                guard case .object(var o)? = value else { return value }
                if o["sha256"] == nil || o["sha256"]?.stringValue?.trimmingBlanks() == "" {
                    o["sha256"] = .string(String(repeating: "0", count: 64))
                    filled = true
                }
                return .object(o)
            }
            doc["executable"] = fill(doc["executable"])
            if doc["script"] != nil { doc["script"] = fill(doc["script"]) }
            if case .array(let libs)? = doc["libraries"] { doc["libraries"] = .array(libs.map { fill($0) ?? $0 }) }
            if case .object(var server)? = doc["server"], case .array(let trees)? = server["packages"] {
                server["packages"] = .array(trees.map { fill($0) ?? $0 })
                doc["server"] = .object(server)
            }
            return filled
        }

        /// The resolved (absolute) paths of `m` written back into `doc`.
        private func absolutize(_ doc: inout JSONObject, _ m: CellManifest) {
            func setPath(_ value: JSONValue?, _ path: String) -> JSONValue? {
                guard case .object(var o)? = value else { return value }
                o["path"] = .string(path)
                return .object(o)
            }
            doc["executable"] = setPath(doc["executable"], m.executable.path)
            if let script = m.script { doc["script"] = setPath(doc["script"], script.path) }
            if case .array(var libs)? = doc["libraries"] {
                for (i, spec) in m.libraries.enumerated() { libs[i] = setPath(libs[i], spec.path)! }
                doc["libraries"] = .array(libs)
            }
            if case .object(var fs)? = doc["filesystem"] {
                if fs["read"] != nil { fs["read"] = .array(m.filesystem.read.map { .string($0) }) }
                if fs["write"] != nil { fs["write"] = .array(m.filesystem.write.map { .string($0) }) }
                if fs["execute"] != nil { fs["execute"] = .array(m.filesystem.execute.map { .string($0) }) }
                doc["filesystem"] = .object(fs)
            }
            if let w = m.workingDirectory, doc["workingDirectory"] != nil { doc["workingDirectory"] = .string(w) }
        }
    }
}

extension String {
    fileprivate func trimmingBlanks() -> String { String(drop { $0 == " " }.reversed().drop { $0 == " " }.reversed()) }
}
