"""End to end on real parts: tansu broker, Postgres, an exported ONNX bundle, the worker process."""

from __future__ import annotations

import base64
import json
import signal
import statistics
import time
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support import consume, create_worker_topics, wait_for_rows, worker_env
from worker.bundle import load_bundle
from worker.config import FetchLimits
from worker.demo.embedded import free_port, produce
from worker.images import decode_image
from worker.messages import validator
from worker.scoring import OnnxScorer
from worker.testing import good_events, pooled_events, post_event, shape_image

pytestmark = pytest.mark.integration


def _median_threshold(bundle: Path, events: list[tuple[str, bytes]]) -> float:
    """A threshold that splits the tiny random model's scores into matches and mismatches."""
    scorer = OnnxScorer(load_bundle(bundle), providers=("cpu",))
    docs = [json.loads(payload) for _, payload in events[:64]]
    images = [decode_image(base64.b64decode(d["image"]["data"]), FetchLimits()) for d in docs]
    return float(statistics.median(scorer.score(images, [d["caption"] for d in docs])))


def _bad_events() -> dict[str, tuple[str | None, bytes]]:
    """Malformed events by the reason code each must get, with the post_id it carries."""
    jpeg = shape_image("red", "circle", fmt="JPEG")
    return {
        "invalid_json": (None, b'{"post_id": "bad-json", "caption": '),
        "invalid_event": (
            "bad-no-caption",
            json.dumps(
                {"post_id": "bad-no-caption", "image": {"data": base64.b64encode(jpeg).decode()}}
            ).encode(),
        ),
        "image_decode_failed": (
            "bad-not-image",
            post_event("bad-not-image", "a red circle", b"this is plain text, not an image"),
        ),
        "image_decode_failed/truncated": (
            "bad-truncated",
            post_event("bad-truncated", "a red circle", jpeg[: len(jpeg) // 2]),
        ),
    }


def test_every_post_gets_one_verdict_flags_and_dead_letters(
    broker: str, database_url: str, tiny_bundle: Path, worker_process, tmp_path: Path
) -> None:
    """500 posts and 4 malformed ones through a running worker: one verdict row per post,
    every mismatch on the flag topic in schema, every malformed event dead-lettered with its
    reason, and posts after the bad ones still scored."""
    name = "e2e"
    create_worker_topics(broker, name)
    events = good_events(500, prefix="post")
    threshold = _median_threshold(tiny_bundle, events)
    bad = _bad_events()
    metrics_port = free_port()
    env = worker_env(
        broker,
        database_url,
        tiny_bundle,
        name,
        threshold,
        ITMGUARD_METRICS_PORT=str(metrics_port),
        ITMGUARD_METRICS_HOST="127.0.0.1",
    )
    worker = worker_process(env, tmp_path / "worker.log")
    proc = worker.start()
    messages: list[tuple[bytes | None, bytes]] = [(pid.encode(), v) for pid, v in events[:250]]
    messages += [(None, payload) for _, payload in bad.values()]
    messages += [(pid.encode(), v) for pid, v in events[250:]]
    started = time.monotonic()
    produce(broker, f"{name}-posts", messages)
    with_id = sum(1 for post_id, _ in bad.values() if post_id is not None)
    wait_for_rows(database_url, 500 + with_id, timeout=240, proc=proc)
    elapsed = time.monotonic() - started
    print(
        f"\n500 good + {len(bad)} bad events scored in {elapsed:.1f}s: {504 / elapsed:.1f} events/s"
    )

    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT post_id, verdict, error_code, score, threshold, model_id FROM verdicts")
        ).all()
        queued = {r.post_id for r in conn.execute(sa.text("SELECT post_id FROM review_items"))}
    engine.dispose()
    by_post = {r.post_id: r for r in rows}
    assert len(rows) == len(by_post) == 500 + with_id
    assert {pid for pid, _ in events} <= by_post.keys()
    good_rows = [by_post[pid] for pid, _ in events]
    assert all(r.verdict in ("match", "mismatch") and r.error_code is None for r in good_rows)
    assert all(r.model_id == "tiny-blip@1" for r in rows)
    mismatches = {r.post_id for r in good_rows if r.verdict == "mismatch"}
    assert 0 < len(mismatches) < 500
    assert all((r.score < threshold) == (r.post_id in mismatches) for r in good_rows)
    assert queued == mismatches
    for code, (post_id, _) in bad.items():
        if post_id is not None:
            assert (by_post[post_id].verdict, by_post[post_id].error_code) == (
                "error",
                code.split("/")[0],
            )

    flags = [json.loads(v) for v in consume(broker, f"{name}-flags", expect=len(mismatches))]
    for flag in flags:
        validator("verdict.v1").validate(flag)
    assert {f["post_id"] for f in flags} == mismatches
    assert all(f["verdict"] == "mismatch" for f in flags)

    letters = [json.loads(v) for v in consume(broker, f"{name}-dlq", expect=len(bad))]
    for letter in letters:
        validator("dead-letter.v1").validate(letter)
    assert sorted(letter["reason"] for letter in letters) == sorted(
        code.split("/")[0] for code in bad
    )
    originals = {base64.b64decode(letter["payload_b64"]) for letter in letters}
    assert originals == {payload for _, payload in bad.values()}
    assert proc.poll() is None, "the worker stopped after bad input"
    scraped = (
        urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        .read()
        .decode()
    )
    counted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in scraped.splitlines()
        if line.startswith("itmguard_verdicts_total{")
    )
    assert counted == len(rows)
    assert (
        'itmguard_model_info{model_id="tiny-blip@1",provider="CPUExecutionProvider",'
        'role="primary"} 1.0' in scraped
    )
    assert worker.stop() == 0


