"""Liveness and readiness probes, served beside the Prometheus metrics on the metrics port.

`GET /livez` is 503 only when restarting the process is the cure: the event
loop does not answer within LOOP_REPLY_S, or a batch has been scoring (fetching,
decoding, running the model) for longer than its bound. A batch waiting out a
Postgres or Kafka outage is not stuck: it is retried, and reported by `/readyz`.

`GET /readyz` is 200 once the worker does its job: the bundle is loaded and
warmed up, Postgres answers at this release's schema revision, the consumer
has joined its group and holds its assignment (an empty one included: with
more replicas than partitions the spare ones are members on standby), and no
write or publish is being retried or has been pending for DELIVERY_SLOW_S.

Both answer JSON, `{"ok": bool, "checks": {name: {"ok": bool, "detail": str}}}`,
with figures and states only: no settings, no user content. Every other path
is prometheus_client's own exposition, as `/metrics` always was. The server
starts before the bundle loads, so `/readyz` says 503 while it does.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import CollectorRegistry, make_wsgi_app

from worker.config import FetchLimits
from worker.errors import ItmguardError
from worker.progress import DELIVERY, BatchProgress

__all__ = [
    "DATABASE_CACHE_S",
    "DELIVERY_SLOW_S",
    "LOOP_REPLY_S",
    "CachedCheck",
    "Check",
    "Health",
    "Report",
    "scoring_bound_s",
    "serve",
]

LOOP_REPLY_S = 1.0
"""How long /livez waits for the event loop to run a callback; heartbeats need it far sooner."""
DATABASE_CACHE_S = 5.0
"""How long one database check answers /readyz, however many probes arrive."""
DELIVERY_SLOW_S = 10.0
"""A write or publish pending longer than this is waiting on its dependency: not ready."""
SCORING_STEPS = ("prepare", "score")
"""Steps of CPU and model work, bounded by the scoring bound (a stuck one means a wedged worker)."""

SCORING_FLOOR_S = 120.0
"""The part of the scoring bound that covers decoding, backoff and a busy machine."""
SCORING_WARMUPS = 10.0
"""How many warm-ups' worth of model time, scaled to a full batch, the scoring bound allows."""


@dataclass(frozen=True)
class Check:
    """The state of one thing a probe looks at."""

    ok: bool
    detail: str


@dataclass(frozen=True)
class Report:
    """What one probe answers: each check by name; ok when every check is."""

    checks: Mapping[str, Check]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks.values())

    def body(self) -> bytes:
        checks = {name: {"ok": c.ok, "detail": c.detail} for name, c in self.checks.items()}
        return json.dumps({"ok": self.ok, "checks": checks}).encode()


def scoring_bound_s(limits: FetchLimits, warmup_s: float, batch_scale: float) -> float:
    """How long one batch may spend scoring before the worker counts as wedged.

    Generous on purpose, since passing it restarts the pod: the longest an image
    fetch may take with all its retries, plus ten times the warm-up's model time
    scaled to a full batch (a batch that fails is scored again pair by pair),
    plus SCORING_FLOOR_S for decoding, backoff and a busy machine.

    Args:
        batch_scale: ITMGUARD_MAX_BATCH over the warm-up's batch size, at least 1.
    """
    fetch_s = (limits.retries + 1) * limits.timeout_s
    return SCORING_FLOOR_S + fetch_s + SCORING_WARMUPS * warmup_s * batch_scale


