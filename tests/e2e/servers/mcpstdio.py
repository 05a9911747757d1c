"""A minimal MCP stdio server for the gateway tests, standard library only.

Newline-delimited JSON-RPC 2.0 on stdin/stdout as a real MCP server speaks
it: `initialize` (answers with the client's protocol version when known),
`notifications/initialized`, `ping`, `tools/list`, `tools/call`; other
requests get -32601, other notifications are ignored. Blocking reads only
(no asyncio), so a test server needs no more syscalls than the groups
`base` + `python` + `python-mcp-server` give.

Every tool result carries its observation twice: as `structuredContent` and
as the JSON text of the one text content item, so a test can assert on
either.
"""
import json
import os
import sys

KNOWN_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
LATEST = "2025-11-25"


class Server:
    def __init__(self, name, version="1.0.0"):
        self.name = name
        self.version = version
        self.tools = {}  # name -> (definition, handler)
        self.pending = []  # client messages read while waiting for a response
        self.next_request = 0
        self.current_id = None  # the id of the tools/call being handled
        self.stdin = sys.stdin.buffer
        self.stdout = sys.stdout.buffer

    # -- tools -------------------------------------------------------------

    def tool(self, name, description, properties=None, required=(), handler=None, **extra):
        schema = {"type": "object", "properties": properties or {}, "additionalProperties": False}
        if required:
            schema["required"] = list(required)
        definition = {"name": name, "description": description, "inputSchema": schema}
        definition.update(extra)
        self.tools[name] = (definition, handler)

    def list_tools(self):
        """The tools/list answer; a server may override it."""
        return [d for d, _ in self.tools.values()]

    # -- wire --------------------------------------------------------------

    def send(self, message):
        self.stdout.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        self.stdout.flush()

    def send_raw(self, data):
        self.stdout.write(data)
        self.stdout.flush()

    def read(self):
        """The next client message, or None at EOF. A line that is not JSON
        is answered with a parse error (id null) and skipped."""
        while True:
            line = self.stdin.readline()
            if not line:
                return None
            if not line.strip():
                continue
            try:
                return json.loads(line)
            except ValueError:
                self.send({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}})

    def request(self, method, params=None):
        """Sends a request to the client and returns its response message
        (with `result` or `error`), or None if stdin ends first. Pings are
        answered meanwhile; other client messages wait their turn."""
        self.next_request += 1
        rid = f"{self.name}-{self.next_request}"
        msg = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        while True:
            m = self.read()
            if m is None:
                return None
            if "method" not in m and m.get("id") == rid:
                return m
            if m.get("method") == "ping" and "id" in m:
                self.send({"jsonrpc": "2.0", "id": m["id"], "result": {}})
            else:
                self.pending.append(m)

    def notify(self, method, params=None):
        msg = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)

    # -- dispatch ----------------------------------------------------------

    @staticmethod
    def result(observation, is_error=False):
        """A tools/call result carrying `observation` (a JSON object)."""
        return {"content": [{"type": "text", "text": json.dumps(observation, sort_keys=True)}],
                "structuredContent": observation, "isError": is_error}

    def handle(self, m):
        method, mid, params = m.get("method"), m.get("id"), m.get("params") or {}
        if method is None:
            return  # a response nobody waits for
        if mid is None:
            return  # notifications (initialized, cancelled, ...) need nothing
        if method == "initialize":
            asked = params.get("protocolVersion")
            self.send({"jsonrpc": "2.0", "id": mid, "result": {
                "protocolVersion": asked if asked in KNOWN_VERSIONS else LATEST,
                "capabilities": {"tools": {"listChanged": False}},
                "serverInfo": {"name": self.name, "version": self.version}}})
        elif method == "ping":
            self.send({"jsonrpc": "2.0", "id": mid, "result": {}})
        elif method == "tools/list":
            self.send({"jsonrpc": "2.0", "id": mid, "result": {"tools": self.list_tools()}})
        elif method == "tools/call":
            name = params.get("name")
            if name not in self.tools:
                self.send({"jsonrpc": "2.0", "id": mid,
                           "error": {"code": -32602, "message": f"Unknown tool: {name}"}})
                return
            self.current_id = mid
            try:
                observation = self.tools[name][1](params.get("arguments") or {})
            except Exception as e:  # reported, as the SDK servers do
                self.send({"jsonrpc": "2.0", "id": mid, "result": self.result(
                    {"error": f"{type(e).__name__}: {e}"}, is_error=True)})
                return
            if observation is not None:  # None: the handler answered itself
                self.send({"jsonrpc": "2.0", "id": mid, "result": self.result(observation)})
        else:
            self.send({"jsonrpc": "2.0", "id": mid,
                       "error": {"code": -32601, "message": f"Method not found: {method}"}})

    def run(self):
        while True:
            m = self.pending.pop(0) if self.pending else self.read()
            if m is None:
                return
            self.handle(m)


def oserror(e):
    """An OSError as an observation: errno number and name, message."""
    import errno as errno_names
    return {"ok": False, "errno": e.errno, "errname": errno_names.errorcode.get(e.errno, "") if e.errno else "",
            "error": f"{type(e).__name__}: {e}"}


def log(text):
    """A diagnostic on stderr (never stdout: it carries only MCP)."""
    os.write(2, (text + "\n").encode())
