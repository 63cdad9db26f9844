"""Fetch post images by URL without letting a post reach anything but the public web.

Every address a hostname resolves to is checked before any connection is
made, inside the resolver the connection pool uses, so the address checked is
the address connected to (no DNS rebinding between check and connect). Each
redirect hop goes through the same check. Loopback, private, link-local
(the cloud metadata address among them), multicast, reserved and unspecified
addresses are refused, IPv4-mapped IPv6 included, unless the host is on the
allow-list. Bytes are counted while streaming, so a huge body is cut off at
the limit rather than read.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from worker.config import FetchLimits
from worker.errors import (
    ImageFetchFailed,
    ImageFetchTimeout,
    ImageTooLarge,
    ImageTypeRefused,
    ImageUrlForbidden,
    InputError,
)

__all__ = [
    "CONTENT_TYPES",
    "GuardedResolver",
    "ImageFetcher",
    "address_problem",
    "host_allowed",
]

log = structlog.get_logger(__name__)

CONTENT_TYPES = frozenset(
    {"image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp", "image/tiff"}
)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def address_problem(address: IpAddress) -> str | None:
    """Why a post may not make the worker connect to `address`, or None if it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address_problem(address.ipv4_mapped)
    for problem, flagged in (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("not globally routable", not address.is_global),
    ):
        if flagged:
            return problem
    return None


def host_allowed(host: str, addresses: Iterable[IpAddress], allow: Sequence[str]) -> bool:
    """True when the allow-list names `host`, or a network holding every one of `addresses`."""
    names = {entry.lower() for entry in allow}
    if host.lower().rstrip(".") in names:
        return True
    networks = []
    for entry in allow:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue
    listed = list(addresses)
    return bool(listed) and all(any(a in net for net in networks) for a in listed)


class GuardedResolver(AbstractResolver):
    """Resolves with `inner`, then refuses the host if any address is off-limits."""

    def __init__(self, allow: Sequence[str], inner: AbstractResolver | None = None) -> None:
        self._allow = allow
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._inner is None:  # built here: aiohttp resolvers need a running loop
            self._inner = aiohttp.ThreadedResolver()
        results = await self._inner.resolve(host, port, family)
        addresses = [ipaddress.ip_address(r["host"]) for r in results]
        if not host_allowed(host, addresses, self._allow):
            for address in addresses:
                problem = address_problem(address)
                if problem is not None:
                    raise ImageUrlForbidden(f"image host resolves to a {problem} address")
        return results

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


class _Transient(Exception):
    """A failure worth another try: 5xx, 429, a dropped connection, a timeout."""

    def __init__(self, final: InputError) -> None:
        self.final = final


@dataclass(frozen=True)
class _Body:
    data: bytes


class ImageFetcher:
    """Fetches image URLs concurrently under `FetchLimits`; one instance per event loop."""

    def __init__(self, limits: FetchLimits, *, resolver: AbstractResolver | None = None) -> None:
        self.limits = limits
        self._resolver = GuardedResolver(limits.allow_hosts, resolver)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ImageFetcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=self._resolver, limit=32),
                timeout=aiohttp.ClientTimeout(
                    total=self.limits.timeout_s, sock_connect=self.limits.connect_timeout_s
                ),
                trust_env=False,  # a proxy from the environment would bypass the address check
                auto_decompress=True,
            )
        return self._session

    async def fetch_all(self, urls: Iterable[str]) -> dict[str, bytes | InputError]:
        """Each distinct URL fetched once, concurrently; failures come back as values."""
        unique = list(dict.fromkeys(urls))
        results = await asyncio.gather(*(self._fetch_or_error(url) for url in unique))
        return dict(zip(unique, results, strict=True))

    async def _fetch_or_error(self, url: str) -> bytes | InputError:
        try:
            return await self.fetch(url)
        except InputError as exc:
            return exc

    async def fetch(self, url: str) -> bytes:
        """The image bytes at `url`, retrying transient failures with backoff.

        Raises:
            ImageUrlForbidden: bad scheme, or the host is (or redirects to) an off-limits address.
            ImageFetchTimeout: no complete answer within the timeouts, after retries.
            ImageTooLarge: the body is over the byte limit.
            ImageTypeRefused: the server says it is not an image type we decode.
            ImageFetchFailed: any other HTTP or network failure.
        """
        attempt = 0
        while True:
            try:
                return await self._follow(url)
            except _Transient as exc:
                if attempt >= self.limits.retries:
                    raise exc.final from None
                attempt += 1
                await asyncio.sleep(0.2 * 2 ** (attempt - 1))

    def _check_url(self, url: URL) -> None:
        schemes = {"https", "http"} if self.limits.allow_http else {"https"}
        if url.scheme not in schemes:
            raise ImageUrlForbidden(f"scheme {url.scheme or '(none)'!r} is not allowed")
        if not url.host:
            raise ImageUrlForbidden("the URL has no host")
        try:
            literal = ipaddress.ip_address(url.host.strip("[]"))
        except ValueError:
            return  # a name: the resolver checks what it resolves to
        if not host_allowed(url.host, [literal], self.limits.allow_hosts):
            problem = address_problem(literal)
            if problem is not None:
                raise ImageUrlForbidden(f"image host is a {problem} address")

    async def _follow(self, url: str) -> bytes:
        current = _parse(url)
        for _ in range(self.limits.max_redirects + 1):
            self._check_url(current)
            result = await self._get(current)
            if isinstance(result, _Body):
                return result.data
            current = result
        raise ImageFetchFailed(f"more than {self.limits.max_redirects} redirects")

    async def _get(self, url: URL) -> _Body | URL:
        try:
            async with self._client().get(url, allow_redirects=False) as response:
                if response.status in _REDIRECTS and "Location" in response.headers:
                    return url.join(_parse(response.headers["Location"]))
                _check_status(response.status)
                _check_type(response.headers.get("Content-Type", ""))
                return _Body(await self._read(response))
        except TimeoutError:
            raise _Transient(
                ImageFetchTimeout(f"no complete answer within {self.limits.timeout_s}s")
            ) from None
        except ImageUrlForbidden:
            raise
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, ImageUrlForbidden):
                raise exc.os_error from None
            raise _Transient(ImageFetchFailed(f"cannot connect ({type(exc).__name__})")) from None
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
            raise _Transient(
                ImageFetchFailed(f"connection dropped ({type(exc).__name__})")
            ) from None
        except aiohttp.ClientError as exc:
            raise ImageFetchFailed(f"request failed ({type(exc).__name__})") from None

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        limit = self.limits.max_bytes
        declared = response.content_length
        if declared is not None and declared > limit:
            raise ImageTooLarge(limit=limit, actual=declared)
        body = bytearray()
        async for chunk in response.content.iter_chunked(_CHUNK):
            body += chunk
            if len(body) > limit:
                raise ImageTooLarge(limit=limit, actual=len(body))
        return bytes(body)


def _parse(url: str) -> URL:
    try:
        return URL(url)
    except (ValueError, TypeError):
        raise ImageUrlForbidden("the URL does not parse") from None


def _check_status(status: int) -> None:
    if status == 429 or status >= 500:
        raise _Transient(ImageFetchFailed(f"server answered HTTP {status}"))
    if status != 200:
        raise ImageFetchFailed(f"server answered HTTP {status}")


def _check_type(content_type: str) -> None:
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind not in CONTENT_TYPES:
        raise ImageTypeRefused(f"content type {kind or '(none)'!r} is not an image type we decode")
