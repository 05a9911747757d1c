"""The enforcement receipt as the official MCP Python SDK 2.x client sees it
(`CallToolResult.meta`), in both eras, checked against the manifest and
executable the workspace serves, the policy, and the security log."""
import hashlib
import json
import re
import subprocess
from pathlib import Path

import anyio
import pytest
from mcp import StdioServerParameters
from mcp.client import Client

from conftest import e2e

RECEIPT = "io.github.mcp-supervisor/receipt"


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
def test_sdk2_client_gets_a_verifiable_receipt(workspace, tmp_path, mode):
    state = tmp_path / "state"
    args = e2e.server_args(workspace, "--log-level", "error")
    args[args.index("--state-dir") + 1] = str(state)
    params = StdioServerParameters(command=str(e2e.BIN), args=args)

    async def main():
        async with Client(params, mode=mode) as c:
            return await c.call_tool("probe", {"action": "echo", "text": "r"})
    r = anyio.run(main)
    assert not r.is_error
    receipt = (r.meta or {}).get(RECEIPT)
    assert receipt, f"no receipt in {r}"

    manifest = workspace / "manifests" / "probe.json"
    assert receipt["versionId"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert receipt["executableSha256"] == e2e.sha256(e2e.PROBE)
    policy = subprocess.run([str(e2e.BIN), "policy", "check", str(e2e.ROOT / "policies" / "policy.json")],
                            capture_output=True, text=True, timeout=60).stdout
    assert receipt["policySha256"] == re.search(r"sha256 ([0-9a-f]{64})", policy).group(1)
    assert re.fullmatch(r"[0-9a-f]{64}", receipt["seccomp"]["filterSha256"])
    rec = receipt["securityLog"]
    lines = [l for f in sorted((state / "security").glob("events-*.jsonl")) for l in f.read_bytes().split(b"\n") if l]
    line = next(l for l in lines if json.loads(l)["seq"] == rec["seq"])
    assert json.loads(line)["type"] == "call.end" and json.loads(line)["callId"] == rec["callId"]
    assert hashlib.sha256(line).hexdigest() == rec["sha256"]
