import ArgumentParser
import SupervisorCore

@main
struct MCPSupervisor: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mcp-supervisor",
        abstract: "A hardened local MCP server: every tool call runs in a fresh, kernel-confined worker.",
        version: SupervisorVersion.string,
        subcommands: [
            Run.self, Serve.self, Validate.self, Call.self, Doctor.self, Manifest.self, Audit.self, Keys.self,
            CellCommand.self,
            PolicyCommand.self, ConfigCommand.self, InsightsCommand.self, Top.self,
            Dashboard.self, SecretCommand.self, ServerCommand.self,
        ]
    )
}
