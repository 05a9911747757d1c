"""The newcomer path and the command line an operator scripts: `make install`
into a temporary prefix (DESTDIR + PREFIX), the installed binary finding its
manifests, policies and cells from any working directory (started from `/`
with `env -i`, as a desktop client may), clear errors where it cannot, and
the data commands' `--json`."""
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, ROOT, bundled_manifest, probe_manifest

PREFIX = "/opt/mcps"


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """`make install DESTDIR=… PREFIX=/opt/mcps` of the debug build (the
    release build is the same install step with other flags; CI has built
    the debug one already), then the installed cells signed and registered
    in a private state directory with the installed binary."""
    work = tmp_path_factory.mktemp("install")
    os.chmod(work, 0o755)
    dest = work / "dest"
    p = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "install", f"DESTDIR={dest}",
                        f"PREFIX={PREFIX}", "INSTALL_CONFIG=debug"], capture_output=True, timeout=900)
    assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()
    assert "make register-installed PREFIX=/opt/mcps" in p.stderr.decode(), p.stderr.decode()
    root = dest / PREFIX.lstrip("/")
    state = work / "state"
    binary = root / "bin" / "mcp-supervisor"
    key = work / "dev"
    manifests = sorted(str(m) for m in (root / "share/mcp-supervisor/manifests").glob("*.json"))
    for cmd in (["keys", "generate", "--out", str(key)], ["cell", "sign", *manifests, "--key", f"{key}.key"],
                ["cell", "register", *manifests, "--key", f"{key}.key"]):
        r = subprocess.run([str(binary), *cmd, "--state-dir", str(state)], cwd="/", env={},
                           capture_output=True, timeout=120)
        assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    return {"root": root, "bin": binary, "state": state, "work": work, "key": Path(f"{key}.key")}


def cli(installed, *args, check=True):
    """The installed binary from `/` with an empty environment."""
    p = subprocess.run([str(installed["bin"]), *map(str, args)], cwd="/", env={}, capture_output=True, text=True,
                       timeout=120)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def test_install_layout_and_pins(installed):
    root = installed["root"]
    share = root / "share" / "mcp-supervisor"
    assert os.access(installed["bin"], os.X_OK)
    for d in ("manifests", "policies", "cells", "cells/python"):
        assert (share / d).is_dir(), d
    assert (share / "policies" / "syscall-groups.json").exists()
    names = sorted(m.name for m in (share / "manifests").glob("*.json"))
    # Every bundled manifest but git-read (it reads this checkout).
    assert names == sorted(m.name for m in (ROOT / "manifests").glob("*.json") if m.name != "git-read.json")
    for m in (share / "manifests").glob("*.json"):
        doc = json.loads(m.read_text())
        for spec in [doc["executable"], *([doc["script"]] if "script" in doc else []), *doc.get("libraries", [])]:
            path = spec["path"] if spec["path"].startswith("/") else str((m.parent / spec["path"]).resolve())
            assert not path.startswith(str(ROOT)), f"{m.name} points into the checkout: {path}"
            assert sha256(path) == spec["sha256"], f"{m.name}: {path} not pinned"
    echo = json.loads((share / "manifests" / "echo.json").read_text())
    assert echo["executable"]["path"] == "../cells/echo-cell"
    # The checkout is as it was: installing writes nothing into it.
    assert subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "manifests", "policies", "cells"],
                          capture_output=True, text=True).stdout == ""


def test_newcomer_starts_from_root_with_an_empty_environment_and_lists_tools(installed):
    """A client that starts the installed server from `/` with `env -i`:
    initialize and tools/list in raw JSON-RPC, the state directory passed
    as the README says."""
    msgs = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "n", "version": "1"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    ]
    p = subprocess.run(["env", "-i", str(installed["bin"]), "run", "--state-dir", str(installed["state"])], cwd="/",
                       input="".join(json.dumps(m) + "\n" for m in msgs).encode(), capture_output=True, timeout=60)
    err = p.stderr.decode()
    assert p.returncode == 0, err
    out = [json.loads(l) for l in p.stdout.splitlines()]
    tools = {t["name"] for t in next(m for m in out if m.get("id") == 2)["result"]["tools"]}
    assert {"echo", "fs_read", "fs_write", "jq", "python_run", "word_count", "http_fetch"} <= tools, tools
    assert f"state directory {installed['state']} (from --state-dir" in err, err
    assert f"trust ledger {installed['state']}/trust" in err, err