def test_restart_mid_stream_loses_nothing(
    broker: str, database_url: str, tiny_bundle: Path, worker_process, tmp_path: Path
) -> None:
    """SIGTERM a worker mid-stream and start another: still exactly one row per post."""
    name, total = "restart", 4000
    create_worker_topics(broker, name)
    events = [(m[0].decode(), m[1]) for m in pooled_events(total, "restart", seed=1)]
    env = worker_env(broker, database_url, tiny_bundle, name, 0.5)
    first = worker_process(env, tmp_path / "first.log")
    proc = first.start()
    produce(broker, f"{name}-posts", [(pid.encode(), v) for pid, v in events])
    wait_for_rows(database_url, 300, timeout=180, proc=proc)
    assert first.stop(signal.SIGTERM) == 0
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        done_at_stop = conn.execute(sa.text("SELECT count(*) FROM verdicts")).scalar_one()
    print(f"\nSIGTERM at 300+ rows: {done_at_stop} of {total} written when the first worker exited")
    assert done_at_stop < total, "the worker finished before it could be stopped mid-stream"
    second = worker_process(env, tmp_path / "second.log")
    wait_for_rows(database_url, total, timeout=240, proc=second.start())
    with engine.connect() as conn:
        ids = [r[0] for r in conn.execute(sa.text("SELECT post_id FROM verdicts"))]
    engine.dispose()
    assert sorted(ids) == sorted(pid for pid, _ in events)
    assert second.stop() == 0


SHAPES_BUNDLE = Path(__file__).parent / "data" / "shapes-itm"


