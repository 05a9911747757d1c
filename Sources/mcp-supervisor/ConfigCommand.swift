import ArgumentParser
import Foundation
import StrictJSON
import SupervisorCore

struct ConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config", abstract: "Show the effective settings, or the table of every setting.",
        subcommands: [Show.self, Doc.self])

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the settings `run` would use (defaults, then the configuration file, then flags) as JSON.")

        @OptionGroup var cellOptions: CommonOptions
        @OptionGroup var serverOptions: ServerOptions

        func run() throws {
            let s = try cellOptions.settings(more: serverOptions.flags)
            print(JSONValue.object(s.recorded).serialized())
        }
    }

    struct Doc: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the settings table of docs/configuration.md, or rewrite it in place (`make docs`).")

        @Option(name: .long, help: "Rewrite the table between the markers of this Markdown file.")
        var update: String?

        func run() throws {
            guard let path = update else {
                print(Setting.markdownTable(), terminator: "")
                return
            }
            let text: String
            do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
                printError("error: cannot read \(path): \(error)")
                throw ExitCode(1)
            }
            guard let updated = Setting.documentWithTable(text) else {
                printError("error: \(path) has no settings table markers (\(Setting.tableBegin))")
                throw ExitCode(1)
            }
            if updated != text {
                do { try updated.write(toFile: path, atomically: true, encoding: .utf8) } catch {
                    printError("error: cannot write \(path): \(error)")
                    throw ExitCode(1)
                }
            }
        }
    }
}