def test_without_a_state_directory_the_refusal_names_the_default_and_why(installed):
    p = subprocess.run(["env", "-i", str(installed["bin"]), "run"], cwd="/", input=b"", capture_output=True,
                       timeout=60)
    err = p.stderr.decode()
    assert p.returncode == 2 and p.stdout == b"", err
    assert f"/tmp/mcp-supervisor-{os.getuid()}/state" in err, err
    assert "$HOME and $XDG_STATE_HOME are unset" in err and "--state-dir" in err, err


def test_every_subcommand_finds_the_installed_files_from_root(installed):
    state = installed["state"]
    v = json.loads(cli(installed, "validate", "--json").stdout)
    assert v["ok"] and v["manifests"].endswith("/opt/mcps/share/mcp-supervisor/manifests"), v
    d = json.loads(cli(installed, "doctor", "--json", "--state-dir", state).stdout)
    assert d["ok"] and d["toolsServed"] >= 7 and d["source"].startswith("trust ledger"), d
    assert d["policies"].endswith("/opt/mcps/share/mcp-supervisor/policies"), d
    c = json.loads(cli(installed, "call", "echo", "--args", '{"text": "hi"}', "--json", "--state-dir", state).stdout)
    assert c["outcome"] == "success" and c["content"][0]["text"] == "hi", c
    assert json.loads(cli(installed, "policy", "check", "--json").stdout)["ok"]
    e = json.loads(cli(installed, "policy", "explain", "--tool", "fs_write", "--json", check=False).stdout)
    assert e["tool"] == "fs_write" and e["manifestFound"], e


def test_signed_mode_says_manifests_are_not_used(installed, tmp_path):
    p = cli(installed, "call", "echo", "--args", '{"text": "x"}', "--manifests", tmp_path, "--state-dir",
            installed["state"])
    assert "signed mode" in p.stderr and "--manifests is not used" in p.stderr, p.stderr
    p = cli(installed, "doctor", "--state-dir", installed["state"])
    assert "signed mode: the active versions of the trust ledger" in p.stdout and "--manifests is not used" in p.stdout


def test_a_binary_without_its_share_directory_says_where_it_looked(tmp_path):
    lonely = tmp_path / "lonely" / "bin"
    lonely.mkdir(parents=True)
    shutil.copy(BIN, lonely / "mcp-supervisor")
    for args in (["validate"], ["doctor"], ["call", "echo"]):
        p = subprocess.run([str(lonely / "mcp-supervisor"), *args, "--state-dir", str(tmp_path / "s")], cwd="/",
                           env={}, capture_output=True, text=True, timeout=60)
        assert p.returncode != 0, args
        assert f"{tmp_path}/lonely/share/mcp-supervisor/policies/syscall-groups.json" in p.stderr, p.stderr
        assert "--policies" in p.stderr and "make install" in p.stderr, p.stderr
        assert "NSCocoaErrorDomain" not in p.stderr


def test_audit_query_since_is_strict(installed):
    state = installed["state"]
    p = cli(installed, "audit", "query", "--since", "yesterday", "--state-dir", state, check=False)
    assert p.returncode == 64 and p.stdout == "", p.stdout
    assert 'cannot read the time "yesterday"' in p.stderr and "15m" in p.stderr, p.stderr
    recent = [json.loads(l) for l in cli(installed, "audit", "query", "--since", "1h", "--json", "--state-dir",
                                         state).stdout.splitlines()]
    assert any(r["type"] == "ledger.entry" for r in recent), recent
    assert cli(installed, "audit", "query", "--until", "2000-01-01", "--state-dir", state).stdout == ""
    # Relative bounds are times, not strings compared with timestamps.
    assert cli(installed, "audit", "query", "--since", "0s", "--state-dir", state).stdout == ""
    assert cli(installed, "audit", "query", "--until", "0s", "--state-dir", state).stdout != ""
    assert cli(installed, "audit", "query", "--since", "2000-01-01T00:00:00+01:00", "--state-dir",
               state).stdout != ""
    p = cli(installed, "audit", "query", "--state-dir", installed["work"] / "nolog", check=False)
    assert p.returncode == 1 and "no security log in" in p.stderr and "ENOENT" not in p.stderr, p.stderr