class CachedCheck:
    """Runs `probe` at most once per `ttl_s`; calls in between get its last answer, so a
    storm of probes costs the checked service one request per `ttl_s`."""

    def __init__(
        self,
        probe: Callable[[], object],
        *,
        passed: str,
        ttl_s: float = DATABASE_CACHE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self._passed = passed
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._answer: Check | None = None
        self._at = 0.0

    def __call__(self) -> Check:
        with self._lock:
            now = self._clock()
            if self._answer is None or now - self._at >= self._ttl_s:
                self._answer, self._at = self._run(), now
            return self._answer

    def _run(self) -> Check:
        try:
            self._probe()
        except ItmguardError as exc:
            return Check(False, str(exc))
        except Exception as exc:  # noqa: BLE001 - a probe reports a failed check, never raises
            return Check(False, f"check failed: {type(exc).__name__}")
        return Check(True, self._passed)


class Health:
    """What the probes report. Start-up and the Faust adapter set it; the HTTP threads read
    it. Each state is an immutable value replaced whole, so no reader sees half of one."""

    def __init__(
        self,
        *,
        database: Callable[[], Check] | None = None,
        progress: BatchProgress | None = None,
    ) -> None:
        self.progress = progress or BatchProgress()
        self._clock = self.progress.clock
        self._database = database or (lambda: Check(False, "not checked"))
        self._bundle = Check(False, "loading")
        self._warmup = Check(False, "waiting for the bundle")
        self._consumer = Check(False, "not yet in the consumer group")
        self._scoring_bound_s: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def bundle_loaded(self, model_id: str, provider: str) -> None:
        self._bundle = Check(True, f"{model_id} on {provider}")
        self._warmup = Check(False, "warming up")

    def warmed_up(self, seconds: float, scoring_bound_s: float) -> None:
        self._scoring_bound_s = scoring_bound_s
        self._warmup = Check(True, f"{seconds * 1000:.0f} ms")

    def loop_started(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def partitions_assigned(self, count: int) -> None:
        if count:
            self._consumer = Check(True, f"partitions assigned: {count}")
        else:
            self._consumer = Check(True, "a member with no partitions: more replicas than them")

    def partitions_revoked(self) -> None:
        self._consumer = Check(False, "rebalancing: waiting for an assignment")

    def live(self) -> Report:
        return Report({"event_loop": self._event_loop(), "batch": self._batch()})

    def ready(self) -> Report:
        return Report(
            {
                "bundle": self._bundle,
                "warmup": self._warmup,
                "database": self._database(),
                "consumer": self._consumer,
                "delivery": self._delivery(),
            }
        )

    def _event_loop(self) -> Check:
        loop = self._loop
        if loop is None:
            return Check(True, "not started yet")
        answered = threading.Event()
        started = time.monotonic()
        try:
            loop.call_soon_threadsafe(answered.set)
        except RuntimeError:
            return Check(False, "closed")
        if not answered.wait(LOOP_REPLY_S):
            return Check(False, f"no answer within {LOOP_REPLY_S:g} s")
        return Check(True, f"answered in {(time.monotonic() - started) * 1000:.1f} ms")

    def _batch(self) -> Check:
        """Not live when a batch has been in `prepare` or `score` past the scoring bound."""
        steps = [s for s in self.progress.steps.values() if s.name in SCORING_STEPS]
        if not steps:
            return Check(True, "no batch in flight")
        now, bound = self._clock(), self._scoring_bound_s
        for step in steps:
            age = now - step.since
            if bound is not None and age > bound:
                return Check(
                    False, f"{step.name} of one batch for {age:.0f} s, over its {bound:.0f} s bound"
                )
        return Check(True, ", ".join(f"{s.name} for {now - s.since:.1f} s" for s in steps))

    def _delivery(self) -> Check:
        step = self.progress.steps.get(DELIVERY)
        if step is None:
            return Check(True, "nothing waiting to be written or published")
        age = self._clock() - step.since
        if step.failures:
            return Check(False, f"retrying {step.name}: {step.failures} failed, {age:.0f} s")
        if age > DELIVERY_SLOW_S:
            return Check(False, f"{step.name} waiting for {age:.0f} s")
        return Check(True, f"{step.name} for {age:.1f} s")


def _routes(health: Health, metrics: WSGIApplication) -> WSGIApplication:
    """/livez and /readyz from `health`; every other path to `metrics`."""
    probes = {"/livez": health.live, "/readyz": health.ready}

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        probe = probes.get(environ.get("PATH_INFO", ""))
        if probe is None:
            return metrics(environ, start_response)
        report = probe()
        body = report.body()
        status = "200 OK" if report.ok else "503 Service Unavailable"
        start_response(
            status,
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [body]

    return app


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per request: a slow database check never holds up /livez or /metrics."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """No access log: a probe every few seconds would bury the JSON logs."""

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve(host: str, port: int, health: Health, registry: CollectorRegistry) -> WSGIServer:
    """Serve the probes and `registry`'s metrics on `host:port` from daemon threads.

    Returns the server: `shutdown()` then `server_close()` stop it.
    """
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    server_class = type("_Server", (_Server,), {"address_family": family})
    app = _routes(health, make_wsgi_app(registry))
    server: WSGIServer = make_server(str(address[0]), port, app, server_class, _QuietHandler)
    threading.Thread(target=server.serve_forever, name="itmguard-health", daemon=True).start()
    return server
