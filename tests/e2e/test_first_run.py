"""A first run that cannot end in a silent empty server: `run` refuses to
start without a usable tool and says why and how to fix it; `doctor` fails
against an empty trust ledger; the state directory in use is named."""
import hashlib
import json
import subprocess

from conftest import BIN, ROOT, bundled_manifest


def supervisor(*args, tmp_path, manifests):
    return subprocess.run([str(BIN), *args, "--manifests", str(manifests), "--policies", str(ROOT / "policies"),
                           "--state-dir", str(tmp_path / "state"), "--scratch-dir", str(tmp_path / "scratch")],
                          input=b"", capture_output=True, timeout=60)


def test_run_refuses_to_start_with_an_empty_ledger(tmp_path, workspace):
    manifests = workspace / "manifests"
    count = len(list(manifests.glob("*.json")))
    p = supervisor("run", tmp_path=tmp_path, manifests=manifests)
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert p.stdout == b""
    assert "refusing to start: no usable tools" in err, err
    assert f"{count} manifests in {manifests}" in err, err
    assert f"0 cells registered in the trust ledger {tmp_path / 'state'}" in err, err
    assert f"state directory {tmp_path / 'state'}" in err and "make register" in err and "--state-dir" in err, err


def test_run_unsigned_refuses_a_manifests_directory_that_does_not_exist(tmp_path):
    nowhere = tmp_path / "nowhere"
    p = supervisor("run", "--allow-unsigned", tmp_path=tmp_path, manifests=nowhere)
    err = p.stderr.decode()
    assert p.returncode == 2 and p.stdout == b"", err
    assert f"no usable tools: the manifests directory {nowhere} does not exist" in err, err


def test_run_unsigned_refuses_an_empty_manifests_directory(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    p = supervisor("run", "--allow-unsigned", tmp_path=tmp_path, manifests=empty)
    err = p.stderr.decode()
    assert p.returncode == 2 and p.stdout == b"", err
    assert f"no usable tools: 0 manifests in {empty}" in err, err


def test_run_unsigned_refuses_when_every_manifest_is_broken(tmp_path):
    d = tmp_path / "manifests"
    d.mkdir()
    (d / "broken.json").write_text("{")
    p = supervisor("run", "--allow-unsigned", tmp_path=tmp_path, manifests=d)
    err = p.stderr.decode()
    assert p.returncode == 2 and p.stdout == b"", err
    assert f"no usable tools: 1 manifest in {d}" in err and f"{d / 'broken.json'}" in err, err


def test_doctor_fails_against_an_empty_ledger(tmp_path, workspace):
    manifests = workspace / "manifests"
    p = supervisor("doctor", tmp_path=tmp_path, manifests=manifests)
    out = p.stdout.decode()
    assert p.returncode == 1, out + p.stderr.decode()
    assert "0 cells, 0 tools served" in out, out
    assert "ERROR: no usable tools" in out and "0 cells registered in the trust ledger" in out, out


def test_registered_cell_is_served_and_the_state_directory_named(tmp_path):
    d = tmp_path / "manifests"
    d.mkdir()
    (d / "echo.json").write_text(json.dumps(bundled_manifest("echo")))
    state = tmp_path / "state"
    key = state / "keys" / "dev"
    for cmd in (["keys", "generate", "--out", str(key)],
                ["cell", "sign", str(d / "echo.json"), "--key", f"{key}.key"],
                ["cell", "register", str(d / "echo.json"), "--key", f"{key}.key", "--approve-widening"]):
        subprocess.run([str(BIN), *cmd, "--state-dir", str(state), "--policies", str(ROOT / "policies")],
                       check=True, capture_output=True, timeout=60)
    p = supervisor("doctor", tmp_path=tmp_path, manifests=d)
    out = p.stdout.decode()
    assert p.returncode == 0, out + p.stderr.decode()
    assert "1 cells, 1 tools served" in out, out
    p = supervisor("run", tmp_path=tmp_path, manifests=d)
    err = p.stderr.decode()
    assert p.returncode == 0, err
    assert str(state) in err and "tools=1" in err.replace('"', ""), err


def test_manifest_pin_out_leaves_the_original_and_writes_a_copy_that_works_anywhere(tmp_path):
    src = tmp_path / "src" / "manifests"
    src.mkdir(parents=True)
    original = (ROOT / "manifests" / "python-run.json").read_text()
    (src / "python-run.json").write_text(original)
    # The relative paths of the bundled manifest, resolved against the copy's
    # own directory: the cells/ directory it names must exist beside it.
    (tmp_path / "src" / "cells").symlink_to(ROOT / "cells")
    out = tmp_path / "pinned"
    p = subprocess.run([str(BIN), "manifest", "pin", "--out", str(out), str(src / "python-run.json")],
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"" and f"pinned: {out / 'python-run.json'}".encode() in p.stderr, p.stderr
    assert (src / "python-run.json").read_text() == original
    doc = json.loads((out / "python-run.json").read_text())
    assert doc["script"]["path"] == str(tmp_path / "src" / "cells" / "python" / "python_run.py")
    assert all(lib["path"].startswith("/") for lib in doc["libraries"])
    script = tmp_path / "src" / "cells" / "python" / "python_run.py"
    assert doc["script"]["sha256"] == hashlib.sha256(script.read_bytes()).hexdigest()
    p = subprocess.run([str(BIN), "validate", str(out / "python-run.json"), "--policies", str(ROOT / "policies")],
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def test_make_run_keeps_build_output_off_stdout(tmp_path):
    """An MCP client reads `make run`'s stdout: only MCP messages appear
    there, the build, pin, sign and register output goes to stderr."""
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    p = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "run", "CONFIG=debug",
                        f"STATE={tmp_path / 'state'}"],
                       input=json.dumps(init).encode() + b"\n", capture_output=True, timeout=600)
    err = p.stderr.decode()
    assert p.returncode == 0, err
    lines = p.stdout.splitlines()
    assert lines and all(json.loads(l)["jsonrpc"] == "2.0" for l in lines), p.stdout
    assert json.loads(lines[0])["result"]["serverInfo"]["name"] == "mcp-supervisor"
    assert "manifest pin" in err and "cell register" in err and f"state={tmp_path / 'state'}" in err, err
