"""Fetching image URLs: limits, retries, and the SSRF guard, against a loopback server."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from worker.config import FetchLimits
from worker.demo.embedded import free_port
from worker.errors import (
    ImageFetchFailed,
    ImageFetchTimeout,
    ImageTooLarge,
    ImageTypeRefused,
    ImageUrlForbidden,
)
from worker.fetch import ImageFetcher, address_problem, host_allowed
from worker.testing import shape_image

PNG = shape_image("red", "circle")
LOCAL = FetchLimits(allow_http=True, allow_hosts=("127.0.0.1",), timeout_s=2, retries=1)


class Hits:
    """Requests the test server saw, by path."""

    def __init__(self) -> None:
        self.paths: list[str] = []


@asynccontextmanager
async def serve(
    routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]],
) -> AsyncIterator[tuple[str, Hits]]:
    hits = Hits()

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        hits.paths.append(request.path)
        return await handler(request)

    app = web.Application(middlewares=[count])
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", hits
    finally:
        await runner.cleanup()


async def png(_: web.Request) -> web.Response:
    return web.Response(body=PNG, content_type="image/png")


def fetch(url: str, limits: FetchLimits = LOCAL, **kwargs: Any) -> bytes:
    async def run() -> bytes:
        async with ImageFetcher(limits, **kwargs) as fetcher:
            return await fetcher.fetch(url)

    return asyncio.run(run())


def fetch_from(
    routes: dict[str, Any], path: str, limits: FetchLimits = LOCAL
) -> tuple[bytes | Exception, Hits]:
    async def run() -> tuple[bytes | Exception, Hits]:
        async with serve(routes) as (base, hits), ImageFetcher(limits) as fetcher:
            try:
                return await fetcher.fetch(base + path), hits
            except Exception as exc:  # noqa: BLE001 - the test inspects it
                return exc, hits

    return asyncio.run(run())


_REAL_SOCK_CONNECT = asyncio.selector_events.BaseSelectorEventLoop.sock_connect


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every TCP connect by address, before any packet; only 127.0.0.1 goes through."""
    attempts: list[str] = []

    async def guard(self: Any, sock: socket.socket, address: Any) -> None:
        attempts.append(str(address[0]))
        if address[0] != "127.0.0.1":
            raise AssertionError(f"a connection to {address[0]} was attempted")
        await _REAL_SOCK_CONNECT(self, sock, address)

    monkeypatch.setattr(asyncio.selector_events.BaseSelectorEventLoop, "sock_connect", guard)
    return attempts


