"""The official MCP Python SDK 2.x client over `serve --http`: its
Streamable HTTP transport with a bearer token, pinned to 2026-07-28 and in
auto mode (server/discover first). It sends MCP-Protocol-Version, Mcp-Method
and Mcp-Name itself: the server's header rules meet a real client."""
import hashlib
import json
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import anyio
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from conftest import e2e

MODERN = "2026-07-28"
TOKEN = "sdk2-static-token-" + "7" * 32


@pytest.fixture(scope="module")
def http_server(workspace):
    work = Path(tempfile.mkdtemp(prefix="mcps-http-sdk2-"))
    work.chmod(0o755)
    (work / "http.json").write_text(json.dumps(
        {"staticTokens": [{"name": "sdk2", "sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}]}))
    (work / "policies").mkdir()
    (work / "policies" / "policy.json").write_text(json.dumps(
        {"principals": [{"name": "sdk2", "principal": "token:sdk2", "allow": ["*"]}]}))
    shutil.copy(e2e.ROOT / "policies" / "syscall-groups.json", work / "policies" / "syscall-groups.json")
    p = subprocess.Popen([str(e2e.BIN), "serve", "--http", "127.0.0.1:0", "--http-config", str(work / "http.json"),
                          "--manifests", str(workspace / "manifests"), "--policies", str(work / "policies"),
                          "--state-dir", str(work / "state"), "--scratch-dir", str(work / "scratch"),
                          "--allow-unsigned", "--log-level", "error"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    port = None
    for line in p.stderr:
        if "serving MCP on http://127.0.0.1:" in line:
            port = int(line.rsplit(":", 1)[1].split("/")[0])
            break
    assert port, "serve --http did not start"
    threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
    yield f"http://127.0.0.1:{port}/mcp"
    p.terminate()
    p.wait(10)
    shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("mode", ["auto", MODERN])
def test_sdk2_client_over_http(http_server, mode):
    async def main():
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {TOKEN}"})
        async with http:
            async with Client(streamable_http_client(http_server, http_client=http), mode=mode) as c:
                assert c.protocol_version == MODERN
                names = [t.name for t in (await c.list_tools()).tools]
                assert "echo" in names
                r = await c.call_tool("echo", {"text": "over http"})
                assert not r.is_error and r.content[0].text == "over http"
                seen = []

                async def on_progress(p, total, message):
                    seen.append(p)

                r = await c.call_tool("probe", {"action": "progress", "steps": 3}, progress_callback=on_progress)
                assert not r.is_error and seen == [1, 2, 3]

    anyio.run(main)


@pytest.mark.parametrize("mode, modern", [("auto", True), ("legacy", False)])
def test_fastmcp_http_client(http_server, mode, modern):
    """fastmcp's Streamable HTTP client with a bearer token, in both eras."""
    from fastmcp import Client as FastClient

    async def main():
        progress = []

        async def on_progress(p, total, message):
            progress.append(p)

        async with FastClient(http_server, auth=TOKEN, mode=mode) as c:
            assert (c.protocol_version == MODERN) == modern, c.protocol_version
            names = {t.name for t in await c.list_tools()}
            assert {"echo", "probe"} <= names
            r = await c.call_tool("echo", {"text": "fm-http"})
            assert r.content[0].text == "fm-http" and not r.is_error
            r = await c.call_tool("probe", {"action": "progress", "steps": 2}, progress_handler=on_progress)
            assert progress == [1.0, 2.0]

    anyio.run(main)