def test_data_commands_print_json(installed):
    s = ["--state-dir", installed["state"]]
    cells = json.loads(cli(installed, "cell", "list", "--json", *s).stdout)
    echo = next(c for c in cells if c["cell"] == "echo")
    assert echo["refused"] is None and len(echo["active"]) == 64
    show = json.loads(cli(installed, "cell", "show", "echo", "--json", *s).stdout)
    assert show["versions"][0]["id"] == echo["active"] and show["versions"][0]["tools"] == ["echo"]
    assert json.loads(cli(installed, "cell", "lineage", "echo", "--json", *s).stdout)[0]["active"]
    keys = json.loads(cli(installed, "keys", "list", "--json", *s).stdout)
    assert keys and keys[0]["status"] == "trusted"
    stats = json.loads(cli(installed, "audit", "stats", "--json", *s).stdout)
    assert stats["records"] > 0
    tail = [json.loads(l) for l in cli(installed, "audit", "tail", "-n", "2", "--json", *s).stdout.splitlines()]
    assert len(tail) == 2 and all("seq" in r for r in tail)
    verify = json.loads(cli(installed, "audit", "verify", "--json", *s).stdout)
    assert verify["ok"] and verify["records"] == stats["records"] and verify["problem"] is None, verify


def test_cell_version_arguments_take_one_form_everywhere(installed, tmp_path):
    """CELL:VERSION in diff, activate, revoke and rollback --to; the older
    CELL VERSION of activate and revoke still works. The widening a
    registration approves is printed."""
    s = ["--state-dir", installed["state"]]
    share = installed["root"] / "share" / "mcp-supervisor"
    doc = json.loads((share / "manifests" / "echo.json").read_text())
    doc["executable"]["path"] = str(share / "cells" / "echo-cell")
    doc["limits"] = {**doc.get("limits", {}), "memoryMiB": 512}
    m = tmp_path / "echo.json"
    m.write_text(json.dumps(doc))
    key = installed["key"]
    cli(installed, "cell", "sign", m, "--key", key, *s)
    p = cli(installed, "cell", "register", m, "--key", key, "--no-activate", *s, check=False)
    assert p.returncode == 1 and "widens" in p.stderr, p.stderr
    p = cli(installed, "cell", "register", m, "--key", key, "--no-activate", "--approve-widening", *s)
    assert "approving for echo: widens: limits.memoryMiB" in p.stdout, p.stdout
    show = json.loads(cli(installed, "cell", "show", "echo", "--json", *s).stdout)
    old, new = show["versions"][0]["id"], show["versions"][-1]["id"]
    diff = json.loads(cli(installed, "cell", "diff", f"echo:{old[:12]}", f"echo:{new[:12]}", "--json", *s).stdout)
    assert {"field": "limits.memoryMiB", "direction": "widens"}.items() <= diff[0].items(), diff
    assert "active: echo" in cli(installed, "cell", "activate", f"echo:{new[:12]}", "--key", key, *s).stdout
    assert "rolled back" in cli(installed, "cell", "rollback", "echo", "--to", f"echo:{old[:12]}", "--key", key,
                                *s).stdout
    assert "revoked: echo" in cli(installed, "cell", "revoke", "echo", new[:12], "--key", key, *s).stdout
    p = cli(installed, "cell", "revoke", "echo", "--key", key, *s, check=False)
    assert p.returncode == 64 and "expected CELL:VERSION" in p.stderr, p.stderr


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def validate(*files):
    return subprocess.run([str(BIN), "validate", *map(str, files)], capture_output=True, text=True, timeout=60)


def test_json_errors_name_line_and_column(tmp_path):
    p = validate(write(tmp_path, "bad.json", '{\n  "name": "x",\n  "version": 1,,\n}'))
    assert p.returncode == 1 and "unexpected character ',' at line 3, column 16" in p.stderr, p.stderr


