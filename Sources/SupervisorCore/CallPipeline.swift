import Foundation
import Logging
import StrictJSON
import Synchronization

/// A tools/call as every transport hands it over: plain JSON, already
/// checked for shape (name is a string, arguments an object) by the
/// transport's gate.
public struct ToolCall: Sendable {
    public var name: String
    public var arguments: JSONObject
    /// `_meta.progressToken`, if the client wants progress notifications.
    public var progressToken: JSONValue?
    /// Who sent it, for call.start (the session's client name otherwise).
    public var client: CallClient?
    /// How to ask a person when the policy requires approval; nil: the
    /// transport cannot ask, and such a call is refused.
    public var approver: (any Approver)?
    /// What is left of the call's deadline when a retry runs (docs/resilience.md):
    /// tightens the cell's timeout for this attempt.
    var remainingMilliseconds: Int?
    /// Set for a policy fallback's alternative: the operator chose it, not
    /// the model, so the catalogue's list does not limit it.
    var isFallback = false
    /// The client's W3C trace context (`_meta.traceparent`, `tracestate`):
    /// the call's span is a child of the client's (docs/operations.md).
    public var traceContext: TraceContext?

    public init(
        name: String, arguments: JSONObject = JSONObject(), progressToken: JSONValue? = nil, client: CallClient? = nil
    ) {
        self.name = name
        self.arguments = arguments
        self.progressToken = progressToken
        self.client = client
    }
}

/// The protocol era and client identity of one call, as call.start records
/// them. In the 2026-07-28 era every request names its client; in the
/// handshake era the name is the session's (from initialize).
public struct CallClient: Sendable, Equatable {
    /// "handshake" or "modern".
    public var era: String
    public var protocolVersion: String?
    public var name: String?
    public var version: String?

    public init(era: String, protocolVersion: String?, name: String? = nil, version: String? = nil) {
        self.era = era
        self.protocolVersion = protocolVersion
        self.name = name
        self.version = version
    }
}

/// What a transport sends back for a tools/call.
public enum CallResponse: Sendable, Equatable {
    /// A tools/call result (`isError` true for refusals and failed calls).
    case result(ToolResult)
    /// A JSON-RPC error (unknown tool; a call that could not be recorded).
    case error(code: Int, message: String)
    /// No response: the client cancelled the call (MCP sends none).
    case none
    /// 2026-07-28: the client must retry with a person's answer (an
    /// `InputRequiredResult`, sent with `resultType: "input_required"`).
    case inputRequired(JSONObject)
}

/// A tools/call result, as JSON the transports serialise unchanged.
public struct ToolResult: Sendable, Equatable {
    public var content: [JSONValue]
    public var structuredContent: JSONValue?
    public var isError: Bool
    /// The result's `_meta` (the enforcement receipt, `Receipt.metaKey`).
    public var meta: JSONObject? = nil

    public init(content: [JSONValue], structuredContent: JSONValue? = nil, isError: Bool) {
        self.content = content
        self.structuredContent = structuredContent
        self.isError = isError
    }

    public static func text(_ text: String, isError: Bool) -> ToolResult {
        ToolResult(content: [.object(JSONObject([("type", "text"), ("text", .string(text))]))], isError: isError)
    }

    public var json: JSONValue {
        var o = JSONObject([("content", .array(content))])
        if let s = structuredContent { o["structuredContent"] = s }
        o["isError"] = .bool(isError)
        if let meta { o["_meta"] = .object(meta) }
        return .object(o)
    }

    /// Bytes of text handed to the client (recorded in call.end).
    var textBytes: Int {
        content.reduce(0) { $0 + ($1["text"]?.stringValue?.utf8.count ?? 0) }
    }
}

/// One client session: who calls, and the workflow state the policy keeps
/// per session. A stdio connection is one session.
public final class CallSession: Sendable {
    public let principal: String
    /// The caller's groups and scopes (HTTP: from the token; stdio: none),
    /// which `principals[].groups` and `.scopes` match. Fixed for the
    /// session: a token with other groups or scopes is another session.
    public let groups: [String]
    public let scopes: [String]
    struct State {
        var clientName: String?
        /// The caller's tenant (HTTP: from the token); recorded with the principal.
        var tenant: String?
        var phase: String?
        var succeededTools: Set<String> = []
        /// Tools the session enabled from the catalogue (docs/catalogue.md).
        var enabledTools: Set<String> = []
    }
    let state = Mutex(State())
    /// Tells the client that this session's own tool list changed (a
    /// catalogue enable or disable), in the session's protocol era.
    let toolListChanged = Mutex<(@Sendable () -> Void)?>(nil)

    /// Set by the transport, which knows how its client hears of list changes.
    public func onToolListChanged(_ body: @escaping @Sendable () -> Void) {
        toolListChanged.withLock { $0 = body }
    }

    public init(principal: String, groups: [String] = [], scopes: [String] = []) {
        self.principal = principal
        self.groups = groups
        self.scopes = scopes
    }

    public var clientName: String? {
        get { state.withLock { $0.clientName } }
        set { state.withLock { $0.clientName = newValue } }
    }

