"""The settings table: every ITMGUARD_* variable, the Settings attribute it fills, its parser.

Declared once, here, with the review queue's rows from `worker.settings_review`
appended: `worker.config` reads it into the one `Settings` object,
`worker.options` makes each command's flags from it, and `docs/settings.md`
documents every row (`tests/test_config.py` checks that it does).
"""

from __future__ import annotations

import re
from pathlib import Path

from worker.kafka_security import SASL_MECHANISMS, SECURITY_PROTOCOLS
from worker.parsers import (
    boolean,
    bootstrap_servers,
    choice,
    choices,
    csv,
    database_url,
    float_in,
    int_in,
    matching,
    nonempty,
    optional,
    topic_name,
)
from worker.settings_review import MODERATOR_NAME, REVIEW_ORDERS, REVIEW_SETTINGS
from worker.settings_spec import SettingSpec

__all__ = ["LOG_LEVELS", "MODERATOR_NAME", "PROVIDERS", "REVIEW_ORDERS", "SETTINGS", "SettingSpec"]

PROVIDERS = ("tensorrt", "cuda", "cpu")
LOG_LEVELS = ("debug", "info", "warning", "error")
KAFKA_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
KAFKA_NAME_RULE = "1-249 letters, digits, '.', '_' or '-' (a pod name fits)"