def test_every_unknown_field_at_once_with_a_suggestion(tmp_path):
    doc = probe_manifest()
    doc["limts"] = {"timeoutMilliseconds": 100}
    doc["filesytem"] = {}
    doc["limits"] = {"timeoutMilliseconds": 100, "cpuSecond": 1, "memoryMB": 64}
    p = validate(write(tmp_path, "m.json", json.dumps(doc)))
    err = p.stderr
    assert p.returncode == 1, err
    assert 'limits.cpuSecond: unknown field (did you mean "cpuSeconds"?)' in err, err
    assert 'limits.memoryMB: unknown field (did you mean "memoryMiB"?)' in err, err
    # ... and, in the same run, the errors found once those are set aside.
    assert 'filesytem: unknown field (did you mean "filesystem"?)' in err and "limts: unknown field" in err, err
    del doc["limits"]
    doc["descripton"] = doc.pop("description")
    p = validate(write(tmp_path, "m.json", json.dumps(doc)))
    assert 'description: required field is missing (found "descripton", misspelt?)' in p.stderr, p.stderr
    doc["description"] = doc.pop("descripton")
    p = validate(write(tmp_path, "m.json", json.dumps(doc)))
    assert 'limts: unknown field (did you mean "limits"?)' in p.stderr, p.stderr
    assert 'filesytem: unknown field (did you mean "filesystem"?)' in p.stderr, p.stderr
    v = json.loads(subprocess.run([str(BIN), "validate", "--json", str(tmp_path / "m.json")], capture_output=True,
                                  text=True).stdout)
    assert not v["ok"] and len(v["results"][0]["errors"]) == 2, v


def test_pin_fills_a_blank_hash_and_a_mismatch_prints_the_fix(tmp_path):
    doc = probe_manifest()
    pinned = doc["executable"]["sha256"]
    doc["executable"]["sha256"] = ""
    m = write(tmp_path, "p.json", json.dumps(doc))
    p = validate(m)
    assert p.returncode == 1 and f"mcp-supervisor manifest pin {m}" in p.stderr, p.stderr
    p = subprocess.run([str(BIN), "manifest", "pin", str(m)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert json.loads(m.read_text())["executable"]["sha256"] == pinned
    assert validate(m).returncode == 0
    doc = json.loads(m.read_text())
    doc["executable"]["sha256"] = "0" * 64
    m.write_text(json.dumps(doc))
    p = validate(m)
    assert p.returncode == 1 and "SHA-256 is" in p.stderr, p.stderr
    assert f"`mcp-supervisor manifest pin {m}`" in p.stderr and "cell register" in p.stderr, p.stderr


def test_timeout_names_the_limit(tmp_path):
    m = write(tmp_path, "probe.json", json.dumps(probe_manifest(limits={"timeoutMilliseconds": 200})))
    p = subprocess.run([str(BIN), "call", "probe", "--args", '{"action": "sleep", "ms": 3000}', "--allow-unsigned",
                        "--manifests", str(tmp_path), "--state-dir", str(tmp_path / "s"), "--policies", str(ROOT / "policies")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stderr
    assert "timed out: the cell's limits.timeoutMilliseconds passed" in p.stderr, p.stderr
    assert f"limits.timeoutMilliseconds = 200 ms in {m}" in p.stderr, p.stderr


def test_cell_new_command_scaffolds_a_working_command_cell(tmp_path):
    root = tmp_path / "proj"
    p = subprocess.run([str(BIN), "cell", "new", "b64", "--command", "/usr/bin/base64", "--root", str(root)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    doc = json.loads((root / "manifests" / "b64.json").read_text())
    assert doc["executable"] == {"path": "/usr/bin/base64", "sha256": sha256("/usr/bin/base64")}
    assert doc["tools"][0]["command"] == {"argv": ["base64"], "stdin": "input"}
    assert f"--manifests {root}/manifests" in p.stdout and "--learn" in p.stdout
    p = subprocess.run([str(BIN), "call", "b64", "--args", '{"input": "hi"}', "--allow-unsigned", "--manifests",
                        str(root / "manifests"), "--state-dir", str(tmp_path / "s")], cwd="/", capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "aGk=", p.stdout + p.stderr
    p = subprocess.run([str(BIN), "cell", "new", "b64", "--command", "/usr/bin/base64", "--root", str(root)],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "exists" in p.stderr


def test_file_errors_are_readable(tmp_path):
    m = write(tmp_path, "echo.json", json.dumps(bundled_manifest("echo")))
    (tmp_path / "echo.json.sig").mkdir()
    key = tmp_path / "k"
    subprocess.run([str(BIN), "keys", "generate", "--out", str(key), "--state-dir", str(tmp_path / "s")], check=True,
                   capture_output=True)
    p = subprocess.run([str(BIN), "cell", "sign", str(m), "--key", f"{key}.key", "--state-dir", str(tmp_path / "s")],
                       capture_output=True, text=True)
    assert p.returncode == 1, p.stderr
    assert "NSCocoaErrorDomain" not in p.stderr and "Error Domain" not in p.stderr, p.stderr
    assert f"cannot write {tmp_path}/echo.json.sig" in p.stderr, p.stderr