    public var tenant: String? {
        get { state.withLock { $0.tenant } }
        set { state.withLock { $0.tenant = newValue } }
    }
}

/// Settings of the pipeline (docs/configuration.md).
public struct PipelineOptions: Sendable {
    /// Record tool arguments in call.start events (otherwise only their digest).
    public var recordArguments = false
    /// Serving manifests without signatures (announced in every decision).
    public var unsignedMode = false
    /// The policy file; nil or a missing file refuses every call.
    public var policyPath: String?
    /// Where quarantined server cell versions are recorded (nil: in memory
    /// only for this process, which tests use).
    public var quarantineDirectory: String?
    /// Where behaviour profiles are kept (nil: in memory only).
    public var profileDirectory: String?
    /// Definitions on demand past a number of tools (docs/catalogue.md).
    public var catalogue = CatalogueOptions()
    public init() {}
}

/// The whole life of a tools/call, in three steps:
///
/// 1. **admit**: tool lookup, inputSchema, the policy's decision (principal,
///    allow/deny, phase), rate buckets and concurrency caps (`Admission`),
///    resource claims (a queue of waiters), and whether the security log can
///    record at all. The result is a lease or a typed `Refusal`.
/// 2. **execute**: the call runs on a `CallPool` thread through the
///    `CallRunner` (prespawned worker or fresh spawn, the worker session,
///    the connection broker). This is the one bridge between Swift
///    concurrency and the spawn threads: a checked continuation resumed by
///    the runner's `deliver`.
/// 3. **record**: `call.end` (and any `sandbox.violation` / network events)
///    must be durable before the response exists. The security log answers
///    with success or a `SecurityLogError`; a call that cannot be recorded
///    is never answered as a success.
///
/// Transports only turn bytes into a `ToolCall` and a `CallResponse` back
/// into bytes.
public final class CallPipeline: Sendable {
    public static let phaseTool = "set_phase"

    let runner: CallRunner
    let pool: CallPool
    let log: SecurityLog
    let logger: Logger
    let options: PipelineOptions
    public let admission = Admission()
    /// Server cell versions whose tools drifted.
    public let quarantine: Quarantine
    /// Breakers, behaviour profiles, anomaly responses (docs/resilience.md).
    public let resilience: Resilience
    /// The 2026-07-28 era's approval request states: a key per run, or a
    /// key and used-state directory shared by instances (`serve --http`).
    let approvalStatesState = Mutex(ApprovalStates())
    public var approvalStates: ApprovalStates {
        get { approvalStatesState.withLock { $0 } }
        set { approvalStatesState.withLock { $0 = newValue } }
    }
    let loadRegistry: @Sendable () -> CellRegistry

    struct InFlight {
        let cancellation: CallCancellation
        let cell: String
        let version: String
    }

    struct State {
        var registry: CellRegistry
        var policy: Policy?
        var policyError: String?
        var inFlight: [UInt64: InFlight] = [:]
        var nextCall: UInt64 = 0
        var shuttingDown = false
    }

    let state: Mutex<State>
    /// Tells whether the trust ledger changed on disk since the last look.
    let ledgerChanged: Mutex<(@Sendable () -> Bool)?> = Mutex(nil)
    /// Runs after a reload that changed the tool set (tools/list_changed).
    let toolsChanged: Mutex<(@Sendable () -> Void)?> = Mutex(nil)
    /// Counts and times every call (docs/operations.md); nil: none.
    let metricsState: Mutex<SupervisorMetrics?> = Mutex(nil)
    public var metrics: SupervisorMetrics? {
        get { metricsState.withLock { $0 } }
        set { metricsState.withLock { $0 = newValue } }
    }
    /// Traces every call (`Telemetry`, docs/operations.md); nil: none.
    let callObserverState: Mutex<(any CallObserver)?> = Mutex(nil)
    public var callObserver: (any CallObserver)? {
        get { callObserverState.withLock { $0 } }
        set { callObserverState.withLock { $0 = newValue } }
    }

    public init(
        runner: CallRunner, pool: CallPool, log: SecurityLog, logger: Logger, options: PipelineOptions,
        loadRegistry: @escaping @Sendable () -> CellRegistry
    ) {
        self.runner = runner
        self.pool = pool
        self.log = log
        self.logger = logger
        self.options = options
        self.loadRegistry = loadRegistry
        quarantine = Quarantine(directory: options.quarantineDirectory)
        resilience = Resilience(
            profiles: BehaviourProfiles(directory: options.profileDirectory), quarantine: quarantine)
        let registry = loadRegistry()
        state = Mutex(State(registry: registry))
        runner.prespawner?.serve(only: registry.cells)
        for p in registry.problems { logger.error("cell refused", metadata: ["problem": "\(p)"]) }
        log.appendAndWait(Self.loadEvents(registry))
        warmUp(registry)
        reloadPolicy()
    }

    public func onLedgerChange(_ check: @escaping @Sendable () -> Bool) { ledgerChanged.withLock { $0 = check } }
    public func onToolsChanged(_ body: @escaping @Sendable () -> Void) { toolsChanged.withLock { $0 = body } }

    public var registry: CellRegistry { state.withLock { $0.registry } }
    public var policy: Policy? { state.withLock { $0.policy } }

