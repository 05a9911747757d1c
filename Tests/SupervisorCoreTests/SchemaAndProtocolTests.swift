import StrictJSON
import XCTest

@testable import SupervisorCore

final class SchemaValidatorTests: XCTestCase {
    let schema: JSONObject = [
        "type": "object",
        "properties": [
            "name": ["type": "string", "minLength": 1, "maxLength": 5, "pattern": "^[a-z]+$"],
            "count": ["type": "integer", "minimum": 0, "maximum": 10],
            "mode": ["enum": ["a", "b"]],
            "tags": ["type": "array", "items": ["type": "string"], "maxItems": 2, "uniqueItems": true],
        ],
        "required": ["name"],
        "additionalProperties": false,
    ]

    func check(_ v: JSONValue) -> String? { SchemaValidator.validate(v, against: schema)?.description }

    func testValidArguments() {
        XCTAssertNil(check(["name": "abc", "count": 3, "mode": "a", "tags": ["x", "y"]]))
        XCTAssertNil(check(["name": "abc", "count": 3.0]), "3.0 is an integer in JSON Schema")
    }

    func testEachViolationNamesTheField() {
        XCTAssertEqual(check([:]), "arguments.name: required property is missing")
        XCTAssertEqual(check(["name": 1]), "arguments.name: expected string, found integer")
        XCTAssertEqual(check(["name": ""]), "arguments.name: must be at least 1 characters")
        XCTAssertEqual(check(["name": "abcdef"]), "arguments.name: must be at most 5 characters")
        XCTAssertEqual(check(["name": "AB"]), "arguments.name: does not match the pattern ^[a-z]+$")
        XCTAssertEqual(check(["name": "a", "count": 11]), "arguments.count: must be <= 10")
        XCTAssertEqual(check(["name": "a", "count": 1.5]), "arguments.count: expected integer, found number")
        XCTAssertEqual(check(["name": "a", "mode": "c"]), #"arguments.mode: must be one of "a", "b""#)
        XCTAssertEqual(check(["name": "a", "tags": [1]]), "arguments.tags[0]: expected string, found integer")
        XCTAssertEqual(check(["name": "a", "tags": ["x", "x"]]), "arguments.tags: items must be unique")
        XCTAssertEqual(check(["name": "a", "other": 1]), "arguments.other: unknown property")
        XCTAssertEqual(check("x"), "arguments: expected object, found string")
    }

    func testCombinators() {
        let s: JSONObject = ["anyOf": [["type": "string"], ["type": "integer"]]]
        XCTAssertNil(SchemaValidator.validate("x", against: s))
        XCTAssertNotNil(SchemaValidator.validate(true, against: s))
        let one: JSONObject = ["oneOf": [["type": "number"], ["type": "integer"]]]
        XCTAssertNotNil(SchemaValidator.validate(1, against: one), "1 matches both")
        XCTAssertNil(SchemaValidator.validate(1.5, against: one))
    }
}

final class CellProtocolTests: XCTestCase {
    func decode(_ text: String) throws -> CellProtocol.Frame {
        try CellProtocol.decode(try JSONParser.parse(text), callID: "c1")
    }

    func testDecodesEachFrameKind() throws {
        XCTAssertEqual(
            try decode(#"{"type":"progress","id":"c1","progress":1,"total":2,"message":"m"}"#),
            .message(.progress(progress: 1, total: 2, message: "m")))
        XCTAssertEqual(
            try decode(#"{"type":"log","id":"c1","level":"info","message":"hi"}"#),
            .message(.log(level: "info", message: "hi", data: nil)))
        XCTAssertEqual(try decode(#"{"type":"error","id":"c1","message":"bad"}"#), .error("bad"))
        XCTAssertEqual(
            try decode(
                #"{"type":"result","id":"c1","content":[{"type":"text","text":"a"}],"structuredContent":{"k":1}}"#),
            .result(CellResult(content: [["type": "text", "text": "a"]], structuredContent: ["k": 1])))
    }

    func testRejectsMalformedFrames() {
        for bad in [
            #"[1]"#, #"{"id":"c1"}"#, #"{"type":"result","content":[]}"#, #"{"type":"result","id":"c2","content":[]}"#,
            #"{"type":"result","id":"c1"}"#, #"{"type":"result","id":"c1","content":[{"type":"video"}]}"#,
            #"{"type":"result","id":"c1","content":[],"extra":1}"#,
            #"{"type":"log","id":"c1","level":"loud","message":"x"}"#,
            #"{"type":"progress","id":"c1","progress":"half"}"#, #"{"type":"hello","id":"c1"}"#,
            #"{"type":"result","id":"c1","content":[],"structuredContent":[1]}"#,
        ] {
            XCTAssertThrowsError(try decode(bad), bad)
        }
    }

    func testSanitizeRemovesControlAndBidiCharacters() {
        XCTAssertEqual(CellProtocol.sanitize("a\u{1B}[31mb\u{202E}c\u{200B}d\n\te"), "a[31mbcd\n\te")
        XCTAssertEqual(CellProtocol.sanitize("plain"), "plain")
    }
}

final class SchemaViolationTests: XCTestCase {
    /// A violation is a value: where, and what is wrong there.
    func testAViolationNamesItsPathAndReason() {
        let schema: JSONObject = [
            "type": "object", "properties": ["tags": ["type": "array", "items": ["type": "string"]]],
        ]
        let v = SchemaValidator.validate(["tags": ["a", 2]], against: schema)
        XCTAssertEqual(v, SchemaViolation(path: "arguments.tags[1]", reason: "expected string, found integer"))
        XCTAssertEqual(Refusal.invalidArguments(v!).reason, "invalid_arguments")
        XCTAssertEqual(
            Refusal.invalidArguments(v!).message, "Invalid arguments: arguments.tags[1]: expected string, found integer"
        )
    }
}
