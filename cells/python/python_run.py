# python_run: runs a Python snippet the model wrote, in this worker, and
# returns what it printed. The sandbox is the worker's: no network (no
# socket syscall), writes only to the scratch directory, no processes,
# CPU/memory/time/output limits from the manifest.
import contextlib
import io
import json
import os
import struct
import traceback


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
code = request["arguments"]["code"]
out, err = io.StringIO(), io.StringIO()
error = None
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
        exec(compile(code, "<snippet>", "exec"), {"__name__": "__main__"})
    except SystemExit as e:
        error = f"SystemExit: {e.code}"
    except BaseException as e:
        # The snippet's own frames only, not this runner's.
        error = "".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next, limit=5))
limit = 64 * 1024
stdout, stderr = out.getvalue()[:limit], err.getvalue()[:limit]
text = stdout + (("\n[stderr]\n" + stderr) if stderr else "") + (("\n[error]\n" + error) if error else "")
send({"type": "result", "id": request["id"], "content": [{"type": "text", "text": text or "(no output)"}],
      "structuredContent": {"stdout": stdout, "stderr": stderr, "error": error}})