    /// The phase a new session starts in.
    func phase(of session: CallSession) -> String {
        let initial = policy?.initialPhase ?? "default"
        return session.state.withLock { s in
            if s.phase == nil { s.phase = initial }
            return s.phase!
        }
    }

    // MARK: the call

    /// Admits, executes and records one call (one attempt: `call` adds the
    /// policy's retries and fallbacks). `onMessage` receives the worker's
    /// progress and log messages while it runs (on a pool thread).
    func callOnce(
        _ call: ToolCall, session: CallSession,
        onMessage: @escaping @Sendable (WorkerMessage) -> Void = { _ in }
    ) async -> CallResponse {
        if ledgerChanged.withLock({ $0 })?() == true { await reload() }
        if call.name == Self.phaseTool, policy != nil { return await setPhase(call, session: session) }
        if Catalogue.isReserved(call.name), catalogueActive(session) {
            return await catalogueCall(call, session: session)
        }
        let arrived = SupervisorMetrics.clock()

        // 1. admit
        let admitted: Admitted
        switch await admit(call, session: session) {
        case .failure(let refused):
            if let o = refused.inputRequired { return .inputRequired(o) }
            let response = await refuse(
                refused.refusal, tool: call.name, cell: refused.cell, policy: refused.policy,
                session: session)
            callObserver?.callRefused(
                call, tool: CellProtocol.sanitize(String(call.name.prefix(128))), cell: refused.cell,
                reason: refused.refusal.reason, arrived: arrived)
            // Recorded, but a cancelled request gets no answer (MCP); a wait
            // for a person or a resource is where a cancellation lands.
            return Task.isCancelled ? .none : response
        case .success(let a): admitted = a
        }
        let admitNanoseconds = SupervisorMetrics.clock() - arrived
        // The lease and the resources are given back by the pool thread once
        // the worker is reaped (an answer at the final frame comes before
        // that), or below if the pool refused the call.
        defer { _ = state.withLock { $0.inFlight.removeValue(forKey: admitted.id) } }
        let entry = admitted.entry
        let callID = "c\(admitted.id)"
        let decision =
            (options.unsignedMode ? "allow (UNSIGNED development mode): " : "allow: ") + admitted.decision.rule
            + " in phase \(admitted.phase), policy \(admitted.policy.sha256.prefix(16))"
        // Written once the pool has taken the call (a call refused as busy
        // has no call.start); reaches the disk with call.end's data sync.
        var start = SecurityEvent.callStart(
            callID: callID, principal: session.principal, client: session.clientName, protocolClient: call.client,
            tool: entry.tool.name, cell: entry.cell, decision: decision, approval: admitted.approval,
            arguments: call.arguments, recordArguments: options.recordArguments)
        if let t = session.tenant { start.fields["tenant"] = .string(SecurityEvent.bounded(t)) }
        if options.unsignedMode {
            logger.warning(
                "UNSIGNED development mode: running a cell without a verified signature",
                metadata: ["cell.name": "\(entry.cell.name)"])
        }

        // 2. execute and 3. record, on the pool thread (below)
        guard
            let done = await executeAndRecord(
                admitted, callID: callID, start: start, session: session, onMessage: onMessage)
        else {
            admitted.lease.release()
            admission.release(admitted.resources)
            let load = pool.load
            defer {
                callObserver?.callRefused(
                    call, tool: entry.tool.name, cell: entry.cell, reason: "busy", arrived: arrived)
            }
            return await refuse(
                .busy(running: load.running, queued: load.queued), tool: call.name, cell: entry.cell,
                policy: nil, session: session)
        }
        let report = done.report
        CallPipeline.attempt?.ended(report.outcome.kind)
        var meta: Logger.Metadata = [
            "tool": "\(entry.tool.name)", "cell.name": "\(entry.cell.name)", "cell.version": "\(entry.cell.version)",
            "outcome": "\(report.outcome.detail)", "duration_us": "\(report.durationNanoseconds / 1000)",
        ]
        if case .success = report.outcome {
        } else if !report.diagnostics.isEmpty {
            meta["worker.stderr"] = "\(report.diagnostics.suffix(512))"
        }
        logger.info("call ended", metadata: meta)
        callObserver?.callEnded(
            CallTimeline(
                call: call, callID: callID, tool: entry.tool.name, cell: entry.cell, report: report, arrived: arrived,
                admitNanoseconds: admitNanoseconds, appendedAt: done.appendedAt,
                recordNanoseconds: done.recordNanoseconds, recordFailed: done.error != nil))
        if let error = done.error {
            logger.error(
                "call not recorded: its result is withheld",
                metadata: ["tool": "\(entry.tool.name)", "call.id": "\(callID)", "error": "\(error)"])
            return .result(
                .text(
                    "The call ran but its record could not be written (\(error.reason)), so its result "
                        + "is withheld; retry later.", isError: true))
        }
        if !done.result.isError { session.state.withLock { _ = $0.succeededTools.insert(entry.tool.name) } }
        var result = done.result
        if Receipt.applies(to: report.outcome) {
            result.meta = JSONObject([
                (
                    Receipt.metaKey,
                    Receipt.make(
                        cell: entry.cell, limits: admitted.limits, features: runner.host.features,
                        policySHA256: admitted.policy.sha256, callID: callID, prespawned: report.prespawned,
                        callEnd: done.records.first, logKeyID: log.keyID, profiled: report.syscallProfile != nil)
                )
            ])
        }
        metrics?.callEnded(
            tool: entry.tool.name, report: report, events: done.events, admitNanoseconds: admitNanoseconds,
            recordNanoseconds: done.recordNanoseconds, totalNanoseconds: SupervisorMetrics.clock() - arrived)
        if case .cancelled = report.outcome, Task.isCancelled { return .none }
        return .result(result)
    }

