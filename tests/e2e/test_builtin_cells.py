"""The bundled cells through the MCP front end: normal use and each refusal."""
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import BIN, ROOT, RawServer, bundled_manifest


@pytest.fixture(scope="module")
def cells():
    d = Path(tempfile.mkdtemp(prefix="mcps-cells-"))
    d.chmod(0o755)
    ro, rw = d / "ro", d / "rw"
    (ro / "sub" / "deep").mkdir(parents=True)
    rw.mkdir()
    rw.chmod(0o777)
    (ro / "a.txt").write_text("alpha\nbeta needle\ngamma\n")
    (ro / "sub" / "b.txt").write_text("needle two\n")
    (ro / "sub" / "deep" / "c.txt").write_text("needle three\n")
    (d / "secret.txt").write_text("secret")
    os.symlink(d / "secret.txt", ro / "link-out")
    man = d / "manifests"
    man.mkdir()
    for name in ["fs-read", "fs-write", "python-run", "echo", "word-count"]:
        doc = bundled_manifest(name)
        if name == "fs-read":
            doc["filesystem"]["read"] = [str(ro)]
        if name == "fs-write":
            doc["filesystem"]["write"] = [str(rw)]
        (man / f"{name}.json").write_text(json.dumps(doc))
    s = RawServer.serving(d, man, "--allow-unsigned")
    s.d, s.ro, s.rw = d, ro, rw
    yield s
    s.close()
    shutil.rmtree(d, ignore_errors=True)


def call(s, tool, args):
    r = s.request(next(s.ids), "tools/call", {"name": tool, "arguments": args})["result"]
    return r, r["content"][0]["text"]


def test_fs_read_with_range_and_refusals(cells):
    r, t = call(cells, "fs_read", {"path": str(cells.ro / "a.txt"), "offset": 6, "maxBytes": 4})
    assert not r["isError"] and t == "beta" and r["structuredContent"]["size"] == 24
    r, t = call(cells, "fs_read", {"path": str(cells.ro / ".." / "secret.txt")})
    assert r["isError"] and "outside the allowed roots" in t
    r, t = call(cells, "fs_read", {"path": str(cells.ro / "link-out")})
    assert r["isError"] and "symbolic link" in t
    r, t = call(cells, "fs_read", {"path": "/etc/shadow"})
    assert r["isError"] and "outside" in t


def test_fs_list_and_search_with_caps(cells):
    r, t = call(cells, "fs_list", {"path": str(cells.ro), "depth": 1})
    assert t.splitlines() == ["a.txt", "link-out", "sub/"]
    r, t = call(cells, "fs_list", {"path": str(cells.ro), "depth": 3})
    assert "    c.txt" in t
    r, t = call(cells, "fs_search", {"path": str(cells.ro), "pattern": "needle"})
    assert len(r["structuredContent"]["matches"]) == 3
    r, t = call(cells, "fs_search", {"path": str(cells.ro), "pattern": "needle", "maxResults": 1})
    assert len(r["structuredContent"]["matches"]) == 1 and r["structuredContent"]["truncated"]
    r, t = call(cells, "fs_search", {"path": str(cells.ro), "pattern": "secret"})
    assert t == "no matches", "the link out of the root is not followed"


def test_fs_write_in_act_phase_only(cells):
    target = cells.rw / "out.txt"
    r, t = call(cells, "fs_write", {"path": str(target), "content": "one"})
    assert r["isError"] and "phase" in t and not target.exists()
    for phase in ("plan", "act"):
        assert not call(cells, "set_phase", {"phase": phase})[0]["isError"]
    r, t = call(cells, "fs_write", {"path": str(target), "content": "one"})
    assert not r["isError"] and target.read_text() == "one"
    call(cells, "fs_write", {"path": str(target), "content": "two"})
    assert target.read_text() == "two"
    assert sorted(os.listdir(cells.rw)) == ["out.txt"], "no temporary file left"
    r, t = call(cells, "fs_write", {"path": str(cells.ro / "x.txt"), "content": "no"})
    assert r["isError"] and "outside" in t
    call(cells, "set_phase", {"phase": "observe"})


def test_python_run_and_its_refusals(cells):
    r, t = call(cells, "python_run", {"code": "print(sum(range(10)))"})
    assert not r["isError"] and r["structuredContent"]["stdout"] == "45\n"
    r, t = call(cells, "python_run", {"code": "open('/tmp/escape.txt', 'w').write('x')"})
    assert "PermissionError" in r["structuredContent"]["error"]
    r, t = call(cells, "python_run", {"code": "def f():\n    raise ValueError('boom')\nf()"})
    err = r["structuredContent"]["error"]
    assert "ValueError: boom" in err and 'File "<snippet>"' in err
    assert "<stdin>" not in err and "/" not in err, "only the snippet's own frames, no paths"
    r, t = call(cells, "python_run", {"code": "open('scratch.txt', 'w').write('x'); print(open('scratch.txt').read())"})
    assert r["structuredContent"]["stdout"] == "x\n"
    r, t = call(cells, "python_run", {"code": "import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 22))"})
    assert r["isError"] and "sandbox" in t
    r, t = call(cells, "python_run", {"code": "import os\nos.fork()"})
    assert r["isError"] and "sandbox" in t
    r, t = call(cells, "python_run", {"code": "x = bytearray(2 * 1024**3)"})
    assert "MemoryError" in (r.get("structuredContent") or {}).get("error", t)
    r, t = call(cells, "python_run", {"code": "while True: pass"})
    assert r["isError"] and ("cpu" in t or "timed out" in t)


def test_cell_new_creates_a_working_signed_cell(tmp_path):
    d = Path(tempfile.mkdtemp(prefix="mcps-new-"))
    d.chmod(0o755)
    try:
        shutil.copytree(ROOT / "policies", d / "policies")

        def cli(*args, cwd=d):
            p = subprocess.run([str(BIN), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60)
            assert p.returncode == 0, p.stdout + p.stderr
            return p.stdout
        cli("cell", "new", "shout-back", "--root", d)
        # Defaults never come from the working directory: the project's
        # manifests are named.
        assert "ok:" in cli("validate", "--manifests", d / "manifests")
        assert cli("call", "shout_back", "--args", '{"text": "abc"}', "--allow-unsigned",
                   "--manifests", d / "manifests").startswith("cba")
        m = d / "manifests" / "shout-back.json"
        cli("keys", "generate", "--out", d / "k", "--state-dir", d / "state")
        cli("cell", "sign", m, "--key", d / "k.key", "--state-dir", d / "state")
        cli("cell", "register", m, "--key", d / "k.key", "--state-dir", d / "state", "--policies", d / "policies")
        # Registered: `call` runs it from the ledger without the flag.
        assert cli("call", "shout_back", "--args", '{"text": "abc"}', "--state-dir", d / "state").startswith("cba")
        s = RawServer.serving(d, d / "manifests", policies=d / "policies")
        r = s.request(1, "tools/call", {"name": "shout_back", "arguments": {"text": "xyz"}})
        assert r["result"]["structuredContent"] == {"result": "zyx"}
        s.close()
        # Never overwrites.
        p = subprocess.run([str(BIN), "cell", "new", "shout-back", "--root", str(d)], capture_output=True, text=True)
        assert p.returncode == 1 and "exists" in p.stderr
    finally:
        shutil.rmtree(d, ignore_errors=True)
