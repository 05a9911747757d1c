import StrictJSON

/// What one session's tools/list holds (docs/catalogue.md).
struct CatalogueView {
    /// The principal may see more tools than the limit: only pinned and
    /// enabled ones are listed, with the catalogue's tools.
    let active: Bool
    /// The cell tools the policy lets the principal see, in registry order.
    let visible: [CellRegistry.ToolEntry]
    let pinned: [String]
    let enabled: Set<String>

    func isPinned(_ name: String) -> Bool { pinned.contains { glob($0, name) } }

    /// Whether the session's tools/list shows this cell tool.
    func lists(_ name: String) -> Bool { !active || isPinned(name) || enabled.contains(name) }
}

extension CallPipeline {
    /// The view of `session` under this registry and policy. Off without a
    /// limit, and without a policy (nothing may run then, and the list stays
    /// as it was).
    func listView(registry: CellRegistry, policy: Policy?, session: CallSession) -> CatalogueView {
        let limit = options.catalogue.visibleLimit
        let enabled = session.state.withLock { $0.enabledTools }
        guard limit > 0, let policy else {
            return CatalogueView(active: false, visible: [], pinned: [], enabled: enabled)
        }
        let client = session.clientName
        let visible = registry.toolNames.compactMap { registry.tool(named: $0) }.filter {
            policy.mayList(
                principal: session.principal, client: client, groups: session.groups, scopes: session.scopes,
                tool: $0.tool.name)
        }
        return CatalogueView(
            active: visible.count > limit, visible: visible, pinned: options.catalogue.pinned, enabled: enabled)
    }

    func listView(_ session: CallSession) -> CatalogueView {
        let (registry, policy) = state.withLock { ($0.registry, $0.policy) }
        return listView(registry: registry, policy: policy, session: session)
    }

    /// Whether the catalogue is on for this session now.
    public func catalogueActive(_ session: CallSession) -> Bool { listView(session).active }

    /// The tools of this session's tools/list, without set_phase: the
    /// catalogue's own tools (empty while it is off) and the cell tools in
    /// registry order (all of them while it is off, as before the catalogue
    /// existed; else those the policy allows that are pinned or enabled).
    public func toolList(session: CallSession) -> (catalogue: [CellManifest.Tool], cells: [CellManifest.Tool]) {
        let (registry, policy) = state.withLock { ($0.registry, $0.policy) }
        let view = listView(registry: registry, policy: policy, session: session)
        guard view.active else { return ([], registry.toolNames.compactMap { registry.tool(named: $0)?.tool }) }
        return (Catalogue.definitions, view.visible.filter { view.lists($0.tool.name) }.map(\.tool))
    }

    // MARK: the catalogue's tools

    /// A call of search, enable or disable (only while the catalogue is on;
    /// otherwise these names are unknown tools). The arguments are checked
    /// against the fixed schema like any tool's.
    func catalogueCall(_ call: ToolCall, session: CallSession) async -> CallResponse {
        guard let def = Catalogue.definition(named: call.name) else {
            return await refuse(.unknownTool, tool: call.name, cell: nil, policy: nil, session: session)
        }
        if let problem = SchemaValidator.validate(.object(call.arguments), against: def.inputSchema) {
            return await refuse(.invalidArguments(problem), tool: call.name, cell: nil, policy: nil, session: session)
        }
        let (registry, policy) = state.withLock { ($0.registry, $0.policy) }
        let view = listView(registry: registry, policy: policy, session: session)
        switch call.name {
        case Catalogue.searchTool: return search(call.arguments, view: view)
        case Catalogue.enableTool: return await enable(call.arguments, view: view, policy: policy, session: session)
        default: return await disable(call.arguments, view: view, policy: policy, session: session)
        }
    }

    /// Ranked matches among the tools the policy lets the principal see:
    /// a tool it denies is never a candidate, so no answer hints at it.
    func search(_ arguments: JSONObject, view: CatalogueView) -> CallResponse {
        let query = arguments["query"]?.stringValue ?? ""
        let limit = arguments["limit"]?.intValue.map { Int($0) } ?? Catalogue.defaultResults
        let byName = Dictionary(view.visible.map { ($0.tool.name, $0) }, uniquingKeysWith: { a, _ in a })
        let entries = view.visible.map {
            Catalogue.Entry(
                name: $0.tool.name, title: $0.tool.title, description: $0.tool.description, cell: $0.cell.name,
                cellDescription: $0.cell.manifest.description)
        }
        let (hits, matches) = Catalogue.search(query, in: entries, limit: limit)
        let tools: [JSONValue] = hits.map { h in
            .object(
                JSONObject([
                    ("name", .string(h.name)),
                    (
                        "description",
                        .string(SecurityEvent.bounded(h.description, maxBytes: Catalogue.resultDescriptionBytes))
                    ),
                    ("server", .string(byName[h.name]?.cell.name ?? h.cell)),
                    ("enabled", .bool(view.lists(h.name))),
                ]))
        }
        let structured = JSONValue.object(JSONObject([("tools", .array(tools)), ("matches", .int(Int64(matches)))]))
        var text = structured.serialized()
        if hits.isEmpty { text = "No tool matches \"\(CellProtocol.sanitize(query))\". " + text }
        return .result(
            ToolResult(
                content: [.object(JSONObject([("type", "text"), ("text", .string(text))]))],
                structuredContent: structured, isError: false))
    }

