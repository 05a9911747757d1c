import Crypto
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
        XCTAssertEqual(
            SecurityLogReader.verify(
                directory: dir, publicKeyPath: LogSigningKey.paths(stateDirectory: other).publicKey
            ).problem?.kind,
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
                log.appendAndWait([
                    SecurityEvent(.callStart, ["callId": .string("t\(t)-\(i)")]),
                    SecurityEvent(.callEnd, ["callId": .string("t\(t)-\(i)")]),
                ])
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

    // MARK: failing closed (injected write and data-sync errors)

    /// A log whose writer retries quickly, for the failure tests.
    func openLog(checkpointEvery: Int = 256, idle: Int = 60_000) throws -> SecurityLog {
        try SecurityLog(
            stateDirectory: state, checkpointEvery: checkpointEvery, checkpointIdleMilliseconds: idle,
            retryMilliseconds: 20)
    }

    func waitWritable(_ log: SecurityLog, timeout: TimeInterval = 5) -> Bool {
        let end = Date().addingTimeInterval(timeout)
        while Date() < end {
            if case .success = log.writable { return true }
            usleep(5000)
        }
        return false
    }

    func end(_ id: String) -> SecurityEvent { SecurityEvent(.callEnd, ["callId": .string(id), "outcome": "success"]) }

    func testFailedWriteIsCutBackOutAndTheChainContinues() throws {
        let log = try openLog()
        XCTAssertNil(log.appendAndWait([end("ok1")]))
        let sizeBefore = try FileManager.default.attributesOfItem(atPath: eventFile)[.size] as! Int
        // A full disk: part of the batch lands, then ENOSPC.
        log.faultInjector = { $0 == .write ? LogFault(errno: ENOSPC, partialBytes: 40) : nil }
        let err = try XCTUnwrap(log.appendAndWait([end("lost1"), end("lost2")]))
        XCTAssertEqual(err.errno, ENOSPC)
        XCTAssertEqual(err.operation, "write")
        XCTAssertTrue(err.description.contains("ENOSPC") && err.description.contains(eventFile), err.description)
        XCTAssertFalse(err.reason.contains("/"), "the client-facing reason names no path: \(err.reason)")
        guard case .failure(let w) = log.writable else { return XCTFail("the log must report that it cannot write") }
        XCTAssertEqual(w.errno, ENOSPC)
        XCTAssertEqual(
            try FileManager.default.attributesOfItem(atPath: eventFile)[.size] as? Int, sizeBefore,
            "the partial write is cut back out")
        // Space returns: the writer's retry recovers without any append.
        log.faultInjector = nil
        XCTAssertTrue(waitWritable(log), "the log recovers by itself")
        XCTAssertNil(log.appendAndWait([end("ok2")]))
        log.close()
        let v = verify()
        XCTAssertNil(v.problem, "\(v.problem!)")
        let records = try SecurityLogReader.records(directory: dir)
        XCTAssertEqual(records.map(\.seq), Array(1...Int64(records.count)), "no gap in the sequence")
        XCTAssertFalse(records.contains { $0["callId"]?.stringValue?.hasPrefix("lost") == true })
        let recovered = try XCTUnwrap(records.first { $0.type == "log.recovered" })
        XCTAssertEqual(recovered["refusedEvents"], .object(["call.end": 2]))
        XCTAssertEqual(recovered["refusedCallIds"], .array(["lost1", "lost2"]))
        XCTAssertTrue(recovered["error"]?.stringValue?.contains("ENOSPC") == true)
    }

    func testFailedDataSyncKeepsEarlierEventsAndRefusesTheDurableAppend() throws {
        let log = try openLog()
        XCTAssertNil(log.appendAndWait([end("c0")]))
        // call.start written without a sync, then EIO on the sync of call.end.
        log.faultInjector = { $0 == .dataSync ? LogFault(errno: EIO) : nil }
        log.appendLater([SecurityEvent(.callStart, ["callId": "c1"])])
        let err = try XCTUnwrap(log.appendAndWait([end("c1")]), "a durable append whose sync fails must fail")
        XCTAssertEqual(err.operation, "fdatasync")
        XCTAssertEqual(err.errno, EIO)
        // While failing, another durable append fails too.
        XCTAssertNotNil(log.appendAndWait([end("c2")]))
        log.faultInjector = nil
        XCTAssertTrue(waitWritable(log))
        XCTAssertNil(log.appendAndWait([end("c3")]))
        log.close()
        XCTAssertNil(verify().problem)
        let records = try SecurityLogReader.records(directory: dir)
        let starts = records.filter { $0.type == "call.start" }
        XCTAssertEqual(starts.count, 1, "the unsynced call.start is written again after recovery, once")
        let ends = records.filter { $0.type == "call.end" }.compactMap { $0["callId"]?.stringValue }
        XCTAssertEqual(ends, ["c0", "c3"], "refused durable events are not in the log")
        let recoveredAt = try XCTUnwrap(records.firstIndex { $0.type == "log.recovered" })
        let startAt = try XCTUnwrap(records.firstIndex { $0.type == "call.start" })
        XCTAssertLessThan(recoveredAt, startAt)
    }

    func testAsyncAppendThrowsTheTypedError() async throws {
        let log = try openLog()
        log.faultInjector = { $0 == .write ? LogFault(errno: ENOSPC) : nil }
        do {
            try await log.append([end("x")])
            XCTFail("append must throw when the events are not durable")
        } catch {
            XCTAssertEqual(error.errno, ENOSPC)
        }
        let done = expectation(description: "done")
        log.append([end("y")]) { e in
            XCTAssertEqual(e?.errno, ENOSPC)
            done.fulfill()
        }
        await fulfillment(of: [done], timeout: 5)
        log.faultInjector = nil
        log.close()
        XCTAssertEqual(log.appendAndWait([end("z")])?.operation, "closed")
    }

    func testFailedCheckpointLeavesNoPartialLine() throws {
        let log = try openLog(checkpointEvery: 2)
        log.faultInjector = { $0 == .checkpoint ? LogFault(errno: ENOSPC, partialBytes: 30) : nil }
        XCTAssertNil(log.appendAndWait([end("a"), end("b")]), "the events are durable; only the checkpoint failed")
        guard case .failure = log.writable else { return XCTFail("a full disk shows in writable") }
        let cp = try Data(contentsOf: URL(fileURLWithPath: dir + "/checkpoints.jsonl"))
        XCTAssertTrue(cp.isEmpty || cp.last == 0x0A, "no partial checkpoint line")
        log.faultInjector = nil
        XCTAssertTrue(waitWritable(log))
        log.close()
        XCTAssertNil(verify().problem)
    }

    // MARK: checkpoint coverage

    /// The state directory as a writer killed now would leave it.
    func crashedCopy(_ log: SecurityLog) throws -> String {
        let copy = state + "-crashed"
        try FileManager.default.copyItem(atPath: state, toPath: copy)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: copy) }
        log.close()
        return copy
    }

    func testRecordsAfterTheLastCheckpointFailVerification() throws {
        let log = try SecurityLog(stateDirectory: state, checkpointEvery: 4, checkpointIdleMilliseconds: 60_000)
        for i in 0..<6 { log.appendAndWait([end("c\(i)")]) }
        let crashed = try crashedCopy(log)
        let v = SecurityLogReader.verify(
            directory: crashed + "/security", publicKeyPath: crashed + "/keys/log-signing.pub")
        let p = try XCTUnwrap(v.problem)
        XCTAssertEqual(p.kind, .uncovered, "\(p)")
        XCTAssertEqual(p.seq, 5)
        XCTAssertTrue(p.message.contains("records 5...6"), p.message)
        // The next start checkpoints the tail and says so.
        let reopened = try SecurityLog(stateDirectory: crashed)
        reopened.close()
        let v2 = SecurityLogReader.verify(
            directory: crashed + "/security", publicKeyPath: crashed + "/keys/log-signing.pub")
        XCTAssertNil(v2.problem)
        XCTAssertEqual(v2.unsignedTails.map { [$0.from, $0.to] }, [[5, 6]])
    }

    func testEmptiedOrMissingCheckpointsDoNotVerify() throws {
        try writeLog(events: 5)
        XCTAssertNil(verify().problem)
        let cp = dir + "/checkpoints.jsonl"
        let saved = try Data(contentsOf: URL(fileURLWithPath: cp))
        try Data().write(to: URL(fileURLWithPath: cp))
        let p = try XCTUnwrap(verify().problem)
        XCTAssertEqual(p.kind, .uncovered)
        XCTAssertTrue(p.message.contains("records 1...6"), p.message)
        try FileManager.default.removeItem(atPath: cp)
        XCTAssertEqual(verify().problem?.kind, .uncovered)
        // A copy kept elsewhere verifies; one that does not exist is an error.
        let copy = state + "-checkpoints-copy.jsonl"
        try saved.write(to: URL(fileURLWithPath: copy))
        defer { try? FileManager.default.removeItem(atPath: copy) }
        XCTAssertNil(SecurityLogReader.verify(directory: dir, publicKeyPath: pub, checkpointsPath: copy).problem)
        let missing = SecurityLogReader.verify(directory: dir, publicKeyPath: pub, checkpointsPath: copy + ".nope")
        XCTAssertEqual(missing.problem?.kind, .unreadable)
        XCTAssertTrue(missing.problem?.message.contains("ENOENT") == true, "\(missing.problem!)")
    }

    func testIdleCheckpointCoversALiveLog() throws {
        let log = try SecurityLog(stateDirectory: state, checkpointEvery: 1000, checkpointIdleMilliseconds: 50)
        log.appendAndWait([end("a")])
        let deadline = Date().addingTimeInterval(5)
        while verify().problem != nil && Date() < deadline { usleep(10_000) }
        XCTAssertNil(verify().problem, "a quiet live log is covered by a checkpoint")
        log.close()
    }

    // MARK: interrupted calls

    func testCallsWithoutEndAreRecordedAsInterruptedAtTheNextStart() throws {
        let log = try SecurityLog(stateDirectory: state, rotateBytes: 1500, checkpointIdleMilliseconds: 60_000)
        func start(_ id: String) -> SecurityEvent {
            SecurityEvent(.callStart, ["callId": .string(id), "tool": "echo", "cell": "echo"])
        }
        log.appendAndWait([start("c1")])
        // Enough records to rotate: c1 is open across the rotation.
        for i in 0..<12 { log.appendAndWait([start("x\(i)"), end("x\(i)")]) }
        log.appendAndWait([start("c2"), start("c3"), end("c3")])
        XCTAssertGreaterThan(try SecurityLog.eventFiles(in: dir).count, 1)
        let crashed = try crashedCopy(log)
        let reopened = try SecurityLog(stateDirectory: crashed)
        reopened.close()
        let records = try SecurityLogReader.records(directory: crashed + "/security")
        let interrupted = records.filter { $0.type == "call.interrupted" }
        XCTAssertEqual(interrupted.compactMap { $0["callId"]?.stringValue }.sorted(), ["c1", "c2"])
        let c1Start = try XCTUnwrap(records.first { $0.type == "call.start" && $0["callId"] == "c1" })
        XCTAssertEqual(interrupted.first { $0["callId"] == "c1" }?["startSeq"], .int(c1Start.seq))
        XCTAssertEqual(interrupted.first?["tool"], "echo")
        XCTAssertNil(
            SecurityLogReader.verify(
                directory: crashed + "/security",
                publicKeyPath: crashed + "/keys/log-signing.pub"
            ).problem)
        // Recorded once: the start after that finds nothing more.
        let again = try SecurityLog(stateDirectory: crashed)
        again.close()
        XCTAssertEqual(
            try SecurityLogReader.records(directory: crashed + "/security").filter { $0.type == "call.interrupted" }
                .count, 2)
    }

    func testNoRecoveryWhileAnotherWriterHasTheLogOpen() throws {
        let live = try SecurityLog(stateDirectory: state, checkpointIdleMilliseconds: 60_000)
        live.appendAndWait([SecurityEvent(.callStart, ["callId": "c1"])])
        // A trust command opening the log meanwhile must not call c1 interrupted.
        let other = try SecurityLog(stateDirectory: state)
        other.close()
        live.appendAndWait([end("c1")])
        live.close()
        let records = try SecurityLogReader.records(directory: dir)
        XCTAssertFalse(records.contains { $0.type == "call.interrupted" || $0.type == "log.unsigned_tail" })
        XCTAssertNil(verify().problem)
    }

    // MARK: the signing key

    func testMissingKeyIsNeverReplacedSilently() throws {
        try writeLog(events: 2)
        let (priv, pubPath) = LogSigningKey.paths(stateDirectory: state)
        let pubBefore = try Data(contentsOf: URL(fileURLWithPath: pubPath))
        try FileManager.default.removeItem(atPath: priv)
        XCTAssertThrowsError(try SecurityLog(stateDirectory: state)) {
            XCTAssertTrue("\($0)".contains("audit rotate-key"), "\($0)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: priv), "no key was created")
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: pubPath)), pubBefore, "the public key is untouched")
        // Also with only the log left (public key gone too).
        try FileManager.default.removeItem(atPath: pubPath)
        XCTAssertThrowsError(try SecurityLog(stateDirectory: state))
    }

    func testKeySwappedBehindTheLogIsRefused() throws {
        try writeLog(events: 2)
        let (priv, pubPath) = LogSigningKey.paths(stateDirectory: state)
        let other = Curve25519.Signing.PrivateKey()
        try Data("ed25519-private:\(other.rawRepresentation.base64EncodedString())\n".utf8).write(
            to: URL(fileURLWithPath: priv))
        chmod(priv, 0o600)
        try Data("ed25519-public:\(other.publicKey.rawRepresentation.base64EncodedString())\n".utf8).write(
            to: URL(fileURLWithPath: pubPath))
        XCTAssertThrowsError(try SecurityLog(stateDirectory: state)) {
            XCTAssertTrue("\($0)".contains("was replaced without `mcp-supervisor audit rotate-key`"), "\($0)")
        }
    }

    func testRotatedKeyKeepsOldCheckpointsVerifiable() throws {
        try writeLog(events: 3)
        let oldID = try XCTUnwrap(LogSigningKey.publicKeys(stateDirectory: state).keys.first)
        try FileManager.default.removeItem(atPath: LogSigningKey.paths(stateDirectory: state).privateKey)
        let (previous, new) = try LogSigningKey.rotate(stateDirectory: state, reason: "lost")
        XCTAssertEqual(previous, oldID)
        XCTAssertNotEqual(new, oldID)
        try writeLog(events: 2)
        let keys = try LogSigningKey.publicKeys(stateDirectory: state)
        XCTAssertEqual(Set(keys.keys), [oldID, new])
        let v = SecurityLogReader.verify(directory: dir, publicKeys: keys)
        XCTAssertNil(v.problem, "\(v.problem!)")
        XCTAssertEqual(v.keyIDs, [oldID, new])
        let rotated = try XCTUnwrap(SecurityLogReader.records(directory: dir).first { $0.type == "log.key_rotated" })
        XCTAssertEqual(rotated["previousKeyId"], .string(oldID))
        XCTAssertEqual(rotated["newKeyId"], .string(new))
        XCTAssertEqual(rotated["previousKeyAvailable"], false)
        // Only the current key's public half: the old checkpoints fail.
        XCTAssertEqual(verify().problem?.kind, .badSignature)
    }

    func testRetiredKeyCannotCheckpointLaterRecords() throws {
        try writeLog(events: 2)
        let (priv, _) = LogSigningKey.paths(stateDirectory: state)
        let oldKey = try LogSigningKey.loadPrivate(priv)
        _ = try LogSigningKey.rotate(stateDirectory: state, reason: "scheduled")
        try writeLog(events: 2)
        XCTAssertNil(
            SecurityLogReader.verify(directory: dir, publicKeys: try LogSigningKey.publicKeys(stateDirectory: state))
                .problem)
        // Someone holding the old private key signs the current head.
        let records = try SecurityLogReader.records(directory: dir)
        let last = try XCTUnwrap(records.last)
        let sig = try oldKey.signature(for: Array((SecurityLog.checkpointDomain + "\(last.seq)\n\(last.hash)\n").utf8))
        let line =
            JSONValue.object(
                JSONObject([
                    ("seq", .int(last.seq)), ("head", .string(last.hash)), ("time", "x"),
                    ("keyId", .string(LogSigningKey.keyID(oldKey.publicKey))),
                    ("signature", .string(sig.base64EncodedString())),
                ])
            ).serialized() + "\n"
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: dir + "/checkpoints.jsonl"))
        h.seekToEndOfFile()
        h.write(Data(line.utf8))
        try h.close()
        let p = try XCTUnwrap(
            SecurityLogReader.verify(directory: dir, publicKeys: try LogSigningKey.publicKeys(stateDirectory: state))
                .problem)
        XCTAssertEqual(p.kind, .badSignature)
        XCTAssertTrue(p.message.contains("retired"), p.message)
    }

    func testRotateKeyIsRefusedWhileTheLogIsOpen() throws {
        let log = try SecurityLog(stateDirectory: state)
        XCTAssertThrowsError(try LogSigningKey.rotate(stateDirectory: state, reason: "x")) {
            XCTAssertTrue("\($0)".contains("open in another process"), "\($0)")
        }
        log.close()
    }

    // MARK: the ledger anchor

    func ledgerEntry(_ path: String, _ key: Curve25519.Signing.PrivateKey, signer: Curve25519.Signing.PrivateKey) throws
    {
        try Ledger.append(
            path: path, event: "key.add",
            fields: [
                "keyId": .string(TrustKeys.keyID(key.publicKey)),
                "publicKey": .string(TrustKeys.publicText(key.publicKey)), "name": "k",
            ], key: signer)
    }

    func testLedgerThatWentBackwardsIsRefused() throws {
        let path = Ledger.path(stateDirectory: state)
        let root = Curve25519.Signing.PrivateKey()
        try ledgerEntry(path, root, signer: root)
        try ledgerEntry(path, Curve25519.Signing.PrivateKey(), signer: root)
        let twoEntries = try Data(contentsOf: URL(fileURLWithPath: path))
        try ledgerEntry(path, Curve25519.Signing.PrivateKey(), signer: root)
        let log = try SecurityLog(stateDirectory: state)
        let guard1 = LedgerGuard(path: path, log: log, anchor: log.ledgerAnchorAtOpen)
        XCTAssertNil(guard1.refusal(Ledger.load(path: path)))
        log.close()
        let reopened = try SecurityLog(stateDirectory: state)
        reopened.close()
        let anchor = try XCTUnwrap(reopened.ledgerAnchorAtOpen, "a new open finds the anchor")
        XCTAssertEqual(anchor.entries, 3)
        XCTAssertEqual(anchor.head, Ledger.load(path: path).head)

        // Rolled back to two entries: refused at the next start.
        try twoEntries.write(to: URL(fileURLWithPath: path))
        let log2 = try SecurityLog(stateDirectory: state)
        let guard2 = LedgerGuard(path: path, log: log2, anchor: log2.ledgerAnchorAtOpen)
        let why = try XCTUnwrap(guard2.refusal(Ledger.load(path: path)))
        XCTAssertTrue(why.contains("has 2 entries") && why.contains("recorded 3"), why)
        // Rewritten with as many entries: refused too.
        try ledgerEntry(path, Curve25519.Signing.PrivateKey(), signer: root)
        let rewritten = try XCTUnwrap(guard2.refusal(Ledger.load(path: path)))
        XCTAssertTrue(rewritten.contains("rewritten"), rewritten)
        log2.close()
        XCTAssertEqual(
            try SecurityLogReader.records(directory: dir).filter { $0.type == "ledger.rolled_back" }.count, 2)
    }

    func testEditedAnchorInTheCheckpointIsNotBelieved() throws {
        let path = Ledger.path(stateDirectory: state)
        let root = Curve25519.Signing.PrivateKey()
        try ledgerEntry(path, root, signer: root)
        try ledgerEntry(path, Curve25519.Signing.PrivateKey(), signer: root)
        let log = try SecurityLog(stateDirectory: state)
        XCTAssertNil(LedgerGuard(path: path, log: log, anchor: nil).refusal(Ledger.load(path: path)))
        log.close()
        // Someone lowers the anchor saved (unsigned) with the checkpoint.
        let cp = dir + "/checkpoints.jsonl"
        var l = try lines(cp)
        guard case .object(var o) = try JSONParser.parse(l[l.count - 1]) else { return XCTFail() }
        guard case .object(var a)? = o["ledger"] else { return XCTFail("the checkpoint carries the anchor") }
        a["entries"] = 1
        o["ledger"] = .object(a)
        l[l.count - 1] = JSONValue.object(o).serialized()
        try write(cp, l)
        let reopened = try SecurityLog(stateDirectory: state)
        reopened.close()
        XCTAssertEqual(reopened.ledgerAnchorAtOpen?.entries, 2, "the anchor comes from the record, not the edited copy")
    }

    func testWritableByOthersIsRefused() throws {
        try writeLog(events: 1)
        XCTAssertEqual(StatePermissions.problems(stateDirectory: state), [])
        chmod(state + "/keys", 0o777)
        let problems = StatePermissions.problems(stateDirectory: state)
        XCTAssertEqual(problems.count, 1)
        XCTAssertTrue(problems[0].contains(state + "/keys") && problems[0].contains("mode 0777"), problems[0])
        // Trust commands refuse to append to a ledger others can write.
        let path = Ledger.path(stateDirectory: state)
        let root = Curve25519.Signing.PrivateKey()
        try ledgerEntry(path, root, signer: root)
        chmod(path, 0o666)
        XCTAssertThrowsError(try ledgerEntry(path, Curve25519.Signing.PrivateKey(), signer: root)) {
            XCTAssertTrue("\($0)".contains("mode 0666"), "\($0)")
        }
    }
}
