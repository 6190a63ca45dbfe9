"""The object store: where artifacts (and, later, offline files) live, chosen by URL.

- `file:///abs/path` or a plain path: a local directory (the embedded default).
- `memory://`: in the process's memory, for tests.
- `s3://bucket/prefix`: any S3-compatible store (AWS S3, MinIO, Ceph, R2), with the endpoint,
  region and credentials from settings (`DRIFTLOOP_OBJECT_STORE_*`, read by
  `driftloop.connections.object_store`; the secret key is a `SecretStr`).

One client for both: obstore (the Rust `object_store` crate behind an async Python API; no
Python dependencies, a request timeout and a bounded retry of its own). Errors come out as two
kinds: `ObjectMissing` (no object at that key: the caller decides what a missing object means) and
`driftloop.faults.Unavailable` for anything else (unreachable, timed out, refused credentials),
which every loop retries and never dead-letters.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import obstore
from obstore.store import LocalStore, MemoryStore, S3Store

from driftloop.faults import Unavailable


class ObjectMissing(LookupError):
    """No object at the key."""


def _local_root(url: str) -> Path | None:
    """The directory of a file URL or plain path; None for a remote URL."""
    if url.startswith("file://"):
        return Path(url.removeprefix("file://"))
    if "://" in url:
        return None
    return Path(url)


class ObjectStore:
    """Bytes by key (`a/b/c`) under the store's URL."""

    def __init__(self, url: str, store: Any) -> None:
        self.url = url
        self._store = store

    @classmethod
    def open(cls, url: str, **options: Any) -> ObjectStore:
        """The store at `url`; `options` for an `s3://` one: endpoint, region, access_key_id,
        secret_access_key (str), allow_http, timeout_s."""
        if url == "memory://":
            return cls(url, MemoryStore())
        root = _local_root(url)
        if root is not None:
            root = root.resolve()
            root.mkdir(parents=True, exist_ok=True)
            return cls(root.as_uri(), LocalStore(root))
        if not url.startswith("s3://"):
            raise ValueError(f"object store URL {url!r}: use a path, file:///path or s3://bucket/prefix")
        timeout_s = float(options.pop("timeout_s", 10.0))
        client: Any = {  # obstore's `ClientConfig`
            "allow_http": bool(options.pop("allow_http", False)),
            "connect_timeout": f"{max(1, int(timeout_s / 4))}s",
            "timeout": f"{max(1, int(timeout_s))}s",
        }
        retry: Any = {  # obstore's `RetryConfig`: a few quick tries within the timeout
            "max_retries": 2,
            "retry_timeout": timedelta(seconds=timeout_s),
            "backoff": {
                "init_backoff": timedelta(milliseconds=100),
                "max_backoff": timedelta(seconds=1),
                "base": 2,
            },
        }
        config: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
        store = S3Store.from_url(url, client_options=client, retry_config=retry, **config)
        return cls(url, store)

    async def put(self, key: str, data: bytes) -> None:
        """Write the object (whole: a reader sees all of it or nothing)."""
        try:
            await obstore.put_async(self._store, key, data)
        except Exception as exc:
            raise self._fault("write", key, exc) from exc

    async def get(self, key: str) -> bytes:
        """The object's bytes; `ObjectMissing` when there is none."""
        try:
            result = await obstore.get_async(self._store, key)
            return bytes(await result.bytes_async())
        except FileNotFoundError as exc:
            raise ObjectMissing(f"no object {key!r} in {self.url}") from exc
        except Exception as exc:
            raise self._fault("read", key, exc) from exc

    async def exists(self, key: str) -> bool:
        """Whether there is an object at the key."""
        try:
            await obstore.head_async(self._store, key)
        except FileNotFoundError:
            return False
        except Exception as exc:
            raise self._fault("check", key, exc) from exc
        return True

    async def keys(self, prefix: str) -> list[str]:
        """The keys below a prefix (`offline/sea`), sorted."""
        try:
            listed = await obstore.list(self._store, prefix=prefix).collect_async()
        except Exception as exc:
            raise self._fault("list", prefix, exc) from exc
        return sorted(str(entry["path"]) for entry in listed)

    def _fault(self, verb: str, key: str, exc: Exception) -> Unavailable:
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        return Unavailable(f"object store {self.url}: cannot {verb} {key!r}: {first}")
