import Foundation
import Logging
import MCP
import StrictJSON
import SupervisorCore
import SupervisorPlatform
import Synchronization

/// What the client has not read yet: responses and notifications waiting for
/// stdout, written in order by one thread of their own. Nobody else ever
/// writes to stdout, so no caller (the security log, a call, the SDK) waits
/// on a client that does not read.
///
/// Bounded: notifications (progress, logs) are dropped when more than
/// `limitBytes` are waiting; responses are never dropped, and the reader
/// stops taking input while the queue is over its bound (`waitForRoom`), so
/// what a client can make the supervisor hold is bounded by the requests it
/// may have outstanding.
final class OutboundQueue: @unchecked Sendable {
    // @unchecked: every mutable field is guarded by `cond`.
    private let cond = NSCondition()
    private var lines: [[UInt8]] = []
    /// Run once the line at the same index is written (or can never be).
    private var written: [(@Sendable () -> Void)?] = []
    private var bytes = 0
    private var writing = false
    private var failed = false
    private(set) var dropped = 0
    let limitBytes: Int
    private let fd: Int32
    private let logger: Logger

    init(fd: Int32, limitBytes: Int, logger: Logger) {
        self.fd = fd
        self.limitBytes = limitBytes
        self.logger = logger
        let t = Thread { [self] in run() }
        t.name = "mcp-stdout"
        t.start()
    }

    /// Queues one message (a newline is added). Never blocks. A droppable
    /// message is dropped when the queue is over its bound. `written` runs
    /// on the writer thread once the message is in stdout (or the client is
    /// gone): a response counts as outstanding until then, so a client that
    /// does not read its responses is held by the outstanding bound.
    @discardableResult
    func send(
        _ message: some Collection<UInt8>, droppable: Bool = false, written: (@Sendable () -> Void)? = nil
    ) -> Bool {
        var line = [UInt8]()
        line.reserveCapacity(message.count + 1)
        line.append(contentsOf: message)
        line.append(0x0A)
        cond.lock()
        if failed {
            cond.unlock()
            written?()
            return false
        }
        defer { cond.unlock() }
        if droppable && bytes + line.count > limitBytes {
            dropped += 1
            if dropped == 1 || dropped.isMultiple(of: 1000) {
                logger.warning("client is not reading: notifications dropped", metadata: ["dropped": "\(dropped)"])
            }
            return false
        }
        bytes += line.count
        lines.append(line)
        self.written.append(written)
        cond.broadcast()
        return true
    }

    /// Blocks the caller (the stdin reader) while the queue is over its bound.
    func waitForRoom() {
        cond.lock()
        while bytes > limitBytes && !failed { cond.wait() }
        cond.unlock()
    }

    /// Waits until everything queued is written, or `deadline` (monotonic
    /// ns) passes; true when empty.
    func drain(until deadline: UInt64) -> Bool {
        cond.lock()
        defer { cond.unlock() }
        // No slices: the writer broadcasts after each write and on failure;
        // the timed wait is only the deadline.
        while (!lines.isEmpty || writing) && !failed {
            let now = monotonicNanoseconds()
            if deadline <= now { return false }
            _ = cond.wait(until: Date(timeIntervalSinceNow: Double(deadline - now) / 1e9))
        }
        return lines.isEmpty
    }

    private func run() {
        let out = FileDescriptor(rawValue: fd)
        while true {
            cond.lock()
            while lines.isEmpty { cond.wait() }
            let batch = lines
            let done = written
            lines.removeAll(keepingCapacity: true)
            written.removeAll(keepingCapacity: true)
            writing = true
            cond.unlock()
            var error: SystemError? = nil
            do { try out.writeAll(Array(batch.joined())) } catch let e { error = e }
            cond.lock()
            writing = false
            bytes -= batch.reduce(0) { $0 + $1.count }
            var lost: [(@Sendable () -> Void)?] = []
            if error != nil {
                // The client is gone: nothing more can reach it.
                failed = true
                lines.removeAll()
                lost = written
                written.removeAll()
                bytes = 0
            }
            cond.broadcast()
            cond.unlock()
            for w in done + lost { w?() }
            if let error {
                logger.info("stdout closed; responses can no longer be delivered", metadata: ["error": "\(error)"])
                return
            }
        }
    }
}

/// Requests received and not yet answered, by the canonical JSON of their id
/// (so 1 and "1" differ). The reader waits here when a client has too many.
final class OutstandingRequests: @unchecked Sendable {
    // @unchecked: `ids` is guarded by `cond`.
    private let cond = NSCondition()
    private var ids = Set<String>()

    var count: Int {
        cond.lock()
        defer { cond.unlock() }
        return ids.count
    }

