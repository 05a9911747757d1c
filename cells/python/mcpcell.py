"""mcpcell: write an mcp-supervisor cell in Python (docs/writing-cells.md).

A cell's manifest lists this file under "libraries"; the supervisor verifies
its SHA-256 like the script's and gives python3 this file followed by the
script on stdin, so the script can `import mcpcell` without any path to the
module being readable in the sandbox. Outside the sandbox (tests, editors)
the import finds this file normally.

    import mcpcell

    @mcpcell.tool("shout")
    def shout(args, ctx):
        ctx.progress(0.5, 1, "half way")
        return args["text"].upper()          # str, dict, or mcpcell.Result

    mcpcell.serve()

The protocol (docs/cell-protocol.md): one request frame on fd 3, frames back
on fd 4, each a 4-byte big-endian length and UTF-8 JSON. Standard library
only.
"""
import json
import os
import struct
import sys
import types

REQUEST_FD = 3
RESPONSE_FD = 4
BROKER_FD = 5

_tools = {}


class ToolError(Exception):
    """Raise to end the call with a tool error the model reads."""


class Result:
    """A result with text for the model and optional structured content."""

    def __init__(self, text, structured=None):
        self.text = text
        self.structured = structured


def tool(name):
    """Registers the decorated function as the handler of tool `name`."""

    def register(fn):
        _tools[name] = fn
        return fn

    return register


def _read_exactly(fd, n):
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            raise EOFError("request pipe closed")
        data += chunk
    return data


def _send(frame):
    body = json.dumps(frame, ensure_ascii=False).encode("utf-8")
    data = struct.pack(">I", len(body)) + body
    while data:
        data = data[os.write(RESPONSE_FD, data):]


class Context:
    """The call in progress: progress and log frames go to the client."""

    def __init__(self, request):
        self.id = request["id"]
        self.tool = request["tool"]

    def progress(self, progress, total=None, message=None):
        frame = {"type": "progress", "id": self.id, "progress": progress}
        if total is not None:
            frame["total"] = total
        if message is not None:
            frame["message"] = message
        _send(frame)

    def log(self, level, message, data=None):
        frame = {"type": "log", "id": self.id, "level": level, "message": message}
        if data is not None:
            frame["data"] = data
        _send(frame)


class NetworkRefused(OSError):
    """The supervisor refused a connection (host not on the allowlist...)."""


def connect(host, port, timeout=None):
    """A TCP connection to host:port, made by the supervisor's connection
    broker if the manifest's network allowlist has the host; the worker has
    no socket() or connect() of its own. Returns a socket.socket."""
    # Imported here: importing socket probes epoll (selectors), a syscall
    # cells without network need not allow.
    import socket

    request = json.dumps({"host": host, "port": int(port)}).encode("utf-8")
    try:
        os.write(BROKER_FD, request)
    except OSError as e:
        raise NetworkRefused(f"no connection broker (the manifest declares no network): {e}") from None
    # One datagram back; the connected socket rides along as SCM_RIGHTS.
    carrier = socket.socket(fileno=BROKER_FD)
    try:
        message, fds, _flags, _addr = socket.recv_fds(carrier, 4096, 1)
    finally:
        carrier.detach()
    answer = json.loads(message) if message else {"ok": False, "error": "broker closed"}
    if not answer.get("ok"):
        for fd in fds:
            os.close(fd)
        raise NetworkRefused(answer.get("error", "refused"))
    if len(fds) != 1:
        raise NetworkRefused("the broker answered without a socket")
    s = socket.socket(fileno=fds[0])
    s.settimeout(timeout)
    return s


def _result_frame(call_id, value):
    if isinstance(value, Result):
        text, structured = value.text, value.structured
    elif isinstance(value, dict):
        text, structured = json.dumps(value, ensure_ascii=False), value
    else:
        text, structured = str(value), None
    frame = {"type": "result", "id": call_id, "content": [{"type": "text", "text": text}]}
    if structured is not None:
        frame["structuredContent"] = structured
    return frame


def serve():
    """Reads the request, runs its tool's handler, sends the result."""
    (length,) = struct.unpack(">I", _read_exactly(REQUEST_FD, 4))
    request = json.loads(_read_exactly(REQUEST_FD, length))
    ctx = Context(request)
    handler = _tools.get(request["tool"])
    if handler is None:
        _send({"type": "error", "id": ctx.id, "message": f"this cell has no tool {request['tool']!r}"})
        return
    try:
        value = handler(request["arguments"], ctx)
    except ToolError as e:
        _send({"type": "error", "id": ctx.id, "message": str(e)})
        return
    except Exception as e:  # the model reads the failure, not a traceback
        _send({"type": "error", "id": ctx.id, "message": f"{type(e).__name__}: {e}"})
        return
    _send(_result_frame(ctx.id, value))


# Given on stdin before the script, this file runs as __main__: register it
# as the module `mcpcell` so that the script's `import mcpcell` finds it.
if __name__ == "__main__" and "mcpcell" not in sys.modules:
    _module = types.ModuleType("mcpcell", __doc__)
    for _name in ("ToolError", "Result", "tool", "Context", "NetworkRefused", "connect", "serve",
                  "REQUEST_FD", "RESPONSE_FD", "BROKER_FD"):
        setattr(_module, _name, globals()[_name])
    sys.modules["mcpcell"] = _module
