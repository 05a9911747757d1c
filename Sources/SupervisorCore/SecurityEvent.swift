import StrictJSON

/// The closed set of security events (docs/security-events.md). Diagnostics
/// go to stderr through swift-log; these go to the tamper-evident log.
public enum SecurityEventType: String, Sendable, CaseIterable {
    case supervisorStart = "supervisor.start"
    case supervisorStop = "supervisor.stop"
    case logRotate = "log.rotate"
    case logTornTail = "log.torn_tail"
    case logUnsignedTail = "log.unsigned_tail"
    case logRecovered = "log.recovered"
    case logKeyRotated = "log.key_rotated"
    case clientInitialize = "client.initialize"
    case callStart = "call.start"
    case callEnd = "call.end"
    case callRefused = "call.refused"
    case callApprovalRequested = "call.approval_requested"
    case callApproved = "call.approved"
    case callInterrupted = "call.interrupted"
    case sandboxViolation = "sandbox.violation"
    case cellCannotRun = "cell.cannot_run"
    case cellRefused = "cell.refused"
    case cellsLoaded = "cells.loaded"
    case ledgerEntry = "ledger.entry"
    case ledgerRefused = "ledger.refused"
    case ledgerLoaded = "ledger.loaded"
    case ledgerRolledBack = "ledger.rolled_back"
    case unsignedMode = "supervisor.unsigned_mode"
    case phaseChange = "session.phase"
    case policyLoaded = "policy.loaded"
    case networkGranted = "network.granted"
    case networkRefused = "network.refused"
    case cellDrift = "cell.drift"
    case cellReleased = "cell.released"
    case serverRequestRefused = "server.request_refused"
    case cellBreaker = "cell.breaker"
    case cellAnomaly = "cell.anomaly"
    case sessionToolsEnabled = "session.tools_enabled"
    case sessionToolsDisabled = "session.tools_disabled"
    /// An HTTP request refused before any call (401, 403, 413, 421, 429, 503; docs/http.md).
    case httpRefused = "http.refused"
    case serverInstalled = "server.installed"
    case serverInstallFailed = "server.install_failed"
    case serverRemoved = "server.removed"
}

/// One event before it is sequenced and chained: its type and fields.
public struct SecurityEvent: Sendable {
    public let type: SecurityEventType
    public var fields: JSONObject

    public init(_ type: SecurityEventType, _ fields: JSONObject = JSONObject()) {
        self.type = type
        self.fields = fields
    }
}

extension SecurityEvent {
    /// The longest client-supplied string the security log records, in
    /// UTF-8 bytes (docs/security-events.md); longer ones are truncated.
    public static let maxClientStringBytes = 256

    /// `s` itself when it has at most `maxBytes` UTF-8 bytes; otherwise its
    /// start (cut at a character boundary) and a marker naming its full
    /// length, `maxBytes` bytes in all. Bounding twice changes nothing.
    public static func bounded(_ s: String, maxBytes: Int = maxClientStringBytes) -> String {
        let n = s.utf8.count
        guard n > maxBytes else { return s }
        let marker = "…[truncated, \(n) bytes]"
        let room = max(0, maxBytes - marker.utf8.count)
        var kept = ""
        var used = 0
        for ch in s {
            let w = ch.utf8.count
            if used + w > room { break }
            kept.append(ch)
            used += w
        }
        return kept + marker
    }

    /// Members every call event carries.
    static func callFields(_ callID: String, _ principal: String, _ tool: String, _ cell: PreparedCell) -> JSONObject {
        JSONObject([
            ("callId", .string(callID)), ("principal", .string(principal)), ("tool", .string(tool)),
            ("cell", .string(cell.name)), ("cellVersion", .string(cell.version)),
            ("executableSha256", .string(cell.manifest.executable.sha256)),
        ])
    }

