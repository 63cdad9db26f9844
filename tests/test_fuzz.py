"""Event-level fuzzing: whatever arrives, one outcome per record, and nothing that breaks a sink."""

from __future__ import annotations

import asyncio
import base64
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.config import FetchLimits
from worker.errors import InputError
from worker.judge import judge
from worker.messages import encode, validator, verdict_message
from worker.testing import FakeFetcher, FakeScorer, shape_image
from worker.verdicts import Record

CODES = {cls.code for cls in InputError.__subclasses__()} | {InputError.code}
IMAGE = base64.b64encode(shape_image("green", "square", size=32)).decode()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
texts = st.text(max_size=60) | st.sampled_from(["", "\x00", "\ud800", "a" * 6000, "🐕\u200b\u202e"])
events = st.fixed_dictionaries(
    {},
    optional={
        "post_id": texts | json_values,
        "caption": texts | json_values,
        "image": st.sampled_from(
            [{"data": IMAGE}, {"data": ""}, {"data": "!!"}, {"url": "ftp://x"}, {}]
        )
        | json_values,
        "created_at": st.sampled_from(["2026-11-28T10:00:00Z", "yesterday"]) | json_values,
        "author_id": texts,
        "metadata": json_values,
        "extra": json_values,
    },
)
payloads = st.binary(max_size=200) | events.map(
    lambda d: json.dumps(d).encode("utf-8", "surrogatepass")
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(payloads, min_size=1, max_size=6))
def test_any_batch_gives_one_sendable_outcome_per_record(batch: list[bytes]) -> None:
    """Any bytes give exactly one outcome each: a verdict, a coded dead letter, or both, all
    sendable."""
    records = [Record(p, topic="posts", partition=0, offset=i) for i, p in enumerate(batch)]
    fetcher = FakeFetcher({"ftp://x": InputError("unreachable")})
    outcomes = asyncio.run(judge(records, FakeScorer(lambda *_: 0.3), fetcher, FetchLimits()))
    assert [o.record.offset for o in outcomes] == list(range(len(batch)))
    for outcome in outcomes:
        assert outcome.verdict is not None or outcome.dead_letter is not None
        if outcome.dead_letter is not None:
            assert outcome.dead_letter["reason"] in CODES
            validator("dead-letter.v1").validate(json.loads(encode(outcome.dead_letter)))
        if outcome.verdict is not None:
            message = verdict_message(outcome.verdict)
            validator("verdict.v1").validate(json.loads(encode(message)))
            assert "\x00" not in (outcome.verdict.post_id or "")
