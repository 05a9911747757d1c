"""The official MCP Python SDK client against `mcp-supervisor run`."""
import anyio
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from conftest import BIN, server_args


def run(ws, body, *extra):
    async def main():
        params = StdioServerParameters(command=str(BIN), args=server_args(ws, *extra))
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                return await body(session, init)
    return anyio.run(main)


def test_initialize_and_list_tools_across_pages(workspace):
    async def body(s, init):
        assert init.serverInfo.name == "mcp-supervisor"
        assert init.capabilities.tools.listChanged is True
        names, cursor, pages = [], None, 0
        while True:
            page = await s.list_tools(cursor=cursor)
            pages += 1
            names += [t.name for t in page.tools]
            for t in page.tools:
                assert t.description, f"{t.name} has no description"
            cursor = page.nextCursor
            if not cursor:
                break
        return names, pages
    names, pages = run(workspace, body, "--tools-page-size", "1")
    # One cell tool per page; the supervisor's own set_phase joins the last page.
    assert pages == len(names) - 1 >= 4
    assert len(set(names)) == len(names)
    assert {"echo", "word_count", "probe", "probe_fast", "set_phase"} <= set(names)


def test_every_bundled_tool(workspace):
    async def body(s, _):
        echo = await s.call_tool("echo", {"text": "héllo"})
        wc = await s.call_tool("word_count", {"text": "one two\nthree"})
        await s.send_ping()
        return echo, wc
    echo, wc = run(workspace, body)
    assert not echo.isError
    assert echo.content[0].text == "héllo"
    assert echo.structuredContent == {"text": "héllo", "length": 6}
    assert not wc.isError, wc.content
    assert wc.structuredContent == {"words": 3, "lines": 2, "characters": 13}


def test_progress_and_logs(workspace):
    seen = []

    async def progress(p, total, message):
        seen.append((p, total, message))

    async def body(s, _):
        await s.set_logging_level("debug")
        r = await s.call_tool("probe", {"action": "progress", "steps": 3}, progress_callback=progress)
        await s.send_ping()
        return r
    r = run(workspace, body)
    assert not r.isError
    assert seen == [(1.0, 3.0, "step 1"), (2.0, 3.0, "step 2"), (3.0, 3.0, "step 3")]


def test_schema_invalid_arguments_name_the_field(workspace):
    async def body(s, _):
        bad = await s.call_tool("echo", {"text": 42})
        missing = await s.call_tool("echo", {})
        extra = await s.call_tool("echo", {"text": "a", "more": 1})
        await s.send_ping()
        return bad, missing, extra
    bad, missing, extra = run(workspace, body)
    assert bad.isError and "arguments.text: expected string" in bad.content[0].text
    assert missing.isError and "arguments.text: required" in missing.content[0].text
    assert extra.isError and "arguments.more: unknown property" in extra.content[0].text


def test_timeout_and_sandbox_violation_are_tool_errors(workspace):
    async def body(s, _):
        slow = await s.call_tool("probe_fast", {"action": "sleep", "ms": 5000})
        await s.send_ping()
        bad = await s.call_tool("probe", {"action": "syscall", "nr": 101})
        await s.send_ping()
        crash = await s.call_tool("probe", {"action": "raw", "hex": "ffffffff"})
        await s.send_ping()
        return slow, bad, crash
    slow, bad, crash = run(workspace, body)
    assert slow.isError and slow.content[0].text == "The tool call timed out."
    assert bad.isError and "forbidden system call ptrace" in bad.content[0].text
    assert crash.isError and "protocol" in crash.content[0].text
    for r in (slow, bad, crash):
        assert "/" not in r.content[0].text, "no paths in the model's context"


def test_unknown_tool_is_invalid_params(workspace):
    from mcp.shared.exceptions import McpError

    async def body(s, _):
        with pytest.raises(McpError) as e:
            await s.call_tool("no_such_tool", {})
        await s.send_ping()
        return e.value.error.code
    assert run(workspace, body) == -32602


def test_parallel_calls(workspace):
    async def body(s, _):
        results = {}

        async def one(i):
            results[i] = await s.call_tool("echo", {"text": f"call {i}"})
        async with anyio.create_task_group() as tg:
            for i in range(12):
                tg.start_soon(one, i)
        return results
    results = run(workspace, body)
    assert sorted(r.content[0].text for r in results.values()) == sorted(f"call {i}" for i in range(12))
