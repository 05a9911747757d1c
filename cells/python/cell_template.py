# NAME: a cell in Python (docs/cell-protocol.md). One request frame on fd 3,
# frames back on fd 4; the supervisor gives this file to python3 on stdin.
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
text = request["arguments"]["text"]

# The tool's work goes here.
result = text[::-1]

send({"type": "result", "id": request["id"],
      "content": [{"type": "text", "text": result}],
      "structuredContent": {"result": result}})
