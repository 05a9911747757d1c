import Foundation
import Logging
import MCP
import StrictJSON
import SupervisorPlatform

/// Serialises writes to stdout: the SDK's responses and the gate's error
/// replies come from different threads; each message is one line.
final class LineWriter: @unchecked Sendable {
    private let lock = NSLock()
    private let fd: Int32

    init(fd: Int32) { self.fd = fd }

    func writeLine(_ bytes: some Collection<UInt8>) throws {
        var out = [UInt8]()
        out.reserveCapacity(bytes.count + 1)
        out.append(contentsOf: bytes)
        if out.last != 0x0A { out.append(0x0A) }
        lock.lock()
        defer { lock.unlock() }
        try FileDescriptor(rawValue: fd).writeAll(out)
    }
}

/// MCP over stdio, newline-delimited, with a reader that blocks in read(2) on
/// its own thread: no polling, no added latency, nothing done while idle.
/// (The SDK's StdioTransport polls with 10 ms sleeps.)
public actor BlockingStdioTransport: Transport {
    public nonisolated let logger: Logger
    private let input: Int32
    private let writer: LineWriter
    private let maxMessageBytes: Int
    private let outstanding = OutstandingRequests()
    /// What the client asked for in initialize (for the security log).
    public nonisolated let requestedProtocolVersion = SharedValue<String>()
    private let onEndOfInput: @Sendable () -> Void
    /// Serves tools/call requests directly (see `DirectCall`); nil: they go
    /// to the SDK like every other request.
    public nonisolated let directCallHandler = SharedValue<DirectCallHandler>()

    /// `onEndOfInput` runs when stdin ends, before the stream is finished:
    /// the stream ends only once every request already received has been
    /// answered (or after `drainSeconds`), so nothing received is lost.
    public init(input: Int32 = 0, output: Int32 = 1, maxMessageBytes: Int = 4 << 20, logger: Logger,
                onEndOfInput: @escaping @Sendable () -> Void = {}) {
        self.input = input
        self.writer = LineWriter(fd: output)
        self.maxMessageBytes = maxMessageBytes
        self.logger = logger
        self.onEndOfInput = onEndOfInput
    }

    public func connect() async throws {}

    public func disconnect() async {}

    public func send(_ data: Data) async throws {
        try writer.writeLine(data)
        if let id = OutstandingRequests.responseID(data) { outstanding.remove(id) }
    }

    public nonisolated func receive() -> AsyncThrowingStream<Data, Swift.Error> {
        let (stream, continuation) = AsyncThrowingStream<Data, Swift.Error>.makeStream()
        let reader = LineReader(fd: input, maxMessageBytes: maxMessageBytes, writer: writer, logger: logger,
                                continuation: continuation, outstanding: outstanding, onEndOfInput: onEndOfInput,
                                requestedProtocolVersion: requestedProtocolVersion, directCallHandler: directCallHandler.value)
        let thread = Thread { reader.run() }
        thread.name = "mcp-stdin"
        thread.start()
        return stream
    }
}

/// Reads stdin, splits lines, and passes each through the gate.
final class LineReader: @unchecked Sendable {
    let fd: Int32
    let writer: LineWriter
    let logger: Logger
    let continuation: AsyncThrowingStream<Data, Swift.Error>.Continuation
    let outstanding: OutstandingRequests
    let onEndOfInput: @Sendable () -> Void
    let requestedProtocolVersion: SharedValue<String>
    var gate: MessageGate
    let directCallHandler: DirectCallHandler?
    let directCalls = DirectCalls()

    init(fd: Int32, maxMessageBytes: Int, writer: LineWriter, logger: Logger,
         continuation: AsyncThrowingStream<Data, Swift.Error>.Continuation, outstanding: OutstandingRequests,
         onEndOfInput: @escaping @Sendable () -> Void, requestedProtocolVersion: SharedValue<String>,
         directCallHandler: DirectCallHandler?) {
        self.directCallHandler = directCallHandler
        self.requestedProtocolVersion = requestedProtocolVersion
        self.fd = fd
        self.writer = writer
        self.logger = logger
        self.continuation = continuation
        self.outstanding = outstanding
        self.onEndOfInput = onEndOfInput
        self.gate = MessageGate(maxMessageBytes: maxMessageBytes)
        gate.directCalls = directCallHandler != nil
    }

    static let drainSeconds = 5.0

    func run() {
        var line: [UInt8] = []
        var discarding = 0  // > 0 while skipping the rest of an over-long line
        var buf = [UInt8](repeating: 0, count: 65536)
        let input = FileDescriptor(rawValue: fd)
        while true {
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
        onEndOfInput()
        outstanding.waitUntilEmpty(timeout: Self.drainSeconds)
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
            try? writer.writeLine(gate.oversized(discarding).serializedBytes())
            discarding = 0
        } else {
            handle(line)
        }
        line.removeAll(keepingCapacity: true)
    }

