"""The one artifact loader: content-addressed ONNX files in the object store, an onnxruntime classifier.

Nothing here unpickles: artifacts are ONNX bytes, checked against their sha256 before use.
An artifact lives at `artifacts/sha256/<2 hex>/<sha256>.onnx` in the object store
(`driftloop.objects`); its `ArtifactRef.uri` is that path below `artifacts/`, so a reference names
no store and stays valid when a deployment moves its bucket.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from driftloop.contracts import ArtifactRef, Label
from driftloop.objects import ObjectMissing, ObjectStore

log = logging.getLogger(__name__)

PREFIX = "artifacts"
_URI = re.compile(r"sha256/([0-9a-f]{2})/([0-9a-f]{64})\.onnx")


class ArtifactIntegrityError(RuntimeError):
    """An artifact is missing, or its bytes or its reference do not match its sha256."""


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def artifact_uri(digest: str) -> str:
    """The content address of an artifact with this sha256."""
    return f"sha256/{digest[:2]}/{digest}.onnx"


class ArtifactStore:
    """Artifacts in the object store, each under its own sha256; with `cache`, a local directory
    of the ones read before (keyed by sha256, checked again on every read)."""

    def __init__(self, objects: ObjectStore, cache: Path | None = None) -> None:
        self.objects = objects
        self.cache = cache

    @classmethod
    def at(cls, url: str | Path, cache: Path | None = None) -> ArtifactStore:
        """The artifacts of the store at a URL or directory that needs no credentials."""
        return cls(ObjectStore.open(str(url)), cache)

    @staticmethod
    def _key(ref: ArtifactRef) -> str:
        """The object key of a reference, which must be the content address of its own sha256
        (so no reference reaches outside the artifacts, or names bytes other than its own)."""
        if not _URI.fullmatch(ref.uri) or ref.uri != artifact_uri(ref.sha256):
            raise ArtifactIntegrityError(
                f"artifact uri {ref.uri!r} is not the address of sha256 {ref.sha256}"
            )
        return f"{PREFIX}/{ref.uri}"

    async def put(self, data: bytes) -> ArtifactRef:
        """Store bytes (idempotent: same bytes, same key) and return their reference."""
        digest = sha256_hex(data)
        ref = ArtifactRef(uri=artifact_uri(digest), sha256=digest, size_bytes=len(data))
        if not await self.objects.exists(self._key(ref)):
            await self.objects.put(self._key(ref), data)
        return ref

    async def verify(self, ref: ArtifactRef) -> None:
        """Read the artifact back from the store and check it (the cache is not asked)."""
        self._check(ref, await self._read(ref))

    async def get(self, ref: ArtifactRef) -> bytes:
        """The artifact's bytes, checked against the reference's sha256: from the cache when it
        holds them intact, else from the store (then kept in the cache)."""
        key = self._key(ref)
        cached = self.cache / ref.sha256 if self.cache is not None else None
        if cached is not None:
            data = await asyncio.to_thread(_read_if_there, cached)
            if data is not None and sha256_hex(data) == ref.sha256:
                return data
        data = self._check(ref, await self._read(ref, key))
        if cached is not None:
            try:
                await asyncio.to_thread(_write_atomically, cached, data)
            except OSError as exc:  # the cache only saves a download: serve without it
                log.warning("artifact cache %s not written: %s", self.cache, exc)
        return data

    async def _read(self, ref: ArtifactRef, key: str | None = None) -> bytes:
        try:
            return await self.objects.get(key or self._key(ref))
        except ObjectMissing as exc:
            raise ArtifactIntegrityError(f"artifact {ref.uri} is missing: {exc}") from exc

    @staticmethod
    def _check(ref: ArtifactRef, data: bytes) -> bytes:
        actual = sha256_hex(data)
        if actual != ref.sha256:
            raise ArtifactIntegrityError(
                f"artifact {ref.uri}: sha256 {actual} does not match expected {ref.sha256}"
            )
        return data


def _read_if_there(path: Path) -> bytes | None:
    """A cached copy's bytes; None when the cache cannot give them (absent, unreadable): a miss."""
    try:
        return path.read_bytes()
    except OSError:
        return None


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


class OnnxClassifier:
    """An ONNX classifier with a float32 input matrix and a plain probability output."""

    def __init__(self, data: bytes, classes: list[Label], feature_names: list[str]) -> None:
        import onnxruntime as ort  # the `onnx` extra: only where models run (the registry stores bytes)

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
