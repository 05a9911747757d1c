import ArgumentParser
import SupervisorCore
import SupervisorServer

/// The exports of `--otlp-endpoint` and `--events-jsonl`, attached to the
/// security log before its first record of this run (`supervisor.start`).
/// A JSON-lines file that cannot be opened is a configuration mistake: the
/// server does not start. An endpoint is not contacted at start: a
/// collector that is down costs drops, never calls (docs/operations.md).
func startTelemetry(_ s: SupervisorSettings, log: SecurityLog) throws -> Telemetry? {
    guard s.otlpEndpoint != nil || s.eventsJsonl != nil else { return nil }
    var endpoint: OTLPEndpoint? = nil
    if let e = s.otlpEndpoint {
        switch OTLPEndpoint.parse(e) {
        case .success(let p): endpoint = p
        case .failure(let why):
            printError("mcp-supervisor: refusing to start: --otlp-endpoint \(e): \(why)")
            throw ExitCode(2)
        }
    }
    let telemetry: Telemetry
    do {
        telemetry = try Telemetry(otlp: endpoint, eventsJSONL: s.eventsJsonl, serviceVersion: SupervisorInfo.version)
    } catch {
        printError("mcp-supervisor: refusing to start: --events-jsonl \(s.eventsJsonl ?? ""): \(error)")
        throw ExitCode(2)
    }
    telemetry.attach(to: log)
    return telemetry
}
