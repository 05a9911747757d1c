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
                                requestedProtocolVersion: requestedProtocolVersion)
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

    init(fd: Int32, maxMessageBytes: Int, writer: LineWriter, logger: Logger,
         continuation: AsyncThrowingStream<Data, Swift.Error>.Continuation, outstanding: OutstandingRequests,
         onEndOfInput: @escaping @Sendable () -> Void, requestedProtocolVersion: SharedValue<String>) {
        self.requestedProtocolVersion = requestedProtocolVersion
        self.fd = fd
        self.writer = writer
        self.logger = logger
        self.continuation = continuation
        self.outstanding = outstanding
        self.onEndOfInput = onEndOfInput
        self.gate = MessageGate(maxMessageBytes: maxMessageBytes)
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
            if let cancels { outstanding.remove(cancels) }
            continuation.yield(Data(line))
        case .drop(let reason):
            logger.debug("message dropped", metadata: ["reason": "\(reason)"])
        case .reply(let error):
            logger.info("bad client message answered with an error", metadata: ["error": "\(error["error"]?["message"]?.stringValue ?? "")"])
            try? writer.writeLine(error.serializedBytes())
        }
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