    /// A call's answer and whether its record is durable.
    struct Recorded: Sendable {
        let report: CallReport
        let result: ToolResult
        /// Set when call.end could not be made durable: the result is withheld.
        let error: SecurityLogError?
        /// The events of the call's end and the records they became (call.end first).
        var events: [SecurityEvent] = []
        var records: [LogRecordID] = []
        /// From the append of call.end to its data sync.
        var recordNanoseconds: UInt64 = 0
        /// When call.end was appended (monotonic).
        var appendedAt: UInt64 = 0
    }

    /// What admission hands to execution.
    struct Admitted {
        let id: UInt64
        let entry: CellRegistry.ToolEntry
        let arguments: JSONObject
        let decision: Policy.Decision
        let policy: Policy
        let phase: String
        let limits: CellManifest.Limits
        let lease: Admission.Lease
        let resources: [String]
        let cancellation: CallCancellation
        /// How a person approved the call, when the policy required it.
        var approval: String? = nil
    }

    struct Refused: Error {
        let refusal: Refusal
        var cell: PreparedCell? = nil
        var policy: Policy? = nil
        /// Not a refusal: the client must come back with a person's answer.
        var inputRequired: JSONObject? = nil
    }

    /// Step 1. Everything but the resource wait is synchronous.
    func admit(_ call: ToolCall, session: CallSession) async -> Result<Admitted, Refused> {
        let (registry, policy, policyError) = state.withLock { ($0.registry, $0.policy, $0.policyError) }
        guard let entry = registry.tool(named: call.name) else { return .failure(Refused(refusal: .unknownTool)) }
        // Drift (server cells) or an anomaly (any cell): docs/resilience.md.
        if let q = quarantine.record(cell: entry.cell.name, versionID: entry.cell.manifest.manifestSHA256) {
            return .failure(Refused(refusal: q.refusal, cell: entry.cell))
        }
        if let problem = SchemaValidator.validate(.object(call.arguments), against: entry.tool.inputSchema) {
            logger.info(
                "call refused: invalid arguments", metadata: ["tool": "\(entry.tool.name)", "problem": "\(problem)"])
            return .failure(Refused(refusal: .invalidArguments(problem), cell: entry.cell))
        }
        if case .failure(let e) = log.writable {
            logger.warning("call refused: the security log cannot be written", metadata: ["error": "\(e)"])
            return .failure(Refused(refusal: .logUnavailable(e.reason), cell: entry.cell))
        }
        guard let policy else {
            return .failure(Refused(refusal: .noPolicy(policyError ?? "no policy file"), cell: entry.cell))
        }
        let phase = self.phase(of: session)
        let decision = policy.decide(
            principal: session.principal, client: session.clientName, groups: session.groups,
            scopes: session.scopes, tool: entry.tool.name, manifest: entry.cell.manifest, phase: phase)
        guard decision.allowed,
            let (_, rule) = policy.rule(
                for: session.principal, client: session.clientName, groups: session.groups, scopes: session.scopes)
        else {
            return .failure(Refused(refusal: .policy(decision), cell: entry.cell, policy: policy))
        }
        // After the policy: a tool it denies is refused as such, whether
        // listed or not (docs/catalogue.md).
        if !call.isFallback, !listView(registry: registry, policy: policy, session: session).lists(entry.tool.name) {
            return .failure(Refused(refusal: .notEnabled(tool: entry.tool.name), cell: entry.cell, policy: policy))
        }
        // After the policy's decision (a caller it refuses learns nothing of
        // the breaker), before approval (no person is asked for a call the
        // breaker refuses).
        switch resilience.admit(entry.cell, policy: policy) {
        case (let refusal?, _): return .failure(Refused(refusal: refusal, cell: entry.cell, policy: policy))
        case (nil, let halfOpen?): log.appendLater([halfOpen])
        case (nil, nil): break
        }
        // Before any slot or resource is taken: a person may take minutes.
        var approval: String? = nil
        if let rule = policy.approvalRule(tool: entry.tool.name, phase: phase, principal: session.principal)
            .map({ "approval[\($0.0)]" }) ?? resilience.approvalRule(entry.cell)
        {
            let request = ApprovalRequest(
                tool: entry.tool.name, arguments: call.arguments, principal: session.principal, phase: phase,
                rule: rule, timeoutSeconds: policy.approvalTimeoutSeconds, tenant: session.tenant)
            switch await approve(call, request, cell: entry.cell, policy: policy) {
            case .failure(let refused): return .failure(refused)
            case .success(let how): approval = how
            }
        }
        let lease: Admission.Lease
        switch admission.admit(
            principal: session.principal, tool: entry.tool.name, cell: entry.cell.name, rule: rule,
            cellRule: policy.cells[entry.cell.name])
        {
        case .failure(let r): return .failure(Refused(refusal: r, cell: entry.cell, policy: policy))
        case .success(let l): lease = l
        }
        let resources = entry.cell.manifest.resources(for: call.arguments)
        let wait = policy.onConflict == .wait ? UInt64(policy.conflictWaitMilliseconds) * 1_000_000 : 0
        guard await admission.claim(resources, waitNanoseconds: wait) else {
            lease.release()
            return .failure(Refused(refusal: .conflict(resources: resources), cell: entry.cell, policy: policy))
        }
        let cancellation: CallCancellation
        do { cancellation = try CallCancellation() } catch {
            lease.release()
            admission.release(resources)
            return .failure(
                Refused(
                    refusal: .busy(running: pool.load.running, queued: pool.load.queued),
                    cell: entry.cell))
        }
        let id: UInt64? = state.withLock { s in
            if s.shuttingDown { return nil }
            s.nextCall += 1
            s.inFlight[s.nextCall] = InFlight(
                cancellation: cancellation, cell: entry.cell.name,
                version: entry.cell.manifest.manifestSHA256)
            return s.nextCall
        }
        guard let id else {
            lease.release()
            admission.release(resources)
            return .failure(Refused(refusal: .shuttingDown, cell: entry.cell))
        }
        return .success(
            Admitted(
                id: id, entry: entry, arguments: call.arguments, decision: decision, policy: policy,
                phase: phase, limits: Self.limits(policy.effectiveLimits(entry.cell.manifest), call), lease: lease,
                resources: resources, cancellation: cancellation, approval: approval))
    }

