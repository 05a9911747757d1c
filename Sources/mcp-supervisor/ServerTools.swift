import ArgumentParser
import StrictJSON
import SupervisorCore
import SupervisorPlatform

/// Registration of server cells (docs/gateway.md): the server's tools are
/// read from the server itself, run once in the sandbox its manifest
/// declares, and shown to the operator before they are pinned.
enum ServerTools {
    /// Runs `manifest`'s server once, confined as for a call, and returns
    /// the tools it lists.
    static func discover(_ manifest: CellManifest, settings s: SupervisorSettings, groups: SyscallGroups) throws
        -> (tools: [JSONObject], serverInfo: String?)
    {
        let host = HostSandbox(
            features: KernelFeatures.probe(), workerUID: s.workerUID, workerGID: s.workerGID,
            scratchRoot: s.scratchRoot, protectedPaths: [s.stateDirectory])
        let cell: PreparedCell
        do { cell = try PreparedCell(manifest: manifest, groups: groups, host: host, discovering: true) } catch {
            throw TrustCommandError("\(manifest.sourcePath): the server cannot run: \(error)")
        }
        let runner = try CallRunner(host: host, logger: stderrLogger("mcp-supervisor"))
        try startEgress(runner, settings: s, logger: stderrLogger("mcp-supervisor"))
        switch runner.discoverTools(cell) {
        case .success(let r): return r
        case .failure(let e):
            throw TrustCommandError("\(manifest.sourcePath): could not list the server's tools: \(e)")
        }
    }

    /// The tools as an operator reviews them: exposed name, description,
    /// arguments, hints.
    static func show(_ tools: [JSONObject], manifest: CellManifest, serverInfo: String?) -> String {
        var out = "\(manifest.name): \(serverInfo ?? "the server") lists \(tools.count) tool(s):\n"
        for t in tools {
            let name = t["name"]?.stringValue ?? "?"
            let exposed = manifest.server?.exposedName(name) ?? name
            out += "  \(exposed)  (server name \(name))\n"
            if let d = t["description"]?.stringValue {
                for line in CellProtocol.sanitize(d).split(separator: "\n", omittingEmptySubsequences: false).prefix(12)
                {
                    out += "      \(line)\n"
                }
            }
            if let props = t["inputSchema"]?["properties"]?.objectValue {
                out += "      arguments: \(props.keys.joined(separator: ", "))\n"
            }
            if let a = t["annotations"]?.objectValue, !a.isEmpty {
                out += "      annotations: \(JSONValue.object(a).serialized())\n"
            }
        }
        return out
    }

    /// The manifest file's bytes with `tools` replaced by `tools`.
    static func withTools(_ bytes: [UInt8], _ tools: [JSONObject], path: String) throws -> [UInt8] {
        guard case .object(var doc) = try JSONParser.parse(bytes) else {
            throw TrustCommandError("\(path): not a JSON object")
        }
        doc["tools"] = .array(tools.map { .object($0) })
        return Array(JSONValue.object(doc).prettySerialized().utf8)
    }
}

extension CellCommand {
    struct Quarantined: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Cell versions held back: their server listed other tools than the pinned ones (drift), or they "
                + "behaved unlike their profile (anomaly).")
        @OptionGroup var output: JSONOutput
        @OptionGroup var location: TrustLocation
        func run() throws {
            let records = Quarantine(directory: Quarantine.directory(stateDirectory: location.state)).all()
            output.emit(
                .array(
                    records.map { r in
                        .object(
                            JSONObject([
                                ("cell", .string(r.cell)), ("versionId", .string(r.versionID)),
                                ("label", .string(r.label)), ("since", .string(r.since)),
                                ("difference", .string(r.difference)), ("reason", .string(r.reason)),
                            ]))
                    }))
            for r in records {
                output.text(
                    "\(r.cell) \(r.label) (\(r.versionID.prefix(12))) since \(r.since) [\(r.reason)]: \(r.difference)")
            }
            if records.isEmpty { output.text("no quarantined cell versions") }
        }
    }

    struct Release: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Release a quarantined cell version once its drift or anomaly is reviewed (register the new tools as a new version, or fix the server).",
            discussion:
                "A released version whose server still lists other tools is quarantined again at its next call.")
        @Argument(help: "CELL or CELL:VERSION (a version id prefix; default: every quarantined version of the cell).")
        var cell: String
        @Argument(help: "Version id prefix (the older form CELL VERSION).") var version: String?
        @OptionGroup var location: TrustLocation
        func run() throws {
            try trustCommand(location, "cell release") {
                // CELL:VERSION as every other cell command takes it, or CELL [VERSION].
                let (cell, version) =
                    self.cell.contains(":") ? try CellCommand.cellVersion(self.cell, nil) : (self.cell, self.version)
                let q = Quarantine(directory: Quarantine.directory(stateDirectory: location.state))
                let released = try q.release(cell: cell, versionID: version)
                guard !released.isEmpty else {
                    throw TrustCommandError(
                        "no quarantined version of \(cell)\(version.map { " matches \($0)" } ?? "")")
                }
                securityEvents(
                    location,
                    released.map { r in
                        SecurityEvent(
                            .cellReleased,
                            JSONObject([
                                ("cell", .string(r.cell)), ("cellVersionId", .string(r.versionID)),
                                ("quarantinedSince", .string(r.since)), ("difference", .string(r.difference)),
                                ("reason", .string(r.reason)),
                                ("uid", .int(Int64(geteuidValue()))),
                            ]))
                    })
                for r in released { print("released: \(r.cell) \(r.label) (\(r.versionID.prefix(12)))") }
            }
        }
    }
}
