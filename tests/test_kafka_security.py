"""Kafka security settings: which combinations start, and what Faust and aiokafka receive.

No SASL handshake is tried (the test broker has no SASL): these check the
mapping from settings to the arguments the Kafka client is built with.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from worker.agents import broker_credentials, create_app
from worker.cli import main
from worker.config import Settings
from worker.errors import ConfigError
from worker.kafka_security import KafkaSecurity, check, ssl_context
from worker.testing import FakeScorer

TLS = Path(__file__).parent / "data" / "kafka-tls"
PASSWORD = "hunter2-not-logged"


def _aiokafka_kwargs(security: KafkaSecurity) -> dict[str, object]:
    """The security arguments Faust builds its aiokafka consumer and producer with."""
    return dict(credentials_to_aiokafka_auth(broker_credentials(security)))


def test_plaintext_by_default_passes_nothing() -> None:
    """With no security settings the client connects in plain TCP, as before."""
    assert Settings.from_env({}).kafka_security == KafkaSecurity()
    assert broker_credentials(KafkaSecurity()) is None
    assert _aiokafka_kwargs(KafkaSecurity()) == {"security_protocol": "PLAINTEXT"}


def test_sasl_plaintext_with_scram_passes_the_credentials() -> None:
    """SASL_PLAINTEXT with SCRAM-SHA-512 gives aiokafka that protocol, mechanism, user and
    password, and no TLS context."""
    settings = Settings.from_env(
        {
            "ITMGUARD_KAFKA_SECURITY_PROTOCOL": "sasl_plaintext",
            "ITMGUARD_KAFKA_SASL_MECHANISM": "scram-sha-512",
            "ITMGUARD_KAFKA_SASL_USERNAME": "itmguard",
            "ITMGUARD_KAFKA_SASL_PASSWORD": PASSWORD,
        }
    )
    assert _aiokafka_kwargs(settings.kafka_security) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "itmguard",
        "sasl_plain_password": PASSWORD,
        "ssl_context": None,
    }


def test_sasl_ssl_trusts_the_given_ca_and_checks_host_names() -> None:
    """SASL_SSL sends the credentials over TLS that verifies the broker against the CA file."""
    security = KafkaSecurity(
        protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="itmguard",
        sasl_password=PASSWORD,
        ssl_cafile=TLS / "ca.pem",
    )
    kwargs = _aiokafka_kwargs(security)
    context = kwargs.pop("ssl_context")
    assert kwargs == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "itmguard",
        "sasl_plain_password": PASSWORD,
    }
    assert isinstance(context, ssl.SSLContext)
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "itmguard test CA"),),)
    ]


def test_ssl_with_a_client_certificate() -> None:
    """SSL with a CA, a certificate and its key gives aiokafka an SSL context and no SASL."""
    security = KafkaSecurity(
        protocol="SSL",
        ssl_cafile=TLS / "ca.pem",
        ssl_certfile=TLS / "client.pem",
        ssl_keyfile=TLS / "client.key",
    )
    kwargs = _aiokafka_kwargs(security)
    assert kwargs["security_protocol"] == "SSL"
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert set(kwargs) == {"security_protocol", "ssl_context"}


def test_ssl_without_a_ca_file_trusts_the_system_cas() -> None:
    """SSL with no CA file still verifies the broker, against the system's CAs."""
    context = ssl_context(KafkaSecurity(protocol="SSL"))
    assert context is not None
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_REQUIRED, True)