class FakeDns(AbstractResolver):
    """Answers from a table, never from the network."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            {
                "hostname": host,
                "host": a,
                "port": port,
                "family": socket.AF_INET6 if ":" in a else socket.AF_INET,
                "proto": 0,
                "flags": 0,
            }
            for a in self.table[host]
        ]

    async def close(self) -> None:
        return None


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.9", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:127.0.0.1", "loopback"),
        ("100.64.0.1", "not globally routable"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_problems_are_named(address: str, problem: str | None) -> None:
    """Every off-limits address class is named; public IPv4 and IPv6 pass."""
    assert address_problem(ipaddress.ip_address(address)) == problem


def test_allow_list_takes_names_and_networks() -> None:
    """A host is allowed by its name, or when a listed network holds all its addresses."""
    ten = [ipaddress.ip_address("10.0.0.7")]
    assert host_allowed("IMG.internal", ten, ["img.internal"])
    assert host_allowed("other", ten, ["10.0.0.0/24"])
    assert not host_allowed("other", [*ten, ipaddress.ip_address("10.9.0.1")], ["10.0.0.0/24"])
    assert not host_allowed("other", ten, [])


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/a.png",
        "http://[fc00::1]/a.png",
        "http://[::ffff:10.0.0.1]/a.png",
        "http://0.0.0.0/a.png",
        "http://127.0.0.1:9/a.png",
        "http://224.0.0.1/a.png",
    ],
)
def test_literal_forbidden_addresses_are_refused_before_connecting(
    url: str, connections: list[str]
) -> None:
    """An address literal off-limits is refused with image_url_forbidden and no connection
    attempt."""
    with pytest.raises(ImageUrlForbidden) as info:
        fetch(url, FetchLimits(allow_http=True))
    assert info.value.code == "image_url_forbidden"
    assert connections == []


@pytest.mark.parametrize(
    "addresses", [["10.0.0.5"], ["93.184.216.34", "127.0.0.1"], ["::ffff:192.168.0.1"], ["fe80::2"]]
)
def test_names_resolving_to_forbidden_addresses_are_refused_in_the_resolver(
    addresses: list[str], connections: list[str]
) -> None:
    """A name with any off-limits address is refused after DNS and before any connection."""
    dns = FakeDns({"img.example": addresses})
    with pytest.raises(ImageUrlForbidden, match="resolves to"):
        fetch("https://img.example/cat.jpg", FetchLimits(), resolver=dns)
    assert dns.asked == ["img.example"]
    assert connections == []


@pytest.mark.parametrize(
    "url", ["http://img.example/a.png", "ftp://img.example/a.png", "file:///etc/passwd", "/a.png"]
)
def test_only_https_by_default(url: str, connections: list[str]) -> None:
    """Plain http, other schemes and relative URLs are refused unless http is allowed."""
    with pytest.raises(ImageUrlForbidden):
        fetch(url, FetchLimits(), resolver=FakeDns({}))


def test_allow_listed_loopback_host_is_fetched() -> None:
    """An allow-listed loopback server is reached and its image bytes returned."""
    result, hits = fetch_from({"/a.png": png}, "/a.png")
    assert result == PNG and hits.paths == ["/a.png"]


def test_redirect_to_a_forbidden_address_is_refused_on_that_hop(connections: list[str]) -> None:
    """A redirect from an allowed host to the metadata address is refused before connecting to
    it."""

    async def to_metadata(_: web.Request) -> web.Response:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")

    result, hits = fetch_from({"/r": to_metadata}, "/r")
    assert isinstance(result, ImageUrlForbidden)
    assert hits.paths == ["/r"]
    assert connections == ["127.0.0.1"]


def test_redirects_are_followed_and_bounded() -> None:
    """Redirects within the limit are followed; a loop beyond it fails as image_fetch_failed."""

    async def hop(_: web.Request) -> web.Response:
        raise web.HTTPFound("/a.png")

    async def loop(_: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    result, _ = fetch_from({"/hop": hop, "/a.png": png}, "/hop")
    assert result == PNG
    result, hits = fetch_from({"/loop": loop}, "/loop")
    assert isinstance(result, ImageFetchFailed) and "redirects" in str(result)
    assert len(hits.paths) == LOCAL.max_redirects + 1


def test_body_over_the_byte_limit_is_cut_off_while_streaming() -> None:
    """A chunked body with no length is stopped at the limit, not read to its end."""
    sent: list[int] = []

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(request)
        try:
            for _ in range(1000):
                await response.write(b"\0" * 65536)
                sent.append(1)
        except (ConnectionResetError, RuntimeError):
            pass
        return response

    limits = FetchLimits(allow_http=True, allow_hosts=("127.0.0.1",), max_bytes=200_000)
    result, _ = fetch_from({"/big": endless}, "/big", limits)
    assert isinstance(result, ImageTooLarge) and result.limit == 200_000
    assert len(sent) < 1000


def test_declared_length_over_the_limit_is_refused_before_reading() -> None:
    """A Content-Length over the limit fails at once with the declared size."""

    async def big(_: web.Request) -> web.Response:
        return web.Response(body=b"\0" * 300_000, content_type="image/png")

    limits = FetchLimits(allow_http=True, allow_hosts=("127.0.0.1",), max_bytes=100_000)
    result, _ = fetch_from({"/big": big}, "/big", limits)
    assert isinstance(result, ImageTooLarge) and result.actual == 300_000


def test_non_image_content_type_is_refused() -> None:
    """An HTML answer is image_type_refused."""

    async def html(_: web.Request) -> web.Response:
        return web.Response(text="<html></html>", content_type="text/html")

    result, _ = fetch_from({"/page": html}, "/page")
    assert isinstance(result, ImageTypeRefused) and result.code == "image_type_refused"


def test_slow_server_times_out_after_retries() -> None:
    """A server slower than the timeout gives image_fetch_timeout after 1 + retries tries."""

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response(body=PNG, content_type="image/png")

    limits = FetchLimits(allow_http=True, allow_hosts=("127.0.0.1",), timeout_s=0.3, retries=1)
    result, hits = fetch_from({"/slow": slow}, "/slow", limits)
    assert isinstance(result, ImageFetchTimeout) and result.code == "image_fetch_timeout"
    assert hits.paths == ["/slow", "/slow"]


def test_transient_errors_are_retried_and_permanent_ones_not() -> None:
    """A 503 is retried until the image comes; a 404 fails at once."""
    answers = iter([503, 200])

    async def flaky(_: web.Request) -> web.Response:
        status = next(answers)
        return web.Response(status=status, body=PNG, content_type="image/png")

    async def gone(_: web.Request) -> web.Response:
        return web.Response(status=404)

    result, hits = fetch_from({"/flaky": flaky}, "/flaky")
    assert result == PNG and hits.paths == ["/flaky", "/flaky"]
    result, hits = fetch_from({"/gone": gone}, "/gone")
    assert isinstance(result, ImageFetchFailed) and "404" in str(result)
    assert hits.paths == ["/gone"]


def test_fetch_all_fetches_each_url_once_and_returns_errors_as_values() -> None:
    """Duplicate URLs are fetched once; a failing URL does not fail the others."""

    async def run() -> tuple[dict[str, Any], Hits]:
        async with serve({"/a.png": png}) as (base, hits), ImageFetcher(LOCAL) as fetcher:
            return await fetcher.fetch_all([base + "/a.png", base + "/a.png", base + "/none"]), hits

    results, hits = asyncio.run(run())
    first, second = results.values()
    assert first == PNG
    assert isinstance(second, ImageFetchFailed)
    assert hits.paths.count("/a.png") == 1


def test_real_resolver_guards_names_too(connections: list[str]) -> None:
    """Through the system resolver, `localhost` is refused unless allow-listed by name."""

    async def run(allow: tuple[str, ...]) -> bytes | Exception:
        async with serve({"/a.png": png}) as (base, _):
            url = base.replace("127.0.0.1", "localhost") + "/a.png"
            limits = FetchLimits(allow_http=True, allow_hosts=allow, retries=0)
            async with ImageFetcher(limits) as fetcher:
                try:
                    return await fetcher.fetch(url)
                except Exception as exc:  # noqa: BLE001 - the test inspects it
                    return exc

    assert isinstance(asyncio.run(run(())), ImageUrlForbidden)
    assert connections == []
    assert asyncio.run(run(("localhost",))) == PNG
