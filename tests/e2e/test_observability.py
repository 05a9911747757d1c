"""Seeing what happens (docs/operations.md): the enforcement receipt of each
call, checked against what the operator holds (`cell show`, `policy check`,
the security log), in both protocol eras; the metrics file checked against
the security log after known calls; `audit stats`."""
import ctypes
import hashlib
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import BIN, PROBE, ROOT, RawServer, probe_manifest, sha256, wait_for_workers

RECEIPT = "io.github.mcp-supervisor/receipt"
MODERN = "2026-07-28"
MODERN_META = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {},
               "io.modelcontextprotocol/clientInfo": {"name": "receipt-test", "version": "1"}}


def cli(*args, ok=True):
    p = subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, timeout=60)
    if ok:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def landlock_abi():
    """The kernel's Landlock ABI (landlock_create_ruleset with
    LANDLOCK_CREATE_RULESET_VERSION), asked directly."""
    libc = ctypes.CDLL(None, use_errno=True)
    v = libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    assert v > 0, f"Landlock is required here: errno {ctypes.get_errno()}"
    return v


def log_lines(state):
    """Every security log record as (raw line bytes, parsed object), in order."""
    out = []
    for f in sorted((Path(state) / "security").glob("events-*.jsonl")):
        for line in f.read_bytes().split(b"\n"):
            if line:
                out.append((line, json.loads(line)))
    return out


class Signed:
    """A state directory with a key and the probe cell signed and registered
    (a private copy of its executable), served signed-only."""

    def __init__(self):
        self.d = Path(tempfile.mkdtemp(prefix="mcps-obs-"))
        self.d.chmod(0o755)  # workers run as another uid when the tests run as root
        self.state = self.d / "state"
        (self.d / "manifests").mkdir()
        (self.d / "bin").mkdir()
        exe = self.d / "bin" / "probe-cell"
        shutil.copy(PROBE, exe)
        m = probe_manifest("probe", limits={"timeoutMilliseconds": 3000, "memoryMiB": 256})
        m["executable"] = {"path": str(exe), "sha256": sha256(exe)}
        self.manifest = self.d / "manifests" / "probe.json"
        self.manifest.write_text(json.dumps(m, indent=1))
        key = self.d / "k"
        cli("keys", "generate", "--out", key, "--state-dir", self.state)
        cli("cell", "sign", self.manifest, "--key", f"{key}.key", "--state-dir", self.state)
        cli("cell", "register", self.manifest, "--key", f"{key}.key", "--state-dir", self.state)

    def server(self, *extra):
        s = RawServer.with_args("run", "--manifests", self.d / "manifests", "--policies", ROOT / "policies",
                                "--state-dir", self.state, "--scratch-dir", self.d / "scratch", "--log-level", "error",
                                *extra, stderr=subprocess.DEVNULL)
        return s


@pytest.fixture
def signed():
    s = Signed()
    yield s
    shutil.rmtree(s.d, ignore_errors=True)


def call(s, id, name, args, era):
    params = {"name": name, "arguments": args}
    if era == "modern":
        params["_meta"] = MODERN_META
    r = s.request(id, "tools/call", params)
    assert "result" in r, r
    return r["result"]