    private func handle(_ line: [UInt8]) {
        if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { return }
        switch gate.check(line) {
        case .forward(let request, let cancels):
            if let request { outstanding.add(request) }
            if let v = gate.requestedProtocolVersion, requestedProtocolVersion.value == nil { requestedProtocolVersion.value = v }
            if let cancels {
                outstanding.remove(cancels)
                directCalls.cancel(cancels)
            }
            continuation.yield(Data(line))
        case .call(let id, let params):
            let key = id.serialized()
            outstanding.add(key)
            let call = DirectCall(id: id, key: key, writer: writer, outstanding: outstanding, registry: directCalls)
            directCalls.add(call)
            directCallHandler!(params, call)
        case .drop(let reason):
            logger.debug("message dropped", metadata: ["reason": "\(reason)"])
        case .reply(let error):
            logger.info("bad client message answered with an error", metadata: ["error": "\(error["error"]?["message"]?.stringValue ?? "")"])
            try? writer.writeLine(error.serializedBytes())
        }
    }
}

/// Serves one tools/call given as its params object; answers through the
/// `DirectCall`.
public typealias DirectCallHandler = @Sendable (JSONObject, DirectCall) -> Void

/// One tools/call served by the supervisor directly rather than through the
/// SDK's request dispatch. Measured (docs/benchmarks.md): the SDK decodes
/// every string of the arguments through `Value`'s data-URL check, a Regex
/// built per value, and reaches the handler and the transport through two
/// more task hops, together ~0.5 ms of each call. The gate has already
/// parsed and checked the message, so the supervisor takes tools/call from
/// there; initialize, lists, ping, notifications and everything else stay
/// with the SDK, and progress and log notifications of direct calls are
/// still sent through it.
public final class DirectCall: @unchecked Sendable {
    public let id: JSONValue
    let key: String
    private let writer: LineWriter
    private let outstanding: OutstandingRequests
    private weak var registry: DirectCalls?
    private let lock = NSLock()
    private var cancelled = false
    private var answered = false
    private var onCancel: (@Sendable () -> Void)?

    init(id: JSONValue, key: String, writer: LineWriter, outstanding: OutstandingRequests, registry: DirectCalls) {
        self.id = id
        self.key = key
        self.writer = writer
        self.outstanding = outstanding
        self.registry = registry
    }

    /// Runs `body` when the client cancels (at once if it already has).
    public func whenCancelled(_ body: @escaping @Sendable () -> Void) {
        lock.lock()
        if cancelled {
            lock.unlock()
            body()
            return
        }
        onCancel = body
        lock.unlock()
    }

    func cancel() {
        lock.lock()
        cancelled = true
        let body = onCancel
        onCancel = nil
        lock.unlock()
        body?()
    }

    /// Sends the result.
    public func respond(_ result: JSONValue) {
        finish(.object(JSONObject([("jsonrpc", "2.0"), ("id", id), ("result", result)])))
    }

    /// Sends a JSON-RPC error.
    public func fail(code: Int, message: String, data: JSONValue? = nil) {
        var e = JSONObject([("code", .int(Int64(code))), ("message", .string(message))])
        if let data { e["data"] = data }
        finish(.object(JSONObject([("jsonrpc", "2.0"), ("id", id), ("error", .object(e))])))
    }

    /// Ends the call without an answer (it was cancelled: MCP sends none).
    public func finishWithoutResponse() { finish(nil) }

    private func finish(_ message: JSONValue?) {
        lock.lock()
        let first = !answered
        answered = true
        lock.unlock()
        guard first else { return }
        if let message { try? writer.writeLine(message.serializedBytes()) }
        registry?.remove(key)
        outstanding.remove(key)
    }
}

/// The direct calls in flight, by request id, for notifications/cancelled.
final class DirectCalls: @unchecked Sendable {
    private let lock = NSLock()
    private var calls: [String: DirectCall] = [:]

    func add(_ c: DirectCall) {
        lock.lock()
        calls[c.key] = c
        lock.unlock()
    }

    func remove(_ key: String) {
        lock.lock()
        calls.removeValue(forKey: key)
        lock.unlock()
    }

    func cancel(_ key: String) {
        lock.lock()
        let c = calls[key]
        lock.unlock()
        c?.cancel()
    }
}

/// Ids of requests forwarded to the SDK and not yet answered (canonical JSON
/// of the id, so 1 and "1" differ).
final class OutstandingRequests: @unchecked Sendable {
    private let cond = NSCondition()
    private var ids = Set<String>()

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

    func waitUntilEmpty(timeout: Double) {
        let until = Date(timeIntervalSinceNow: timeout)
        cond.lock()
        while !ids.isEmpty && cond.wait(until: until) {}
        cond.unlock()
    }

    /// The id of an outgoing response (not of a request or notification).
    static func responseID(_ data: Data) -> String? {
        guard case .object(let o)? = try? JSONParser.parse(Array(data)), o["method"] == nil, let id = o["id"] else { return nil }
        return id.serialized()
    }
}

/// A value set on one thread and read on others.
public final class SharedValue<T: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: T?
    public init() {}
    public var value: T? {
        get { lock.lock(); defer { lock.unlock() }; return stored }
        set { lock.lock(); stored = newValue; lock.unlock() }
    }
}
