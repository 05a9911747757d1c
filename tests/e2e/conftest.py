"""End-to-end fixtures: the built mcp-supervisor binary, driven by the
official MCP Python SDK client and by raw JSON-RPC lines."""
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".build" / "debug" / "mcp-supervisor"
PROBE = ROOT / ".build" / "release" / "probe-cell"
# The bundled manifests pinned to the freshly built cells by `make pin`
# (`manifest pin --out`): the checkout's manifests/ is never rewritten.
PINNED = ROOT / ".build" / "manifests"


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def probe_manifest(name="probe", limits=None, groups=("base",)):
    return {
        "name": name,
        "version": "1",
        "description": "Tries forbidden things for the tests.",
        "executable": {"path": str(PROBE), "sha256": sha256(PROBE)},
        "tools": [{
            "name": name,
            "description": "Probe action.",
            "inputSchema": {"type": "object", "properties": {"action": {"type": "string"}}, "required": ["action"]},
        }],
        "limits": limits or {"timeoutMilliseconds": 2000},
        "syscalls": {"groups": list(groups)},
        "sideEffects": "none",
    }


def absolutize(doc, manifest_dir):
    """A manifest copied elsewhere: its relative paths made absolute against
    the directory it came from (as the supervisor resolves them)."""
    base = Path(manifest_dir)
    for key in ("executable", "script"):
        if key in doc and not doc[key]["path"].startswith("/"):
            doc[key]["path"] = str((base / doc[key]["path"]).resolve())
    for lib in doc.get("libraries", []):
        if not lib["path"].startswith("/"):
            lib["path"] = str((base / lib["path"]).resolve())
    for key, paths in doc.get("filesystem", {}).items():
        doc["filesystem"][key] = [p if p.startswith("/") else str((base / p).resolve()) for p in paths]
    if "workingDirectory" in doc and not doc["workingDirectory"].startswith("/"):
        doc["workingDirectory"] = str((base / doc["workingDirectory"]).resolve())
    return doc


def bundled_manifest(name):
    """A bundled manifest with absolute paths, pinned to the built cells,
    ready to be written anywhere."""
    path = PINNED / f"{name}.json"
    assert path.exists(), f"{path} missing: run `make pin`"
    return absolutize(json.loads(path.read_text()), PINNED)


@pytest.fixture(scope="session")
def workspace():
    """A manifests directory with the bundled cells plus probe cells, and a
    private state/scratch directory."""
    assert BIN.exists(), f"{BIN} missing: run `make test`"
    assert PROBE.exists(), f"{PROBE} missing: run `make cells`"
    d = Path(tempfile.mkdtemp(prefix="mcps-e2e-"))
    (d / "manifests").mkdir()
    for m in sorted((ROOT / "manifests").glob("*.json")):
        (d / "manifests" / m.name).write_text(json.dumps(bundled_manifest(m.stem)))
    (d / "manifests" / "probe.json").write_text(json.dumps(probe_manifest()))
    (d / "manifests" / "probe-fast.json").write_text(json.dumps(
        probe_manifest("probe_fast", limits={"timeoutMilliseconds": 300})))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def server_args(ws, *extra):
    return ["run", "--manifests", str(ws / "manifests"), "--policies", str(ROOT / "policies"),
            "--state-dir", str(ws / "state"), "--scratch-dir", str(ws / "scratch"), "--allow-unsigned", *extra]


