"""The outbox relay: moderators' decisions from Postgres to the decisions topic.

A decision and its message are committed together (`worker.review.decisions`);
this relay, running in every worker beside the consumer, reads the messages
not yet delivered in the order they were written, sends them, waits until the
broker has every one of the batch (the producer uses acks=all), and only then
marks them delivered. A worker killed between the send and the mark sends the
batch again after a restart: delivery is at least once, and consumers
deduplicate on `message_id`. A transaction-scoped advisory lock lets one
relay at a time work, so replicas never interleave batches and one post's
messages keep their order. Nothing here knows Faust: the caller passes the
topic to send to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
import structlog

from worker.persistence import translated

__all__ = ["BATCH", "OUTBOX_LOCK_KEY", "POLL_S", "Relay", "Send"]

log = structlog.get_logger(__name__)

BATCH = 200
"""Most messages sent per transaction."""

POLL_S = 1.0
"""How long the relay waits when the outbox is empty, or after a failure."""

OUTBOX_LOCK_KEY = 0x6974_6D67_6F62  # "itmgob"
"""Advisory lock that one relay at a time holds while it sends a batch."""

Send = Callable[[bytes, bytes], Awaitable[Awaitable[Any]]]
"""Queues one message (key, value); the awaitable it returns resolves once the broker has it."""


class Relay:
    """Sends the outbox's undelivered messages with `send`, in order, until cancelled."""

    def __init__(
        self,
        engine: sa.Engine,
        send: Send,
        *,
        batch: int = BATCH,
        poll_s: float = POLL_S,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.engine = engine
        self.send = send
        self.batch = batch
        self.poll_s = poll_s
        self.on_batch = on_batch
        self.relayed = 0

    async def run(self) -> None:
        """Relay until cancelled; a database or broker failure is logged and retried."""
        while True:
            try:
                sent = await self.relay_once()
            except Exception as exc:  # noqa: BLE001 - a database or broker outage is waited out
                log.warning("outbox_relay_failed", error=type(exc).__name__)
                sent = 0
            if sent < self.batch:
                await asyncio.sleep(self.poll_s)

    async def relay_once(self) -> int:
        """Send one batch and mark it delivered; returns how many were sent (0: nothing to do,
        or another relay holds the lock)."""
        conn = await asyncio.to_thread(self._begin)
        try:
            rows = await asyncio.to_thread(self._take, conn)
            if rows:
                pending = [
                    await self.send(row.key.encode("utf-8"), row.payload.encode("utf-8"))
                    for row in rows
                ]
                await asyncio.gather(*pending)
                await asyncio.to_thread(self._mark, conn, [row.id for row in rows])
            await asyncio.to_thread(conn.commit)
        finally:
            await asyncio.to_thread(conn.close)
        if rows:
            self.relayed += len(rows)
            log.info("outbox_relayed", messages=len(rows), total=self.relayed)
            if self.on_batch is not None:
                self.on_batch(len(rows))
        return len(rows)

    def _begin(self) -> sa.Connection:
        with translated():
            return self.engine.connect()

    def _take(self, conn: sa.Connection) -> list[sa.Row[Any]]:
        with translated():
            locked = conn.execute(
                sa.text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": OUTBOX_LOCK_KEY}
            ).scalar_one()
            if not locked:
                return []
            return list(
                conn.execute(
                    sa.text(
                        "SELECT id, key, payload FROM review_outbox WHERE delivered_at IS NULL "
                        "ORDER BY id LIMIT :n"
                    ),
                    {"n": self.batch},
                ).all()
            )

    def _mark(self, conn: sa.Connection, ids: list[int]) -> None:
        with translated():
            conn.execute(
                sa.text("UPDATE review_outbox SET delivered_at = now() WHERE id = ANY(:ids)"),
                {"ids": ids},
            )
