"""Which failures heal by waiting and which come from the record being handled.

The stream loop (`driftloop.fastpath`) retries a batch that failed on an infrastructure fault until
it succeeds (the broker, Redis or a disk is back), and never dead-letters a record for one: that
would empty a topic into the dead-letter queue during an outage. Any other exception is suspected
to come from a record: the batch is tried once more, then split until the record that fails alone
is found and dead-lettered (the convention of Spring Kafka's error handler with a dead-letter
recoverer, with infrastructure faults as its not-dead-lettered exceptions).
"""

from __future__ import annotations

import errno
import sqlite3

from aiokafka import errors as kafka_errors
from redis import exceptions as redis_errors

BACKOFF_FIRST_S = 0.25  # the pause after a transient failure, doubled per failure in a row ...
BACKOFF_MAX_S = 2.0  # ... up to this: a dependency that is back is used again within 2 s


def backoff_s(failures: int) -> float:
    """The pause before retrying after `failures` transient failures in a row.

    >>> [backoff_s(n) for n in (1, 2, 3, 4, 5)]
    [0.25, 0.5, 1.0, 2.0, 2.0]
    """
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** max(0, failures - 1))


class Unavailable(Exception):
    """A dependency is unavailable or unfit for now (e.g. a full disk): retry, never dead-letter."""


# OSError numbers of a resource that is missing, full or busy, not of a bad argument
_TRANSIENT_ERRNO = {
    errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EAGAIN, errno.EBUSY, errno.EMFILE,
    errno.ENFILE, errno.ENOMEM, errno.ETIMEDOUT, errno.ECONNREFUSED, errno.ECONNRESET, errno.EPIPE,
    errno.ECONNABORTED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EACCES, errno.EPERM,
    errno.ENOENT,  # a store or artifact directory that is gone: not the record's doing
}  # fmt: skip
# replies of a Redis that cannot serve for now (persistence failing, loading, busy with a script,
# out of memory, a replica): a plain ResponseError, told apart by its first word
_REDIS_TRANSIENT_REPLIES = ("MISCONF", "LOADING", "BUSY", "MASTERDOWN", "READONLY", "OOM", "TRYAGAIN",
                            "CLUSTERDOWN", "NOREPLICAS")  # fmt: skip
_REDIS_TRANSIENT = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    redis_errors.ReadOnlyError,
    redis_errors.OutOfMemoryError,
    redis_errors.TryAgainError,
    redis_errors.MasterDownError,
    redis_errors.ClusterDownError,
    redis_errors.AuthenticationError,
    redis_errors.NoPermissionError,
)
# a record or batch the broker refuses for its size: the record's doing, not the broker's
_KAFKA_DATA = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordTooLargeError,
    kafka_errors.RecordListTooLargeError,
)


def is_transient(exc: BaseException) -> bool:
    """True for a fault of the infrastructure (broker, Redis, disk, network) or `Unavailable`.

    >>> is_transient(ConnectionRefusedError()), is_transient(OSError(errno.ENOSPC, "full"))
    (True, True)
    >>> is_transient(ValueError("year 11476 is out of range")), is_transient(KeyError("x"))
    (False, False)
    >>> from redis.exceptions import ResponseError
    >>> is_transient(ResponseError("MISCONF Redis is configured to save RDB snapshots, but ..."))
    True
    >>> is_transient(ResponseError("Error running script: user_script:3: attempt to compare nil"))
    False
    """
    if isinstance(exc, Unavailable | ConnectionError | TimeoutError | sqlite3.OperationalError):
        return True
    if isinstance(exc, kafka_errors.KafkaError):
        return not isinstance(exc, _KAFKA_DATA)
    if isinstance(exc, redis_errors.RedisError):
        return isinstance(exc, _REDIS_TRANSIENT) or str(exc).startswith(_REDIS_TRANSIENT_REPLIES)
    if isinstance(exc, sqlite3.DatabaseError):  # a damaged index: no record can fix it
        return True
    if isinstance(exc, OSError):
        return exc.errno in _TRANSIENT_ERRNO
    return False


def describe(exc: BaseException, limit: int = 2000) -> str:
    """`Type: message`, printable and valid UTF-8 (a record's lone surrogates escaped), bounded.

    >>> describe(ValueError("bad \\ud800 id"))
    'ValueError: bad \\\\ud800 id'
    """
    text = f"{type(exc).__name__}: {exc}"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")[:limit]
