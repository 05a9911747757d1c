import StrictJSON
import XCTest

@testable import SupervisorCore

/// The catalogue's fixed tool definitions and its search ranking
/// (docs/catalogue.md). The end-to-end behaviour is in
/// tests/e2e/test_catalogue.py.
final class CatalogueTests: XCTestCase {
    // MARK: definitions

    func testDefinitionsAreTheSupervisorsAndValidAsAnyManifestTool() throws {
        XCTAssertEqual(Catalogue.definitions.map(\.name), Catalogue.toolNames)
        for d in Catalogue.definitions {
            XCTAssertTrue(Catalogue.isReserved(d.name), d.name)
            XCTAssertTrue(CellManifest.isValidName(d.name), d.name)
            XCTAssertFalse(d.description.isEmpty, d.name)
            XCTAssertNotNil(d.title, d.name)
            // Held to the rules a manifest's schemas are held to.
            XCTAssertNoThrow(try SchemaValidator.checkSchema(d.inputSchema, file: "catalogue", field: d.name))
            if let o = d.outputSchema {
                XCTAssertNoThrow(try SchemaValidator.checkSchema(o, file: "catalogue", field: d.name))
            }
            XCTAssertEqual(Catalogue.definition(named: d.name), d)
        }
        XCTAssertFalse(Catalogue.isReserved("fs_read"))
        XCTAssertFalse(Catalogue.isReserved("supervisor"))
        XCTAssertNil(Catalogue.definition(named: "supervisor_other"))
    }

    func testSearchSchemaAcceptsAQueryAndABoundedLimitOnly() {
        let s = Catalogue.searchDefinition.inputSchema
        func ok(_ o: JSONObject) -> Bool { SchemaValidator.validate(.object(o), against: s) == nil }
        XCTAssertTrue(ok(["query": "issue"]))
        XCTAssertTrue(ok(["query": "issue", "limit": 25]))
        XCTAssertFalse(ok([:]), "query is required")
        XCTAssertFalse(ok(["query": ""]), "empty query")
        XCTAssertFalse(ok(["query": .string(String(repeating: "a", count: 201))]), "query too long")
        XCTAssertFalse(ok(["query": 3]))
        XCTAssertFalse(ok(["query": "x", "limit": 0]))
        XCTAssertFalse(ok(["query": "x", "limit": 26]), "limit above maxResults")
        XCTAssertFalse(ok(["query": "x", "limit": 2.5]))
        XCTAssertFalse(ok(["query": "x", "extra": true]), "no other arguments")
    }

    func testEnableAndDisableSchemasTakeOneToThirtyTwoDistinctNames() {
        for d in [Catalogue.enableDefinition, Catalogue.disableDefinition] {
            func ok(_ o: JSONObject) -> Bool { SchemaValidator.validate(.object(o), against: d.inputSchema) == nil }
            XCTAssertTrue(ok(["tools": ["a"]]), d.name)
            XCTAssertTrue(ok(["tools": .array((0..<32).map { .string("t\($0)") })]), d.name)
            XCTAssertFalse(ok(["tools": .array((0..<33).map { .string("t\($0)") })]), d.name)
            XCTAssertFalse(ok(["tools": []]), d.name)
            XCTAssertFalse(ok(["tools": ["a", "a"]]), "\(d.name): duplicates")
            XCTAssertFalse(ok(["tools": [""]]), d.name)
            XCTAssertFalse(ok(["tools": .array([.string(String(repeating: "a", count: 129))])]), d.name)
            XCTAssertFalse(ok(["tools": "a"]), d.name)
            XCTAssertFalse(ok(["tools": [1]]), d.name)
            XCTAssertFalse(ok([:]), d.name)
            XCTAssertFalse(ok(["tools": ["a"], "all": true]), d.name)
        }
    }

    func testAManifestMayNotTakeTheReservedPrefix() {
        func parse(_ tool: String, server: JSONValue? = nil) throws -> CellManifest {
            var o: JSONObject = [
                "name": "demo", "version": "1", "description": "A demo cell.",
                "executable": ["path": "/bin/true", "sha256": .string(String(repeating: "a", count: 64))],
                "tools": [["name": .string(tool), "description": "Demo.", "inputSchema": ["type": "object"]]],
                "sideEffects": "none",
            ]
            if let server { o["server"] = server }
            return try CellManifest.parse(
                bytes: JSONValue.object(o).serializedBytes(), path: "/m/demo.json", manifestSHA256: "h")
        }
        XCTAssertThrowsError(try parse(Catalogue.searchTool)) {
            XCTAssertEqual(($0 as? ConfigError)?.field, "tools[0].name")
            XCTAssertTrue("\($0)".contains("reserved for the supervisor's own tools"), "\($0)")
        }
        XCTAssertThrowsError(try parse("supervisor_anything"))
        XCTAssertNoThrow(try parse("supervisor"))
        XCTAssertNoThrow(try parse("my_supervisor_tool"))
        // A server cell's tools are checked under their exposed names.
        XCTAssertThrowsError(try parse("search_tools", server: ["toolPrefix": "supervisor"])) {
            XCTAssertTrue("\($0)".contains("\"supervisor_search_tools\" starts with"), "\($0)")
            XCTAssertTrue("\($0)".contains("server.toolPrefix"), "\($0)")
        }
        XCTAssertNoThrow(try parse("search_tools", server: ["toolPrefix": "srv"]))
    }