    func add(_ id: String) {
        cond.lock()
        ids.insert(id)
        cond.unlock()
    }

    func remove(_ id: String) {
        cond.lock()
        ids.remove(id)
        cond.broadcast()
        cond.unlock()
    }

    /// Blocks while `limit` or more requests are outstanding.
    func waitBelow(_ limit: Int) {
        cond.lock()
        while ids.count >= limit { cond.wait() }
        cond.unlock()
    }

    /// Waits until none is outstanding or `seconds` passed; true when none.
    func waitUntilEmpty(seconds: Double) -> Bool {
        let until = Date(timeIntervalSinceNow: seconds)
        cond.lock()
        defer { cond.unlock() }
        while !ids.isEmpty && cond.wait(until: until) {}
        return ids.isEmpty
    }

    /// The id of an outgoing response (not of a request or notification).
    static func responseID(_ data: Data) -> String? {
        guard case .object(let o)? = try? JSONParser.parse(Array(data)), o["method"] == nil, let id = o["id"] else {
            return nil
        }
        return id.serialized()
    }
}

/// MCP over stdio, newline-delimited. A dedicated thread blocks in read(2)
/// (the SDK's StdioTransport polls every 10 ms), passes each line through
/// the `MessageGate`, hands tools/call to the `CallPipeline` through
/// `onCall`, and everything else to the SDK's `Server`. One thread writes
/// stdout (`OutboundQueue`).
///
/// Backpressure: the reader stops reading while the client has
/// `maxOutstanding` requests unanswered or while unread output exceeds the
/// queue's bound; the client then blocks in its own write.
public actor BlockingStdioTransport: Transport {
    public nonisolated let logger: Logger
    private let input: Int32
    nonisolated let outbound: OutboundQueue
    private let maxMessageBytes: Int
    let maxOutstanding: Int
    nonisolated let outstanding = OutstandingRequests()
    /// What the client asked for in initialize (for the security log).
    public nonisolated let requestedProtocolVersion = SharedValue<String>()
    private let onEndOfInput: @Sendable () -> Void
    nonisolated let calls = DirectCalls()
    /// Serves each tools/call; set before `receive` is called.
    public nonisolated let callHandler = SharedValue<CallHandler>()
    /// Serves the requests of the 2026-07-28 era; set before `receive`.
    nonisolated let modern = SharedValue<ModernDispatcher>()
    /// The connection's era, once a request has chosen it.
    public nonisolated let era = SharedValue<ProtocolEra>()

    /// `onEndOfInput` runs when stdin ends, after every request received has
    /// been answered (or `drainSeconds` passed).
    public init(
        input: Int32 = 0, output: Int32 = 1, maxMessageBytes: Int = 4 << 20, maxOutstanding: Int = 128,
        maxUnreadBytes: Int = 8 << 20, logger: Logger,
        onEndOfInput: @escaping @Sendable () -> Void = {}
    ) {
        self.input = input
        self.outbound = OutboundQueue(fd: output, limitBytes: maxUnreadBytes, logger: logger)
        self.maxMessageBytes = maxMessageBytes
        self.maxOutstanding = max(1, maxOutstanding)
        self.logger = logger
        self.onEndOfInput = onEndOfInput
    }

    public func connect() async throws {}

    public func disconnect() async {}

    public func send(_ data: Data) async throws {
        let id = OutstandingRequests.responseID(data)
        // Notifications the SDK sends (list_changed, logs) may be dropped for
        // a client that does not read; responses never are.
        let outstanding = self.outstanding
        var written: (@Sendable () -> Void)? = nil
        if let id { written = { outstanding.remove(id) } }
        outbound.send(Array(data), droppable: id == nil, written: written)
    }

    /// Queues a notification of the supervisor's own (progress, cell logs).
    nonisolated func notify(_ method: String, _ params: JSONObject) {
        let m = JSONValue.object(
            JSONObject([("jsonrpc", "2.0"), ("method", .string(method)), ("params", .object(params))]))
        outbound.send(m.serializedBytes(), droppable: true)
    }

    /// Waits until everything queued for the client is written, or `seconds`.
    public nonisolated func flush(seconds: Double) -> Bool {
        outbound.drain(until: monotonicNanoseconds() + UInt64(seconds * 1e9))
    }

    public nonisolated func receive() -> AsyncThrowingStream<Data, Swift.Error> {
        let (stream, continuation) = AsyncThrowingStream<Data, Swift.Error>.makeStream()
        let reader = LineReader(
            fd: input, maxMessageBytes: maxMessageBytes, transport: self, continuation: continuation,
            onEndOfInput: onEndOfInput)
        let thread = Thread { reader.run() }
        thread.name = "mcp-stdin"
        thread.start()
        return stream
    }
}

