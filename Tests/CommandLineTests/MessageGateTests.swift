import StrictJSON
import SupervisorCore
import SupervisorServer
import XCTest

/// The gate's era rules without a process (the e2e tests drive the binary):
/// which request chooses the era, and what each era refuses.
final class MessageGateTests: XCTestCase {
    static let envelope =
        #""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","#
        + #""io.modelcontextprotocol/clientCapabilities":{}}"#

    func check(_ gate: inout MessageGate, _ line: String) -> MessageGate.Decision {
        gate.check(Array(line.utf8))
    }

    func errorCode(_ d: MessageGate.Decision) -> Int64? {
        guard case .reply(let v) = d, case .int(let code)? = v["error"]?["code"] else { return nil }
        return code
    }

    func testInitializeChoosesTheHandshakeEraAndOnlyOneWins() {
        var gate = MessageGate(maxMessageBytes: 1 << 20)
        let initialize = #"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25"}}"#
        XCTAssertEqual(check(&gate, initialize), .forward(request: "1", cancels: nil))
        XCTAssertEqual(gate.era, .handshake)
        XCTAssertEqual(errorCode(check(&gate, initialize)), -32600)
        let enveloped = #"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{\#(Self.envelope)}}"#
        XCTAssertEqual(errorCode(check(&gate, enveloped)), -32600)
        guard case .modern(let r) = check(&gate, #"{"jsonrpc":"2.0","id":3,"method":"server/discover"}"#) else {
            return XCTFail("server/discover must be answered in the handshake era")
        }
        XCTAssertEqual(r.method, "server/discover")
    }

    func testInitializeWithoutProtocolVersionDoesNotChooseAnEra() {
        var gate = MessageGate(maxMessageBytes: 1 << 20)
        XCTAssertEqual(errorCode(check(&gate, #"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#)), -32602)
        XCTAssertEqual(gate.era, .undecided)
        XCTAssertFalse(gate.initializeSeen)
    }

    func testAnEnvelopedRequestChoosesTheModernEra() {
        var gate = MessageGate(maxMessageBytes: 1 << 20)
        guard
            case .modern(let r) = check(
                &gate, #"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{\#(Self.envelope)}}"#)
        else { return XCTFail("expected a modern request") }
        XCTAssertEqual(r.envelope.protocolVersion, "2026-07-28")
        XCTAssertEqual(gate.era, .modern)
        let initialize = #"{"jsonrpc":"2.0","id":2,"method":"initialize","params":{"protocolVersion":"2025-11-25"}}"#
        XCTAssertEqual(errorCode(check(&gate, initialize)), -32022)
        XCTAssertEqual(errorCode(check(&gate, #"{"jsonrpc":"2.0","id":3,"method":"ping"}"#)), -32601)
        XCTAssertEqual(errorCode(check(&gate, #"{"jsonrpc":"2.0","id":4,"method":"tools/list"}"#)), -32602)
        XCTAssertEqual(
            check(&gate, #"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#),
            .cancel("1"))
        if case .drop = check(&gate, #"{"jsonrpc":"2.0","method":"notifications/initialized"}"#) {
        } else {
            XCTFail("notifications/initialized must be dropped in the modern era")
        }
    }

    func testAnUnsupportedModernVersionNamesWhatIsSpoken() {
        var gate = MessageGate(maxMessageBytes: 1 << 20)
        let line =
            #"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"#
            + #""io.modelcontextprotocol/protocolVersion":"2099-01-01","#
            + #""io.modelcontextprotocol/clientCapabilities":{}}}}"#
        let d = check(&gate, line)
        XCTAssertEqual(errorCode(d), -32022)
        guard case .reply(let v) = d else { return XCTFail() }
        XCTAssertEqual(v["error"]?["data"]?["requested"], "2099-01-01")
        XCTAssertEqual(gate.era, .undecided)
    }

    func testBoundedStringsAreCutWithAMarkerAndBoundingTwiceChangesNothing() {
        XCTAssertEqual(SecurityEvent.bounded("short"), "short")
        let long = String(repeating: "é", count: 1000)
        let b = SecurityEvent.bounded(long)
        XCTAssertLessThanOrEqual(b.utf8.count, SecurityEvent.maxClientStringBytes)
        XCTAssertTrue(b.hasPrefix("éé") && b.hasSuffix("…[truncated, 2000 bytes]"), b)
        XCTAssertEqual(SecurityEvent.bounded(b), b)
    }
}