@pytest.mark.parametrize("era", ["handshake", "modern"])
def test_receipt_matches_cell_show_policy_and_the_security_log(signed, era):
    s = signed.server()
    try:
        if era == "handshake":
            s.initialize()
        ok = call(s, 1, "probe", {"action": "echo", "text": "hi"}, era)
        assert not ok["isError"], ok
        # A call the sandbox stopped gets a receipt too: it names the same
        # confinement, and its record is the call.end of the violation.
        denied = call(s, 2, "probe", {"action": "syscall", "nr": 101}, era)
        assert denied["isError"] and "ptrace" in denied["content"][0]["text"], denied
    finally:
        s.close()
    receipts = [ok["_meta"][RECEIPT], denied["_meta"][RECEIPT]]

    # What the operator holds: the ledger's version, executable and seccomp
    # program (`cell show`), the policy's digest (`policy check`).
    show = cli("cell", "show", "probe", "--state-dir", signed.state, "--policies", ROOT / "policies").stdout
    version_id = re.search(r"^([0-9a-f]{64})  \(active\)", show, re.M).group(1)
    exe_sha = re.search(r"executable \S+ sha256 ([0-9a-f]{64})", show).group(1)
    seccomp_sha, instructions = re.search(r"seccomp filter sha256 ([0-9a-f]{64}) \((\d+) instructions\)", show).groups()
    policy_sha = re.search(r"sha256 ([0-9a-f]{64})", cli("policy", "check", ROOT / "policies" / "policy.json").stdout).group(1)
    manifest = json.loads(signed.manifest.read_text())
    lines = log_lines(signed.state)

    for r in receipts:
        assert r["format"] == 1
        assert r["cell"] == "probe" and r["cellVersion"] == "1"
        assert r["versionId"] == version_id == hashlib.sha256(signed.manifest.read_bytes()).hexdigest()
        assert r["manifestSha256"] == version_id
        assert r["executableSha256"] == exe_sha == sha256(manifest["executable"]["path"])
        assert r["seccomp"]["filterSha256"] == seccomp_sha
        assert r["seccomp"]["instructions"] == int(instructions)
        assert r["seccomp"]["defaultAction"] == "user_notif"
        assert r["policySha256"] == policy_sha
        assert r["landlockAbi"] == landlock_abi()
        assert r["limits"]["timeoutMilliseconds"] == 3000 and r["limits"]["memoryMiB"] == 256
        assert r["limits"]["processes"] == "none"
        # The record: the call's call.end, its line's SHA-256 (the next
        # record's prev), signed by the log's key.
        rec = r["securityLog"]
        assert rec["record"] == "call.end"
        line, obj = next((l, o) for l, o in lines if o["seq"] == rec["seq"])
        assert obj["type"] == "call.end" and obj["callId"] == rec["callId"] and obj["tool"] == "probe"
        assert hashlib.sha256(line).hexdigest() == rec["sha256"]
        following = next(o for _, o in lines if o["seq"] == rec["seq"] + 1)
        assert following["prev"] == rec["sha256"]
        checkpoints = (signed.state / "security" / "checkpoints.jsonl").read_text().splitlines()
        assert rec["keyId"] == json.loads(checkpoints[-1])["keyId"]
        # No secret and no path outside the cell: no absolute path at all.
        text = json.dumps(r)
        for secret in (str(signed.d), str(ROOT), "/tmp", "/root", "/home", manifest["executable"]["path"]):
            assert secret not in text, (secret, text)
        for v in iter_strings(r):
            assert not v.startswith("/"), v
    ok_end = next(o for _, o in lines if o["seq"] == receipts[0]["securityLog"]["seq"])
    assert ok_end["outcome"] == "success"
    denied_end = next(o for _, o in lines if o["seq"] == receipts[1]["securityLog"]["seq"])
    assert denied_end["outcome"] == "sandbox_violation"
    assert cli("audit", "verify", "--state-dir", signed.state).returncode == 0


def installed_filter(pid):
    """The seccomp program the kernel holds for process `pid` (its only
    filter), as bytes: PTRACE_SECCOMP_GET_FILTER on a ptrace-stopped
    tracee (needs CAP_SYS_ADMIN and CONFIG_CHECKPOINT_RESTORE)."""
    import os
    PTRACE_SEIZE, PTRACE_INTERRUPT, PTRACE_DETACH, PTRACE_SECCOMP_GET_FILTER = 0x4206, 0x4207, 17, 0x420C
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    libc.ptrace.restype = ctypes.c_long
    assert libc.ptrace(PTRACE_SEIZE, pid, None, None) == 0, f"PTRACE_SEIZE: errno {ctypes.get_errno()}"
    try:
        assert libc.ptrace(PTRACE_INTERRUPT, pid, None, None) == 0, ctypes.get_errno()
        os.waitpid(pid, 0x40000000)  # __WALL: the ptrace-stop
        n = libc.ptrace(PTRACE_SECCOMP_GET_FILTER, pid, None, None)
        assert n > 0, f"PTRACE_SECCOMP_GET_FILTER: errno {ctypes.get_errno()}"
        buf = ctypes.create_string_buffer(n * 8)  # struct sock_filter: 8 bytes
        assert libc.ptrace(PTRACE_SECCOMP_GET_FILTER, pid, None, buf) == n
        # Index 1 would be an older filter: there must be none.
        assert libc.ptrace(PTRACE_SECCOMP_GET_FILTER, pid, ctypes.c_void_p(1), None) == -1
        return buf.raw
    finally:
        libc.ptrace(PTRACE_DETACH, pid, None, None)


