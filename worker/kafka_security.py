"""How the worker authenticates to Kafka and encrypts its connections: the settings, checked.

The security protocol says which of TLS and SASL are used; the other
settings only make sense with the right protocol, so a combination that would
silently drop credentials or certificates (a SASL password under PLAINTEXT, a
certificate without its key) is refused at start, naming the setting to fix.
The TLS context comes from aiokafka's own helper; `worker.agents` hands both
to Faust. Nothing here imports Kafka clients until a context is built.
"""

from __future__ import annotations

import dataclasses
import ssl
from dataclasses import dataclass
from pathlib import Path

from worker.errors import ConfigError

__all__ = ["SASL_MECHANISMS", "SECURITY_PROTOCOLS", "KafkaSecurity", "check", "ssl_context"]

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

_PROTOCOL = "ITMGUARD_KAFKA_SECURITY_PROTOCOL"
_FILES = {
    "ssl_cafile": "ITMGUARD_KAFKA_SSL_CAFILE",
    "ssl_certfile": "ITMGUARD_KAFKA_SSL_CERTFILE",
    "ssl_keyfile": "ITMGUARD_KAFKA_SSL_KEYFILE",
}


@dataclass(frozen=True, repr=False)
class KafkaSecurity:
    """The Kafka connection's security protocol, SASL credentials and TLS files."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.sasl_password is not None:
            shown["sasl_password"] = "***"
        return f"KafkaSecurity({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


def check(security: KafkaSecurity) -> None:
    """Refuse, at start and before the model loads, what the Kafka client would fail on.

    Raises:
        ConfigError: as `ssl_context` does.
    """
    ssl_context(security)


def _check_combination(security: KafkaSecurity) -> None:
    """Refuse settings that contradict the protocol, or name files that do not exist."""
    credentials = {
        "ITMGUARD_KAFKA_SASL_USERNAME": security.sasl_username,
        "ITMGUARD_KAFKA_SASL_PASSWORD": security.sasl_password,
    }
    for env, value in credentials.items():
        shown = "***" if value is not None and env.endswith("PASSWORD") else value
        if security.sasl and value is None:
            raise ConfigError(env, None, f"required when {_PROTOCOL} is {security.protocol}")
        if not security.sasl and value is not None:
            raise ConfigError(
                env,
                shown,
                f"{_PROTOCOL} is {security.protocol}, which sends no credentials: "
                "use SASL_SSL or SASL_PLAINTEXT",
            )
    for attr, env in _FILES.items():
        path: Path | None = getattr(security, attr)
        if path is None:
            continue
        if not security.tls:
            raise ConfigError(
                env,
                str(path),
                f"{_PROTOCOL} is {security.protocol}, which does not use TLS: use SSL or SASL_SSL",
            )
        if not path.is_file():
            raise ConfigError(env, str(path), "no such file")
    if (security.ssl_certfile is None) != (security.ssl_keyfile is None):
        given, missing = (
            ("ITMGUARD_KAFKA_SSL_CERTFILE", "ITMGUARD_KAFKA_SSL_KEYFILE")
            if security.ssl_keyfile is None
            else ("ITMGUARD_KAFKA_SSL_KEYFILE", "ITMGUARD_KAFKA_SSL_CERTFILE")
        )
        raise ConfigError(
            missing, None, f"required with {given}: a client certificate needs its key"
        )


def ssl_context(security: KafkaSecurity) -> ssl.SSLContext | None:
    """The TLS context for the brokers, or None when the protocol uses no TLS.

    Without ITMGUARD_KAFKA_SSL_CAFILE the system's CA certificates are trusted;
    broker host names are always checked.

    Raises:
        ConfigError: naming the first setting to fix: a setting the protocol would ignore
            (a password under PLAINTEXT), a certificate without its key or the reverse, a
            missing file, a file OpenSSL cannot load as PEM, or an encrypted key (there is
            no one to type its passphrase).
    """
    _check_combination(security)
    if not security.tls:
        return None
    from aiokafka.helpers import create_ssl_context

    try:
        context: ssl.SSLContext = create_ssl_context(cafile=security.ssl_cafile)
    except OSError as exc:  # ssl.SSLError included
        raise ConfigError(_FILES["ssl_cafile"], str(security.ssl_cafile), _why(exc)) from None
    if security.ssl_certfile is not None:
        keyfile = security.ssl_keyfile

        def encrypted() -> str:
            raise ConfigError(
                _FILES["ssl_keyfile"], str(keyfile), "is encrypted: give the key unencrypted"
            )

        try:
            context.load_cert_chain(security.ssl_certfile, keyfile, password=encrypted)
        except OSError as exc:
            raise ConfigError(
                _FILES["ssl_certfile"],
                str(security.ssl_certfile),
                f"with {_FILES['ssl_keyfile']}={str(keyfile)!r}: {_why(exc)}",
            ) from None
    return context


def _why(exc: OSError) -> str:
    reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
    return f"cannot be read as PEM ({reason})"
