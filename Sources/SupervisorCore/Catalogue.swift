import StrictJSON

/// Settings of the catalogue (docs/catalogue.md): when a session's principal
/// may see more tools than `visibleLimit`, its tools/list holds only the
/// pinned tools, the ones it enabled, and the supervisor's catalogue tools.
public struct CatalogueOptions: Sendable, Equatable {
    /// Past this many tools visible to the principal the catalogue is on;
    /// 0: off (every tool is listed).
    public var visibleLimit = Setting.catalogueVisibleLimit.integerDefault
    /// Globs over tool names listed from the start when the catalogue is on.
    public var pinned: [String] = []
    public init() {}
}

/// The supervisor's catalogue tools: their fixed definitions (never from a
/// cell) and the search's ranking. Plain functions over plain values, so
/// that ranking and schemas are unit-tested without a pipeline.
public enum Catalogue {
    /// No cell may serve a tool whose name starts with this
    /// (`CellRegistry` refuses the manifest): the catalogue's tools must be
    /// the supervisor's own, whatever is registered.
    public static let reservedPrefix = "supervisor_"
    public static let searchTool = "supervisor_search_tools"
    public static let enableTool = "supervisor_enable_tools"
    public static let disableTool = "supervisor_disable_tools"
    public static let toolNames = [searchTool, enableTool, disableTool]

    /// Search results per call: default and ceiling.
    public static let defaultResults = 10
    public static let maxResults = 25
    /// Names per enable or disable request.
    public static let maxNamesPerRequest = 32
    /// Bytes of a tool's description shown in a search result (the whole
    /// definition arrives in tools/list once the tool is enabled).
    public static let resultDescriptionBytes = 300

    public static func isReserved(_ name: String) -> Bool { name.hasPrefix(reservedPrefix) }

    // MARK: definitions

    static func nameList(_ verb: String) -> JSONObject {
        JSONObject([
            ("type", "object"),
            (
                "properties",
                .object(
                    JSONObject([
                        (
                            "tools",
                            .object(
                                JSONObject([
                                    ("type", "array"),
                                    (
                                        "description",
                                        .string("Exact tool names, as the search returned them, to \(verb).")
                                    ),
                                    (
                                        "items",
                                        .object(JSONObject([("type", "string"), ("minLength", 1), ("maxLength", 128)]))
                                    ),
                                    ("minItems", 1), ("maxItems", .int(Int64(maxNamesPerRequest))),
                                    ("uniqueItems", true),
                                ]))
                        )
                    ]))
            ),
            ("required", ["tools"]), ("additionalProperties", false),
        ])
    }

    public static let searchDefinition = CellManifest.Tool(
        name: searchTool, title: "Search the tool catalogue",
        description: "Search every tool available to this session, including those not listed yet, by words from "
            + "their names, descriptions and the server they belong to. Returns the best matches, each with its "
            + "name, description, server and whether it is enabled. Enable a tool with \(enableTool) before "
            + "calling it.",
        inputSchema: JSONObject([
            ("type", "object"),
            (
                "properties",
                .object(
                    JSONObject([
                        (
                            "query",
                            .object(
                                JSONObject([
                                    ("type", "string"), ("minLength", 1), ("maxLength", 200),
                                    ("description", "Words describing the task, e.g. \"create github issue\"."),
                                ]))
                        ),
                        (
                            "limit",
                            .object(
                                JSONObject([
                                    ("type", "integer"), ("minimum", 1), ("maximum", .int(Int64(maxResults))),
                                    ("description", .string("Most results to return (default \(defaultResults)).")),
                                ]))
                        ),
                    ]))
            ),
            ("required", ["query"]), ("additionalProperties", false),
        ]),
        outputSchema: JSONObject([
            ("type", "object"),
            (
                "properties",
                .object(
                    JSONObject([
                        (
                            "tools",
                            .object(
                                JSONObject([
                                    ("type", "array"),
                                    (
                                        "items",
                                        .object(
                                            JSONObject([
                                                ("type", "object"),
                                                (
                                                    "properties",
                                                    .object(
                                                        JSONObject([
                                                            ("name", .object(JSONObject([("type", "string")]))),
                                                            ("description", .object(JSONObject([("type", "string")]))),
                                                            ("server", .object(JSONObject([("type", "string")]))),
                                                            ("enabled", .object(JSONObject([("type", "boolean")]))),
                                                        ]))
                                                ),
                                                ("required", ["name", "description", "server", "enabled"]),
                                            ]))
                                    ),
                                ]))
                        ),
                        ("matches", .object(JSONObject([("type", "integer")]))),
                    ]))
            ),
            ("required", ["tools", "matches"]),
        ]),
        annotations: JSONObject([("readOnlyHint", true), ("openWorldHint", false)]))

