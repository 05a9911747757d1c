import ArgumentParser
import Foundation
import StrictJSON
import SupervisorCore
import SupervisorPlatform

extension CellCommand {
    struct New: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Create a working cell skeleton: a Python program using the mcpcell module and its pinned manifest, or (--command) a manifest that turns an existing program into a tool.",
            discussion:
                "Writes cells/python/NAME.py (and cells/python/mcpcell.py if missing) and manifests/NAME.json under --root; with --command PROGRAM only manifests/NAME.json. `validate` and `call` work at once."
        )
        @Argument(help: "Cell name ([A-Za-z0-9_.-]); the tool is named after it with - and . turned into _.") var name:
            String
        @Option(name: .long, help: "Project root holding cells/ and manifests/.") var root: String = "."
        @Option(name: .long, help: "Python interpreter (a binary, hashed into the manifest).") var python: String =
            "/usr/bin/python3.11"
        @Option(
            name: .long,
            help: ArgumentHelp(
                "Scaffold a command cell: an existing program (absolute path, e.g. /usr/bin/wc) run with an argv "
                    + "built from the validated arguments; its tool passes the `input` argument on stdin.",
                valueName: "program"))
        var command: String?

        func validate() throws {
            guard !name.isEmpty, name.count <= 64,
                name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "_.-".contains($0)) })
            else {
                throw ValidationError("cell name must match [A-Za-z0-9_.-]{1,64}")
            }
        }

        func run() throws {
            if let command {
                try trustCommand { try scaffoldCommandCell(program: command) }
                return
            }
            try trustCommand {
                let base = SupervisorSettings.absolute(root)
                let tool = name.replacingOccurrences(of: "-", with: "_").replacingOccurrences(of: ".", with: "_")
                let script = base + "/cells/python/\(name).py"
                let manifest = base + "/manifests/\(name).json"
                for p in [script, manifest] where FileManager.default.fileExists(atPath: p) {
                    throw TrustCommandError("\(p) exists; not overwriting")
                }
                // The skeleton is a shipped file (cells/python/cell_template.py),
                // so the framing code lives in Python, not in a Swift string.
                // Found as the policies are: beside the installed binary, or
                // in the checkout it was built in.
                let templatePath = SupervisorSettings.defaultDirectory("cells") + "/python/cell_template.py"
                let template: String
                do { template = String(decoding: try readFile(templatePath, limit: 1 << 20), as: UTF8.self) } catch {
                    throw TrustCommandError("cannot read the cell template \(templatePath): \(error)")
                }
                try FileManager.default.createDirectory(
                    atPath: base + "/cells/python", withIntermediateDirectories: true)
                try FileManager.default.createDirectory(atPath: base + "/manifests", withIntermediateDirectories: true)
                let program = template.replacingOccurrences(of: "# NAME:", with: "# \(name):")
                    .replacingOccurrences(of: "\"TOOL\"", with: "\"\(tool)\"")
                try program.write(toFile: script, atomically: true, encoding: .utf8)
                // The cell library sits next to the template; a project
                // that has its own copy keeps it.
                let library = base + "/cells/python/mcpcell.py"
                if !FileManager.default.fileExists(atPath: library) {
                    let shipped = (templatePath as NSString).deletingLastPathComponent + "/mcpcell.py"
                    do { try FileManager.default.copyItem(atPath: shipped, toPath: library) } catch {
                        throw TrustCommandError("cannot copy the cell library \(shipped): \(error)")
                    }
                    print("created \(library)")
                }
                let libraryBytes = try readFile(library, limit: 1 << 20)
                let pythonBytes = try readFile(python, limit: 1 << 30)
                let doc: JSONValue = .object(
                    JSONObject([
                        ("name", .string(name)), ("version", "0.1.0"),
                        ("description", .string("\(name): describe what the cell does.")),
                        (
                            "executable",
                            .object(
                                JSONObject([("path", .string(python)), ("sha256", .string(sha256Hex(pythonBytes)))]))
                        ),
                        (
                            "libraries",
                            .array([
                                .object(
                                    JSONObject([
                                        ("path", "../cells/python/mcpcell.py"),
                                        ("sha256", .string(sha256Hex(libraryBytes))),
                                    ]))
                            ])
                        ),
                        (
                            "script",
                            .object(
                                JSONObject([
                                    ("path", .string("../cells/python/\(name).py")),
                                    ("sha256", .string(sha256Hex(Array(program.utf8)))),
                                ]))
                        ),
                        ("argv", ["python3", "-I", "-S", "-"]),
                        ("environment", ["set": ["LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"]]),
                        (
                            "tools",
                            .array([
                                .object(
                                    JSONObject([
                                        ("name", .string(tool)),
                                        ("description", "Reverse a text (replace with what the tool does)."),
                                        (
                                            "inputSchema",
                                            [
                                                "type": "object",
                                                "properties": ["text": ["type": "string", "maxLength": 65536]],
                                                "required": ["text"], "additionalProperties": false,
                                            ]
                                        ),
                                        (
                                            "outputSchema",
                                            [
                                                "type": "object", "properties": ["result": ["type": "string"]],
                                                "required": ["result"],
                                            ]
                                        ),
                                    ]))
                            ])
                        ),
                        (
                            "limits",
                            [
                                "timeoutMilliseconds": 10000, "cpuSeconds": 5, "memoryMiB": 256, "openFiles": 32,
                                "fileSizeMiB": 0, "outputKiB": 256, "frameKiB": 256,
                            ]
                        ),
                        (
                            "filesystem",
                            [
                                "read": ["/usr/lib/python3.11", "/lib/x86_64-linux-gnu", "/etc/ld.so.cache"],
                                "execute": ["/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"],
                            ]
                        ),
                        ("syscalls", ["groups": ["base", "python"]]),
                        ("sideEffects", "none"),
                    ]))
                try doc.prettySerialized().write(toFile: manifest, atomically: true, encoding: .utf8)
                print("created \(script)\ncreated \(manifest) (tool \(tool))")
                print(
                    "try it:  mcp-supervisor call \(tool) --args '{\"text\": \"hello\"}' --allow-unsigned "
                        + "--manifests \(base)/manifests")
                print(
                    "then:    mcp-supervisor cell sign \(manifest) --key KEY && mcp-supervisor cell register \(manifest) --key KEY"
                )
            }
        }
    }
}

