"""The fixtures of tests/e2e, for the tests that drive the built binary with
the official MCP Python SDK 2.x (its own venv, .venv-mcp2: the 1.x and 2.x
SDKs cannot share one)."""
import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("e2e_conftest", Path(__file__).resolve().parents[1] / "e2e" / "conftest.py")
e2e = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(e2e)

workspace = e2e.workspace
