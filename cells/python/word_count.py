# An example cell in Python, speaking the cell protocol directly
# (docs/cell-protocol.md): one request frame on fd 3, frames back on fd 4.
# It is given to `python3 -I -` on stdin, verified by its SHA-256.
import json
import os
import struct


def read_exactly(fd, n):
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            raise EOFError("request pipe closed")
        data += chunk
    return data


def send(frame):
    body = json.dumps(frame, ensure_ascii=False).encode("utf-8")
    os.write(4, struct.pack(">I", len(body)) + body)


(length,) = struct.unpack(">I", read_exactly(3, 4))
request = json.loads(read_exactly(3, length))
text = request["arguments"].get("text", "")
words = len(text.split())
lines = text.count("\n") + (1 if text and not text.endswith("\n") else 0)
send({"type": "log", "id": request["id"], "level": "debug", "message": "counted"})
send({
    "type": "result",
    "id": request["id"],
    "content": [{"type": "text", "text": f"{words} words, {lines} lines, {len(text)} characters"}],
    "structuredContent": {"words": words, "lines": lines, "characters": len(text)},
})