    /// The approval step: asks through the call's approver and records the
    /// outcome. Success carries what call.start records; an approval that
    /// cannot be recorded does not count.
    func approve(_ call: ToolCall, _ request: ApprovalRequest, cell: PreparedCell, policy: Policy) async
        -> Result<String, Refused>
    {
        var answer =
            await call.approver?.approve(request)
            ?? .unavailable("this transport offers no way to ask a person")
        if Task.isCancelled { answer = .unavailable("the call was cancelled while the person was asked") }
        var f = JSONObject([
            ("principal", .string(request.principal)), ("tool", .string(request.tool)), ("cell", .string(cell.name)),
            ("rule", .string(request.rule)), ("phase", .string(request.phase)),
            ("argumentsSha256", .string(request.argumentsSHA256)), ("policySha256", .string(policy.sha256)),
        ])
        if let era = call.client?.era { f["protocolEra"] = .string(era) }
        let refusal: Refusal
        switch answer {
        case .accepted(let mechanism):
            f["mechanism"] = .string(mechanism)
            do { try await log.append([SecurityEvent(.callApproved, f)]) } catch {
                return .failure(Refused(refusal: .logUnavailable(error.reason), cell: cell))
            }
            logger.info("call approved", metadata: ["tool": "\(request.tool)", "rule": "\(request.rule)"])
            return .success("\(request.rule) approved via \(mechanism)")
        case .inputRequired(let o):
            f["mechanism"] = "input_required"
            f["expiresInSeconds"] = .int(Int64(request.timeoutSeconds))
            do { try await log.append([SecurityEvent(.callApprovalRequested, f)]) } catch {
                return .failure(Refused(refusal: .logUnavailable(error.reason), cell: cell))
            }
            return .failure(Refused(refusal: .approvalDeclined(rule: request.rule), inputRequired: o))
        case .declined: refusal = .approvalDeclined(rule: request.rule)
        case .unavailable(let why): refusal = .approvalUnavailable(rule: request.rule, why: why)
        case .invalid(let why): refusal = .approvalInvalid(rule: request.rule, why: why)
        }
        logger.info(
            "call refused: approval", metadata: ["tool": "\(request.tool)", "reason": "\(refusal.detail)"])
        return .failure(Refused(refusal: refusal, cell: cell, policy: policy))
    }