/// Reads stdin, splits lines, and passes each through the gate.
final class LineReader: @unchecked Sendable {
    // @unchecked: used by the stdin thread only.
    let fd: Int32
    let transport: BlockingStdioTransport
    let continuation: AsyncThrowingStream<Data, Swift.Error>.Continuation
    let onEndOfInput: @Sendable () -> Void
    var gate: MessageGate
    var logger: Logger { transport.logger }

    init(
        fd: Int32, maxMessageBytes: Int, transport: BlockingStdioTransport,
        continuation: AsyncThrowingStream<Data, Swift.Error>.Continuation,
        onEndOfInput: @escaping @Sendable () -> Void
    ) {
        self.fd = fd
        self.transport = transport
        self.continuation = continuation
        self.onEndOfInput = onEndOfInput
        self.gate = MessageGate(maxMessageBytes: maxMessageBytes)
    }

    /// How long received requests may take to finish after end of input
    /// before the calls still running are killed (docs/configuration.md).
    static let drainSeconds = 30.0

    func run() {
        var line: [UInt8] = []
        var discarding = 0  // > 0 while skipping the rest of an over-long line
        var buf = [UInt8](repeating: 0, count: 65536)
        let input = FileDescriptor(rawValue: fd)
        while true {
            // Backpressure: no more input while the client has too much unanswered or unread.
            transport.outstanding.waitBelow(transport.maxOutstanding)
            transport.outbound.waitForRoom()
            let n: Int
            do { n = try input.read(&buf) } catch {
                logger.error("reading stdin failed", metadata: ["error": "\(error)"])
                break
            }
            if n == 0 { break }
            var start = 0
            for i in 0..<n where buf[i] == 0x0A {
                take(buf[start..<i], into: &line, discarding: &discarding, complete: true)
                start = i + 1
            }
            if start < n { take(buf[start..<n], into: &line, discarding: &discarding, complete: false) }
        }
        if !line.isEmpty { handle(line) }
        // Everything received is finished (docs/configuration.md), within the drain time.
        if !transport.outstanding.waitUntilEmpty(seconds: Self.drainSeconds) {
            logger.warning(
                "end of input: requests still unanswered after the drain time; stopping them",
                metadata: ["requests": "\(transport.outstanding.count)"])
        }
        onEndOfInput()
        continuation.finish()
    }

    private func take(_ part: ArraySlice<UInt8>, into line: inout [UInt8], discarding: inout Int, complete: Bool) {
        if discarding > 0 {
            discarding += part.count
        } else if line.count + part.count > gate.maxMessageBytes {
            discarding = line.count + part.count
            line.removeAll(keepingCapacity: false)
        } else {
            line.append(contentsOf: part)
        }
        guard complete else { return }
        if discarding > 0 {
            logger.warning("over-long message discarded", metadata: ["bytes": "\(discarding)"])
            transport.outbound.send(gate.oversized(discarding).serializedBytes())
            discarding = 0
        } else {
            handle(line)
        }
        line.removeAll(keepingCapacity: true)
    }

    private func handle(_ line: [UInt8]) {
        if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { return }
        let decision = gate.check(line)
        if gate.era != .undecided && transport.era.value == nil { transport.era.value = gate.era }
        switch decision {
        case .modern(let request):
            transport.modern.value!.handle(request)
        case .cancel(let key):
            if !transport.calls.cancel(key) { transport.modern.value?.cancel(key) }
        case .forward(let request, let cancels):
            if let request { transport.outstanding.add(request) }
            if let v = gate.requestedProtocolVersion, transport.requestedProtocolVersion.value == nil {
                transport.requestedProtocolVersion.value = v
            }
            if let cancels, !transport.calls.cancel(cancels) {
                // A request the SDK serves: its answer will never come.
                transport.outstanding.remove(cancels)
            }
            continuation.yield(Data(line))
        case .call(let id, let params):
            let key = id.serialized()
            transport.outstanding.add(key)
            let call = DirectCall(id: id, key: key, transport: transport)
            transport.calls.add(call)
            let client = CallClient(era: ProtocolEra.handshake.rawValue, protocolVersion: gate.requestedProtocolVersion)
            transport.callHandler.value!(Self.toolCall(params, client: client), call)
        case .drop(let reason):
            logger.debug("message dropped", metadata: ["reason": "\(reason)"])
        case .reply(let error):
            logger.info(
                "bad client message answered with an error",
                metadata: ["error": "\(error["error"]?["message"]?.stringValue ?? "")"])
            transport.outbound.send(error.serializedBytes())
        }
    }

