import Foundation
import StrictJSON
import XCTest

@testable import SupervisorCore

/// The security log on real files: tampering of each kind is caught, a torn
/// tail is recovered, rotation and concurrency keep one chain.
final class SecurityLogTests: XCTestCase {
    var state = ""

    override func setUp() {
        state = NSTemporaryDirectory() + "mcps-log-\(UUID().uuidString)"
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: state)
    }

    var dir: String { state + "/security" }
    var pub: String { LogSigningKey.paths(stateDirectory: state).publicKey }

    func writeLog(events: Int, rotateBytes: Int = 64 << 20, checkpointEvery: Int = 4) throws {
        let log = try SecurityLog(stateDirectory: state, rotateBytes: rotateBytes, checkpointEvery: checkpointEvery)
        for i in 0..<events {
            log.appendAndWait([SecurityEvent(.callEnd, ["callId": .string("c\(i)"), "outcome": "success"])])
        }
        log.close(finalEvent: SecurityEvent(.supervisorStop, ["reason": "test"]))
    }

    func verify() -> LogVerification { SecurityLogReader.verify(directory: dir, publicKeyPath: pub) }

    var eventFile: String { dir + "/events-000001.jsonl" }

    func lines(_ path: String) throws -> [String] {
        try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map(String.init)
    }

    func write(_ path: String, _ lines: [String]) throws {
        try (lines.joined(separator: "\n") + "\n").write(toFile: path, atomically: false, encoding: .utf8)
    }

    func testUntouchedLogVerifies() throws {
        try writeLog(events: 10)
        let v = verify()
        XCTAssertNil(v.problem, "\(v.problem!)")
        XCTAssertEqual(v.records, 11)
        XCTAssertGreaterThanOrEqual(v.checkpoints, 3)
    }

    func testChangedByteIsCaught() throws {
        try writeLog(events: 10)
        var l = try lines(eventFile)
        l[4] = l[4].replacingOccurrences(of: "success", with: "sucCess")
        try write(eventFile, l)
        let p = try XCTUnwrap(verify().problem)
        XCTAssertEqual(p.kind, .modified)
        XCTAssertEqual(p.seq, 5, "\(p)")
    }

    func testRewrittenChainIsCaughtByTheSignedCheckpoint() throws {
        try writeLog(events: 10)
        // Modify record 2 and recompute every later link: the chain is
        // consistent again, but record 4's signed checkpoint no longer matches.
        var l = try lines(eventFile)
        var prev = SecurityLog.genesis
        for i in 0..<l.count {
            guard case .object(var o) = try JSONParser.parse(l[i]) else { return XCTFail() }
            if i == 1 { o["outcome"] = "timeout" }
            o["prev"] = .string(prev)
            l[i] = JSONValue.object(o).serialized()
            prev = sha256Hex(Array(l[i].utf8))
        }
        try write(eventFile, l)
        let p = try XCTUnwrap(verify().problem)
        XCTAssertEqual(p.kind, .modified, "\(p)")
        XCTAssertTrue(p.message.contains("signed checkpoint"), "\(p)")
    }

    func testDeletedLineIsCaught() throws {
        try writeLog(events: 10)
        var l = try lines(eventFile)
        l.remove(at: 6)
        try write(eventFile, l)
        let p = try XCTUnwrap(verify().problem)
        XCTAssertEqual(p.kind, .missing)
        XCTAssertEqual(p.seq, 7)
    }

    func testSwappedLinesAreCaught() throws {
        try writeLog(events: 10)
        var l = try lines(eventFile)
        l.swapAt(3, 4)
        try write(eventFile, l)
        let p = try XCTUnwrap(verify().problem)
        XCTAssertEqual(p.kind, .reordered, "\(p)")
        XCTAssertEqual(p.seq, 5)
    }

    func testCutTailIsCaughtAgainstTheCheckpoint() throws {
        try writeLog(events: 10)
        let l = try lines(eventFile)
        try write(eventFile, Array(l.prefix(8)))
        let p = try XCTUnwrap(verify().problem)
        XCTAssertEqual(p.kind, .truncated, "\(p)")
        XCTAssertEqual(p.seq, 9)
    }

    func testForgedCheckpointIsCaught() throws {
        try writeLog(events: 10)
        let cp = dir + "/checkpoints.jsonl"
        var l = try lines(cp)
        guard case .object(var o) = try JSONParser.parse(l[0]) else { return XCTFail() }
        o["head"] = .string(String(repeating: "a", count: 64))
        l[0] = JSONValue.object(o).serialized()
        try write(cp, l)
        XCTAssertEqual(verify().problem?.kind, .badSignature)
        // A checkpoint signed by another key is forged too.
        let other = NSTemporaryDirectory() + "mcps-other-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: other) }
        let log = try SecurityLog(stateDirectory: other, checkpointEvery: 1)
        log.close(finalEvent: SecurityEvent(.supervisorStop, ["reason": "x"]))
        XCTAssertEqual(SecurityLogReader.verify(directory: dir, publicKeyPath: LogSigningKey.paths(stateDirectory: other).publicKey).problem?.kind,
                       .badSignature)
    }

    func testTornTailIsRecordedAndTheChainContinues() throws {
        try writeLog(events: 3)
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: eventFile))
        h.seekToEndOfFile()
        h.write(Data(#"{"seq":5,"time":"2026-"#.utf8))
        try h.close()
        XCTAssertEqual(verify().problem?.kind, .truncated, "a torn line fails verification until recovery")
        let log = try SecurityLog(stateDirectory: state)
        log.appendAndWait([SecurityEvent(.supervisorStart, ["version": "x"])])
        log.close()
        XCTAssertNil(verify().problem)
        let records = try SecurityLogReader.records(directory: dir)
        let torn = try XCTUnwrap(records.first { $0.type == "log.torn_tail" })
        XCTAssertEqual(torn["bytes"], 22)
        XCTAssertEqual(torn.seq, 5)
        XCTAssertEqual(records.last?.type, "supervisor.start")
    }

    func testRotationContinuesTheChain() throws {
        try writeLog(events: 40, rotateBytes: 1024)
        let files = try SecurityLog.eventFiles(in: dir)
        XCTAssertGreaterThan(files.count, 2)
        let v = verify()
        XCTAssertNil(v.problem)
        XCTAssertEqual(v.files, files.count)
        let records = try SecurityLogReader.records(directory: dir)
        XCTAssertEqual(records.map(\.seq), Array(1...Int64(records.count)))
        XCTAssertTrue(records.contains { $0.type == "log.rotate" })
        // Deleting a whole rotated file is caught.
        try FileManager.default.removeItem(atPath: files[1].path)
        XCTAssertEqual(verify().problem?.kind, .missing)
    }

    func testConcurrentAppendsFormOneChain() throws {
        let log = try SecurityLog(stateDirectory: state, checkpointEvery: 16)
        DispatchQueue.concurrentPerform(iterations: 8) { t in
            for i in 0..<50 {
                log.appendAndWait([SecurityEvent(.callStart, ["callId": .string("t\(t)-\(i)")]),
                                   SecurityEvent(.callEnd, ["callId": .string("t\(t)-\(i)")])])
            }
        }
        log.close()
        let v = verify()
        XCTAssertNil(v.problem)
        XCTAssertEqual(v.records, 800)
        // Each appender's two events stay adjacent.
        let records = try SecurityLogReader.records(directory: dir)
        for (i, r) in records.enumerated() where r.type == "call.start" {
            XCTAssertEqual(records[i + 1]["callId"], r["callId"])
        }
    }

    func testKeyFileMustBePrivate() throws {
        try writeLog(events: 1)
        chmod(LogSigningKey.paths(stateDirectory: state).privateKey, 0o644)
        XCTAssertThrowsError(try SecurityLog(stateDirectory: state)) { XCTAssertTrue("\($0)".contains("chmod 600")) }
    }
}
