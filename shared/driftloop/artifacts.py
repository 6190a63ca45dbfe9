"""The one artifact loader: a content-addressed store of ONNX files and an onnxruntime classifier.

Nothing here unpickles: artifacts are ONNX bytes, checked against their sha256 before use.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from driftloop.contracts import ArtifactRef, Label


class ArtifactIntegrityError(RuntimeError):
    """An artifact is missing or its bytes do not match its sha256."""


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


class ArtifactStore:
    """A local directory of artifacts, each stored under its own sha256."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, uri: str) -> Path:
        path = (self.root / uri).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ArtifactIntegrityError(f"artifact uri {uri!r} points outside the store")
        return path

    def put(self, data: bytes) -> ArtifactRef:
        """Store bytes (idempotent: same bytes, same place) and return their reference."""
        digest = sha256_hex(data)
        uri = f"sha256/{digest[:2]}/{digest}.onnx"
        path = self._path(uri)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        return ArtifactRef(uri=uri, sha256=digest, size_bytes=len(data))

    def get(self, ref: ArtifactRef) -> bytes:
        """The artifact's bytes, after checking them against the reference's sha256."""
        try:
            data = self._path(ref.uri).read_bytes()
        except OSError as exc:
            raise ArtifactIntegrityError(f"artifact {ref.uri} unreadable: {exc}") from exc
        actual = sha256_hex(data)
        if actual != ref.sha256:
            raise ArtifactIntegrityError(
                f"artifact {ref.uri}: sha256 {actual} does not match expected {ref.sha256}"
            )
        return data


class OnnxClassifier:
    """An ONNX classifier with a float32 input matrix and a plain probability output."""

    def __init__(self, data: bytes, classes: list[Label], feature_names: list[str]) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        self.proba_name = "probabilities" if "probabilities" in outputs else outputs[-1]
        self.classes = classes
        self.feature_names = feature_names

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities, one row per input row, columns in `classes` order."""
        if len(X) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        (proba,) = self.session.run([self.proba_name], {self.input_name: X.astype(np.float32)})
        return np.asarray(proba)

    def predict(self, X: np.ndarray) -> list[Label]:
        """Most probable class per row."""
        return [self.classes[i] for i in self.predict_proba(X).argmax(axis=1)]
