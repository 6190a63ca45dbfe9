"""How services connect to Kafka, Redis and the object store: security and timeouts from settings,
in one place.

Kafka: `DRIFTLOOP_KAFKA_SECURITY_PROTOCOL` (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL), SASL
PLAIN/SCRAM user and password, and a CA bundle for TLS; every client a service opens (FastStream
broker, hot-path consumer and producer, admin, lifecycle reader) gets the same options.
Redis: AUTH (`DRIFTLOOP_REDIS_PASSWORD`, optional ACL user), TLS with a `rediss://` URL and a CA
bundle, and timeouts so an unavailable store fails a call in seconds instead of hanging it.
Object store: its URL (`DRIFTLOOP_OBJECT_STORE_URL`), and for `s3://` the endpoint, region and keys.
Passwords and keys are `SecretStr`: they print as `**********` and reach the clients only here.
"""

from __future__ import annotations

from typing import Any

from aiokafka.helpers import create_ssl_context
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512
from redis.asyncio import Redis

from driftloop.objects import ObjectStore
from driftloop.settings import ServiceSettings


def _ssl_context(settings: ServiceSettings) -> Any:
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    return create_ssl_context(cafile=str(settings.kafka_ca_file) if settings.kafka_ca_file else None)


def kafka_options(settings: ServiceSettings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client: the security settings (nothing for PLAINTEXT)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security_protocol": protocol, "ssl_context": _ssl_context(settings)}
    if protocol.startswith("SASL"):
        assert settings.kafka_sasl_password is not None  # checked by the settings
        options |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": settings.kafka_sasl_password.get_secret_value(),
        }
    return options


def faststream_security(settings: ServiceSettings) -> BaseSecurity | None:
    """The same settings as FastStream's security object (None for PLAINTEXT)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    tls = protocol.endswith("SSL")
    context = _ssl_context(settings)
    if not protocol.startswith("SASL"):
        return BaseSecurity(ssl_context=context, use_ssl=True)
    assert settings.kafka_sasl_username is not None and settings.kafka_sasl_password is not None
    kind = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}
    return kind[settings.kafka_sasl_mechanism](
        settings.kafka_sasl_username,
        settings.kafka_sasl_password.get_secret_value(),
        ssl_context=context,
        use_ssl=tls,
    )


def redis_client(settings: ServiceSettings) -> Redis:
    """The service's Redis client: AUTH and TLS from settings, and timeouts."""
    options: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_timeout_s,
    }
    if settings.redis_password is not None:
        options["password"] = settings.redis_password.get_secret_value()
    if settings.redis_username is not None:
        options["username"] = settings.redis_username
    if settings.redis_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.redis_ca_file)
    return Redis.from_url(settings.redis_url, **options)


def object_store(settings: ServiceSettings) -> ObjectStore:
    """The service's object store (`driftloop.objects`): a local directory or an S3 bucket."""
    secret = settings.object_store_secret_access_key
    return ObjectStore.open(
        settings.object_store_url,
        endpoint=settings.object_store_endpoint,
        region=settings.object_store_region,
        access_key_id=settings.object_store_access_key_id,
        secret_access_key=secret.get_secret_value() if secret is not None else None,
        allow_http=settings.object_store_allow_http,
        timeout_s=settings.object_store_timeout_s,
    )
