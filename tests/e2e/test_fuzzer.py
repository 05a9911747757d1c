"""mcp-fuzzer (protocol and tools modes) against `mcp-supervisor run`.

mcp-fuzzer exits 0 even with findings, so this test reads findings.json and
fails on every finding except the classes triaged as the fuzzer's mistakes
(docs/testing.md, "Fuzzer findings"):

- accepted_malformed for a notification: notifications must never be
  answered (JSON-RPC 2.0 section 4.1); silence is correct.
- accepted_malformed for a request that is valid: ping, tools/list,
  logging/setLevel with a defined level, or tools/call whose arguments
  satisfy the tool's inputSchema (checked here with the jsonschema package).
  The fuzzer's "realistic" phase sends valid input and flags success.
- injection_reflection on the echo tool: returning its input unchanged is
  that tool's documented purpose; text content is data to the client.
- non_determinism on set_phase: it changes the session's phase, so the
  same input is accepted or refused depending on the current phase.

python_run is not fuzzed here: returning the traceback of the model's
snippet is its purpose (test_builtin_cells checks only the snippet's frames
are shown), and the fuzzer reports every traceback as a leak.
"""
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import jsonschema

from conftest import BIN, ROOT, server_args

LOG_LEVELS = {"debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"}


def tool_schemas(ws):
    phases = json.loads((ROOT / "policies" / "policy.json").read_text())["phases"]["states"]
    out = {"set_phase": {"type": "object", "properties": {"phase": {"type": "string", "enum": phases}},
                         "required": ["phase"], "additionalProperties": False}}
    for m in (ws / "manifests").glob("*.json"):
        for t in json.loads(m.read_text())["tools"]:
            out[t["name"]] = t["inputSchema"]
    return out


def is_false_positive(f, schemas):
    cat, ev = f.get("category"), f.get("evidence") or {}
    if cat == "injection_reflection" and f.get("target") == "echo":
        return True
    if cat == "non_determinism" and f.get("target") == "set_phase":
        # set_phase changes the session's phase: the same input answers
        # differently depending on the phase the session is in, by design.
        return True
    if cat != "accepted_malformed":
        return False
    inp = ev.get("input") or {}
    if f.get("kind") == "tool":
        schema = schemas.get(f.get("target"))
        return schema is not None and jsonschema.Draft202012Validator(schema).is_valid(inp)
    if "id" not in inp:
        return True
    method, params = inp.get("method"), inp.get("params") or {}
    if method == "ping":
        return True
    if method == "tools/list":
        return "cursor" not in params
    if method == "logging/setLevel":
        return params.get("level") in LOG_LEVELS
    if method == "tools/call":
        schema = schemas.get(params.get("name"))
        return schema is not None and jsonschema.Draft202012Validator(schema).is_valid(params.get("arguments", {}))
    return False


def test_fuzzer_finds_nothing_real(workspace):
    out = Path(tempfile.mkdtemp(prefix="mcps-fuzz-"))
    # python_run is left out: returning the traceback of the model's snippet
    # is its purpose (test_builtin_cells checks it shows only the snippet's
    # frames), and the fuzzer reports every traceback as a leak.
    ws = out / "ws"
    # The probe cells are test instruments (their outcome depends on timing by
    # design), not product tools: the fuzz run serves the bundled cells.
    shutil.copytree(workspace / "manifests", ws / "manifests",
                    ignore=shutil.ignore_patterns("python-run.json", "probe*.json"))
    workspace = ws
    try:
        cmd = " ".join([str(BIN), *server_args(workspace, "--log-level", "error")])
        p = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "mcp-fuzzer"), "--mode", "all", "--protocol", "stdio", "--endpoint", cmd,
             "--runs", "8", "--runs-per-type", "3", "--phase", "both", "--output-dir", str(out), "--no-network",
             "--seed", "7"],
            capture_output=True, timeout=600)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        findings = json.loads((out / "findings.json").read_text())["findings"]
        schemas = tool_schemas(workspace)
        real = [f for f in findings if not is_false_positive(f, schemas)]
        assert not real, json.dumps(real, indent=1)[:4000]
        summary = json.loads((out / "run_summary.json").read_text())
        assert summary["protocols"]["total"] > 0
    finally:
        shutil.rmtree(out, ignore_errors=True)
