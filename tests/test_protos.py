"""Generated code: committed copy matches the .proto files; it runs on the oldest runtimes we declare."""
from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "clients" / "edgeinfer_proto"
# The floor declared in pyproject.toml (grpcio>=1.62, protobuf>=4.25.1), pinned in one file that
# `make test-floor` also installs from; the client needs these three of its pins.
FLOOR_PINS = ROOT / "tests" / "floor-constraints.txt"
CLIENT_RUNTIMES = ("grpcio", "grpcio-health-checking", "protobuf")
_PINS = [line.split("#")[0].strip() for line in FLOOR_PINS.read_text().splitlines()]
FLOOR = [pin for pin in _PINS if pin.split("==")[0] in CLIENT_RUNTIMES]


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_generated_code_matches_the_protos(tmp_path):
    out = tmp_path / "gen"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(out)],
                   check=True, capture_output=True)
    # Files at the package's top (its __init__, tensors.py) are written by hand; the rest is generated.
    committed = {f for f in _files(COMMITTED) if "/" in f}
    assert _files(out) == committed, "generated file set differs: run `make protos`"
    drifted = [f for f in sorted(_files(out)) if not filecmp.cmp(out / f, COMMITTED / f, shallow=False)]
    assert not drifted, f"generated code is stale for {drifted}: run `make protos` and commit"


def test_pyproject_declares_the_floor():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"grpcio>=1.62"' in text and '"protobuf>=4.25.1"' in text
    # The pins are that floor exactly: grpcio 1.62.x, protobuf 4.25.1.
    assert sorted(FLOOR) == ["grpcio-health-checking==1.62.3", "grpcio==1.62.3", "protobuf==4.25.1"], FLOOR


@pytest.fixture(scope="module")
def floor_site() -> Path:
    site = ROOT / ".cache" / ("floor-" + "-".join(FLOOR).replace("==", ""))
    if not (site / ".complete").exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--no-deps", "--target", str(site), *FLOOR], check=True)
        (site / ".complete").write_text("ok")
    return site


def test_client_runs_on_the_oldest_declared_grpc_and_protobuf(floor_site, daemon, media):
    """The real client CLI, on grpcio 1.62 / protobuf 4.25, against the real daemon."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(floor_site), str(ROOT / "clients")]))
    versions = subprocess.run(
        [sys.executable, "-c", "import grpc, google.protobuf as p; print(grpc.__version__, p.__version__)"],
        env=env, capture_output=True, text=True, check=True).stdout.split()
    assert versions == ["1.62.3", "4.25.1"], versions
    res = subprocess.run([sys.executable, "-m", "edgeinfer_client.cli", "--address", daemon.address,
                          "infer", "--model", "faces", str(media / "astronaut.png"), "--json"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert len(out["detections"]) == 1 and out["detections"][0]["label"] == "face"