    // MARK: ranking

    let entries = [
        Catalogue.Entry(
            name: "github_create_issue", title: "Create issue",
            description: "Create a new issue in a GitHub repository.", cell: "github"),
        Catalogue.Entry(
            name: "github_list_issues", description: "List issues in a GitHub repository with filters.",
            cell: "github"),
        Catalogue.Entry(
            name: "jira_create_ticket", description: "Create a Jira issue (ticket) in a project.", cell: "jira"),
        Catalogue.Entry(
            name: "fs_read_file", description: "Read the complete contents of a file from the file system.",
            cell: "filesystem", cellDescription: "Local files under the allowed directories."),
        Catalogue.Entry(
            name: "slack_post_message", description: "Post a new message to a Slack channel.", cell: "slack"),
        Catalogue.Entry(
            name: "time_now", description: "Get the current time in a time zone.", cell: "clock",
            cellDescription: "Time and time zone conversion."),
    ]

    func names(_ q: String, limit: Int = 10) -> [String] {
        Catalogue.search(q, in: entries, limit: limit).hits.map(\.name)
    }

    func testTheNameCountsMoreThanTheDescription() {
        // All three mention "issue"; the two whose names say it come first,
        // and of them the one matching both words.
        XCTAssertEqual(names("create issue"), ["github_create_issue", "jira_create_ticket", "github_list_issues"])
        // "issues" in a name matches "issue"; the title counts too.
        XCTAssertEqual(names("issue"), ["github_create_issue", "github_list_issues", "jira_create_ticket"])
    }

    func testTheServerNameFindsItsTools() {
        XCTAssertEqual(names("slack"), ["slack_post_message"])
        XCTAssertEqual(Set(names("github")), ["github_create_issue", "github_list_issues"])
        // A cell name that appears nowhere in the tool: found by its server.
        XCTAssertEqual(names("clock"), ["time_now"])
        // The cell's description counts, least of all.
        XCTAssertEqual(names("directories"), ["fs_read_file"])
    }

    func testWordsMatchByPrefixOfFourOrMoreAndNotInsideShortWords() {
        XCTAssertEqual(names("files").first, "fs_read_file")
        XCTAssertEqual(names("FILE contents").first, "fs_read_file", "case does not matter")
        XCTAssertEqual(names("zone"), ["time_now"])
        XCTAssertEqual(names("ti"), [], "a short word matches only a whole word, not the start of \"ticket\"")
    }

    func testNothingMatchesAndPunctuationOnlyQueries() {
        XCTAssertEqual(Catalogue.search("kubernetes", in: entries, limit: 10).matches, 0)
        XCTAssertEqual(Catalogue.search("!!! ---", in: entries, limit: 10).hits, [])
        XCTAssertEqual(Catalogue.terms("Create  create, ISSUE"), ["create", "issue"])
        XCTAssertEqual(Catalogue.terms("post a message to the channel"), ["post", "message", "channel"])
        XCTAssertEqual(Catalogue.terms("to be or not to be"), ["not"])
        XCTAssertEqual(Catalogue.terms("of the"), ["of", "the"], "only stop words: kept")
        let long = String(repeating: "w ", count: 3) + (0..<40).map { "t\($0)" }.joined(separator: " ")
        XCTAssertEqual(Catalogue.terms(long).count, 16)
    }

    func testResultsAreBoundedAndTheTotalCounted() {
        let r = Catalogue.search("create issue", in: entries, limit: 1)
        XCTAssertEqual(r.hits.map(\.name), ["github_create_issue"])
        XCTAssertEqual(r.matches, 3)
        XCTAssertEqual(Catalogue.search("create issue", in: entries, limit: 0).hits, [])
    }

    func testTiesAreOrderedByName() {
        let same = ["b_tool", "a_tool", "c_tool"].map {
            Catalogue.Entry(name: $0, description: "Does the thing.", cell: "x")
        }
        XCTAssertEqual(Catalogue.search("thing", in: same, limit: 10).hits.map(\.name), ["a_tool", "b_tool", "c_tool"])
    }

    // MARK: settings

    func testSettingsReachThePipelineOptions() throws {
        let s = try SupervisorSettings.resolve(
            configurationFile: nil,
            flags: [(.catalogueVisibleLimit, "12"), (.cataloguePinnedTools, "echo,fs_*")])
        XCTAssertEqual(s.catalogueVisibleLimit, 12)
        XCTAssertEqual(s.cataloguePinnedTools, ["echo", "fs_*"])
        XCTAssertEqual(SupervisorSettings().catalogueVisibleLimit, 0, "off by default")
        var cleared = s
        try Setting.cataloguePinnedTools.apply(flagValue: "", to: &cleared)
        XCTAssertEqual(cleared.cataloguePinnedTools, [])
        XCTAssertThrowsError(try Setting.cataloguePinnedTools.apply(flagValue: "a,,b", to: &cleared)) {
            XCTAssertEqual(
                "\($0)",
                "--catalogue-pinned-tools: expected tool names or globs ([A-Za-z0-9_.*?-], 1 to 128 characters) "
                    + "separated by commas, found \"\"")
        }
    }
}
