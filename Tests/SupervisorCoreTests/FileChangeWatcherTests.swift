import Foundation
import SupervisorPlatform
import Synchronization
import XCTest

/// The inotify watches (the trust ledger's, `audit tail --follow`'s) block
/// until something changes; no thread sleeps to look again.
final class FileChangeWatcherTests: XCTestCase {
    private func temporaryDirectory() throws -> String {
        let dir = NSTemporaryDirectory() + "watch-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
        return dir
    }

    /// Runs `body` on a thread of its own; nil when it has not returned
    /// within `seconds` (a wait that blocks forever fails the test instead
    /// of hanging it).
    private func within(_ seconds: Double, _ body: @escaping @Sendable () -> Bool) -> Bool? {
        final class Box: Sendable { let value = Mutex<Bool?>(nil) }
        let box = Box()
        let done = DispatchSemaphore(value: 0)
        Thread {
            let v = body()
            box.value.withLock { $0 = v }
            done.signal()
        }.start()
        return done.wait(timeout: .now() + seconds) == .success ? box.value.withLock { $0 } : nil
    }

    func testADirectoryWatchSeesAppendsToAFileKeptOpen() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = FileManager.default.createFile(atPath: dir + "/events.jsonl", contents: nil)
        let handle = try XCTUnwrap(FileHandle(forWritingAtPath: dir + "/events.jsonl"))
        defer { try? handle.close() }
        let watcher = try FileChangeWatcher(directory: dir)
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(50)) {
            handle.write(Data("{}\n".utf8))  // written, not closed: the log keeps its file open
        }
        XCTAssertEqual(within(5) { watcher.waitForChange() }, true, "an append to an open file was not seen")
    }

    func testAWatchWhoseDirectoryIsRemovedReportsItOnceThenEnds() throws {
        let dir = try temporaryDirectory()
        let watcher = try FileChangeWatcher(path: dir + "/ledger.jsonl")
        try FileManager.default.removeItem(atPath: dir)
        XCTAssertEqual(within(5) { watcher.waitForChange() }, true, "the removal is a change")
        XCTAssertEqual(
            within(5) { watcher.waitForChange() }, false,
            "after its directory is gone the watch must end, not block forever")
    }
}

/// Two supervisors starting at once on the same state directory both create
/// it: the one that loses the race must not fail (EEXIST).
final class MakeDirectoriesTests: XCTestCase {
    func testConcurrentCreationOfTheSamePathSucceedsEverywhere() throws {
        let base = "/tmp/mcps-mkdirs-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: base) }
        for round in 0..<50 {
            let path = "\(base)/r\(round)/a/b/c"
            let failures = Mutex(0)
            DispatchQueue.concurrentPerform(iterations: 8) { _ in
                do { try Sys.makeDirectories(path, mode: 0o700) } catch { failures.withLock { $0 += 1 } }
            }
            XCTAssertEqual(failures.withLock { $0 }, 0, "round \(round)")
            XCTAssertTrue(try Sys.stat(path).isDirectory)
        }
        // A component that is a file is an error, named.
        XCTAssertTrue(FileManager.default.createFile(atPath: base + "/file", contents: Data()))
        XCTAssertThrowsError(try Sys.makeDirectories(base + "/file/x", mode: 0o700)) { e in
            XCTAssertTrue("\(e)".contains("mkdir \(base)/file"), "\(e)")
        }
    }
}
