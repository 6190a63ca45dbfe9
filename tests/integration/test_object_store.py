"""Artifacts in an object store: the file backend and a real S3-protocol server (moto's), through
the same `ArtifactStore`: content addresses, checks on every read, the local cache, an outage."""

from __future__ import annotations

import hashlib
import time

import pytest

from driftloop.artifacts import ArtifactIntegrityError, ArtifactStore
from driftloop.connections import object_store
from driftloop.contracts import ArtifactRef
from driftloop.faults import Unavailable, is_transient
from driftloop.objects import ObjectMissing
from driftloop.settings import ServiceSettings
from tests.helpers import own_s3_server


@pytest.fixture(params=["file", "s3"])
def backend(request, tmp_path) -> dict:
    """Object store settings of either backend."""
    if request.param == "file":
        return {"object_store_url": (tmp_path / "objects").as_uri()}
    return request.getfixturevalue("s3_settings")


async def test_an_artifact_is_stored_once_under_its_sha256_and_read_back_checked(backend):
    store = ArtifactStore(object_store(ServiceSettings(**backend)))
    data = b"an onnx model" * 100
    digest = hashlib.sha256(data).hexdigest()
    ref = await store.put(data)
    assert ref == ArtifactRef(uri=f"sha256/{digest[:2]}/{digest}.onnx", sha256=digest, size_bytes=len(data))
    assert await store.put(data) == ref  # idempotent
    assert await store.get(ref) == data
    await store.verify(ref)
    other = await store.put(b"another model")
    assert other.sha256 != ref.sha256 and await store.get(other) == b"another model"


async def test_a_missing_forged_or_misaddressed_artifact_is_refused_with_its_reason(backend):
    store = ArtifactStore(object_store(ServiceSettings(**backend)))
    ref = await store.put(b"the real model")
    missing = ArtifactRef(uri=f"sha256/ab/{'ab' * 32}.onnx", sha256="ab" * 32, size_bytes=3)
    with pytest.raises(ArtifactIntegrityError, match="missing"):
        await store.get(missing)
    for uri in ("../../etc/passwd", f"sha256/00/{ref.sha256}.onnx", f"/{ref.uri}"):
        with pytest.raises(ArtifactIntegrityError, match="not the address"):
            await store.get(ref.model_copy(update={"uri": uri}))
    # bytes forged at the artifact's key by another writer: every reader refuses them
    await object_store(ServiceSettings(**backend)).put(f"artifacts/{ref.uri}", b"forged")
    with pytest.raises(ArtifactIntegrityError, match="does not match"):
        await store.get(ref)
    with pytest.raises(ArtifactIntegrityError, match="does not match"):
        await store.verify(ref)


async def test_the_cache_serves_checked_copies_and_heals_a_damaged_one(s3_settings, tmp_path):
    writer = ArtifactStore(object_store(ServiceSettings(**s3_settings)))
    ref = await writer.put(b"model bytes")
    cache = tmp_path / "cache"
    reader = ArtifactStore(object_store(ServiceSettings(**s3_settings)), cache)
    assert await reader.get(ref) == b"model bytes"
    assert (cache / ref.sha256).read_bytes() == b"model bytes"
    (cache / ref.sha256).write_bytes(b"damaged on this host's disk")
    assert await reader.get(ref) == b"model bytes"  # read from the store again
    assert (cache / ref.sha256).read_bytes() == b"model bytes"


async def test_an_unreachable_store_fails_in_bounded_time_as_a_retryable_fault_and_the_cache_still_serves(
    tmp_path,
):
    with own_s3_server("outage", secret="s3cr3t-value") as (_, objects):
        settings = ServiceSettings(**objects)
        assert "s3cr3t-value" not in repr(settings) and "s3cr3t-value" not in str(settings.model_dump())
        cached = ArtifactStore(object_store(settings), tmp_path / "cache")
        ref = await cached.put(b"served before the outage")
        assert await cached.get(ref) == b"served before the outage"
    began = time.monotonic()
    with pytest.raises(Unavailable) as raised:
        await cached.verify(ref)
    assert time.monotonic() - began < 15
    assert is_transient(raised.value) and "s3cr3t-value" not in str(raised.value)
    with pytest.raises(Unavailable):
        await cached.put(b"a new model")
    assert await cached.get(ref) == b"served before the outage"  # from this host's cache


async def test_a_missing_object_is_told_apart_from_an_unreachable_store(s3_settings):
    objects = object_store(ServiceSettings(**s3_settings))
    with pytest.raises(ObjectMissing):
        await objects.get("no/such/key")
    assert not await objects.exists("no/such/key")
    await objects.put("a/key", b"x")
    assert await objects.exists("a/key") and await objects.get("a/key") == b"x"


def test_an_object_store_url_of_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        object_store(ServiceSettings(object_store_url="ftp://host/x"))
