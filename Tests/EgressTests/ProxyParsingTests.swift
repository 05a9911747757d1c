import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import SupervisorCore
import XCTest

@testable import SupervisorEgress

/// A worker's connection to the proxy, on an embedded channel: malformed
/// and over-long requests get a clear answer (and no connection is asked
/// for, so no decision is recorded).
final class ProxyParsingTests: XCTestCase {
    static let proxy: EgressProxyServer = {
        try! EgressProxyServer(listenerPort: 3128, logger: Logger(label: "test"))
    }()

    func worker() throws -> WorkerEgress {
        var access = NetworkAccess.none
        access.egress = .proxy
        return try WorkerEgress(
            proxy: Self.proxy, cell: "t", callID: "c", access: access, injections: [], authority: nil)
    }

    /// Feeds `request` to a fresh connection and returns the proxy's answer.
    func answer(_ request: String, worker w: WorkerEgress) throws -> String {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(
            ByteToMessageHandler(
                HTTPRequestDecoder(
                    leftOverBytesStrategy: .forwardBytes, informationalResponseStrategy: .drop,
                    limitConfiguration: {
                        var l = NIOHTTPDecoderLimitConfiguration()
                        l.maxHeaderListSize = EgressProxyServer.maxHeaderBytes
                        l.maxHeaderFieldSize = EgressProxyServer.maxHeaderBytes
                        return l
                    }()), maximumBufferSize: EgressProxyServer.maxBufferedBytes),
            name: ClientHandler.decoderName)
        try channel.pipeline.syncOperations.addHandler(HTTPResponseEncoder(), name: ClientHandler.encoderName)
        try channel.pipeline.syncOperations.addHandler(ClientHandler(worker: w, overLimit: false))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        var buf = channel.allocator.buffer(capacity: request.utf8.count)
        buf.writeString(request)
        _ = try? channel.writeInbound(buf)
        var out = ""
        while var b = try channel.readOutbound(as: ByteBuffer.self) {
            out += b.readString(length: b.readableBytes) ?? ""
        }
        _ = try? channel.finish()
        return out
    }

    func testMalformedConnectIsAnswered400() throws {
        let w = try worker()
        let a = try answer("CONNECT example.org HTTP/1.1\r\nHost: example.org\r\n\r\n", worker: w)
        XCTAssertTrue(a.hasPrefix("HTTP/1.1 400"), a)
        XCTAssertTrue(a.contains("needs a port"), a)
        XCTAssertTrue(w.decisions.take().isEmpty)
    }

    func testOriginFormIsAnswered400() throws {
        let a = try answer("GET /index.html HTTP/1.1\r\nHost: example.org\r\n\r\n", worker: try worker())
        XCTAssertTrue(a.hasPrefix("HTTP/1.1 400"), a)
        XCTAssertTrue(a.contains("absolute http:// URL"), a)
    }

    func testOverlongHeadersAreAnswered431() throws {
        let big = String(repeating: "x", count: EgressProxyServer.maxHeaderBytes + 10)
        let a = try answer(
            "GET http://example.org/ HTTP/1.1\r\nHost: example.org\r\nX-Big: \(big)\r\n\r\n", worker: try worker())
        XCTAssertTrue(a.hasPrefix("HTTP/1.1 431"), a)
        XCTAssertTrue(a.contains("exceed \(EgressProxyServer.maxHeaderBytes) bytes"), a)
    }

    func testGarbageIsAnswered400() throws {
        let a = try answer("\u{01}\u{02} nonsense\r\n\r\n", worker: try worker())
        XCTAssertTrue(a.hasPrefix("HTTP/1.1 400"), a)
        XCTAssertTrue(a.contains("malformed HTTP request"), a)
    }

    /// The decision queue is bounded: full, it refuses (and the proxy then
    /// refuses the connection rather than leave it unrecorded).
    func testDecisionQueueIsBounded() throws {
        let w = try worker()
        let d = NetworkDecision(host: "example.org", port: 80, refusal: "x")
        for _ in 0..<EgressDecisions.capacity { XCTAssertTrue(w.decisions.post(d)) }
        XCTAssertFalse(w.decisions.post(d))
        XCTAssertEqual(w.decisions.take().count, EgressDecisions.capacity)
        XCTAssertEqual(w.decisions.take(), [])
        XCTAssertTrue(w.decisions.post(d))
    }
}