    /// The call.start event.
    public static func callStart(
        callID: String, principal: String, client: String?, protocolClient: CallClient? = nil, tool: String,
        cell: PreparedCell, decision: String, approval: String? = nil, arguments: JSONObject, recordArguments: Bool
    ) -> SecurityEvent {
        var f = callFields(callID, principal, tool, cell)
        f["manifestSha256"] = .string(cell.manifest.manifestSHA256)
        f["decision"] = .string(decision)
        f["argumentsSha256"] = .string(sha256Hex(JSONValue.object(arguments).serializedBytes()))
        // Every client-supplied string is bounded here, once.
        if let name = protocolClient?.name ?? client { f["client"] = .string(bounded(name)) }
        if let c = protocolClient {
            f["protocolEra"] = .string(c.era)
            if let v = c.protocolVersion { f["protocolVersion"] = .string(bounded(v)) }
            if let v = c.version { f["clientVersion"] = .string(bounded(v)) }
        }
        if let approval { f["approval"] = .string(approval) }
        if recordArguments { f["arguments"] = .object(arguments) }
        return SecurityEvent(.callStart, f)
    }

    /// The call.end event, plus what names its cause: a sandbox.violation
    /// (the worker broke a rule), a cell.cannot_run (no worker served it) or
    /// a call.refused (the call was not admitted).
    public static func callEnd(
        callID: String, principal: String, tool: String, cell: PreparedCell,
        report: CallReport, bytesReturned: Int
    ) -> [SecurityEvent] {
        var f = callFields(callID, principal, tool, cell)
        for (k, v) in JSONObject([
            ("outcome", .string(report.outcome.kind)), ("detail", .string(report.outcome.detail)),
            ("durationMicroseconds", .int(Int64(report.durationNanoseconds / 1000))),
            ("cpuMicroseconds", .int(Int64(report.cpuNanoseconds / 1000))),
            ("bytesReturned", .int(Int64(bytesReturned))),
            // Stage breakdown: clone to exec'd, exec'd to first frame, exit to reaped.
            ("spawnMicroseconds", .int(Int64(report.spawnNanoseconds / 1000))),
            ("firstFrameMicroseconds", .int(Int64(report.firstFrameNanoseconds / 1000))),
            ("reapMicroseconds", .int(Int64(report.reapNanoseconds / 1000))),
        ]) { f[k] = v }
        if let p = report.peakMemoryBytes { f["peakMemoryBytes"] = .int(Int64(p)) }
        if report.prespawned { f["prespawned"] = true }
        // Under the syscall profiler: how many distinct syscalls it saw (the
        // names go to the cell version's behaviour profile, not the log).
        if let p = report.syscallProfile { f["profiledSyscalls"] = .int(Int64(p.count)) }
        switch report.exit {
        case .exited(let c)?: f["exitStatus"] = .int(Int64(c))
        case .signaled(let s)?: f["signal"] = .int(Int64(s))
        case nil: break
        }
        var events = [SecurityEvent(.callEnd, f)]
        var e = callFields(callID, principal, tool, cell)
        e["detail"] = .string(report.outcome.detail)
        switch report.outcome {
        // A sandbox violation: the worker broke a rule of its sandbox.
        case .sandboxViolation(let s, let a):
            e["kind"] = "seccomp"
            e["syscall"] = .string(s)
            e["architecture"] = .string(a)
            events.append(SecurityEvent(.sandboxViolation, e))
        case .limitExceeded(let l):
            e["kind"] = "limit"
            e["limit"] = .string(l.rawValue)
            events.append(SecurityEvent(.sandboxViolation, e))
        case .timeout:
            e["kind"] = "limit"
            e["limit"] = "deadline"
            events.append(SecurityEvent(.sandboxViolation, e))
        case .protocolViolation:
            e["kind"] = "protocol"
            events.append(SecurityEvent(.sandboxViolation, e))
        // The cell cannot run: no worker served the call.
        case .cannotRun(let why):
            switch why {
            case .hashMismatch(let path, let expected, let actual):
                e["kind"] = "hash_mismatch"
                e["path"] = .string(path)
                e["expectedSha256"] = .string(expected)
                e["actualSha256"] = .string(actual)
            case .unreadable(let path, _):
                e["kind"] = "unreadable"
                e["path"] = .string(path)
            case .unsupported: e["kind"] = "unsupported"
            case .badPath(let field, _):
                e["kind"] = "bad_path"
                e["field"] = .string(field)
            case .filter: e["kind"] = "filter"
            case .unpinnedTools: e["kind"] = "unpinned_tools"
            case .secretUnavailable(let s):
                e["kind"] = "secret_unavailable"
                e["secret"] = .string(s.name)
            case .setup(let error):
                e["kind"] = "setup"
                e["operation"] = .string(error.operation)
                e["errno"] = .int(Int64(error.errno))
            case .spawn(let error):
                e["kind"] = "spawn"
                e["stage"] = .string(error.stage.description)
                e["errno"] = .int(Int64(error.errno))
            }
            events.append(SecurityEvent(.cellCannotRun, e))
        // A refusal: the call was not admitted.
        case .refused(let r):
            e["reason"] = .string(r.reason)
            events.append(SecurityEvent(.callRefused, e))
        // A server listed other tools than the pinned ones: its version is
        // quarantined (docs/gateway.md).
        case .definitionDrift(let d):
            e["cellVersionId"] = .string(cell.manifest.manifestSHA256)
            e["difference"] = .string(SecurityEvent.bounded(d, maxBytes: 4096))
            e["quarantined"] = true
            events.append(SecurityEvent(.cellDrift, e))
        case .success, .toolError, .cancelled, .killedBySignal:
            break
        }
        // Requests a server made to the client (sampling, elicitation,
        // roots), each answered with an error.
        if !report.refusedServerRequests.isEmpty {
            var r = callFields(callID, principal, tool, cell)
            r["methods"] = .array(report.refusedServerRequests.map { .string($0) })
            events.append(SecurityEvent(.serverRequestRefused, r))
        }
        // A forbidden syscall tried after something else had ended the call
        // (its answer, the deadline, a limit) is still recorded.
        if let d = report.deniedSyscall, !report.outcome.isSandboxViolation {
            var v = callFields(callID, principal, tool, cell)
            v["kind"] = "seccomp"
            v["syscall"] = .string(d.syscall)
            v["architecture"] = .string(d.architecture)
            v["detail"] = .string(
                "syscall \(d.syscall) (\(d.architecture)) is not allowed for this cell; "
                    + "tried after the call had ended otherwise (\(report.outcome.kind))")
            events.append(SecurityEvent(.sandboxViolation, v))
        }
        return events
    }