extension CellCommand.New {
    /// manifests/NAME.json wrapping `program`: its digest pinned, one tool
    /// whose `input` argument goes to the program's stdin, the loader's
    /// files readable, the base syscall group. `call --learn` proposes what
    /// the program needs beyond that.
    func scaffoldCommandCell(program: String) throws {
        let base = SupervisorSettings.absolute(root)
        let tool = name.replacingOccurrences(of: "-", with: "_").replacingOccurrences(of: ".", with: "_")
        let manifest = base + "/manifests/\(name).json"
        guard program.hasPrefix("/") else {
            throw TrustCommandError("--command needs the program's absolute path (e.g. /usr/bin/wc), found \(program)")
        }
        if (try? Sys.stat(manifest)) != nil { throw TrustCommandError("\(manifest) exists; not overwriting") }
        let bytes: [UInt8]
        do { bytes = try readFile(program, limit: 1 << 30) } catch {
            throw TrustCommandError("cannot read the program \(program): \(error)")
        }
        let argv0 = String(program.split(separator: "/").last ?? "")
        let doc: JSONValue = .object(
            JSONObject([
                ("name", .string(name)), ("version", "0.1.0"),
                ("description", .string("\(name): runs \(program) (describe what the tool does).")),
                (
                    "executable",
                    .object(JSONObject([("path", .string(program)), ("sha256", .string(sha256Hex(bytes)))]))
                ),
                ("environment", ["set": ["LANG": "C.UTF-8"]]),
                (
                    "tools",
                    .array([
                        .object(
                            JSONObject([
                                ("name", .string(tool)),
                                (
                                    "description",
                                    .string("Runs \(argv0) on the input text (replace with what the tool does).")
                                ),
                                (
                                    "inputSchema",
                                    [
                                        "type": "object",
                                        "properties": ["input": ["type": "string", "maxLength": 65536]],
                                        "required": ["input"], "additionalProperties": false,
                                    ]
                                ),
                                // argv[0] is fixed; add options and {argument}
                                // placeholders (docs/manifest.md, "Command cells").
                                ("command", .object(JSONObject([("argv", [.string(argv0)]), ("stdin", "input")]))),
                                ("annotations", ["readOnlyHint": true, "openWorldHint": false]),
                            ]))
                    ])
                ),
                (
                    "limits",
                    [
                        "timeoutMilliseconds": 5000, "cpuSeconds": 2, "memoryMiB": 256, "openFiles": 16,
                        "fileSizeMiB": 0, "outputKiB": 256, "frameKiB": 256,
                    ]
                ),
                (
                    "filesystem",
                    [
                        "read": ["/lib/x86_64-linux-gnu", "/etc/ld.so.cache"],
                        "execute": ["/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"],
                    ]
                ),
                // The dynamic loader checks files with access(2); coreutils advise
                // the kernel how they read stdin (fadvise64): both harmless.
                ("syscalls", ["groups": ["base"], "allow": ["access", "fadvise64"]]),
                ("sideEffects", "none"),
            ]))
        try Sys.makeDirectories(base + "/manifests", mode: 0o755)
        let fd = try Sys.open(manifest, 0o1 | 0o100 | 0o200, mode: 0o644)
        defer { fd.close() }
        try fd.writeAll(Array(doc.prettySerialized().utf8))
        print("created \(manifest) (tool \(tool), command \(program))")
        print(
            "try it:  mcp-supervisor call \(tool) --args '{\"input\": \"hello\"}' --allow-unsigned --manifests "
                + "\(base)/manifests")
        print(
            "if the sandbox stops it: add --learn to that call; it proposes the syscalls to allow "
                + "(docs/writing-cells.md)")
        print(
            "then:    mcp-supervisor cell sign \(manifest) --key KEY && mcp-supervisor cell register \(manifest) --key KEY"
        )
    }
}