SETTINGS: tuple[SettingSpec, ...] = (
    SettingSpec(
        "ITMGUARD_KAFKA_BOOTSTRAP",
        "kafka_bootstrap",
        bootstrap_servers,
        "Kafka bootstrap servers, host:port[,host:port]",
    ),
    SettingSpec(
        "ITMGUARD_KAFKA_SECURITY_PROTOCOL",
        "kafka_security.protocol",
        choice(SECURITY_PROTOCOLS),
        "how the brokers are reached: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
    ),
    SettingSpec(
        "ITMGUARD_KAFKA_SASL_MECHANISM",
        "kafka_security.sasl_mechanism",
        choice(SASL_MECHANISMS),
        "SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
    ),
    SettingSpec(
        "ITMGUARD_KAFKA_SASL_USERNAME",
        "kafka_security.sasl_username",
        optional(str),
        "SASL user name (SASL_* protocols)",
    ),
    SettingSpec(
        "ITMGUARD_KAFKA_SASL_PASSWORD",
        "kafka_security.sasl_password",
        optional(str),
        "SASL password (SASL_* protocols); never logged",
        secret=True,
    ),
    SettingSpec(
        "ITMGUARD_KAFKA_SSL_CAFILE",
        "kafka_security.ssl_cafile",
        optional(Path),
        "PEM file of the CAs that sign the brokers' certificates; empty: the system's",
    ),
    SettingSpec(
        "ITMGUARD_KAFKA_SSL_CERTFILE",
        "kafka_security.ssl_certfile",
        optional(Path),
        "PEM client certificate, for brokers that require one",
    ),
    SettingSpec(
        "ITMGUARD_KAFKA_SSL_KEYFILE",
        "kafka_security.ssl_keyfile",
        optional(Path),
        "PEM private key of the client certificate, unencrypted",
    ),
    SettingSpec(
        "ITMGUARD_DATABASE_URL",
        "database_url",
        database_url,
        "Postgres as a SQLAlchemy URL, postgresql+psycopg://user:pass@host:5432/db",
    ),
    SettingSpec(
        "ITMGUARD_BUNDLE",
        "bundle",
        lambda t: Path(nonempty(t)),
        "model bundle directory (model.onnx, tokenizer.json, bundle.json)",
    ),
    SettingSpec(
        "ITMGUARD_POSTS_TOPIC", "posts_topic", topic_name, "topic the post events arrive on"
    ),
    SettingSpec(
        "ITMGUARD_FLAGS_TOPIC", "flags_topic", topic_name, "topic mismatch flags are sent to"
    ),
    SettingSpec(
        "ITMGUARD_DLQ_TOPIC",
        "dlq_topic",
        topic_name,
        "dead-letter topic for posts that could not be scored",
    ),
    SettingSpec(
        "ITMGUARD_DECISIONS_TOPIC",
        "decisions_topic",
        topic_name,
        "topic moderators' decisions (and their undos) are published to",
    ),
    SettingSpec(
        "ITMGUARD_GROUP_ID",
        "group_id",
        topic_name,
        "Kafka consumer group shared by all worker replicas",
    ),
    SettingSpec(
        "ITMGUARD_GROUP_INSTANCE_ID",
        "group_instance_id",
        optional(matching(KAFKA_NAME, KAFKA_NAME_RULE)),
        "static group membership id, unique per replica (a StatefulSet's pod name); "
        "empty: dynamic membership",
    ),
    SettingSpec(
        "ITMGUARD_MAX_BATCH", "max_batch", int_in(1, 1024), "most posts scored in one model call"
    ),
    SettingSpec(
        "ITMGUARD_MAX_WAIT_MS",
        "max_wait_ms",
        int_in(1, 60_000),
        "longest wait, in ms, for a batch to fill before it is scored",
    ),
    SettingSpec(
        "ITMGUARD_THRESHOLD",
        "threshold",
        optional(float_in(0.0, 1.0)),
        "match probability below which a post is a mismatch; empty: the bundle's",
    ),
    SettingSpec(
        "ITMGUARD_SHADOW_BUNDLE",
        "shadow_bundle",
        optional(lambda t: Path(nonempty(t))),
        "a second bundle scored beside the first, its verdicts stored but never flagged "
        "or queued; empty: none",
    ),
    SettingSpec(
        "ITMGUARD_SHADOW_THRESHOLD",
        "shadow_threshold",
        optional(float_in(0.0, 1.0)),
        "the shadow bundle's threshold; empty: its bundle's",
    ),
    SettingSpec(
        "ITMGUARD_SHADOW_WAIT_S",
        "shadow_wait_s",
        float_in(0.0, 600.0),
        "longest a batch waits for the shadow's scores after the primary's, in seconds",
    ),
    SettingSpec(
        "ITMGUARD_EXPLAIN_VARIANTS",
        "explain_variants",
        int_in(0, 64),
        "caption variants scored per flagged post to find the words the image contradicts; "
        "0: no explanations",
    ),
    SettingSpec(
        "ITMGUARD_PROVIDERS",
        "providers",
        choices(PROVIDERS),
        "ONNX Runtime execution providers allowed, in order of preference",
    ),
    SettingSpec(
        "ITMGUARD_TRT_CACHE_DIR",
        "trt_cache_dir",
        lambda t: Path(nonempty(t)),
        "directory for TensorRT engine and timing caches",
    ),
    SettingSpec(
        "ITMGUARD_REQUIRE_PROVIDER",
        "require_provider",
        optional(choice(PROVIDERS)),
        "provider the model must run on (tensorrt, cuda or cpu); the start fails if this "
        "onnxruntime lacks it or cannot load it; empty: the first available of "
        "ITMGUARD_PROVIDERS",
    ),
    SettingSpec(
        "ITMGUARD_TRT_FP16",
        "tensorrt.fp16",
        optional(boolean),
        "build fp16 TensorRT engines; empty: as the bundle's tensorrt.fp16 says",
    ),
    SettingSpec(
        "ITMGUARD_TRT_WORKSPACE_MB",
        "tensorrt.workspace_mb",
        int_in(0, 1 << 20),
        "most GPU scratch memory a TensorRT layer may use while its engine is built, in MiB; "
        "0: TensorRT's own limit",
    ),
    SettingSpec(
        "ITMGUARD_TRT_BUILDER_LEVEL",
        "tensorrt.builder_level",
        int_in(0, 5),
        "TensorRT builder optimisation level: higher builds longer for a faster engine",
    ),
    SettingSpec(
        "ITMGUARD_CPU_THREADS",
        "cpu_threads",
        int_in(0, 1024),
        "threads one model call uses on the CPU; 0: one per core of the machine, "
        "which in a container is the node's, not its CPU limit",
    ),
    SettingSpec(
        "ITMGUARD_DECODE_THREADS",
        "decode_threads",
        int_in(0, 1024),
        "threads that decode pictures, beside the model's; 0: one per usable core "
        "(the CPU limit in a container)",
    ),
    SettingSpec(
        "ITMGUARD_CPU_MEMORY_ARENA",
        "cpu_memory_arena",
        boolean,
        "keep ONNX Runtime's CPU memory arena: faster model calls, more resident memory",
    ),
    SettingSpec(
        "ITMGUARD_IMAGE_MAX_BYTES",
        "fetch_limits.max_bytes",
        int_in(1, 1 << 30),
        "largest encoded image accepted, in bytes",
    ),
    SettingSpec(
        "ITMGUARD_IMAGE_MAX_PIXELS",
        "fetch_limits.max_pixels",
        int_in(1, 1 << 32),
        "largest decoded image accepted, in pixels (width x height)",
    ),
    SettingSpec(
        "ITMGUARD_IMAGE_ALLOW_HOSTS",
        "fetch_limits.allow_hosts",
        csv,
        "image hosts (names, addresses or networks) allowed even on private or "
        "loopback addresses, comma separated",
    ),
    SettingSpec(
        "ITMGUARD_IMAGE_ALLOW_HTTP",
        "fetch_limits.allow_http",
        boolean,
        "fetch image URLs over plain http too (https only by default)",
    ),
    SettingSpec(
        "ITMGUARD_IMAGE_TIMEOUT_S",
        "fetch_limits.timeout_s",
        float_in(0.1, 300.0),
        "total time allowed for one image fetch, in seconds",
    ),
    SettingSpec(
        "ITMGUARD_IMAGE_CONNECT_TIMEOUT_S",
        "fetch_limits.connect_timeout_s",
        float_in(0.1, 60.0),
        "time allowed to connect to an image host, in seconds",
    ),
    SettingSpec(
        "ITMGUARD_IMAGE_MAX_REDIRECTS",
        "fetch_limits.max_redirects",
        int_in(0, 10),
        "redirects followed per image URL",
    ),
    SettingSpec(
        "ITMGUARD_IMAGE_RETRIES",
        "fetch_limits.retries",
        int_in(0, 5),
        "retries of an image fetch after a transient failure (timeout, 5xx, 429)",
    ),
    SettingSpec(
        "ITMGUARD_SESSION_TIMEOUT_S",
        "session_timeout_s",
        float_in(1.0, 300.0),
        "Kafka consumer session timeout in seconds",
    ),
    SettingSpec(
        "ITMGUARD_SHUTDOWN_GRACE_S",
        "shutdown_grace_s",
        float_in(0.0, 3600.0),
        "after SIGTERM, how long a batch that cannot be written keeps retrying before "
        "the worker abandons it uncommitted and exits",
    ),
    SettingSpec(
        "ITMGUARD_METRICS_HOST",
        "metrics_host",
        nonempty,
        "address /metrics, /livez and /readyz listen on",
    ),
    SettingSpec(
        "ITMGUARD_METRICS_PORT",
        "metrics_port",
        int_in(0, 65535),
        "port of /metrics, /livez and /readyz; 0 turns them off",
    ),
    SettingSpec(
        "ITMGUARD_HEARTBEAT_S",
        "heartbeat_s",
        float_in(0.1, 60.0),
        "Kafka consumer heartbeat interval in seconds",
    ),
    SettingSpec("ITMGUARD_LOG_LEVEL", "log_level", choice(LOG_LEVELS), "log level"),
    *REVIEW_SETTINGS,
)
