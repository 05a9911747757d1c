import Foundation
import StrictJSON
import XCTest

final class JSONParserTests: XCTestCase {
    func testParsesEveryValueKind() throws {
        let v = try JSONParser.parse(#" {"a": [1, -2.5e3, "x\u00e9\ud83d\ude00", true, false, null], "b": {}} "#)
        XCTAssertEqual(v["a"], [1, -2500.0, "xé😀", true, false, nil])
        XCTAssertEqual(v["b"], .object(JSONObject()))
    }

    func testKeepsMemberOrder() throws {
        let v = try JSONParser.parse(#"{"z":1,"a":2,"m":3}"#)
        XCTAssertEqual(v.objectValue?.keys, ["z", "a", "m"])
        XCTAssertEqual(v.serialized(), #"{"z":1,"a":2,"m":3}"#)
    }

    func assertFails(
        _ text: String, _ reason: JSONParseError.Reason, file: StaticString = #filePath, line: UInt = #line
    ) {
        XCTAssertThrowsError(try JSONParser.parse(text), file: file, line: line) { e in
            XCTAssertEqual((e as? JSONParseError)?.reason, reason, "\(e)", file: file, line: line)
        }
    }

    func testRejectsDuplicateKeys() { assertFails(#"{"a":1,"a":2}"#, .duplicateKey("a")) }

    /// Past the first members duplicates are found by a set: still found.
    func testRejectsDuplicateKeysInLargeObjects() {
        let members = (0..<100).map { "\"k\($0)\":\($0)" }
        assertFails("{" + (members + [#""k3":0"#]).joined(separator: ",") + "}", .duplicateKey("k3"))
        assertFails("{" + (members + [#""k99":0"#]).joined(separator: ",") + "}", .duplicateKey("k99"))
        XCTAssertEqual(try JSONParser.parse("{" + members.joined(separator: ",") + "}").objectValue?.count, 100)
    }

    /// An object with many keys parses in linear time: a peer (a worker's
    /// frame, a client's message) cannot stall a thread with one. A linear
    /// duplicate check took minutes for 80,000 keys.
    func testLargeObjectParsesInLinearTime() throws {
        let text = "{" + (0..<100_000).map { "\"key\($0)\":\($0)" }.joined(separator: ",") + "}"
        let start = Date()
        let v = try JSONParser.parse(text)
        XCTAssertEqual(v.objectValue?.count, 100_000)
        XCTAssertEqual(v.objectValue?.keys.last, "key99999")
        XCTAssertLessThan(Date().timeIntervalSince(start), 5, "100,000 keys must not take seconds")
    }

    /// Built from members (as a bridge from another JSON type does): linear
    /// too, a repeated key replacing the earlier value in its place.
    func testObjectFromManyMembersIsLinearAndReplacesRepeatedKeys() {
        let start = Date()
        let o = JSONObject((0..<100_000).map { ("key\($0)", JSONValue.int(Int64($0))) } + [("key5", "x")])
        XCTAssertLessThan(Date().timeIntervalSince(start), 5)
        XCTAssertEqual(o.count, 100_000)
        XCTAssertEqual(o["key5"], "x")
        XCTAssertEqual(o.keys[5], "key5")
    }
    func testRejectsTrailingData() { assertFails("{} x", .trailingData) }
    func testRejectsTrailingComma() { assertFails("[1,]", .unexpectedByte(UInt8(ascii: "]"))) }
    func testRejectsLeadingZeros() { assertFails("01", .trailingData) }
    func testRejectsBareDecimalPoint() { assertFails("1.", .invalidNumber) }
    func testRejectsControlCharactersInStrings() { assertFails("\"a\u{01}\"", .controlCharacterInString) }
    func testRejectsLoneSurrogates() { assertFails(#""\ud800""#, .invalidEscape) }
    func testRejectsBadEscapes() { assertFails(#""\x""#, .invalidEscape) }
    func testRejectsEmptyInput() { assertFails("", .unexpectedEnd) }
    func testRejectsUnterminated() { assertFails(#"{"a":"#, .unexpectedEnd) }
    func testRejectsNonFiniteNumbers() { assertFails("1e999", .invalidNumber) }

    func testRejectsInvalidUTF8() {
        for bytes: [UInt8] in [
            [0x22, 0xC3, 0x28, 0x22], [0x22, 0xED, 0xA0, 0x80, 0x22], [0x22, 0xC0, 0xAF, 0x22],
            [0x22, 0xF5, 0x80, 0x80, 0x80, 0x22],
        ] {
            XCTAssertThrowsError(try JSONParser.parse(bytes)) { e in
                XCTAssertEqual((e as? JSONParseError)?.reason, .invalidUTF8)
            }
        }
    }

    func testBoundsNesting() throws {
        XCTAssertNoThrow(try JSONParser.parse(String(repeating: "[", count: 64) + String(repeating: "]", count: 64)))
        assertFails(String(repeating: "[", count: 65) + String(repeating: "]", count: 65), .tooDeep(limit: 64))
    }

    func testLargeIntegersStayExact() throws {
        XCTAssertEqual(try JSONParser.parse("9007199254740993"), .int(9_007_199_254_740_993))
        XCTAssertEqual(try JSONParser.parse("18446744073709551616"), .double(18_446_744_073_709_551_616))
    }

    func testSerializerEscapesAndRoundTrips() throws {
        let v: JSONValue = ["s": "q\"\\\n\u{01}é", "n": [1, 2.5, nil]]
        let text = v.serialized()
        XCTAssertEqual(text, #"{"s":"q\"\\\n\u0001é","n":[1,2.5,null]}"#)
        XCTAssertEqual(try JSONParser.parse(text), v)
        XCTAssertEqual(try JSONParser.parse(v.prettySerialized()), v)
    }
}

final class FrameDecoderTests: XCTestCase {
    func testDecodesFramesAcrossArbitrarySplits() throws {
        let bytes = FrameCodec.encode(["a": 1]) + FrameCodec.encode(["b": "x"])
        for split in 0...bytes.count {
            var d = FrameDecoder(maxFrame: 1024)
            var frames = try d.feed(Array(bytes[0..<split]))
            frames += try d.feed(Array(bytes[split...]))
            XCTAssertEqual(frames, [["a": 1], ["b": "x"]], "split at \(split)")
            XCTAssertNoThrow(try d.finish())
        }
    }

    func testRejectsOversizedLengthFromThePrefixAlone() {
        var d = FrameDecoder(maxFrame: 1024)
        XCTAssertThrowsError(try d.feed([0xFF, 0xFF, 0xFF, 0xFF])) { e in
            XCTAssertEqual(e as? FrameError, .frameTooLarge(declared: 0xFFFF_FFFF, limit: 1024))
        }
    }

    func testRejectsZeroLength() {
        var d = FrameDecoder(maxFrame: 1024)
        XCTAssertThrowsError(try d.feed([0, 0, 0, 0])) { XCTAssertEqual($0 as? FrameError, .emptyFrame) }
    }

    func testTruncationIsReportedAtEnd() throws {
        var d = FrameDecoder(maxFrame: 1024)
        _ = try d.feed([0, 0])
        XCTAssertThrowsError(try d.finish()) { XCTAssertEqual($0 as? FrameError, .truncatedLength(have: 2)) }
        var e = FrameDecoder(maxFrame: 1024)
        _ = try e.feed([0, 0, 0, 5, 0x7B])
        XCTAssertThrowsError(try e.finish()) { XCTAssertEqual($0 as? FrameError, .truncatedBody(declared: 5, have: 1)) }
    }

    func testInvalidBodies() {
        for body: [UInt8] in [Array("{x".utf8), [0x22, 0xFF, 0x22], Array(#"{"a":1,"a":1}"#.utf8)] {
            var d = FrameDecoder(maxFrame: 1024)
            XCTAssertThrowsError(try d.feed([0, 0, 0, UInt8(body.count)] + body)) { e in
                guard case .invalidJSON = e as? FrameError else { return XCTFail("\(e)") }
            }
        }
    }

    func testMaxFrameIsInclusive() throws {
        let f = FrameCodec.encode("abcdef")  // 8-byte body
        var ok = FrameDecoder(maxFrame: 8)
        XCTAssertEqual(try ok.feed(f), ["abcdef"])
        var tooSmall = FrameDecoder(maxFrame: 7)
        XCTAssertThrowsError(try tooSmall.feed(f))
    }
}

final class JSONParseLocationTests: XCTestCase {
    func testErrorsCarryLineAndColumn() {
        for (text, line, column) in [("{\"a\":\n  tru}", 2, 6), ("[1,\n2,\n\n 3 x]", 4, 4), ("", 1, 1), ("{} x", 1, 4)]
        {
            XCTAssertThrowsError(try JSONParser.parse(text), text) { e in
                let p = e as? JSONParseError
                XCTAssertEqual(p?.line, line, text)
                XCTAssertEqual(p?.column, column, text)
                XCTAssertTrue("\(e)".contains("at line \(line), column \(column)"), "\(e)")
            }
        }
    }
}