    /// The names of an enable or disable request (the schema made them
    /// strings), sanitized for any text that quotes them.
    static func requestedNames(_ arguments: JSONObject) -> [String] {
        (arguments["tools"]?.arrayValue ?? []).compactMap(\.stringValue)
    }

    /// Adds tools to this session's list. All or nothing: a name the
    /// principal may not see, whether it exists or not, gets the same
    /// answer, and nothing is enabled. Recorded durably before it counts.
    func enable(_ arguments: JSONObject, view: CatalogueView, policy: Policy?, session: CallSession) async
        -> CallResponse
    {
        let names = Self.requestedNames(arguments)
        let byName = Dictionary(view.visible.map { ($0.tool.name, $0) }, uniquingKeysWith: { a, _ in a })
        if let missing = names.first(where: { byName[$0] == nil }) {
            let shown = CellProtocol.sanitize(missing)
            // The operator learns why; the client only that it is not there.
            let why =
                registry.tool(named: missing) == nil ? "no such tool" : "the policy does not let the principal see it"
            var f = JSONObject([
                ("principal", .string(session.principal)), ("tool", .string(Catalogue.enableTool)),
                ("reason", "not_found"), ("detail", .string(SecurityEvent.bounded("\(shown): \(why)", maxBytes: 1024))),
            ])
            if let policy { f["policySha256"] = .string(policy.sha256) }
            do { try await log.append([SecurityEvent(.callRefused, f)]) } catch {
                logger.error(
                    "refusal not recorded", metadata: ["tool": "\(Catalogue.enableTool)", "error": "\(error)"])
            }
            return .result(
                .text(
                    "No tool named \"\(shown)\" is in the catalogue; nothing was enabled. Find tools with "
                        + "\(Catalogue.searchTool) and use the names it returns.", isError: true))
        }
        let new = names.filter { !view.lists($0) }
        let already = names.filter { view.lists($0) }
        if !new.isEmpty {
            let cells = new.map { JSONValue.string(byName[$0]!.cell.name) }
            var f = JSONObject([
                ("principal", .string(session.principal)), ("tools", .array(new.map { .string($0) })),
                ("cells", .array(cells)),
            ])
            if let policy { f["policySha256"] = .string(policy.sha256) }
            do { try await log.append([SecurityEvent(.sessionToolsEnabled, f)]) } catch {
                return .result(
                    .text(
                        "Enabling could not be recorded (\(error.reason)), so nothing was enabled; retry later.",
                        isError: true))
            }
            session.state.withLock { $0.enabledTools.formUnion(new) }
            logger.info("catalogue: tools enabled", metadata: ["tools": "\(new.joined(separator: ","))"])
            session.toolListChanged.withLock { $0 }?()
        }
        var text =
            new.isEmpty
            ? "Nothing changed."
            : "Enabled for this session: \(new.joined(separator: ", ")); they are "
                + "now in the tool list and can be called."
        if !already.isEmpty { text += " Already listed: \(already.joined(separator: ", "))." }
        return .result(.text(text, isError: false))
    }

    /// Takes tools enabled earlier off this session's list; pinned tools and
    /// names that were not enabled are left as they are.
    func disable(_ arguments: JSONObject, view: CatalogueView, policy: Policy?, session: CallSession) async
        -> CallResponse
    {
        let names = Self.requestedNames(arguments)
        let removed = names.filter { view.enabled.contains($0) }
        if !removed.isEmpty {
            var f = JSONObject([
                ("principal", .string(session.principal)), ("tools", .array(removed.map { .string($0) })),
            ])
            if let policy { f["policySha256"] = .string(policy.sha256) }
            do { try await log.append([SecurityEvent(.sessionToolsDisabled, f)]) } catch {
                return .result(
                    .text(
                        "Disabling could not be recorded (\(error.reason)), so nothing changed; retry later.",
                        isError: true))
            }
            session.state.withLock { $0.enabledTools.subtract(removed) }
            session.toolListChanged.withLock { $0 }?()
        }
        let kept = names.filter { !view.enabled.contains($0) }.map(CellProtocol.sanitize)
        var text =
            removed.isEmpty ? "Nothing changed." : "Disabled for this session: \(removed.joined(separator: ", "))."
        if !kept.isEmpty {
            text += " Not enabled in this session (pinned, or never enabled): \(kept.joined(separator: ", "))."
        }
        return .result(.text(text, isError: false))
    }
}
