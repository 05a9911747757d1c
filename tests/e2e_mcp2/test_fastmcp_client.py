"""fastmcp's client against the built binary, in auto mode (server/discover
first, so 2026-07-28) and pinned to the handshake era."""
import anyio
import pytest
from fastmcp import Client
from fastmcp.client.transports import StdioTransport

from conftest import e2e


def transport(ws):
    return StdioTransport(command=str(e2e.BIN), args=e2e.server_args(ws, "--log-level", "error"), keep_alive=False)


@pytest.mark.parametrize("mode, modern", [("auto", True), ("legacy", False)])
def test_fastmcp_client_lists_calls_and_is_refused(workspace, mode, modern):
    async def main():
        progress = []

        async def on_progress(p, total, message):
            progress.append(p)

        async with Client(transport(workspace), mode=mode) as c:
            assert (c.protocol_version == "2026-07-28") == modern, c.protocol_version
            names = {t.name for t in await c.list_tools()}
            assert {"echo", "probe"} <= names
            r = await c.call_tool("echo", {"text": "fm"})
            assert r.content[0].text == "fm" and not r.is_error
            r = await c.call_tool("echo", {"text": 7}, raise_on_error=False)
            assert r.is_error
            r = await c.call_tool("probe", {"action": "syscall", "nr": 101}, raise_on_error=False)
            assert r.is_error and "ptrace" in r.content[0].text
            r = await c.call_tool("probe", {"action": "progress", "steps": 2}, progress_handler=on_progress)
            assert progress == [1.0, 2.0]
    anyio.run(main)