    /// The gate has checked the shape: name is a string, arguments and
    /// _meta are objects if present.
    static func toolCall(_ params: JSONObject, client: CallClient) -> ToolCall {
        var call = ToolCall(
            name: params["name"]?.stringValue ?? "", arguments: params["arguments"]?.objectValue ?? JSONObject(),
            progressToken: params["_meta"]?["progressToken"], client: client)
        call.traceContext = TraceContext(meta: params["_meta"]?.objectValue)
        return call
    }
}

/// Serves one tools/call; answers through the `DirectCall`.
public typealias CallHandler = @Sendable (ToolCall, DirectCall) -> Void

/// One tools/call received on stdio: where its response and notifications
/// go, and how the client's notifications/cancelled reaches it.
public final class DirectCall: Sendable {
    public let id: JSONValue
    let key: String
    /// Set for a request of the 2026-07-28 era: its result carries
    /// `resultType`, and its log level is its own.
    public let modern: ModernEnvelope?
    private let transport: BlockingStdioTransport
    private struct State {
        var cancelled = false
        var answered = false
        var onCancel: (@Sendable () -> Void)?
    }
    private let state = Mutex(State())

    init(id: JSONValue, key: String, transport: BlockingStdioTransport, modern: ModernEnvelope? = nil) {
        self.id = id
        self.key = key
        self.transport = transport
        self.modern = modern
    }

    /// Runs `body` when the client cancels (at once if it already has).
    public func whenCancelled(_ body: @escaping @Sendable () -> Void) {
        let already = state.withLock { s in
            if !s.cancelled { s.onCancel = body }
            return s.cancelled
        }
        if already { body() }
    }

    func cancel() {
        let body = state.withLock { s in
            s.cancelled = true
            defer { s.onCancel = nil }
            return s.onCancel
        }
        body?()
    }

    /// Sends a notification tied to this call (progress, cell log).
    public func notify(_ method: String, _ params: JSONObject) { transport.notify(method, params) }

    /// The JSON-RPC message that answers a call (nil for `.none`: no
    /// answer), whatever the transport. `modern`: a request of 2026-07-28.
    static func message(for response: CallResponse, id: JSONValue, modern: Bool) -> [UInt8]? {
        switch response {
        case .result(let r):
            var result = r.json
            if modern, case .object(var o) = result {
                o["resultType"] = "complete"
                result = .object(o)
            }
            return JSONValue.object(
                JSONObject([
                    ("jsonrpc", "2.0"), ("id", id),
                    ("result", result),
                ])
            ).serializedBytes()
        case .error(let code, let message_):
            return MessageGate.error(id: id, code: code, message: message_).serializedBytes()
        case .inputRequired(var o):
            // Only an approver of the modern era asks for input this way.
            if modern {
                o["resultType"] = "input_required"
                return JSONValue.object(JSONObject([("jsonrpc", "2.0"), ("id", id), ("result", .object(o))]))
                    .serializedBytes()
            } else {
                return MessageGate.error(id: id, code: -32603, message: "Internal error: input required")
                    .serializedBytes()
            }
        case .none:
            return nil
        }
    }

    /// Sends the call's response (nothing for `.none`) and ends it.
    public func finish(_ response: CallResponse) {
        let first = state.withLock { s in
            defer { s.answered = true }
            return !s.answered
        }
        guard first else { return }
        let message = Self.message(for: response, id: id, modern: modern != nil)
        transport.calls.remove(key)
        // Outstanding until written: a client that does not read its
        // responses is held by the outstanding bound, not answered further.
        let outstanding = transport.outstanding
        let key = self.key
        if let message {
            transport.outbound.send(message, written: { outstanding.remove(key) })
        } else {
            outstanding.remove(key)
        }
    }
}

/// The calls in flight, by request id, for notifications/cancelled.
final class DirectCalls: Sendable {
    private let calls = Mutex<[String: DirectCall]>([:])

    func add(_ c: DirectCall) { calls.withLock { $0[c.key] = c } }

    func remove(_ key: String) { _ = calls.withLock { $0.removeValue(forKey: key) } }

    /// Cancels the call with this id; false when no such call is in flight.
    func cancel(_ key: String) -> Bool {
        let c = calls.withLock { $0[key] }
        c?.cancel()
        return c != nil
    }
}

/// A value set on one thread and read on others.
public final class SharedValue<T: Sendable>: Sendable {
    private let stored = Mutex<T?>(nil)
    public init() {}
    public var value: T? {
        get { stored.withLock { $0 } }
        set { stored.withLock { $0 = newValue } }
    }
}
