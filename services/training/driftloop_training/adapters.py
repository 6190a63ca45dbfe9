"""ONNX conversion of fitted scikit-learn classifiers (skl2onnx), and the catalog of dataset versions."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType

from driftloop.contracts import DatasetRef
from driftloop.spec import MODEL_NAME


def convert(estimator: Any, n_features: int) -> bytes:
    """Serialised ONNX model with input `X` (float32, n_features) and a `probabilities` output."""
    onnx_model = to_onnx(
        estimator,
        initial_types=[("X", FloatTensorType([None, n_features]))],
        options={id(estimator): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    return bytes(onnx_model.SerializeToString())


class DatasetCatalog:
    """Dataset version manifests, one JSON file per version: enough to re-read the exact rows."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, model: str, version: str) -> Path:
        if not MODEL_NAME.match(model) or not version.isalnum():
            raise ValueError(f"invalid dataset reference {model!r}/{version!r}")
        return self.root / model / f"{version}.json"

    def save(self, model: str, dataset: DatasetRef) -> None:
        path = self._path(model, dataset.version)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent)
        with os.fdopen(fd, "w") as fh:
            fh.write(dataset.model_dump_json(indent=2))
        os.replace(tmp, path)

    def load(self, model: str, version: str) -> DatasetRef | None:
        try:
            return DatasetRef.model_validate_json(self._path(model, version).read_text())
        except (OSError, ValueError, ValidationError):
            return None
