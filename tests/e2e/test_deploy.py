"""deploy/*.yaml (docs/deployment.md, "Kubernetes") checked offline against
the Kubernetes API schemas `kubernetes-validate` ships (installed by the
Makefile from tests/requirements.txt: missing, the test fails)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = sorted((ROOT / "deploy").glob("*.yaml"))
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"


def validate(path):
    assert VALIDATE.exists(), f"{VALIDATE} missing: pip install -r tests/requirements.txt (make .venv/.installed)"
    return subprocess.run([str(VALIDATE), "--strict", str(path)], capture_output=True, text=True, timeout=120)


def test_every_manifest_passes_the_schema():
    assert {p.name for p in DEPLOY} >= {"deployment.yaml", "service.yaml", "configmap.yaml"}
    for p in DEPLOY:
        r = validate(p)
        assert r.returncode == 0 and "passed" in r.stdout + r.stderr, p.name + ": " + r.stdout + r.stderr


def test_the_linter_refuses_a_wrong_field(tmp_path):
    bad = tmp_path / "deployment.yaml"
    bad.write_text((ROOT / "deploy" / "deployment.yaml").read_text().replace(
        "allowPrivilegeEscalation: false", "allowPrivilegeEscalaton: false"))
    r = validate(bad)
    assert r.returncode != 0, r.stdout + r.stderr


def test_the_deployment_says_what_the_supervisor_needs():
    d = yaml.safe_load((ROOT / "deploy" / "deployment.yaml").read_text())
    pod = d["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["hostUsers"] is False and pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "Localhost"
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert not sc.get("privileged")
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] == "/healthz"
    # The configuration file's settings are the supervisor's (a typo would
    # stop every pod at start).
    cm = yaml.safe_load((ROOT / "deploy" / "configmap.yaml").read_text())
    config = json.loads(cm["data"]["config.json"])
    binary = ROOT / ".build" / "debug" / "mcp-supervisor"
    doc = subprocess.run([str(binary), "config", "doc"], capture_output=True, text=True, timeout=60).stdout
    for key in config:
        assert f"`{key}`" in doc, key
    json.loads(cm["data"]["http.json"])