def parent(pid):
    try:
        return int(next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith("PPid:")).split()[1])
    except (OSError, StopIteration):
        return None


def test_receipt_names_the_filter_the_kernel_holds_for_the_worker(signed):
    """The receipt's filter digest is of the program the worker's kernel
    filter was installed from: read back from a live worker (the one
    prespawned for the next call) and hashed."""
    import os
    assert os.geteuid() == 0, "reading a worker's filter needs root (CAP_SYS_ADMIN)"
    s = signed.server()
    try:
        s.initialize()
        r = call(s, 1, "probe", {"action": "echo", "text": "hi"}, "handshake")
        receipt = r["_meta"][RECEIPT]
        # The worker prespawned for the next call: this server's child (other
        # servers on the machine may run probe workers too).
        deadline, pids = time.time() + 5, []
        while not pids and time.time() < deadline:
            pids = [p for p in wait_for_workers(at_least=1) if parent(p) == s.proc.pid]
            time.sleep(0.01)
        assert len(pids) == 1, pids
        program = installed_filter(pids[0])
        assert len(program) // 8 == receipt["seccomp"]["instructions"]
        assert hashlib.sha256(program).hexdigest() == receipt["seccomp"]["filterSha256"]
        # The next call is served by that worker, under that filter.
        r = call(s, 2, "probe", {"action": "echo", "text": "again"}, "handshake")
        assert r["_meta"][RECEIPT]["prespawned"] is True
        assert r["_meta"][RECEIPT]["seccomp"] == receipt["seccomp"]
    finally:
        s.close()


def iter_strings(v):
    if isinstance(v, str):
        yield v
    elif isinstance(v, dict):
        for x in v.values():
            yield from iter_strings(x)
    elif isinstance(v, list):
        for x in v:
            yield from iter_strings(x)


def test_calls_without_a_worker_carry_no_receipt(signed):
    """A refused call, and a call of a cell that cannot run, had no worker
    and so no confinement: they carry no receipt."""
    s = signed.server()
    try:
        s.initialize()
        r = call(s, 1, "probe", {"action": 5}, "handshake")
        assert r["isError"] and RECEIPT not in r.get("_meta", {}), r
        r = call(s, 2, "probe", {"action": "echo", "text": "a"}, "handshake")
        assert not r["isError"] and RECEIPT in r["_meta"], r
        # The executable changes on disk: the cell cannot run any more.
        exe = json.loads(signed.manifest.read_text())["executable"]["path"]
        with open(exe, "ab") as f:
            f.write(b"\0")
        r = call(s, 3, "probe", {"action": "echo", "text": "b"}, "handshake")
        assert r["isError"] and "does not match" in r["content"][0]["text"], r
        assert RECEIPT not in r.get("_meta", {}), r
    finally:
        s.close()


def scrape(path):
    """The sample lines of a Prometheus text file: {name{labels}: value}."""
    out = {}
    for line in Path(path).read_text().splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def counts_from_log(state):
    calls, refusals, violations = {}, {}, {}
    for _, o in log_lines(state):
        if o["type"] == "call.end":
            k = (o["tool"], o["outcome"])
            calls[k] = calls.get(k, 0) + 1
        elif o["type"] == "call.refused":
            refusals[o["reason"]] = refusals.get(o["reason"], 0) + 1
        elif o["type"] == "sandbox.violation":
            violations[o["kind"]] = violations.get(o["kind"], 0) + 1
    return calls, refusals, violations