    public static let enableDefinition = CellManifest.Tool(
        name: enableTool, title: "Enable tools for this session",
        description: "Add tools found with \(searchTool) to this session's tool list, so they can be called. The "
            + "client is told that the tool list changed.",
        inputSchema: nameList("enable"), outputSchema: nil,
        annotations: JSONObject([("readOnlyHint", false), ("idempotentHint", true), ("openWorldHint", false)]))

    public static let disableDefinition = CellManifest.Tool(
        name: disableTool, title: "Disable tools for this session",
        description: "Remove tools enabled earlier from this session's tool list (pinned tools stay).",
        inputSchema: nameList("disable"), outputSchema: nil,
        annotations: JSONObject([("readOnlyHint", false), ("idempotentHint", true), ("openWorldHint", false)]))

    /// The three tools, in the order tools/list shows them (first).
    public static let definitions = [searchDefinition, enableDefinition, disableDefinition]

    public static func definition(named name: String) -> CellManifest.Tool? {
        definitions.first { $0.name == name }
    }

    // MARK: search

    /// One tool as the search sees it.
    public struct Entry: Sendable, Equatable {
        public var name: String
        public var title: String?
        public var description: String
        /// The cell (server) it belongs to, and that cell's description.
        public var cell: String
        public var cellDescription: String
        public init(name: String, title: String? = nil, description: String, cell: String, cellDescription: String = "")
        {
            self.name = name
            self.title = title
            self.description = description
            self.cell = cell
            self.cellDescription = cellDescription
        }
    }

    /// Lower-case words of letters and digits (`create_issue` → create, issue).
    static func words(_ s: String) -> [String] {
        s.lowercased().split { !($0.isLetter || $0.isNumber) }.map(String.init)
    }

    /// Words that would match nearly every description ("the", "of"): left
    /// out of a query that has other words.
    static let stopWords: Set<String> = [
        "a", "an", "and", "as", "at", "be", "by", "for", "from", "in", "into", "is", "it", "of", "on", "or", "the",
        "to", "with",
    ]

    /// The query's distinct words, stop words left out unless there is
    /// nothing else, at most 16 (a longer query ranks no better).
    public static func terms(_ query: String) -> [String] {
        var seen: Set<String> = []
        let all = words(query).filter { seen.insert($0).inserted }
        let content = all.filter { !stopWords.contains($0) }
        return (content.isEmpty ? all : content).prefix(16).map { $0 }
    }

    /// A word matches a term when equal, or when one starts with the other
    /// and the shorter has at least 4 characters ("file" finds "files").
    static func matches(_ word: String, _ term: String) -> Bool {
        if word == term { return true }
        return (term.count >= 4 && word.hasPrefix(term)) || (word.count >= 4 && term.hasPrefix(word))
    }

    /// The entry's score for these terms; 0: no term matched. Weights: the
    /// tool's name counts most, then its server, its title, its description,
    /// and least the server's description; every matched term adds a bonus,
    /// so tools matching more of the query come first.
    public static func score(_ e: Entry, terms: [String]) -> Int {
        let name = e.name.lowercased()
        let nameWords = words(e.name)
        let cellWords = words(e.cell)
        let titleWords = words(e.title ?? "")
        let descWords = words(e.description)
        let cellDescWords = words(e.cellDescription)
        var total = 0
        var matched = 0
        for t in terms {
            var s = 0
            if name == t {
                s += 40
            } else if nameWords.contains(where: { matches($0, t) }) {
                s += 20
            } else if t.count >= 3 && name.contains(t) {
                s += 10
            }
            if cellWords.contains(where: { matches($0, t) }) { s += 8 }
            if titleWords.contains(where: { matches($0, t) }) { s += 6 }
            if descWords.contains(where: { matches($0, t) }) { s += 4 }
            if cellDescWords.contains(where: { matches($0, t) }) { s += 1 }
            if s > 0 { matched += 1 }
            total += s
        }
        return total == 0 ? 0 : total + 5 * matched
    }

    /// The entries matching the query, best first (ties by name), at most
    /// `limit`; and how many matched in all.
    public static func search(_ query: String, in entries: [Entry], limit: Int) -> (hits: [Entry], matches: Int) {
        let t = terms(query)
        guard !t.isEmpty else { return ([], 0) }
        let scored = entries.map { ($0, score($0, terms: t)) }.filter { $0.1 > 0 }
        let sorted = scored.sorted { $0.1 != $1.1 ? $0.1 > $1.1 : $0.0.name < $1.0.name }
        return (sorted.prefix(max(0, limit)).map(\.0), scored.count)
    }
}
