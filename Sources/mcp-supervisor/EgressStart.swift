import ArgumentParser
import Logging
import SupervisorCore
import SupervisorEgress

/// Starts the egress proxy for cells with `network.egress: "proxy"`
/// (docs/egress.md). Its event loop lives as long as the process; a proxy
/// that cannot start (an unreadable `egressCaBundle`) stops the command.
func startEgress(_ runner: CallRunner, settings s: SupervisorSettings, logger: Logger) throws {
    do {
        let proxy = try EgressProxyServer(upstreamCABundle: s.egressCaBundle, logger: logger)
        runner.enableEgress(proxy)
    } catch {
        printError(
            "mcp-supervisor: cannot start the egress proxy (egressCaBundle \(s.egressCaBundle ?? "unset")): \(error)")
        throw ExitCode(2)
    }
}
