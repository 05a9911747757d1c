#!/usr/bin/env python3
"""(l) What the syscall profiler costs per call (docs/resilience.md,
"Syscall profiler"): the same calls with the policy's `profileSyscalls`
off and on, in the same run, rounds interleaved so that machine drift
affects both alike.

  echo, --prespawn 0   every worker spawned at its call, off and on: the
                       profiler's own cost (a round trip to the supervisor
                       per syscall the worker makes)
  echo                 the default (--prespawn 1): off is served by a
                       worker started ahead, on is not (a profiled worker
                       starts at its call, so its start-up is seen)
  python_run           a Python cell, which makes many more syscalls

The syscalls per call come from the profiles the "on" runs wrote.
Usage: tools/bench/profiler_bench.py [--rounds N] [--calls N]
(after `make pin` and a release build of mcp-supervisor, as tools/bench/run.sh does).
"""
import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

import bench as B


def policies(profiled):
    d = Path(tempfile.mkdtemp(prefix="mcps-profiler-bench-policies-"))
    shutil.copy(B.ROOT / "policies" / "syscall-groups.json", d)
    doc = {"principals": [{"name": "bench", "principal": "*", "allow": ["*"]}]}
    if profiled:
        doc["resilience"] = {"profileSyscalls": ["*"]}
    (d / "policy.json").write_text(json.dumps(doc))
    return d


def argv(policy_dir, state, *extra):
    return [str(B.BIN), "run", "--manifests", str(B.PINNED), "--policies", str(policy_dir), "--state-dir", str(state),
            "--log-level", "error", *extra]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=200, help="echo calls per variant per round")
    a = ap.parse_args()
    print("\n".join(profiler_section(a.rounds, a.calls)))


def profiler_section(rounds, calls):
    """The (l) section of docs/benchmarks.md, as lines."""
    a = argparse.Namespace(rounds=rounds, calls=calls)
    pol = {False: policies(False), True: policies(True)}
    state = {k: Path(tempfile.mkdtemp(prefix="mcps-profiler-bench-state-", dir="/var/tmp")) for k in (False, True)}
    for st in state.values():
        B.register(B.PINNED, st)
    variants = [
        ("echo_p0", "echo", {"text": "x"}, ["--prespawn", "0"], a.calls),
        ("echo", "echo", {"text": "x"}, [], a.calls),
        ("python", "python_run", {"code": "print(1)"}, [], max(5, a.calls // 20)),
    ]
    results = {(k, on): [] for k, *_ in variants for on in (False, True)}
    for r in range(a.rounds):
        print(f"round {r + 1}/{a.rounds}", flush=True)
        for key, tool, args, extra, n in variants:
            # Alternate which goes first, so neither always runs on a
            # warmer machine.
            for on in ((False, True) if r % 2 == 0 else (True, False)):
                s = B.Server(argv(pol[on], state[on], *extra))
                s.initialize()
                s.call_times(max(3, n // 10), tool=tool, args=args)
                results[(key, on)] += s.call_times(n, tool=tool, args=args)
                s.close()

    per_call = {}
    for p in (state[True] / "profiles").glob("*.json"):
        d = json.loads(p.read_text())
        if d.get("profiledCalls"):
            total = sum(u["count"] for u in d["syscallsSeen"].values())
            per_call[d["cell"]] = (total / d["profiledCalls"], len(d["syscallsSeen"]))

    lines = ["## (l) Syscall profiler per call (µs, end to end)\n",
             f"`tools/bench/profiler_bench.py --rounds {a.rounds} --calls {a.calls}`: the same calls with the "
             "policy's `resilience.profileSyscalls` off and `[\"*\"]`, servers alternating within each round "
             "(docs/resilience.md, \"Syscall profiler\").\n",
             "| calls | profiler | p50 | p90 | p99 | n | p50 on / off | syscalls seen per call |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    # The cell serving each variant's tool, from the pinned manifests.
    cell_of = {t["name"]: json.loads(m.read_text())["name"] for m in B.PINNED.glob("*.json")
               for t in json.loads(m.read_text())["tools"]}
    cells = {key: cell_of.get(tool) for key, tool, *_ in variants}
    labels = {"echo_p0": "echo, `--prespawn 0`", "echo": "echo (default `--prespawn 1`)",
              "python": "python_run `print(1)`"}
    summary = {}
    for key, *_ in variants:
        off, on = results[(key, False)], results[(key, True)]
        ratio = statistics.median(on) / statistics.median(off)
        sc = per_call.get(cells[key])
        seen = f"{sc[0]:.0f} ({sc[1]} distinct)" if sc else "?"
        for flag, xs in (("off", off), ("on", on)):
            lines.append(f"| {labels[key]} | {flag} | {statistics.median(xs):.0f} | {B.pct(xs, 90):.0f} | "
                         f"{B.pct(xs, 99):.0f} | {len(xs)} | {ratio:.2f}× | {seen if flag == 'on' else ''} |")
        summary[key] = (statistics.median(on) - statistics.median(off), sc[0] if sc else None, ratio)
    d, n, _ = summary["echo_p0"]
    if n:
        lines.append(f"\n- With every worker spawned at its call, the profiler adds {d:.0f} µs at p50 to an echo call "
                     f"that makes about {n:.0f} syscalls the profiler sees: about {d / n:.1f} µs per syscall.")
    d2, n2, r2 = summary["python"]
    if n2:
        lines.append(f"- A Python call making about {n2:.0f} such syscalls pays {d2 / 1000:.1f} ms ({r2:.2f}×), "
                     f"{d2 / n2:.1f} µs per syscall.")
    lines.append(f"- Against the default, where the unprofiled call gets a worker started ahead, the profiled echo "
                 f"call costs {summary['echo'][2]:.2f}× (it also spawns its worker at the call).\n")
    for d in list(pol.values()) + list(state.values()):
        shutil.rmtree(d, ignore_errors=True)
    return lines


if __name__ == "__main__":
    main()
