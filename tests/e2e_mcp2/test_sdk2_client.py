"""The official MCP Python SDK 2.x client against the built binary: pinned to
2026-07-28, in auto mode (server/discover first), and in the handshake era."""
import json
import os
import shutil
import signal
from pathlib import Path

import anyio
import pytest
from mcp import StdioServerParameters
from mcp.client import Client
from mcp_types import Implementation

from conftest import e2e

MODERN = "2026-07-28"


def params(ws, manifests=None):
    args = e2e.server_args(ws, "--log-level", "error")
    if manifests is not None:
        args[args.index("--manifests") + 1] = str(manifests)
    return StdioServerParameters(command=str(e2e.BIN), args=args)


def run(body):
    return anyio.run(body)


@pytest.mark.parametrize("mode", ["auto", MODERN])
def test_modern_client_lists_calls_and_is_refused(workspace, mode):
    async def main():
        logs = []

        async def on_log(p):
            logs.append(p)

        async with Client(params(workspace), mode=mode, log_level="info", logging_callback=on_log,
                          client_info=Implementation(name="sdk2-test", version="2.3")) as c:
            assert c.protocol_version == MODERN
            tools = (await c.list_tools()).tools
            names = [t.name for t in tools]
            assert "echo" in names and "probe" in names
            r = await c.call_tool("echo", {"text": "hello"})
            assert not r.is_error and r.content[0].text == "hello"
            assert r.structured_content == {"text": "hello", "length": 5}
            # Schema-invalid arguments: refused before any worker starts.
            r = await c.call_tool("echo", {"text": 5})
            assert r.is_error and "text" in r.content[0].text
            # A sandbox violation: the probe cell calls ptrace and is killed.
            r = await c.call_tool("probe", {"action": "syscall", "nr": 101})
            assert r.is_error and "ptrace" in r.content[0].text
            # Progress, and the logs this client opted in to.
            seen = []

            async def on_progress(p, total, message):
                seen.append((p, total, message))

            r = await c.call_tool("probe", {"action": "progress", "steps": 3}, progress_callback=on_progress)
            assert not r.is_error
            assert [s[0] for s in seen] == [1.0, 2.0, 3.0]
            await anyio.sleep(0.2)
            assert len(logs) >= 3, logs
    run(main)


def test_modern_client_cancellation_stops_the_worker(workspace):
    async def main():
        async with Client(params(workspace), mode=MODERN) as c:
            with anyio.move_on_after(1.0):
                await c.call_tool("probe", {"action": "sleep", "ms": 10000})
            pids = e2e.worker_pids()
            assert e2e.wait_gone(pids, timeout=5), pids
            # The connection goes on.
            r = await c.call_tool("echo", {"text": "after"})
            assert r.content[0].text == "after"
    run(main)


def test_handshake_client_still_served(workspace):
    async def main():
        async with Client(params(workspace), mode="legacy") as c:
            assert c.protocol_version != MODERN
            r = await c.call_tool("echo", {"text": "old"})
            assert r.content[0].text == "old"
            r = await c.call_tool("probe", {"action": "syscall", "nr": 101})
            assert r.is_error
    run(main)


def server_pid(marker):
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"mcp-supervisor") and marker.encode() in b" ".join(cmd):
                return int(p.name)
    raise AssertionError("server process not found")


def test_modern_client_hears_tool_list_changes_through_listen(workspace, tmp_path):
    manifests = tmp_path / "manifests"
    shutil.copytree(workspace / "manifests", manifests)

    async def main():
        async with Client(params(workspace, manifests), mode=MODERN) as c:
            before = {t.name for t in (await c.list_tools()).tools}
            async with c.listen(tools_list_changed=True) as sub:
                (manifests / "probe2.json").write_text(json.dumps(e2e.probe_manifest("probe_two")))
                os.kill(server_pid(str(manifests)), signal.SIGHUP)
                with anyio.fail_after(10):
                    async for event in sub:
                        break
            after = {t.name for t in (await c.list_tools()).tools}
            assert after - before == {"probe_two"}
    run(main)
