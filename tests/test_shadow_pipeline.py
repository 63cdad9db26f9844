"""A shadow model through a real broker, worker and Postgres."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import onnx
import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, TopicPartition
from onnx import TensorProto, helper

from tests.support import consume, create_worker_topics, wait_for_rows, worker_env
from worker.demo.embedded import free_port, produce

pytestmark = pytest.mark.integration

SHAPES_BUNDLE = Path(__file__).parent / "data" / "shapes-itm"
TOTAL = 48


def failing_bundle(root: Path) -> Path:
    """The shapes bundle's contract over a graph whose probability is 0.6 × (mean pixel + 2):
    in [0, 1] for the warm-up's blank pictures, above 1 (no probability) for real ones."""
    bundle = root / "failing"
    shutil.copytree(SHAPES_BUNDLE, bundle)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["pixel_values"], ["mean"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Add", ["mean", "two"], ["shifted"]),
            helper.make_node("Mul", ["shifted", "scale"], ["match_probability"]),
        ],
        "failing",
        [
            helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 96, 96]),
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info(
                "attention_mask", TensorProto.INT64, ["batch", "sequence"]
            ),
        ],
        [helper.make_tensor_value_info("match_probability", TensorProto.FLOAT, ["batch"])],
        [
            helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
            helper.make_tensor("scale", TensorProto.FLOAT, [], [0.6]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, bundle / "model.onnx")
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["name"] = "failing"
    manifest["model_sha256"] = hashlib.sha256((bundle / "model.onnx").read_bytes()).hexdigest()
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    return bundle


def _rows(url: str, prefix: str) -> list[sa.Row[Any]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT post_id, model_id, role, verdict, score, error_code FROM verdicts"
                " WHERE post_id LIKE :p ORDER BY post_id, model_id"
            ),
            {"p": f"{prefix}-%"},
        ).all()
    engine.dispose()
    return list(rows)


def _committed(broker: str, name: str) -> int:
    """The offsets the worker's group committed on its posts topic, summed over partitions."""

    async def run() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=broker, group_id=f"{name}-group")
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic(f"{name}-posts") or set()
            offsets = [
                await consumer.committed(TopicPartition(f"{name}-posts", p)) for p in partitions
            ]
        finally:
            await consumer.stop()
        return sum(o or 0 for o in offsets)

    return asyncio.run(run())


def _events(prefix: str) -> list[tuple[bytes | None, bytes]]:
    """TOTAL shapes posts the shapes model was trained on the like of, half of them lying;
    the same pictures and captions for every prefix."""
    from export.shapes import generate_pairs, labelled_events

    docs = labelled_events(generate_pairs(TOTAL, seed=4242), prefix=prefix)
    return [
        (d["post_id"].encode(), json.dumps({k: v for k, v in d.items() if k != "label"}).encode())
        for d in docs
    ]


def _count(url: str) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        n = int(conn.execute(sa.text("SELECT count(*) FROM verdicts")).scalar_one())
    engine.dispose()
    return n


def _run(
    broker: str,
    url: str,
    name: str,
    worker_process,
    tmp_path: Path,
    rows_per_post: int = 1,
    **extra: str,
) -> str:
    """A worker over TOTAL generated posts of its own; returns its metrics page."""
    port = free_port()
    create_worker_topics(broker, name)
    env = worker_env(
        broker, url, SHAPES_BUNDLE, name, 0.5, ITMGUARD_METRICS_PORT=str(port), **extra
    )
    worker = worker_process(env, tmp_path / f"{name}.log")
    proc = worker.start()
    expected = _count(url) + TOTAL * rows_per_post
    produce(broker, f"{name}-posts", _events(name))
    wait_for_rows(url, expected, timeout=240, proc=proc)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        scraped = response.read().decode()
    assert worker.stop() == 0
    return scraped


def test_shadow_verdicts_are_stored_and_marked_but_never_flagged_or_queued(
    broker: str, database_url: str, tiny_bundle: Path, worker_process, tmp_path: Path
) -> None:
    """A shadow that calls nearly every post a mismatch (threshold 0.99): each post gets a
    primary and a shadow verdict row, but the flags and review items are the primary's."""
    name = "shadowed"
    scraped = _run(
        broker,
        database_url,
        name,
        worker_process,
        tmp_path,
        rows_per_post=2,
        ITMGUARD_SHADOW_BUNDLE=str(tiny_bundle),
        ITMGUARD_SHADOW_THRESHOLD="0.99",
    )
    rows = _rows(database_url, name)
    primary = [r for r in rows if r.role == "primary"]
    shadow = [r for r in rows if r.role == "shadow"]
    assert len(primary) == len(shadow) == TOTAL
    assert {r.model_id for r in shadow} == {"tiny-blip@1"}
    assert sum(r.verdict == "mismatch" for r in shadow) == TOTAL
    flagged = {r.post_id for r in primary if r.verdict == "mismatch"}
    assert 0 < len(flagged) < TOTAL
    flags = [json.loads(v) for v in consume(broker, f"{name}-flags", expect=len(flagged))]
    assert sorted(f["post_id"] for f in flags) == sorted(flagged)
    assert {f["model_id"] for f in flags} == {"shapes-itm@1"}
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        queued = conn.execute(sa.text("SELECT post_id, model_id FROM review_items")).all()
    engine.dispose()
    assert {m for _, m in queued} == {"shapes-itm@1"} and {p for p, _ in queued} == flagged
    assert 'role="shadow"' in scraped and 'model_id="tiny-blip@1"' in scraped


@pytest.mark.parametrize("fault", ["inference", "load"])
def test_a_failing_shadow_leaves_the_primary_exactly_as_without_one(
    fault: str, broker: str, database_url: str, worker_process, tmp_path: Path
) -> None:
    """A shadow whose model gives no probability on real pictures, or one that cannot load,
    changes nothing of the primary's: the same verdicts and scores, the same flags, every
    offset committed; the failure is counted."""
    plain, faulty = f"plain-{fault}", f"faulty-{fault}"
    _run(broker, database_url, plain, worker_process, tmp_path)
    shadow_bundle = failing_bundle(tmp_path) if fault == "inference" else tmp_path / "absent"
    scraped = _run(
        broker,
        database_url,
        faulty,
        worker_process,
        tmp_path,
        rows_per_post=2 if fault == "inference" else 1,
        ITMGUARD_SHADOW_BUNDLE=str(shadow_bundle),
    )

    def primary(prefix: str) -> dict[str, tuple[str, float]]:
        return {
            r.post_id.removeprefix(prefix): (r.verdict, round(r.score, 6))
            for r in _rows(database_url, prefix)
            if r.role == "primary"
        }

    assert primary(faulty) == primary(plain) and len(primary(plain)) == TOTAL
    flagged = sum(v == "mismatch" for v, _ in primary(plain).values())
    flags = {
        name: sorted(
            json.loads(v)["post_id"].removeprefix(name)
            for v in consume(broker, f"{name}-flags", expect=flagged)
        )
        for name in (plain, faulty)
    }
    assert flags[faulty] == flags[plain]
    assert _committed(broker, faulty) == _committed(broker, plain) == TOTAL
    shadow = [r for r in _rows(database_url, faulty) if r.role == "shadow"]
    if fault == "inference":
        assert len(shadow) == TOTAL
        assert {(r.verdict, r.error_code) for r in shadow} == {("error", "inference_failed")}
    else:
        assert shadow == []
    assert f'itmguard_shadow_failures_total{{reason="{fault}"}}' in scraped
