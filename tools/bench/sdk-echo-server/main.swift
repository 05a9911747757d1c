// Baseline (e) of tools/bench: an echo tool served in process, no sandbox,
// by the official MCP Swift SDK with its own StdioTransport.
import MCP

let server = Server(name: "sdk-echo", version: "1", capabilities: .init(tools: .init()))
await server.withMethodHandler(ListTools.self) { _ in
    ListTools.Result(tools: [Tool(name: "echo", description: "Echo.", inputSchema: .object(["type": "object"]))])
}
await server.withMethodHandler(CallTool.self) { params in
    CallTool.Result(content: [.text(text: params.arguments?["text"]?.stringValue ?? "", annotations: nil, _meta: nil)])
}
try await server.start(transport: StdioTransport())
await server.waitUntilCompleted()