    /// Steps 2 and 3, on a pool thread; nil when the pool refused the call.
    /// The runner runs the call; as soon as its answer is known (a frame
    /// cell's final frame, else the worker's reap) its result is made and
    /// `call.end` appended, and the log's answer (durable, or the error)
    /// resumes the task: the one bridge between the spawn threads and the
    /// protocol's tasks. A worker answered at its final frame is still
    /// killed and reaped on this thread; what it did after its answer, if
    /// anything, is recorded then (`SecurityEvent.afterAnswer`).
    func executeAndRecord(
        _ a: Admitted, callID: String, start: SecurityEvent, session: CallSession,
        onMessage: @escaping @Sendable (WorkerMessage) -> Void
    ) async -> Recorded? {
        let runner = self.runner
        let pool = self.pool
        let log = self.log
        let principal = session.principal
        let tenant = session.tenant.map { SecurityEvent.bounded($0) }
        let sessionKey = ObjectIdentifier(session)
        let tool = a.entry.tool
        let cell = a.entry.cell
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (k: CheckedContinuation<Recorded?, Never>) in
                let accepted = pool.submit { [self] in
                    log.appendLater([start])
                    var answered: CallReport? = nil
                    let network = NetworkDecisions()
                    /// `durable`, when given, is signalled once the log has
                    /// answered (a server cell's answer: its server is ended
                    /// after that, off the answer's path).
                    func record(_ r: CallReport, durable: DispatchSemaphore? = nil) {
                        if case .definitionDrift(let d) = r.outcome { self.quarantine(cell, difference: d) }
                        let result = self.result(for: r, tool: tool)
                        // Breaker and profile: their events are durable with call.end.
                        var tagged =
                            SecurityEvent.callEnd(
                                callID: callID, principal: principal, tool: tool.name, cell: cell, report: r,
                                bytesReturned: result.textBytes)
                            + self.resilience.observe(
                                callID: callID, tool: tool.name, cell: cell, report: r,
                                network: network.all, policy: a.policy)
                        if let tenant { for i in tagged.indices { tagged[i].fields["tenant"] = .string(tenant) } }
                        let events = tagged
                        let appended = SupervisorMetrics.clock()
                        log.append(
                            events,
                            recorded: { records, error in
                                let took = SupervisorMetrics.clock() - appended
                                k.resume(
                                    returning: Recorded(
                                        report: r, result: result, error: error, events: events,
                                        records: records ?? [], recordNanoseconds: took, appendedAt: appended))
                                durable?.signal()
                            })
                    }
                    _ = runner.run(
                        cell: cell, tool: tool.name, arguments: a.arguments, callID: callID,
                        cancellation: a.cancellation, limits: a.limits,
                        profileSyscalls: a.policy.resilience.profilesSyscalls(cell.name), session: sessionKey,
                        answered: { r in
                            answered = r
                            guard cell.manifest.server != nil else { return record(r) }
                            // The server is killed when this returns: after
                            // the answer is recorded (at most 2 s), so that
                            // its teardown does not compete with the answer.
                            let durable = DispatchSemaphore(value: 0)
                            record(r, durable: durable)
                            _ = durable.wait(timeout: .now() + 2)
                        },
                        deliver: { final in
                            guard let early = answered else { return record(final) }
                            let after = SecurityEvent.afterAnswer(
                                callID: callID, principal: principal, tool: tool.name, cell: cell,
                                answered: early, final: final)
                            log.appendLater(after)
                            self.metrics?.recorded(after)
                        },
                        onNetwork: { d in
                            network.append(d)
                            // In order with call.start/call.end; made durable with call.end.
                            log.appendLater([
                                SecurityEvent.network(
                                    callID: callID, principal: principal, tool: tool.name, cell: cell, decision: d)
                            ])
                        },
                        onMessage: onMessage)
                    // Reaped: nothing of the call runs any more. Its slots and
                    // resources are free only now, whenever it was answered.
                    a.lease.release()
                    self.admission.release(a.resources)
                }
                if !accepted { k.resume(returning: nil) }
            }
        } onCancel: {
            a.cancellation.cancel()
        }
    }

    /// Holds back a server cell version whose server listed other tools
    /// than the pinned ones; the `cell.drift` event of its call.end says so.
    /// A record that cannot be written leaves the version refused by this
    /// process only (kept in memory); stderr says why.
    func quarantine(_ cell: PreparedCell, difference: String) {
        do {
            try quarantine.add(
                cell: cell.name, versionID: cell.manifest.manifestSHA256, label: cell.version, difference: difference)
        } catch {
            logger.error(
                "could not write the quarantine record; the version stays refused until this supervisor stops",
                metadata: ["cell.name": "\(cell.name)", "error": "\(error)"])
        }
        logger.warning(
            "server cell quarantined: its tool definitions drifted",
            metadata: ["cell.name": "\(cell.name)", "difference": "\(difference)"])
    }

    /// A refusal is recorded (durably) before the client hears of it.
    func refuse(_ r: Refusal, tool: String, cell: PreparedCell?, policy: Policy?, session: CallSession) async
        -> CallResponse
    {
        CallPipeline.attempt?.ended(r.reason)
        let name = CellProtocol.sanitize(String(tool.prefix(128)))
        var f = JSONObject([
            ("principal", .string(session.principal)), ("tool", .string(name)),
            // The detail may quote the client's arguments (a schema path).
            ("reason", .string(r.reason)), ("detail", .string(SecurityEvent.bounded(r.detail, maxBytes: 1024))),
        ])
        if let t = session.tenant { f["tenant"] = .string(SecurityEvent.bounded(t)) }
        // What `principals[].groups` and `.scopes` matched against: a refusal
        // by those is read from the record alone.
        if !session.groups.isEmpty {
            f["groups"] = .array(session.groups.prefix(32).map { .string(SecurityEvent.bounded($0)) })
        }
        if !session.scopes.isEmpty {
            f["scopes"] = .array(session.scopes.prefix(32).map { .string(SecurityEvent.bounded($0)) })
        }
        if let policy {
            f["policySha256"] = .string(policy.sha256)
            f["rule"] = .string(r.detail)
            f["phase"] = .string(phase(of: session))
        }
        if let cell {
            f["cell"] = .string(cell.name)
            f["cellVersion"] = .string(cell.version)
        }
        // When the log itself is the reason, the refusal cannot be recorded:
        // it is still a refusal (nothing ran), and stderr says why.
        metrics?.callRefused(reason: r.reason)
        if case .logUnavailable = r {
        } else {
            do { try await log.append([SecurityEvent(.callRefused, f)]) } catch {
                logger.error("refusal not recorded", metadata: ["tool": "\(name)", "error": "\(error)"])
            }
        }
        if case .unknownTool = r { return .error(code: -32602, message: "Unknown tool: \(name)") }
        return .result(.text(r.message, isError: true))
    }

    /// The report as the client sees it: content and structuredContent
    /// (validated against outputSchema), or isError with a short cause.
    func result(for report: CallReport, tool: CellManifest.Tool) -> ToolResult {
        guard case .success(let r) = report.outcome else { return .text(report.outcome.shortCause, isError: true) }
        if let s = r.structuredContent {
            if let schema = tool.outputSchema,
                let problem = SchemaValidator.validate(s, against: schema, path: "structuredContent")
            {
                logger.warning(
                    "tool output does not match its outputSchema",
                    metadata: ["tool": "\(tool.name)", "problem": "\(problem)"])
                return .text("The tool returned output that does not match its declared schema.", isError: true)
            }
        } else if tool.outputSchema != nil {
            return .text(
                "The tool returned no structured content although it declares an output schema.",
                isError: true)
        }
        let content: [JSONValue] = r.content.map { c in
            if c["type"] == "image", let d = c["data"]?.stringValue, let m = c["mimeType"]?.stringValue {
                return .object(JSONObject([("type", "image"), ("data", .string(d)), ("mimeType", .string(m))]))
            }
            return .object(JSONObject([("type", "text"), ("text", .string(c["text"]?.stringValue ?? ""))]))
        }
        return ToolResult(content: content, structuredContent: r.structuredContent, isError: false)
    }

    // MARK: the phase tool

    /// The built-in tool that moves a session between workflow phases
    /// (present while a policy is loaded).
    public func phaseToolDefinition() -> CellManifest.Tool? {
        guard let p = policy else { return nil }
        let schema = JSONObject([
            ("type", "object"),
            (
                "properties",
                .object(
                    JSONObject([
                        (
                            "phase",
                            .object(
                                JSONObject([
                                    ("type", "string"), ("enum", .array(p.phases.map { .string($0) })),
                                ]))
                        )
                    ]))
            ),
            ("required", .array(["phase"])), ("additionalProperties", .bool(false)),
        ])
        return CellManifest.Tool(
            name: Self.phaseTool, title: "Change the workflow phase",
            description: "Move this session to another workflow phase (\(p.phases.joined(separator: ", "))). Tools "
                + "with side effects run only in the phases they declare; some changes require a verification tool "
                + "to have succeeded first.",
            inputSchema: schema, outputSchema: nil,
            annotations: JSONObject([("readOnlyHint", false), ("openWorldHint", false)]))
    }

    func setPhase(_ call: ToolCall, session: CallSession) async -> CallResponse {
        guard let p = policy, let def = phaseToolDefinition() else {
            return .result(.text("No policy is loaded, so there are no phases.", isError: true))
        }
        let current = phase(of: session)
        if let problem = SchemaValidator.validate(.object(call.arguments), against: def.inputSchema) {
            return await refuse(
                .invalidArguments(problem), tool: Self.phaseTool, cell: nil, policy: nil,
                session: session)
        }
        let target = call.arguments["phase"]!.stringValue!
        if target == current { return .result(.text("The session is already in phase \(current).", isError: false)) }
        guard let t = p.transition(from: current, to: target) else {
            let from = p.transitions.filter { $0.from == current || $0.from == "*" }.map(\.to)
            let d = Policy.Decision(
                allowed: false, rule: "no transition \(current) → \(target)", reason: "phase",
                message: "The policy allows no change from phase \(current) to \(target); from \(current) the session "
                    + "may go to: \(from.isEmpty ? "nowhere" : from.joined(separator: ", ")).")
            return await refuse(.policy(d), tool: Self.phaseTool, cell: nil, policy: p, session: session)
        }
        if let req = t.requires, !session.state.withLock({ $0.succeededTools.contains(req) }) {
            let d = Policy.Decision(
                allowed: false, rule: "\(current) → \(target) requires \(req) to have succeeded", reason: "phase",
                message: "Changing from phase \(current) to \(target) requires the tool \(req) to have succeeded "
                    + "earlier in this session.")
            return await refuse(.policy(d), tool: Self.phaseTool, cell: nil, policy: p, session: session)
        }
        do {
            try await log.append([
                SecurityEvent(
                    .phaseChange,
                    JSONObject([
                        ("principal", .string(session.principal)), ("from", .string(current)), ("to", .string(target)),
                        ("policySha256", .string(p.sha256)), ("requirement", t.requires.map { .string($0) } ?? .null),
                    ]))
            ])
        } catch {
            return .result(
                .text(
                    "The phase change could not be recorded (\(error.reason)), so it did not happen; "
                        + "retry later.", isError: true))
        }
        session.state.withLock { $0.phase = target }
        return .result(.text("The session is now in phase \(target).", isError: false))
    }

    // MARK: reloads and shutdown

    /// Loads the policy file. A broken file keeps the previous policy.
    @discardableResult
    public func reloadPolicy() -> Bool {
        guard let path = options.policyPath else { return false }
        do {
            let p = try Policy.load(path: path)
            state.withLock {
                $0.policy = p
                $0.policyError = nil
            }
            logger.info("policy loaded", metadata: ["policy": "\(path)", "policy.sha256": "\(p.sha256)"])
            log.appendAndWait([
                SecurityEvent(
                    .policyLoaded,
                    JSONObject([
                        ("policy", .string(path)), ("policySha256", .string(p.sha256)), ("ok", true),
                    ]))
            ])
            return true
        } catch {
            let kept = state.withLock { s -> Bool in
                if s.policy == nil { s.policyError = error.description }
                return s.policy != nil
            }
            logger.error(
                "policy not loaded\(kept ? "; the previous policy stays in force" : "; every call is refused")",
                metadata: ["error": "\(error)"])
            log.appendAndWait([
                SecurityEvent(
                    .policyLoaded,
                    JSONObject([
                        ("policy", .string(path)), ("ok", false), ("error", .string(error.description)),
                        ("keptPrevious", .bool(kept)),
                    ]))
            ])
            return false
        }
    }

    /// Reloads the cells (SIGHUP, ledger change); calls of versions no
    /// longer served are ended, and `toolsChanged` runs if the set changed.
    public func reload() async {
        let new = loadRegistry()
        do { try await log.append(Self.loadEvents(new)) } catch {
            logger.error("cells.loaded not recorded", metadata: ["error": "\(error)"])
        }
        warmUp(new)
        let (changed, stale): (Bool, [CallCancellation]) = state.withLock { s in
            let old = s.registry
            s.registry = new
            let live = Set(new.cells.map { "\($0.name)\u{0}\($0.manifest.manifestSHA256)" })
            let stale = s.inFlight.values.filter { !live.contains("\($0.cell)\u{0}\($0.version)") }.map(\.cancellation)
            return (Self.fingerprint(old) != Self.fingerprint(new), stale)
        }
        runner.prespawner?.serve(only: new.cells)
        if !stale.isEmpty {
            logger.warning("killing calls of cell versions no longer served", metadata: ["calls": "\(stale.count)"])
        }
        for c in stale { c.cancel() }
        for p in new.problems { logger.error("cell refused", metadata: ["problem": "\(p)"]) }
        logger.info("manifests reloaded", metadata: ["cells": "\(new.cells.count)", "changed": "\(changed)"])
        if changed, let notify = toolsChanged.withLock({ $0 }) { notify() }
    }

    /// Refuses new calls and kills every worker in flight (SIGTERM, or the
    /// end of the drain after end of input).
    public func shutdown(reason: String) {
        let pending = state.withLock { s -> [CallCancellation] in
            s.shuttingDown = true
            return s.inFlight.values.map(\.cancellation)
        }
        if !pending.isEmpty {
            logger.info(
                "shutting down: killing calls in flight",
                metadata: ["calls": "\(pending.count)", "reason": "\(reason)"])
        }
        for c in pending { c.cancel() }
        runner.prespawner?.shutdown()
        runner.endSessions()
        resilience.profiles.flush()
    }

    static func fingerprint(_ r: CellRegistry) -> [String] {
        r.cells.map { "\($0.manifest.manifestSHA256):\($0.manifest.executable.sha256)" }
    }

    /// Verifies every cell's files in the background so that the first calls
    /// do not pay for hashing; a mismatch is recorded now (and every call to
    /// that cell is refused).
    func warmUp(_ r: CellRegistry) {
        let cells = r.cells
        let log = self.log
        let logger = self.logger
        let t = Thread {
            for c in cells {
                do { try c.verifyFiles() } catch {
                    logger.error("cell quarantined", metadata: ["cell.name": "\(c.name)", "error": "\(error)"])
                    log.appendAndWait([
                        SecurityEvent(
                            .cellRefused,
                            JSONObject([
                                ("manifest", .string(c.manifest.sourcePath)), ("cell", .string(c.name)),
                                ("reason", .string("\(error)")),
                            ]))
                    ])
                }
            }
        }
        t.name = "cell-verify"
        t.start()
    }

    static func loadEvents(_ r: CellRegistry) -> [SecurityEvent] {
        var events = r.problems.map {
            SecurityEvent(.cellRefused, JSONObject([("manifest", .string($0.path)), ("reason", .string($0.message))]))
        }
        let cells: [JSONValue] = r.cells.map { c in
            .object(
                JSONObject([
                    ("cell", .string(c.name)), ("version", .string(c.version)),
                    ("manifestSha256", .string(c.manifest.manifestSHA256)),
                    ("executableSha256", .string(c.manifest.executable.sha256)),
                ]))
        }
        events.append(
            SecurityEvent(
                .cellsLoaded,
                JSONObject([
                    ("cells", .array(cells)),
                    ("refused", .int(Int64(r.problems.count))),
                ])))
        return events
    }
}
