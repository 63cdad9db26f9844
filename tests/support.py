"""Real data and real databases for the tests: a fresh Postgres database per test,
generated images and post events, reading a topic back."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import random
import struct
import subprocess
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer
from PIL import Image, ImageDraw

from worker.embedded import create_topics


ADMIN_DATABASE_URL = os.environ.get(
    "ITMGUARD_TEST_ADMIN_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220), "yellow": (240, 210, 30)}
SHAPES = ("circle", "square", "triangle")


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new, empty database on the test Postgres; dropped afterwards. Yields its URL."""
    admin = sa.create_engine(ADMIN_DATABASE_URL, isolation_level="AUTOCOMMIT")
    name = f"itmguard_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        raise RuntimeError(
            f"the integration tests need Postgres at {ADMIN_DATABASE_URL} (set "
            "ITMGUARD_TEST_ADMIN_DATABASE_URL to another server); start the local one with "
            "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
        ) from exc
    url = sa.engine.make_url(ADMIN_DATABASE_URL).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def consume(bootstrap: str, topic: str, *, expect: int, timeout: float = 60.0) -> list[bytes]:
    """Read `topic` from the start until `expect` messages arrived or `timeout` passed."""

    async def run() -> list[bytes]:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
            enable_auto_commit=False, group_id=None,
        )
        await consumer.start()
        values: list[bytes] = []
        deadline = time.monotonic() + timeout
        try:
            while len(values) < expect and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    values.extend(r.value for r in records)
            # a short extra read catches messages beyond the expected count
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                values.extend(r.value for r in records)
        finally:
            await consumer.stop()
        return values

    return asyncio.run(run())


def shape_image(colour: str, shape: str, *, size: int = 96, seed: int = 0, fmt: str = "PNG") -> bytes:
    """A picture of one coloured shape on a light background, as encoded bytes."""
    rng = random.Random(seed)
    image = Image.new("RGB", (size + rng.randint(0, 40), size), (245, 245, 240))
    draw = ImageDraw.Draw(image)
    x0, y0 = rng.randint(5, 25), rng.randint(5, 25)
    box = (x0, y0, x0 + size // 2, y0 + size // 2)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=fill)
    out = io.BytesIO()
    image.save(out, format=fmt, quality=90) if fmt == "JPEG" else image.save(out, format=fmt)
    return out.getvalue()


def post_event(post_id: str, caption: str, image: bytes, **extra: Any) -> bytes:
    doc = {"post_id": post_id, "caption": caption,
           "image": {"data": base64.b64encode(image).decode("ascii")}, **extra}
    return json.dumps(doc).encode()


def good_events(n: int, *, prefix: str, seed: int = 0) -> list[tuple[str, bytes]]:
    """`n` valid post events with generated JPEG and PNG images; half the captions lie."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        image = shape_image(colour, shape, seed=i, fmt="JPEG" if i % 2 else "PNG")
        if i % 2:
            colour = rng.choice([c for c in COLOURS if c != colour])
        post_id = f"{prefix}-{i:05d}"
        events.append((post_id, post_event(post_id, f"a {colour} {shape}", image,
                                           created_at="2026-11-28T10:00:00+00:00")))
    return events


def count_rows(url: str, where: str = "true") -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT count(*) FROM verdicts WHERE {where}")).scalar_one())
    finally:
        engine.dispose()


def wait_for_rows(url: str, n: int, timeout: float, *, proc: subprocess.Popen[bytes] | None = None) -> float:
    """Poll until `verdicts` holds `n` rows; returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if count_rows(url) >= n:
            return time.monotonic() - start
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode} before {n} verdicts")
        time.sleep(0.5)
    raise AssertionError(f"only {count_rows(url)} of {n} verdicts after {timeout}s")


def worker_env(
    broker: str, database_url: str, bundle: Path, name: str, threshold: float, **extra: str
) -> dict[str, str]:
    """Environment for a test worker: its own topics and group, fast batches and group joins."""
    return {
        "ITMGUARD_KAFKA_BOOTSTRAP": broker,
        "ITMGUARD_DATABASE_URL": database_url,
        "ITMGUARD_BUNDLE": str(bundle),
        "ITMGUARD_POSTS_TOPIC": f"{name}-posts",
        "ITMGUARD_FLAGS_TOPIC": f"{name}-flags",
        "ITMGUARD_DLQ_TOPIC": f"{name}-dlq",
        "ITMGUARD_GROUP_ID": f"{name}-group",
        "ITMGUARD_MAX_BATCH": "32",
        "ITMGUARD_MAX_WAIT_MS": "100",
        "ITMGUARD_THRESHOLD": repr(threshold),
        "ITMGUARD_PROVIDERS": "cpu",
        "ITMGUARD_SESSION_TIMEOUT_S": "10",
        "ITMGUARD_HEARTBEAT_S": "1",
        "ITMGUARD_METRICS_PORT": "0",
        **extra,
    }


