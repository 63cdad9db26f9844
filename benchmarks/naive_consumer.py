"""The consumer a user might write instead of the worker: one post at a time.

One aiokafka consumer reads a post, decodes its picture at full size, scores
it alone with the same bundle, INSERTs its verdict in a transaction of its
own and commits the offset, then reads the next. It is the baseline the
worker's batching and pipelining are measured against in
`benchmarks.throughput`; it has none of the worker's guarantees beyond
at-least-once.

    .venv/bin/python -m benchmarks.naive_consumer BOOTSTRAP TOPIC BUNDLE DATABASE_URL COUNT
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer
from PIL import Image, ImageOps

from worker.bundle import load_bundle
from worker.scoring import OnnxScorer

INSERT = sa.text(
    "INSERT INTO verdicts (post_id, model_id, score, threshold, verdict, event_time, scored_at,"
    ' topic, "partition", "offset") VALUES (:post_id, :model_id, :score, :threshold, :verdict,'
    " :event_time, :scored_at, :topic, :partition, :offset) ON CONFLICT DO NOTHING"
)


async def consume(bootstrap: str, topic: str, bundle: Path, url: str, count: int) -> None:
    scorer = OnnxScorer(load_bundle(bundle), providers=("cpu",))
    engine = sa.create_engine(url)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"{topic}-naive",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
    )
    await consumer.start()
    try:
        done = 0
        async for message in consumer:
            assert message.value is not None
            post = json.loads(message.value)
            data = base64.b64decode(post["image"]["data"])
            image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
            score = float(scorer.score([image], [post["caption"]])[0])
            with engine.begin() as conn:
                conn.execute(
                    INSERT,
                    {
                        "post_id": post["post_id"],
                        "model_id": scorer.model_id,
                        "score": score,
                        "threshold": scorer.threshold,
                        "verdict": "match" if score >= scorer.threshold else "mismatch",
                        "event_time": post.get("created_at"),
                        "scored_at": datetime.now(UTC),
                        "topic": message.topic,
                        "partition": message.partition,
                        "offset": message.offset,
                    },
                )
            await consumer.commit()
            done += 1
            if done >= count:
                return
    finally:
        await consumer.stop()
        engine.dispose()


if __name__ == "__main__":
    bootstrap, topic, bundle, url, count = sys.argv[1:6]
    asyncio.run(consume(bootstrap, topic, Path(bundle), url, int(count)))
