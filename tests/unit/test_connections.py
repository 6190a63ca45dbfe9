"""Security settings reach the clients, are refused when incomplete, and never print."""

import pytest
from faststream.security import SASLScram512
from pydantic import ValidationError

from driftloop.connections import faststream_security, kafka_options, redis_client
from driftloop.settings import ServiceSettings

SECRET = "pa55-w0rd-never-printed"


def test_sasl_over_tls_reaches_every_kafka_client():
    settings = ServiceSettings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="driftloop",
        kafka_sasl_password=SECRET,
    )
    options = kafka_options(settings)
    assert options["security_protocol"] == "SASL_SSL" and options["ssl_context"] is not None
    assert (options["sasl_mechanism"], options["sasl_plain_username"]) == ("SCRAM-SHA-512", "driftloop")
    assert options["sasl_plain_password"] == SECRET
    security = faststream_security(settings)
    assert isinstance(security, SASLScram512) and security.use_ssl
    assert kafka_options(ServiceSettings()) == {} and faststream_security(ServiceSettings()) is None


def test_incomplete_security_settings_are_refused():
    with pytest.raises(ValidationError, match="needs kafka_sasl_username"):
        ServiceSettings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u")
    with pytest.raises(ValidationError, match="rediss://"):
        ServiceSettings(redis_ca_file="/etc/ca.pem")


def test_secrets_do_not_print():
    settings = ServiceSettings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username="u",
        kafka_sasl_password=SECRET,
        redis_password=SECRET,
    )
    assert SECRET not in repr(settings) and SECRET not in str(settings.model_dump())
    client = redis_client(settings)
    assert SECRET not in repr(client)
    assert client.connection_pool.connection_kwargs["password"] == SECRET