def test_trained_model_flags_generated_mismatches_end_to_end(
    broker: str, database_url: str, worker_process, tmp_path: Path
) -> None:
    """The trained shapes model, through Kafka and Postgres, flags the generated mismatches
    (one-attribute hard negatives included) and passes the matches."""
    from export.shapes import generate_pairs, labelled_events

    name = "trained"
    create_worker_topics(broker, name)
    docs = list(labelled_events(generate_pairs(400, seed=90_210), prefix="trained"))
    labels = {doc["post_id"]: doc["label"] for doc in docs}
    kinds = {doc["post_id"]: doc["metadata"]["kind"] for doc in docs}
    env = worker_env(broker, database_url, SHAPES_BUNDLE, name, 0.5)
    del env["ITMGUARD_THRESHOLD"]  # the bundle's own, calibrated threshold
    worker = worker_process(env, tmp_path / "worker.log")
    proc = worker.start()
    produce(
        broker,
        f"{name}-posts",
        [
            (
                doc["post_id"].encode(),
                json.dumps({k: v for k, v in doc.items() if k != "label"}).encode(),
            )
            for doc in docs
        ],
    )
    wait_for_rows(database_url, len(docs), timeout=240, proc=proc)
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        verdicts = dict(conn.execute(sa.text("SELECT post_id, verdict FROM verdicts")).all())
    engine.dispose()
    right = {pid: (verdicts[pid] == "match") == (label == 1) for pid, label in labels.items()}
    accuracy = sum(right.values()) / len(right)
    by_kind = {
        k: sum(right[p] for p in right if kinds[p] == k) / sum(kinds[p] == k for p in right)
        for k in set(kinds.values())
    }
    print(
        f"\ntrained model end to end: accuracy {accuracy:.3f} on {len(right)} held-out pairs; "
        + ", ".join(f"{k} {v:.2f}" for k, v in sorted(by_kind.items()))
    )
    assert accuracy >= 0.95
    flagged = {pid for pid, v in verdicts.items() if v == "mismatch"}
    flags = [json.loads(v) for v in consume(broker, f"{name}-flags", expect=len(flagged))]
    assert {f["post_id"] for f in flags} == flagged
    # each flag says which words of its caption the picture contradicts
    captions = {doc["post_id"]: doc["caption"] for doc in docs}
    for flag in flags:
        for phrase in flag["explanation"]["phrases"]:
            caption = captions[flag["post_id"]]
            assert caption[phrase["start"] : phrase["end"]] == phrase["text"]
    for flag in flags:
        validator("verdict.v1").validate(flag)
    assert worker.stop() == 0


def test_a_post_sent_twice_in_one_batch_is_judged_by_its_last_version(
    broker: str, database_url: str, worker_process, tmp_path: Path
) -> None:
    """A post re-sent within one batch, first as a mismatch and then as a match, is stored as a
    match with no review item, publishes no flag, and counts as one verdict in the metrics."""
    from export.shapes import generate_pairs, labelled_events

    scorer = OnnxScorer(load_bundle(SHAPES_BUNDLE), providers=("cpu",))
    docs = list(labelled_events(generate_pairs(40, seed=7), prefix="twice"))
    images = [decode_image(base64.b64decode(d["image"]["data"]), FetchLimits()) for d in docs]
    scores = scorer.score(images, [d["caption"] for d in docs])
    mismatch = next(
        d for d, s in zip(docs, scores, strict=True) if d["label"] == 0 and s < scorer.threshold
    )
    match = next(
        d for d, s in zip(docs, scores, strict=True) if d["label"] == 1 and s >= scorer.threshold
    )
    control = next(
        d
        for d, s in zip(docs, scores, strict=True)
        if d["label"] == 0 and s < scorer.threshold and d is not mismatch
    )

    def event(doc: dict[str, object], post_id: str) -> bytes:
        kept = {k: v for k, v in doc.items() if k not in ("label", "metadata")}
        return json.dumps({**kept, "post_id": post_id}).encode()

    name = "twice"
    create_worker_topics(broker, name, partitions=1)
    produce(
        broker,
        f"{name}-posts",
        [
            (b"twice", event(mismatch, "twice")),
            (b"twice", event(match, "twice")),
            (b"control", event(control, "control")),
        ],
    )
    metrics_port = free_port()
    env = worker_env(
        broker,
        database_url,
        SHAPES_BUNDLE,
        name,
        scorer.threshold,
        ITMGUARD_METRICS_PORT=str(metrics_port),
        ITMGUARD_METRICS_HOST="127.0.0.1",
    )
    worker = worker_process(env, tmp_path / "worker.log")
    wait_for_rows(database_url, 2, timeout=120, proc=worker.start())
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        verdicts = dict(conn.execute(sa.text("SELECT post_id, verdict FROM verdicts")).all())
        queued = [r[0] for r in conn.execute(sa.text("SELECT post_id FROM review_items"))]
    engine.dispose()
    assert verdicts == {"twice": "match", "control": "mismatch"}
    assert queued == ["control"]
    flags = [json.loads(v)["post_id"] for v in consume(broker, f"{name}-flags", expect=1)]
    assert flags == ["control"]
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        scraped = response.read().decode()
    counted = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in scraped.splitlines()
        if line.startswith("itmguard_verdicts_total{")
    }
    assert sum(counted.values()) == 2, counted
    assert worker.stop() == 0