@pytest.mark.parametrize(
    ("security", "setting", "says"),
    [
        (KafkaSecurity(protocol="SASL_SSL"), "ITMGUARD_KAFKA_SASL_USERNAME", "required when"),
        (
            KafkaSecurity(protocol="SASL_PLAINTEXT", sasl_username="u"),
            "ITMGUARD_KAFKA_SASL_PASSWORD",
            "required when",
        ),
        (
            KafkaSecurity(sasl_username="u", sasl_password=PASSWORD),
            "ITMGUARD_KAFKA_SASL_USERNAME",
            "sends no credentials",
        ),
        (
            KafkaSecurity(protocol="SSL", sasl_password=PASSWORD),
            "ITMGUARD_KAFKA_SASL_PASSWORD",
            "sends no credentials",
        ),
        (
            KafkaSecurity(
                protocol="SASL_PLAINTEXT",
                sasl_username="u",
                sasl_password=PASSWORD,
                ssl_cafile=TLS / "ca.pem",
            ),
            "ITMGUARD_KAFKA_SSL_CAFILE",
            "does not use TLS",
        ),
        (
            KafkaSecurity(protocol="SSL", ssl_cafile=TLS / "missing.pem"),
            "ITMGUARD_KAFKA_SSL_CAFILE",
            "no such file",
        ),
        (
            KafkaSecurity(protocol="SSL", ssl_certfile=TLS / "client.pem"),
            "ITMGUARD_KAFKA_SSL_KEYFILE",
            "needs its key",
        ),
        (
            KafkaSecurity(protocol="SSL", ssl_keyfile=TLS / "client.key"),
            "ITMGUARD_KAFKA_SSL_CERTFILE",
            "needs its key",
        ),
    ],
)
def test_contradictory_settings_are_refused_naming_the_setting(
    security: KafkaSecurity, setting: str, says: str
) -> None:
    """A combination that would drop credentials or certificates, or a missing file, stops
    the worker with the setting to fix; a password never shows in the message."""
    with pytest.raises(ConfigError) as info:
        check(security)
    assert info.value.setting == setting
    assert says in str(info.value)
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize(
    ("files", "setting", "says"),
    [
        ({"ssl_cafile": "client.key"}, "ITMGUARD_KAFKA_SSL_CAFILE", "cannot be read as PEM"),
        (
            {"ssl_certfile": "client.pem", "ssl_keyfile": "other.key"},
            "ITMGUARD_KAFKA_SSL_CERTFILE",
            "KEY_VALUES_MISMATCH",
        ),
        (
            {"ssl_certfile": "client.pem", "ssl_keyfile": "client-encrypted.key"},
            "ITMGUARD_KAFKA_SSL_KEYFILE",
            "is encrypted",
        ),
    ],
)
def test_unusable_tls_files_are_refused_naming_the_setting(
    files: dict[str, str], setting: str, says: str
) -> None:
    """A CA file without certificates, a key that is not the certificate's, or an encrypted
    key (nobody is there to type its passphrase) are refused before the worker connects."""
    security = KafkaSecurity(protocol="SSL", **{k: TLS / v for k, v in files.items()})
    with pytest.raises(ConfigError) as info:
        ssl_context(security)
    assert info.value.setting == setting
    assert says in str(info.value)


def test_the_password_is_masked_where_settings_are_shown() -> None:
    """The SASL password shows as *** in the settings' repr, which the worker logs."""
    settings = Settings.from_env(
        {
            "ITMGUARD_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "ITMGUARD_KAFKA_SASL_USERNAME": "itmguard",
            "ITMGUARD_KAFKA_SASL_PASSWORD": PASSWORD,
        }
    )
    assert settings.kafka_security.sasl_password == PASSWORD
    assert PASSWORD not in repr(settings)
    assert "sasl_password='***'" in repr(settings)
    assert PASSWORD not in repr(broker_credentials(settings.kafka_security))


def test_the_faust_app_gets_the_credentials_and_the_group_instance_id() -> None:
    """create_app hands Faust the mapped credentials and the static membership id."""
    settings = Settings.from_env(
        {
            "ITMGUARD_KAFKA_SECURITY_PROTOCOL": "SSL",
            "ITMGUARD_KAFKA_SSL_CAFILE": str(TLS / "ca.pem"),
            "ITMGUARD_GROUP_INSTANCE_ID": "itmguard-2",
        }
    )
    engine = sa.create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    app = create_app(settings, FakeScorer(lambda *_: 0.5), engine)
    assert app.conf.consumer_group_instance_id == "itmguard-2"
    passed = dict(credentials_to_aiokafka_auth(app.conf.broker_credentials))
    assert passed["security_protocol"] == "SSL"
    assert isinstance(passed["ssl_context"], ssl.SSLContext)
    default = create_app(Settings(), FakeScorer(lambda *_: 0.5), engine)
    assert default.conf.consumer_group_instance_id is None
    assert default.conf.broker_credentials is None


def test_the_worker_refuses_bad_security_settings_before_loading_the_model() -> None:
    """`itmguard worker` with SASL_SSL and no password stops with a usage error naming the
    setting, before it looks for a bundle (none is given here)."""
    result = CliRunner().invoke(
        main,
        ["worker", "--metrics-port", "0"],
        env={
            "ITMGUARD_BUNDLE": None,
            "ITMGUARD_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "ITMGUARD_KAFKA_SASL_USERNAME": "itmguard",
        },
    )
    assert result.exit_code == 2, result.output
    assert "ITMGUARD_KAFKA_SASL_PASSWORD=None: required when" in result.output
    assert "ITMGUARD_BUNDLE" not in result.output