def create_worker_topics(broker: str, name: str, partitions: int = 4) -> None:
    create_topics(broker, {f"{name}-posts": partitions, f"{name}-flags": 2, f"{name}-dlq": 1})


@dataclass
class FakeScorer:
    """Scores each pair with `rule`; records the batch sizes it was called with."""

    rule: Callable[[Image.Image, str], float]
    model_id: str = "fake@1"
    threshold: float = 0.5
    provider: str = "fake"
    calls: list[int] = field(default_factory=list)

    def score(self, images: Sequence[Image.Image], captions: Sequence[str]) -> np.ndarray:
        self.calls.append(len(images))
        return np.asarray([self.rule(i, c) for i, c in zip(images, captions, strict=True)])


def pooled_events(n: int, prefix: str, *, seed: int = 0) -> list[tuple[bytes | None, bytes]]:
    """`n` valid `(key, event)` messages over a pool of 12 generated images; captions vary."""
    rng = random.Random(seed)
    pool = [shape_image(c, s, seed=i) for i, (c, s) in enumerate(
        (c, s) for c in COLOURS for s in SHAPES
    )]
    messages: list[tuple[bytes | None, bytes]] = []
    for i in range(n):
        post_id = f"{prefix}-{i:05d}"
        caption = rng.choice(["a red circle", "a blue square"])
        messages.append((post_id.encode(), post_event(post_id, caption, rng.choice(pool))))
    return messages


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares `width` x `height` but holds no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def poison_corpus(rounds: int = 40) -> list[tuple[str | None, str, bytes]]:
    """At least 500 bad events as `(post_id or None, expected reason, payload)`."""
    rng = random.Random(11)
    jpeg = shape_image("red", "circle", fmt="JPEG")
    png = shape_image("blue", "square")
    bomb = base64.b64encode(png_header(50_000, 50_000)).decode()

    def event(post_id: str, **fields: object) -> bytes:
        doc: dict[str, object] = {"post_id": post_id, "caption": "a red circle",
                                  "image": {"data": base64.b64encode(png).decode()}}
        doc.update(fields)
        return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()

    def data(raw: bytes) -> dict[str, str]:
        return {"data": base64.b64encode(raw).decode()}

    cases: list[tuple[str | None, str, bytes]] = []
    for i in range(rounds):
        p = f"poison-{i:03d}"
        cases += [
            (None, "invalid_json", b'{"post_id": "' + p.encode() + b'", "caption": '),
            (None, "invalid_json", bytes(rng.randrange(256) for _ in range(64)) + b"\xff"),
            (f"{p}-type", "invalid_event", event(f"{p}-type", caption=rng.choice([7, [], {}, True]))),
            (f"{p}-miss", "invalid_event", event(f"{p}-miss", caption=None)),
            (f"{p}-extra", "invalid_event", event(f"{p}-extra", surprise=1)),
            (f"{p}-empty", "invalid_event", event(f"{p}-empty", caption="")),
            (f"{p}-long", "invalid_event", event(f"{p}-long", caption="x" * (1_000_000 if i < 3 else 6000))),
            (f"{p}-nul", "invalid_event", event(f"{p}-nul", caption="nul \x00 here")),
            (f"{p}-trunc", "image_decode_failed",
             event(f"{p}-trunc", image=data(jpeg[: rng.randint(10, len(jpeg) - 10)]))),
            (f"{p}-corrupt", "image_decode_failed",
             event(f"{p}-corrupt", image=data(png[:40] + bytes(200) + png[240:]))),
            (f"{p}-zero", "invalid_event", event(f"{p}-zero", image={"data": ""})),
            (f"{p}-bomb", "image_too_many_pixels", event(f"{p}-bomb", image={"data": bomb})),
            (f"{p}-text", "image_decode_failed", event(f"{p}-text", image=data(b"GIF89a? no, text"))),
        ]
    for i in range(3):
        cases.append((f"poison-huge-{i}", "image_too_large",
                      event(f"poison-huge-{i}", image=data(bytes(1_200_000)))))
    return cases
