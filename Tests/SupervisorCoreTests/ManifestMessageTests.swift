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

/// `validate` reports every problem it can find in one run.
final class ManifestDiagnosticsTests: ManifestTestCase {
    func problems(_ patch: (inout JSONObject) -> Void) -> [String] {
        ManifestDiagnostics.problems(bytes: manifest(patch), path: "/m/demo.json").map { "\($0.field): \($0.message)" }
    }

    func testIndependentProblemsAreAllReported() {
        let found = problems {
            $0["limits"] = ["cpuSeconds": 0, "memoryMB": 64]
            $0["filesystem"] = ["read": "/usr"]
            $0["limts"] = [:]
            $0["environment"] = ["pass": ["1BAD"]]
        }
        XCTAssertEqual(
            found,
            [
                "environment.pass[0]: not a valid variable name: \"1BAD\"",
                "limits.cpuSeconds: 0 is out of range 1...3600 s",
                "limits.memoryMB: unknown field (did you mean \"memoryMiB\"?)",
                "filesystem.read: expected an array of strings, found string",
                // `limits` is there too: no suggestion of a field present.
                "limts: unknown field",
            ], "\(found)")
    }

    func testAValidManifestHasNoProblemsAndAWrongRequiredFieldEndsTheSearch() {
        XCTAssertEqual(problems { _ in }, [])
        // A bad name cannot be set aside (it would then be missing): what
        // follows it is not guessed at.
        XCTAssertEqual(
            problems {
                $0["name"] = "bad name"
                $0["limts"] = [:]
            }.count, 1)
    }

    func testRemovingFollowsDottedPathsAndIndicesAndSetsWholeArraysAside() {
        var o: JSONObject = ["tools": [["name": "a", "x": ["y": 1]]], "k": 1]
        XCTAssertTrue(ManifestDiagnostics.remove("tools[0].x.y", from: &o))
        XCTAssertEqual(JSONValue.object(o).serialized(), #"{"tools":[{"name":"a","x":{}}],"k":1}"#)
        XCTAssertFalse(ManifestDiagnostics.remove("tools[3].name", from: &o))
        var p: JSONObject = ["phases": ["a", "b"], "k": 1]
        XCTAssertTrue(ManifestDiagnostics.remove("phases[1]", from: &p))
        XCTAssertEqual(JSONValue.object(p).serialized(), #"{"k":1}"#)
        XCTAssertFalse(ManifestDiagnostics.remove("", from: &o))
        XCTAssertTrue(ManifestDiagnostics.remove("k", from: &o))
        XCTAssertFalse(ManifestDiagnostics.remove("k", from: &o))
    }
}
