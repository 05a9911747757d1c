"""Human approval (docs/policy.md, "Approval") through the official MCP
Python SDK 2.x client's elicitation callback: in 2026-07-28 its
input_required driver answers the InputRequiredResult and retries with the
request state; in the handshake era it answers elicitation/create."""
import json
import shutil
import tempfile
from pathlib import Path

import anyio
import pytest
from mcp import StdioServerParameters
from mcp.client import Client
from mcp_types import ElicitResult

from conftest import e2e

MODERN = "2026-07-28"


@pytest.fixture
def policies():
    d = Path(tempfile.mkdtemp(prefix="mcps-approval-sdk2-"))
    d.chmod(0o755)
    shutil.copy(e2e.ROOT / "policies" / "syscall-groups.json", d)
    (d / "policy.json").write_text(json.dumps({
        "principals": [{"name": "local", "principal": "uid:*", "allow": ["*"]}],
        "approval": [{"tool": "echo"}],
    }))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def params(ws, policies):
    args = e2e.server_args(ws, "--log-level", "error")
    args[args.index("--policies") + 1] = str(policies)
    return StdioServerParameters(command=str(e2e.BIN), args=args)


@pytest.mark.parametrize("mode", [MODERN, "auto", "legacy"])
@pytest.mark.parametrize("action", ["accept", "decline"])
def test_sdk2_elicitation_callback_approves_or_declines(workspace, policies, mode, action):
    asked = []

    async def on_elicit(context, p):
        asked.append(p.message)
        return ElicitResult(action=action)

    async def main():
        async with Client(params(workspace, policies), mode=mode, elicitation_callback=on_elicit) as c:
            assert (c.protocol_version == MODERN) == (mode != "legacy")
            r = await c.call_tool("echo", {"text": "please"})
            if action == "accept":
                assert not r.is_error and r.content[0].text == "please"
            else:
                assert r.is_error and "declined" in r.content[0].text
            # Another tool needs no approval.
            r = await c.call_tool("probe", {"action": "progress", "steps": 1})
            assert not r.is_error
    anyio.run(main)
    assert len(asked) == 1 and "echo" in asked[0] and "please" in asked[0]


@pytest.mark.parametrize("mode", [MODERN, "legacy"])
def test_sdk2_client_without_elicitation_is_refused_plainly(workspace, policies, mode):
    async def main():
        async with Client(params(workspace, policies), mode=mode) as c:
            r = await c.call_tool("echo", {"text": "x"})
            assert r.is_error and "elicitation" in r.content[0].text
    anyio.run(main)
