"""cisco-ai-mcp-scanner connects over stdio (it probes with server/discover
and falls back only on -32601/-32022) and reports on the bundled tools, with
its offline analyzers only (yara and schema: no API keys, no network)."""
import os
import subprocess
import sys
from pathlib import Path

from conftest import e2e

SCANNER = Path(sys.executable).parent / "mcp-scanner"


def test_scanner_connects_and_reports_every_tool(workspace, tmp_path):
    assert SCANNER.exists(), f"{SCANNER} missing: run `make mcp2-venv`"
    args = e2e.server_args(workspace, "--log-level", "error")
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", HOME=str(tmp_path))
    p = subprocess.run(
        [str(SCANNER), "--analyzers", "yara,schema", "--format", "summary", "stdio",
         "--stdio-command", str(e2e.BIN), "--stdio-args", ",".join(args)],
        capture_output=True, text=True, timeout=180, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert "Total tools scanned:" in out, out
    for tool in ("echo", "probe", "python_run"):
        assert f"{tool} (tool)" in out, out
    scanned = int(out.split("Total tools scanned:")[1].split()[0])
    assert scanned >= 10, out
