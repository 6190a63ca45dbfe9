"""ONNX conversion of fitted scikit-learn classifiers (skl2onnx), with plain probability output."""

from __future__ import annotations

from typing import Any

from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType


def convert(estimator: Any, n_features: int) -> bytes:
    """Serialised ONNX model with input `X` (float32, n_features) and a `probabilities` output."""
    onnx_model = to_onnx(
        estimator,
        initial_types=[("X", FloatTensorType([None, n_features]))],
        options={id(estimator): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    return bytes(onnx_model.SerializeToString())
