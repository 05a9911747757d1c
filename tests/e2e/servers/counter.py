"""A server that counts its calls in memory (gateway tests: per-call
freshness). Tool `count`: {"count": calls this process has served, this one
included, "pid": its pid, "instance": a random id chosen at start-up,
"started": its start time (ns since the epoch)}. A fresh server per call
always answers count 1 with a new instance; a reused one counts up.
"""
import os
import time

from mcpstdio import Server

server = Server("counter")
state = {"count": 0, "instance": os.urandom(8).hex(), "started": time.time_ns()}


def count(args):
    state["count"] += 1
    return {"count": state["count"], "pid": os.getpid(), "instance": state["instance"], "started": state["started"]}


server.tool("count", "Count the calls this server process has answered (this one included).", handler=count,
            annotations={"readOnlyHint": True, "openWorldHint": False})

if __name__ == "__main__":
    server.run()
