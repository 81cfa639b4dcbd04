"""Where and how a connection connects, decided before any socket opens.

* :func:`resolve_endpoint`: a WebSocket URL or an SDK-style base URL in, the ``/responses``
  :class:`Endpoint` out; a URL carrying credentials, or ``ws://`` to a remote host, refused.
* :func:`resolve_api_key`: the key as a :class:`~orchestrator.core.logging.Secret`, from the
  argument or ``OPENAI_API_KEY``.
* :func:`resolve_transport`: WebSocket for the OpenAI service, ``auto`` for any other endpoint.
* :func:`tcp_connector`: the byte streams of a socket, over TCP or TLS.

:mod:`orchestrator.core.connection` uses these and re-exports the public names; the command
line and the runner check a key and a URL with them before anything starts.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Awaitable, Callable
from typing import Final
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import attrs
import trio

from orchestrator.core.logging import Secret
from orchestrator.core.redaction import is_secret_name, looks_secret, redact
from orchestrator.core.rules import Transport, is_loopback
from orchestrator.errors import ConfigurationError

__all__ = [
    "DEFAULT_URL",
    "SERVICE_HOST",
    "Connector",
    "Endpoint",
    "resolve_api_key",
    "resolve_endpoint",
    "resolve_transport",
    "tcp_connector",
]

DEFAULT_URL: Final = "wss://api.openai.com/v1/responses"
# The host whose WebSocket mode is known to exist: ``auto`` elsewhere.
SERVICE_HOST: Final = "api.openai.com"


@attrs.frozen
class Endpoint:
    """A resolved ``/responses`` WebSocket URL."""

    url: str
    host: str
    port: int
    resource: str
    secure: bool


def resolve_endpoint(url: str | None = None, *, allow_insecure: bool = False) -> Endpoint:
    """Turn a WebSocket URL or an SDK-style base URL into the ``/responses`` endpoint.

    ``https://host/v1`` becomes ``wss://host/v1/responses`` (as the official SDK derives it);
    a ``ws(s)://`` URL ending in ``/responses`` is used as is. ``None`` means
    ``OPENAI_BASE_URL`` if set, else the service.

    Credentials in the URL are refused, in its user part (``wss://user:key@host``) as in its
    query (``?api_key=...``, ``?token=...``, or any value shaped like a key): a URL ends up
    in reports and logs, the key goes in the ``Authorization`` header only.

    Raises:
        ConfigurationError: the URL is malformed (``config.url``), carries credentials
            (``config.url``; the message never repeats them), or is ``ws://`` to a remote
            host without ``allow_insecure`` (``config.insecure``).
    """
    if url is None:
        base = os.environ.get("OPENAI_BASE_URL")
        url = base if base else DEFAULT_URL
    parsed = _parse(url)
    _refuse_credentials(parsed)
    _refuse_insecure(parsed, allow_insecure=allow_insecure)
    return _build(parsed)


@attrs.frozen
class _Url:
    """What :func:`resolve_endpoint` reads from a URL: its WebSocket scheme (``ws`` or
    ``wss``), a host, and the rest as written."""

    scheme: str
    host: str
    port: int | None
    path: str
    query: str
    userinfo: bool

    @property
    def secure(self) -> bool:
        return self.scheme == "wss"


def _parse(url: str) -> _Url:
    """Split ``url``, mapping ``http(s)`` to ``ws(s)``.

    Raises:
        ConfigurationError: not a URL, no host, or a scheme other than those four
            (``config.url``).
    """
    try:
        parts = urlsplit(url)
        hostname, port = parts.hostname, parts.port
    except ValueError as exc:  # a bad port, an unbalanced IPv6 bracket
        raise ConfigurationError(
            f"invalid endpoint URL {redact(url)!r}: {exc}", code="config.url"
        ) from None
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not hostname:
        raise ConfigurationError(
            f"invalid endpoint URL {redact(url)!r}: expected wss://host/v1/responses or "
            "https://host/v1",
            code="config.url",
        )
    return _Url(
        scheme=scheme,
        host=hostname,
        port=port,
        path=parts.path,
        query=parts.query,
        userinfo=bool(parts.username or parts.password),
    )


def _refuse_credentials(url: _Url) -> None:
    """Refuse a user part, and a query parameter named or shaped like a secret.

    Raises:
        ConfigurationError: ``config.url``, naming the parameters (redacted), never a value.
    """
    if url.userinfo:
        raise ConfigurationError(
            "credentials in the URL are refused: pass the API key instead", code="config.url"
        )
    carried = [
        name
        for name, value in parse_qsl(url.query, keep_blank_values=True)
        if is_secret_name(name) or looks_secret(value)
    ]
    if carried:
        names = ", ".join(sorted({redact(name) for name in carried}))
        raise ConfigurationError(
            f"credentials in the URL's query ({names}) are refused: pass the API key in "
            "OPENAI_API_KEY or --api-key-file, it is sent in the Authorization header",
            code="config.url",
        )


def _refuse_insecure(url: _Url, *, allow_insecure: bool) -> None:
    """Refuse ``ws://`` to a host that is not loopback, unless allowed.

    Raises:
        ConfigurationError: ``config.insecure``.
    """
    if not url.secure and not allow_insecure and not is_loopback(url.host):
        raise ConfigurationError(
            f"refusing ws:// to remote host {url.host}; use wss:// or allow_insecure "
            "(--allow-insecure)",
            code="config.insecure",
        )


def _build(url: _Url) -> Endpoint:
    """The endpoint: the path ending in ``/responses``, the port defaulted by the scheme."""
    path = url.path.rstrip("/")
    if not path.endswith("/responses"):
        path = f"{path}/responses"
    resource = path + (f"?{url.query}" if url.query else "")
    netloc = f"[{url.host}]" if ":" in url.host else url.host
    if url.port:
        netloc += f":{url.port}"
    return Endpoint(
        url=urlunsplit((url.scheme, netloc, path, url.query, "")),
        host=url.host,
        port=url.port or (443 if url.secure else 80),
        resource=resource,
        secure=url.secure,
    )


def resolve_transport(transport: Transport | None, endpoint: Endpoint) -> Transport:
    """The transport a connection to ``endpoint`` starts with.

    An explicit choice is kept. By default the OpenAI service gets ``websocket`` (its
    WebSocket mode is known to exist) and any other endpoint ``auto``: most servers that
    implement the Responses API speak only HTTP.
    """
    if transport is not None:
        return transport
    return "websocket" if endpoint.host == SERVICE_HOST else "auto"


def resolve_api_key(api_key: str | Secret | None = None) -> Secret:
    """The API key as a :class:`Secret`, from the argument or ``OPENAI_API_KEY``.

    Raises:
        ConfigurationError: missing (``auth.missing``) or malformed (``auth.malformed``);
            the message never contains the key.
    """
    if isinstance(api_key, Secret):
        api_key = api_key.reveal()
    if api_key is None:
        api_key = os.environ.get("OPENAI_API_KEY")
        if api_key is None:
            raise ConfigurationError(
                "OPENAI_API_KEY is not set (or pass --api-key-file)", code="auth.missing"
            )
    if not api_key.strip() or any(c.isspace() for c in api_key):
        raise ConfigurationError(
            "OPENAI_API_KEY is empty or contains whitespace", code="auth.malformed"
        )
    return Secret(api_key)


Connector = Callable[[], Awaitable[trio.abc.Stream]]
"""Opens the byte stream a socket runs on (TCP/TLS by default; in-memory in tests)."""


def tcp_connector(endpoint: Endpoint) -> Connector:
    """The default connector: a TCP stream to the endpoint, wrapped in TLS for ``wss``."""
    context = ssl.create_default_context() if endpoint.secure else None

    async def connect() -> trio.abc.Stream:
        if context is not None:
            return await trio.open_ssl_over_tcp_stream(
                endpoint.host, endpoint.port, ssl_context=context
            )
        return await trio.open_tcp_stream(endpoint.host, endpoint.port)

    return connect