    /// What a call's worker did after its answer was given and recorded
    /// (the answer goes out at the final frame, before the worker is
    /// reaped): nothing, unless the reap names another outcome than the
    /// answer's (a broken frame behind the final one, a forbidden syscall,
    /// a limit). Then the sandbox violations of the final report, each
    /// marked `afterAnswer`; the answer itself stands as recorded.
    public static func afterAnswer(
        callID: String, principal: String, tool: String, cell: PreparedCell,
        answered: CallReport, final: CallReport
    ) -> [SecurityEvent] {
        guard final.outcome != answered.outcome || final.deniedSyscall != nil else { return [] }
        return callEnd(callID: callID, principal: principal, tool: tool, cell: cell, report: final, bytesReturned: 0)
            .dropFirst()
            .map { e in
                var f = e.fields
                f["afterAnswer"] = true
                return SecurityEvent(e.type, f)
            }
    }
}

extension SecurityEvent {
    /// One answer of the connection broker (network.granted / .refused).
    public static func network(
        callID: String, principal: String, tool: String, cell: PreparedCell,
        decision: NetworkDecision
    ) -> SecurityEvent {
        var f = callFields(callID, principal, tool, cell)
        f["host"] = .string(decision.host)
        f["port"] = .int(Int64(decision.port))
        if let a = decision.address { f["address"] = .string(a) }
        if let r = decision.refusal {
            f["reason"] = .string(r)
            return SecurityEvent(.networkRefused, f)
        }
        return SecurityEvent(.networkGranted, f)
    }
}