class RawServer:
    """The server as a subprocess spoken to in raw JSON-RPC lines."""

    def __init__(self, ws, *extra, state=None, stderr=subprocess.PIPE):
        """`mcp-supervisor run` on the workspace `ws`, its state in `state`
        when given; `stderr=subprocess.DEVNULL` where nothing reads it (a long
        diagnostic then cannot block the server)."""
        args = server_args(ws, *extra)
        if state is not None:
            args[args.index("--state-dir") + 1] = str(state)
        self.launch(args, stderr)

    def launch(self, args, stderr=subprocess.PIPE):
        self.proc = subprocess.Popen([str(BIN), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
        self.pending = []

    @classmethod
    def with_args(cls, *args, stderr=subprocess.PIPE):
        """`mcp-supervisor ARGS`, spoken to in raw lines."""
        s = cls.__new__(cls)
        s.launch(list(map(str, args)), stderr)
        return s

    @classmethod
    def serving(cls, work, manifests, *extra, policies=ROOT / "policies"):
        """An initialized server on `manifests`, with its state and scratch
        under `work`."""
        s = cls.__new__(cls)
        s.proc = subprocess.Popen([str(BIN), "run", "--manifests", str(manifests), "--policies", str(policies),
                                   "--state-dir", str(Path(work) / "state"), "--scratch-dir", str(Path(work) / "scratch"),
                                   "--log-level", "error", *extra],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        s.pending = []
        s.initialize()
        s.ids = iter(range(1000, 100000))
        return s

    def send_raw(self, data: bytes):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, obj):
        self.send_raw(json.dumps(obj).encode() + b"\n")

    def recv(self, timeout=10):
        """The next message. Reads the pipe directly into our own buffer
        (select on a buffered file object misses lines already buffered)."""
        import select
        buf = getattr(self, "_buf", b"")
        end = time.time() + timeout
        while b"\n" not in buf:
            left = end - time.time()
            if left <= 0:
                self._buf = buf
                raise TimeoutError("no message from the server")
            r, _, _ = select.select([self.proc.stdout.fileno()], [], [], left)
            if r:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    self._buf = buf
                    raise EOFError("server closed stdout")
                buf += chunk
        line, self._buf = buf.split(b"\n", 1)
        return json.loads(line)

    def recv_id(self, id, timeout=10):
        """The response with this id; other messages are kept in order."""
        for i, m in enumerate(self.pending):
            if m.get("id") == id and "method" not in m:
                return self.pending.pop(i)
        end = time.time() + timeout
        while time.time() < end:
            m = self.recv(end - time.time())
            if m.get("id") == id and "method" not in m:
                return m
            self.pending.append(m)
        raise TimeoutError(f"no response to {id}")

    def request(self, id, method, params=None):
        msg = {"jsonrpc": "2.0", "id": id, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        return self.recv_id(id)

    def initialize(self, version="2025-11-25"):
        r = self.request(0, "initialize", {"protocolVersion": version, "capabilities": {},
                                           "clientInfo": {"name": "raw-test", "version": "1"}})
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return r

    def close(self):
        try:
            self.proc.stdin.close()
        except Exception:
            pass
        try:
            return self.proc.wait(timeout=10)
        finally:
            self.proc.stdout.close()
            if self.proc.stderr:
                self.proc.stderr.close()


@pytest.fixture
def raw(workspace):
    s = RawServer(workspace)
    yield s
    if s.proc.poll() is None:
        s.close()


def _parent(pid):
    """The parent pid of `pid` (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat[stat.rindex(")") + 2:].split()[1])


def _ours_or_orphaned(pid):
    """Whether `pid` was started (through a supervisor) by this pytest
    process, or has lost its supervisor (reparented: a leak, whoever's it
    is). Other test runs on the machine have probe workers of their own."""
    me = os.getpid()
    if _parent(pid) == 1:
        return True
    while pid > 1:
        pid = _parent(pid)
        if pid == me:
            return True
    return False


def worker_pids():
    """pids of running probe-cell workers of this test process's
    supervisors, and of none (their exe is a sealed memfd named after the
    cell file)."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if cmd.endswith(b"probe-cell") and _ours_or_orphaned(int(p.name)):
            out.append(int(p.name))
    return out


def wait_for_workers(at_least=1, at_most=None, timeout=5):
    """Waits until at least (or, with at_most=0, until no more than) that
    many probe workers run; returns their pids."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        pids = worker_pids()
        if (at_most is None and len(pids) >= at_least) or (at_most is not None and len(pids) <= at_most):
            return pids
        time.sleep(0.01)
    return worker_pids()


def wait_gone(pids, timeout=5):
    """Waits until none of these pids runs; True if they are all gone."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not any(Path(f"/proc/{p}").exists() for p in pids):
            return True
        time.sleep(0.01)
    return False