def counts_from_metrics(m):
    calls, refusals, violations = {}, {}, {}
    for k, v in m.items():
        if k.startswith("mcp_supervisor_calls_total{"):
            tool, outcome = re.match(r'.*tool="([^"]*)",outcome="([^"]*)"', k).groups()
            calls[(tool, outcome)] = int(v)
        elif k.startswith("mcp_supervisor_refusals_total{"):
            refusals[re.match(r'.*reason="([^"]*)"', k).group(1)] = int(v)
        elif k.startswith("mcp_supervisor_sandbox_violations_total{"):
            violations[re.match(r'.*kind="([^"]*)"', k).group(1)] = int(v)
    return calls, refusals, violations


def test_metrics_file_counts_match_the_security_log(workspace, tmp_path):
    state = tmp_path / "state"
    prom = tmp_path / "mcp-supervisor.prom"
    s = RawServer(workspace, "--log-level", "error", "--metrics-file", str(prom), "--metrics-interval-seconds", "1",
                  state=state, stderr=subprocess.DEVNULL)
    expected = {("echo", "success"): 3, ("probe", "success"): 2, ("probe", "sandbox_violation"): 1,
                ("probe_fast", "timeout"): 1}
    try:
        s.initialize()
        assert prom.exists(), "written at start"
        n = 10
        for _ in range(3):
            n += 1
            assert not s.request(n, "tools/call", {"name": "echo", "arguments": {"text": "x"}})["result"]["isError"]
            time.sleep(0.5)  # time for the next worker to be prespawned, however loaded the machine
        for _ in range(2):
            n += 1
            assert not s.request(n, "tools/call", {"name": "probe", "arguments": {"action": "echo", "text": "y"}})[
                "result"]["isError"]
        n += 1
        assert s.request(n, "tools/call", {"name": "probe", "arguments": {"action": "syscall", "nr": 101}})[
            "result"]["isError"]
        n += 1
        assert s.request(n, "tools/call", {"name": "probe_fast", "arguments": {"action": "sleep", "ms": 5000}})[
            "result"]["isError"]
        # Refusals: schema-invalid arguments, an unknown tool.
        n += 1
        assert s.request(n, "tools/call", {"name": "echo", "arguments": {"text": 5}})["result"]["isError"]
        n += 1
        assert "error" in s.request(n, "tools/call", {"name": "no_such_tool", "arguments": {}})
        # Rewritten while serving, every second.
        deadline = time.time() + 5
        while time.time() < deadline:
            live = counts_from_metrics(scrape(prom))[0]
            if live == expected:
                break
            time.sleep(0.2)
        assert live == expected, live
        scraped = scrape(prom)
        assert scraped["mcp_supervisor_workers_alive"] >= 0
    finally:
        assert s.close() == 0
    # The final write at exit, against the log's own records.
    final = scrape(prom)
    calls, refusals, violations = counts_from_log(state)
    assert counts_from_metrics(final) == (calls, refusals, violations)
    assert calls == expected
    assert refusals == {"invalid_arguments": 1, "unknown_tool": 1}
    assert violations == {"seccomp": 1, "limit": 1}
    # Every call that ran has its stages and its latency histogram.
    for tool, n in (("echo", 3), ("probe", 3), ("probe_fast", 1)):
        assert final[f'mcp_supervisor_call_duration_seconds_count{{tool="{tool}"}}'] == n
        for stage in ("admit", "run", "record"):
            assert final[f'mcp_supervisor_stage_duration_seconds_count{{tool="{tool}",stage="{stage}"}}'] == n
    assert final["mcp_supervisor_prespawn_hits_total"] + final["mcp_supervisor_prespawn_misses_total"] == 7
    assert final["mcp_supervisor_prespawn_hits_total"] >= 1, "back-to-back calls of one cell take a prespawned worker"
    assert final["mcp_supervisor_security_log_sync_seconds_count"] >= 7
    assert not Path(str(prom) + ".tmp").exists()

    # audit stats reads the same numbers from the log.
    p = cli("audit", "stats", "--json", "--window", "1h", "--state-dir", state)
    stats = json.loads(p.stdout)
    assert {t: v["calls"] for t, v in stats["tools"].items()} == {"echo": 3, "probe": 3, "probe_fast": 1}
    assert stats["tools"]["probe"]["outcomes"] == {"success": 2, "sandbox_violation": 1}
    assert stats["tools"]["echo"]["p50Microseconds"] <= stats["tools"]["echo"]["p99Microseconds"]
    assert stats["tools"]["probe_fast"]["p50Microseconds"] >= 300_000, "the timeout call took its deadline"
    assert stats["refusals"] == refusals and stats["violations"] == violations
    text = cli("audit", "stats", "--state-dir", state).stdout
    assert re.search(r"^\s+probe_fast\s+1\s+0\s", text, re.M), text
    assert "refusals: invalid_arguments 1, unknown_tool 1" in text, text
    # top reads the metrics file back.
    rows = json.loads(cli("top", "--json", "--metrics-file", prom).stdout)
    assert {r["tool"]: r["calls"] for r in rows} == {"echo": 3, "probe": 3, "probe_fast": 1}
    assert all(r["p50Seconds"] <= r["p99Seconds"] for r in rows)
    screen = cli("top", "--once", "--metrics-file", prom).stdout
    assert "refusals: invalid_arguments 1, unknown_tool 1" in screen, screen
    assert "sandbox violations: limit 1, seccomp 1" in screen, screen
    missing = cli("top", "--once", "--metrics-file", tmp_path / "none.prom", ok=False)
    assert missing.returncode == 1 and "none.prom" in missing.stderr, missing.stderr
    bad = cli("audit", "stats", "--window", "yesterday", "--state-dir", state, ok=False)
    assert bad.returncode != 0 and "--window yesterday" in bad.stderr, bad.stderr


