#!/usr/bin/env python3
"""The catalogue's benchmark (docs/catalogue.md): the size of `tools/list`
with 20 servers registered (87 tools, definitions after real servers:
tests/e2e/catalogue_servers.py, served by the echo cell), with the
catalogue off and on, in both protocol eras; and what finding and enabling
one tool costs in bytes.

Sizes are the bytes of the JSON-RPC response lines on stdout (every page,
at the default page size). Nothing is timed: the figures depend only on
the definitions. Run alone (`tools/bench/catalogue_bench.py [--bin PATH]`)
it prints its markdown section; `tools/bench/bench.py` includes it in
docs/benchmarks.md.
"""
import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import catalogue_servers  # noqa: E402

ECHO = ROOT / ".build/release/echo-cell"
V = "2026-07-28"
META = {"io.modelcontextprotocol/protocolVersion": V, "io.modelcontextprotocol/clientCapabilities": {}}


class Session:
    """`mcp-supervisor run` in raw JSON-RPC lines; counts response bytes."""

    def __init__(self, argv, era):
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.era = era
        self.id = 0
        if era == "handshake":
            self.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                        "clientInfo": {"name": "catalogue-bench", "version": "1"}})
            self.p.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
            self.p.stdin.flush()

    def request(self, method, params=None):
        """The response and its size in bytes (notifications are skipped)."""
        self.id += 1
        p = dict(params or {})
        if self.era == "modern":
            p["_meta"] = META
        self.p.stdin.write(json.dumps({"jsonrpc": "2.0", "id": self.id, "method": method, "params": p}).encode()
                           + b"\n")
        self.p.stdin.flush()
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise EOFError("the server ended")
            m = json.loads(line)
            if m.get("id") == self.id and "method" not in m:
                return m, len(line)

    def list_tools(self):
        """(tool count, bytes of every page, pages)."""
        tools, size, pages, cursor = 0, 0, 0, None
        while True:
            r, n = self.request("tools/list", {"cursor": cursor} if cursor else {})
            tools += len(r["result"]["tools"])
            size += n
            pages += 1
            cursor = r["result"].get("nextCursor")
            if not cursor:
                return tools, size, pages

    def close(self):
        self.p.stdin.close()
        self.p.wait(timeout=30)


def measure(binary):
    """Rows of (variant, era, tools, bytes, pages) and the enable figures."""
    tmp = Path(tempfile.mkdtemp(prefix="mcps-catalogue-bench-"))
    try:
        assert ECHO.exists(), f"{ECHO} missing: run `make cells`"
        catalogue_servers.write_manifests(tmp / "manifests", ECHO, hashlib.sha256(ECHO.read_bytes()).hexdigest())
        (tmp / "policies").mkdir()
        shutil.copy(ROOT / "policies/syscall-groups.json", tmp / "policies")
        shutil.copy(ROOT / "policies/policy.json", tmp / "policies")
        tmp.chmod(0o755)

        def argv(i, *extra):
            return [str(binary), "run", "--manifests", str(tmp / "manifests"), "--policies", str(tmp / "policies"),
                    "--state-dir", str(tmp / f"state{i}"), "--scratch-dir", str(tmp / f"scratch{i}"),
                    "--allow-unsigned", "--log-level", "error", *extra]

        variants = [
            ("off (every tool listed)", ()),
            ("on, limit 20, nothing pinned", ("--catalogue-visible-limit", "20")),
            ("on, limit 20, `fs_*` pinned (6 tools)",
             ("--catalogue-visible-limit", "20", "--catalogue-pinned-tools", "fs_*")),
        ]
        rows, i = [], 0
        for label, extra in variants:
            for era in ("handshake", "modern"):
                i += 1
                s = Session(argv(i, *extra), era)
                rows.append((label, era, *s.list_tools()))
                s.close()
        i += 1
        s = Session(argv(i, "--catalogue-visible-limit", "20"), "handshake")
        _, search = s.request("tools/call", {"name": "supervisor_search_tools",
                                             "arguments": {"query": "create github issue"}})
        _, enable = s.request("tools/call", {"name": "supervisor_enable_tools",
                                             "arguments": {"tools": ["github_create_issue"]}})
        after = s.list_tools()
        s.close()
        return rows, {"search": search, "enable": enable, "after": after}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def section(binary=ROOT / ".build/release/mcp-supervisor"):
    rows, e = measure(binary)
    off = {era: size for label, era, _, size, _ in rows if label.startswith("off")}
    lines = ["\n## Catalogue: `tools/list` size with 20 servers registered (bytes)\n",
             "20 server cells with 87 tools (definitions after the reference and well-known MCP servers: "
             "`tests/e2e/catalogue_servers.py`), every page of `tools/list` at the default page size (50), "
             "bytes of the JSON-RPC response lines; `set_phase` included (a policy is loaded). Command: "
             "`tools/bench/catalogue_bench.py` (also run by `make bench`).\n",
             "| catalogue | era | tools listed | bytes | pages | bytes / off |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for label, era, tools, size, pages in rows:
        era_name = "handshake (2025-11-25)" if era == "handshake" else "2026-07-28"
        lines.append(f"| {label} | {era_name} | {tools} | {size} | {pages} | {size / off[era]:.3f} |")
    lines.append(
        f"\n- Finding and enabling one tool (handshake era): `supervisor_search_tools` \"create github issue\" "
        f"answered in {e['search']} bytes (10 results), `supervisor_enable_tools` in {e['enable']} bytes, then "
        f"`tools/list` is {e['after'][1]} bytes ({e['after'][0]} tools): the model pays about "
        f"{e['search'] + e['enable'] + e['after'][1]} bytes for the round against {off['handshake']} for the "
        f"whole list.")
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / ".build/release/mcp-supervisor"))
    a = ap.parse_args()
    print("\n".join(section(Path(a.bin))))


if __name__ == "__main__":
    main()
