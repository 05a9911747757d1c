"""`mcp-supervisor call`: the same trust rule as `run`, and the supervisor's
memory bounded whatever a manifest declares."""
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import BIN, ROOT, RawServer, bundled_manifest, probe_manifest

# Peak RSS allowed for a `call` process whose worker floods it: the CLI's
# own footprint (~20 MiB measured) plus the supervisor's cap on buffered
# output (8 MiB, CallRunner.bufferedOutputCap) with room for parsing.
RSS_BOUND_MIB = 64


@pytest.fixture
def work():
    d = Path(tempfile.mkdtemp(prefix="mcps-call-"))
    d.chmod(0o755)  # workers (nobody, under root) reach the scratch below
    (d / "manifests").mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


# Runs a command and writes the largest RSS among its children (KiB). A
# fresh small interpreter, because a process's ru_maxrss keeps the pages of
# the process it was forked from (here: the test runner) across exec.
PEAK_RSS = """
import resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(rc if rc >= 0 else 128 - rc)
"""


def call(work, tool, args, *flags, timeout=120):
    """Runs `mcp-supervisor call`; returns (exit status, stdout, stderr, peak RSS in MiB)."""
    argv = [str(BIN), "call", tool, "--manifests", str(work / "manifests"), "--policies", str(ROOT / "policies"),
            "--state-dir", str(work / "state"), "--scratch-dir", str(work / "scratch"),
            "--args", json.dumps(args), *flags]
    peak = work / "peak-rss"
    p = subprocess.run([sys.executable, "-c", PEAK_RSS, str(peak), *argv], capture_output=True, text=True,
                       timeout=timeout)
    # ru_maxrss of `call` and of the workers it reaped (a worker reports at
    # most the supervisor's pages it shared before exec).
    return p.returncode, p.stdout, p.stderr, int(peak.read_text()) / 1024


def test_call_refuses_an_unsigned_manifest_without_allow_unsigned(work):
    (work / "manifests" / "probe.json").write_text(json.dumps(probe_manifest()))
    rc, out, err, _ = call(work, "probe", {"action": "echo", "text": "hi"})
    assert rc == 2 and out == "", err
    assert "not an active signed version in the trust ledger" in err, err
    assert "cell sign" in err and "cell register" in err and "--allow-unsigned" in err, err
    assert not (work / "scratch").exists() or not any((work / "scratch").iterdir()), "a worker ran"

    rc, out, err, _ = call(work, "probe", {"action": "echo", "text": "hi"}, "--allow-unsigned")
    assert rc == 0 and out.strip() == "hi", err
    assert "UNSIGNED development mode" in err and "probe.json" in err, err


def test_frame_far_above_the_cap_is_refused_before_it_is_buffered(work):
    """A cell whose manifest allows 1 GiB of output and 64 MiB frames
    declares a 60 MiB frame and sends it: the supervisor refuses it from
    its length prefix (over its own 8 MiB cap) and stays small."""
    limits = {"timeoutMilliseconds": 30000, "outputKiB": 1048576, "frameKiB": 65536}
    (work / "manifests" / "probe.json").write_text(json.dumps(probe_manifest(limits=limits)))
    rc, out, err, rss = call(work, "probe", {"action": "frame-flood", "bytes": 60 << 20}, "--allow-unsigned", "--json")
    r = json.loads(out)
    assert rc == 1 and r["outcome"] == "limit_exceeded", err
    assert "buffered output cap (8 MiB" in r["detail"], r
    assert rss < RSS_BOUND_MIB, f"`call` peaked at {rss:.0f} MiB"


def test_command_output_far_above_the_cap_keeps_the_supervisor_small(work):
    """A command tool allowed 1 GiB of output writes without end: the call
    ends at the supervisor's cap, not after buffering the manifest's limit."""
    doc = bundled_manifest("jq")
    doc["limits"].update({"timeoutMilliseconds": 60000, "cpuSeconds": 60, "outputKiB": 1048576, "frameKiB": 1024})
    (work / "manifests" / "jq.json").write_text(json.dumps(doc))
    rc, out, err, rss = call(work, "jq", {"filter": "range(0; 1000000000)", "input": None, "compact": True},
                             "--allow-unsigned", "--json")
    r = json.loads(out)
    assert rc == 1 and r["outcome"] == "limit_exceeded", err
    assert "buffered output cap" in r["detail"], r
    assert rss < RSS_BOUND_MIB, f"`call` peaked at {rss:.0f} MiB"


def test_the_log_names_the_first_cause(work):
    """Through the server: a worker that catches SIGXCPU and answers is
    logged as the CPU limit; a deadline that passes while a frame is half
    written is logged as a timeout, not as the broken frame it leaves."""
    (work / "manifests" / "probe.json").write_text(json.dumps(probe_manifest(
        limits={"timeoutMilliseconds": 30000, "cpuSeconds": 1})))
    (work / "manifests" / "probe-fast.json").write_text(json.dumps(probe_manifest(
        "probe_fast", limits={"timeoutMilliseconds": 300})))
    s = RawServer.serving(work, work / "manifests", "--allow-unsigned")
    try:
        s.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "probe", "arguments": {"action": "catch-sigxcpu", "seconds": 5}}})
        r = s.recv_id(1, timeout=40)  # 1 s of CPU, on a machine that may be busy
        assert r["result"]["isError"] and r["result"]["content"][0]["text"] == "The tool exceeded its cpu limit."
        r = s.request(2, "tools/call", {"name": "probe_fast", "arguments": {
            "action": "raw", "hex": "000000107b22", "sleepMs": 5000}})
        assert r["result"]["isError"] and r["result"]["content"][0]["text"] == "The tool call timed out."
    finally:
        s.close()
    p = subprocess.run([str(BIN), "audit", "query", "--json", "--state-dir", str(work / "state")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    records = [json.loads(line) for line in p.stdout.splitlines()]
    ends = {e["tool"]: e for e in records if e["type"] == "call.end"}
    assert ends["probe"]["outcome"] == "limit_exceeded" and "CPU time" in ends["probe"]["detail"]
    assert ends["probe_fast"]["outcome"] == "timeout"
    limits = {e["tool"]: e["limit"] for e in records if e["type"] == "sandbox.violation" and e["kind"] == "limit"}
    assert limits == {"probe": "cpu", "probe_fast": "deadline"}
    assert not [e for e in records if e["type"] == "sandbox.violation" and e["kind"] == "protocol"]