def test_unwritable_metrics_file_refuses_to_start(workspace, tmp_path):
    p = subprocess.run([str(BIN), "run", "--manifests", str(workspace / "manifests"), "--policies",
                        str(ROOT / "policies"), "--state-dir", str(tmp_path / "state"), "--scratch-dir",
                        str(tmp_path / "scratch"), "--allow-unsigned", "--metrics-file",
                        str(tmp_path / "missing" / "m.prom")], input=b"", capture_output=True, timeout=60)
    assert p.returncode == 2 and p.stdout == b"", p.stderr
    assert b"--metrics-file" in p.stderr and b"missing/m.prom" in p.stderr, p.stderr


def test_metrics_file_is_written_at_exit_on_sigterm(workspace, tmp_path):
    """With an interval longer than the test, only the write at exit can
    hold the call: SIGTERM ends the server with its final counts on disk."""
    import signal
    prom = tmp_path / "m.prom"
    s = RawServer(workspace, "--log-level", "error", "--metrics-file", str(prom), "--metrics-interval-seconds", "3600",
                  state=tmp_path / "state", stderr=subprocess.DEVNULL)
    try:
        s.initialize()
        assert counts_from_metrics(scrape(prom))[0] == {}, "the write at start has no calls"
        assert not s.request(1, "tools/call", {"name": "echo", "arguments": {"text": "x"}})["result"]["isError"]
        assert counts_from_metrics(scrape(prom))[0] == {}, "no write before the interval"
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(timeout=10) == 0
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
    assert counts_from_metrics(scrape(prom))[0] == {("echo", "success"): 1}


def test_receipt_of_a_cell_with_filesystem_paths_names_no_path(workspace, tmp_path):
    """fs_read's manifest grants /usr/share/doc and names its executable by
    path: the receipt carries digests of them, never the paths, the
    arguments or the state directory."""
    s = RawServer(workspace, "--log-level", "error", state=tmp_path / "state", stderr=subprocess.DEVNULL)
    try:
        s.initialize()
        r = s.request(1, "tools/call", {"name": "fs_read", "arguments": {"path": "/usr/share/doc/bash/copyright",
                                                                         "maxBytes": 64}})["result"]
    finally:
        s.close()
    assert not r["isError"], r
    receipt = r["_meta"][RECEIPT]
    manifest = json.loads((workspace / "manifests" / "fs-read.json").read_text())
    assert receipt["executableSha256"] == manifest["executable"]["sha256"]
    text = json.dumps(receipt)
    for path in [*manifest["filesystem"]["read"], manifest["executable"]["path"], str(tmp_path), "copyright", "bash"]:
        assert path not in text, (path, text)
    assert not [v for v in iter_strings(receipt) if "/" in v], receipt
