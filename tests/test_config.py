"""Settings from environment variables and flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.config import SETTINGS, FetchLimits, Settings
from worker.errors import ConfigError
from worker.kafka_security import KafkaSecurity


def test_defaults_without_environment() -> None:
    """An empty environment gives the documented defaults."""
    settings = Settings.from_env({})
    assert settings.posts_topic == "posts"
    assert settings.flags_topic == "moderation-flags"
    assert settings.dlq_topic == "posts-dlq"
    assert settings.providers == ("tensorrt", "cuda", "cpu")
    assert settings.threshold is None
    assert (settings.cpu_threads, settings.cpu_memory_arena) == (0, True)
    assert settings.group_instance_id is None
    assert (settings.kafka_security.protocol, settings.kafka_security.sasl_mechanism) == (
        "PLAINTEXT",
        "PLAIN",
    )


def test_environment_values_are_parsed() -> None:
    """Each kind of value is parsed into its type."""
    settings = Settings.from_env(
        {
            "ITMGUARD_KAFKA_BOOTSTRAP": "kafka://a:9092, b:9093",
            "ITMGUARD_MAX_BATCH": "64",
            "ITMGUARD_THRESHOLD": "0.25",
            "ITMGUARD_PROVIDERS": "CUDA,cpu",
            "ITMGUARD_BUNDLE": "/models/x",
            "ITMGUARD_IMAGE_MAX_PIXELS": "1000",
            "ITMGUARD_IMAGE_ALLOW_HOSTS": "img.local, cdn.local",
            "ITMGUARD_CPU_THREADS": "2",
            "ITMGUARD_CPU_MEMORY_ARENA": "off",
            "ITMGUARD_GROUP_INSTANCE_ID": "itmguard-0",
            "ITMGUARD_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
            "ITMGUARD_KAFKA_SASL_MECHANISM": "Scram-Sha-256",
            "ITMGUARD_KAFKA_SSL_CAFILE": "/etc/kafka/ca.pem",
            "ITMGUARD_KAFKA_SSL_CERTFILE": "",
        }
    )
    assert settings.kafka_bootstrap == ("a:9092", "b:9093")
    assert settings.max_batch == 64
    assert settings.threshold == 0.25
    assert settings.providers == ("cuda", "cpu")
    assert settings.bundle == Path("/models/x")
    assert settings.fetch_limits == FetchLimits(
        max_pixels=1000, allow_hosts=("img.local", "cdn.local")
    )
    assert (settings.cpu_threads, settings.cpu_memory_arena) == (2, False)
    assert settings.group_instance_id == "itmguard-0"
    assert settings.kafka_security == KafkaSecurity(
        protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256", ssl_cafile=Path("/etc/kafka/ca.pem")
    )


def test_empty_values_leave_optional_settings_unset() -> None:
    """An empty variable (a chart that always sets it) means unset: dynamic membership, no
    credentials, no files."""
    settings = Settings.from_env(
        {
            f"ITMGUARD_{name}": ""
            for name in (
                "GROUP_INSTANCE_ID",
                "KAFKA_SASL_USERNAME",
                "KAFKA_SASL_PASSWORD",
                "KAFKA_SSL_CAFILE",
                "KAFKA_SSL_CERTFILE",
                "KAFKA_SSL_KEYFILE",
            )
        }
    )
    assert settings.group_instance_id is None
    assert settings.kafka_security == KafkaSecurity()


def test_flags_win_over_environment() -> None:
    """A flag given on the command line overrides the variable; an absent flag does not."""
    settings = Settings.from_env(
        {"ITMGUARD_MAX_BATCH": "8", "ITMGUARD_POSTS_TOPIC": "a"},
        {"ITMGUARD_MAX_BATCH": "16", "ITMGUARD_POSTS_TOPIC": None},
    )
    assert (settings.max_batch, settings.posts_topic) == (16, "a")


@pytest.mark.parametrize(
    ("env", "value", "says"),
    [
        ("ITMGUARD_MAX_BATCH", "0", "between 1 and 1024"),
        ("ITMGUARD_MAX_BATCH", "many", "whole number"),
        ("ITMGUARD_THRESHOLD", "1.5", "between 0.0 and 1.0"),
        ("ITMGUARD_PROVIDERS", "rocm", "choose from tensorrt, cuda, cpu"),
        ("ITMGUARD_DATABASE_URL", "mysql://x/y", "postgresql+psycopg://"),
        ("ITMGUARD_DATABASE_URL", "not a url", "not a SQLAlchemy URL"),
        ("ITMGUARD_KAFKA_BOOTSTRAP", "localhost", "not host:port"),
        ("ITMGUARD_POSTS_TOPIC", "bad topic!", "topic name"),
        ("ITMGUARD_LOG_LEVEL", "loud", "choose from"),
        ("ITMGUARD_IMAGE_ALLOW_HTTP", "maybe", "true or false"),
        ("ITMGUARD_IMAGE_TIMEOUT_S", "0", "between 0.1 and 300.0"),
        ("ITMGUARD_CPU_THREADS", "-1", "between 0 and 1024"),
        ("ITMGUARD_CPU_THREADS", "all", "whole number"),
        ("ITMGUARD_CPU_MEMORY_ARENA", "small", "true or false"),
        ("ITMGUARD_GROUP_INSTANCE_ID", "pod 0", "letters, digits"),
        ("ITMGUARD_GROUP_INSTANCE_ID", "x" * 250, "1-249"),
        ("ITMGUARD_KAFKA_SECURITY_PROTOCOL", "TLS", "PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
        ("ITMGUARD_KAFKA_SASL_MECHANISM", "GSSAPI", "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
    ],
)
def test_bad_values_name_the_setting(env: str, value: str, says: str) -> None:
    """A bad value raises ConfigError naming the variable, the value and the rule."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({env: value})
    assert info.value.setting == env
    assert env in str(info.value) and value in str(info.value) and says in str(info.value)


def test_heartbeat_must_fit_the_session_timeout() -> None:
    """A heartbeat longer than a third of the session timeout is refused."""
    with pytest.raises(ConfigError, match="ITMGUARD_HEARTBEAT_S"):
        Settings.from_env({"ITMGUARD_SESSION_TIMEOUT_S": "6", "ITMGUARD_HEARTBEAT_S": "3"})


def test_repr_masks_the_database_password() -> None:
    """The password in the database URL never reaches a log line."""
    settings = Settings.from_env({"ITMGUARD_DATABASE_URL": "postgresql+psycopg://u:hunter2@db/x"})
    assert "hunter2" not in repr(settings)
    assert "u:***@db" in repr(settings)


def test_every_setting_is_documented_in_the_settings_page() -> None:
    """Each variable and flag appears in the settings table of docs/settings.md."""
    page = (Path(__file__).parent.parent / "docs" / "settings.md").read_text()
    for spec in SETTINGS:
        assert f"| `{spec.env}` | `{spec.flag}` |" in page
