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


def test_every_bundled_tool_in_the_modern_era(workspace):
    """Each bundled tool through the 2.x client pinned to 2026-07-28, the
    actuator after the phase change its manifest asks for. (The git tools
    read the checkout, which a clone in a private directory does not let the
    workers' uid enter: tests/e2e/test_network_and_commands.py runs them on a
    repository of their own.)"""
    files = Path("/tmp/mcp-supervisor-files")
    files.mkdir(mode=0o1777, exist_ok=True)
    files.chmod(0o1777)
    target = files / f"sdk2-{os.getpid()}.txt"

    async def main():
        async with Client(params(workspace), mode=MODERN) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            bundled = {"echo", "word_count", "fs_read", "fs_list", "fs_search", "fs_write", "python_run", "jq",
                       "git_log", "git_show", "git_diff", "http_fetch"}  # all listed
            assert bundled <= names, bundled - names

            async def ok(tool, args):
                r = await c.call_tool(tool, args)
                assert not r.is_error, (tool, r.content)
                return r

            assert (await ok("echo", {"text": "héllo"})).content[0].text == "héllo"
            wc = await ok("word_count", {"text": "one two\nthree"})
            assert wc.structured_content == {"words": 3, "lines": 2, "characters": 13}
            assert (await ok("fs_read", {"path": "/usr/share/doc/bash/copyright", "maxBytes": 40})).content
            await ok("fs_list", {"path": "/usr/share/doc/bash"})
            await ok("fs_search", {"path": "/usr/share/doc/bash", "pattern": "GNU"})
            assert (await ok("python_run", {"code": "print(6 * 7)"})).structured_content["stdout"] == "42\n"
            assert (await ok("jq", {"filter": ".a", "input": '{"a": 1}'})).content[0].text.strip() == "1"
            r = await c.call_tool("http_fetch", {"url": "http://example.com/"})
            assert r.is_error and "allowlist" in r.content[0].text, r.content
            # The actuator runs only in the phase its manifest names.
            r = await c.call_tool("fs_write", {"path": str(target), "content": "x"})
            assert r.is_error and "phase" in r.content[0].text, r.content
            await ok("set_phase", {"phase": "plan"})
            await ok("set_phase", {"phase": "act"})
            await ok("fs_write", {"path": str(target), "content": "written"})

    try:
        run(main)
        assert target.read_text() == "written"
    finally:
        target.unlink(missing_ok=True)
