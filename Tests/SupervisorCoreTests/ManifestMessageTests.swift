import StrictJSON
import XCTest

@testable import SupervisorCore

/// What a manifest's author reads: every unknown field of an object at
/// once, with the field it is likely a misspelling of.
final class ManifestMessageTests: ManifestTestCase {
    func testEveryUnknownFieldOfAnObjectIsReportedWithASuggestion() {
        XCTAssertThrowsError(
            try parse {
                $0["limits"] = ["timeoutMiliseconds": 100, "cpuSecond": 1, "colour": 3]
            }
        ) { e in
            let all = (e as? ConfigError)?.all ?? []
            XCTAssertEqual(
                all.map { "\($0.field): \($0.message)" },
                [
                    "limits.timeoutMiliseconds: unknown field (did you mean \"timeoutMilliseconds\"?)",
                    "limits.cpuSecond: unknown field (did you mean \"cpuSeconds\"?)",
                    "limits.colour: unknown field",
                ])
            XCTAssertEqual("\(e)".split(separator: "\n").count, 3, "\(e)")
        }
    }

    func testTopLevelTyposAreNamed() {
        assertError("limts", "did you mean \"limits\"?") { $0["limts"] = ["cpuSeconds": 1] }
        assertError("description", "required field is missing (found \"descripton\", misspelt?)") {
            $0["descripton"] = $0["description"]
            $0["description"] = nil
        }
        assertError("tools[0].inputSchema", "found \"inputschema\"") {
            $0["tools"] = [["name": "demo", "description": "Demo tool.", "inputschema": ["type": "object"]]]
        }
    }

    func testClosestIgnoresNamesTooFarApart() {
        XCTAssertEqual(ConfigError.closest(to: "filesytem", in: ["filesystem", "phases"]), "filesystem")
        XCTAssertNil(ConfigError.closest(to: "xyz", in: ["network", "phases"]))
        XCTAssertNil(ConfigError.closest(to: "ab", in: ["cd"]))
        XCTAssertNil(ConfigError.closest(to: "", in: ["a"]))
    }

    func testJSONErrorsNameLineAndColumn() {
        XCTAssertThrowsError(try parse(Array("{\n  \"name\": \"x\",\n  \"version\": 1,,\n}".utf8))) { e in
            XCTAssertTrue("\(e)".contains("unexpected character ',' at line 3, column 16 (byte 32)"), "\(e)")
        }
    }
}
