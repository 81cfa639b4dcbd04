"""Where a run's agents connect: the live service (key and URL resolved and checked before
anything starts), or the embedded server an offline run starts in-process."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal

import attrs
import trio
from loguru import logger

from orchestrator.core.endpoint import Connector, resolve_api_key, resolve_endpoint
from orchestrator.core.logging import Secret
from orchestrator.core.rules import is_offline
from orchestrator.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = [
    "EmbeddedServer",
    "Endpoint",
    "check_fd_budget",
    "live_label",
    "open_endpoint",
]


@attrs.frozen(kw_only=True)
class EmbeddedServer:
    """The embedded server an offline run starts in-process.

    Attributes:
        config: its settings, as ``ServerConfig`` fields (``model``, ``script``, ``seed``,
            ``latency``, ``faults``, ``max_connection_age``...).
        transport: how the agents reach it: loopback ``tcp`` (real sockets), or ``memory``
            (in-memory streams: no file descriptors, and trio's ``MockClock`` drives both
            sides; for tests and simulations).
    """

    config: Mapping[str, Any] = attrs.field(factory=dict)
    transport: Literal["tcp", "memory"] = "tcp"


@attrs.frozen
class Endpoint:
    """What the agents' connections are opened with. ``label``: ``embedded``, or the URL."""

    url: str | None
    key: Secret | str
    label: str
    connector: Connector | None = None


def live_label(api_key: str | Secret | None, base_url: str | None, allow_insecure: bool) -> str:
    """The URL a live run's connections use (``OPENAI_BASE_URL`` included), never the raw
    option; the key is known to the redactor from here on.

    Raises:
        ConfigurationError: a missing or malformed key, or a URL carrying credentials.
    """
    resolve_api_key(api_key)
    return resolve_endpoint(base_url, allow_insecure=allow_insecure).url


@asynccontextmanager
async def open_endpoint(
    api_key: str | Secret | None,
    base_url: str | None,
    offline: bool | None,
    embedded: EmbeddedServer,
    allow_insecure: bool = False,
) -> AsyncIterator[Endpoint]:
    """The live service, or the embedded server (over loopback TCP or in memory), for the
    time of the block."""
    if not is_offline(api_key, offline):
        key = resolve_api_key(api_key)  # first: the key is known to the redactor from here
        # Refuses a URL carrying credentials before anything starts; the label is the URL
        # the connections use (OPENAI_BASE_URL included), never the raw option.
        url = resolve_endpoint(base_url, allow_insecure=allow_insecure).url
        yield Endpoint(base_url, key, url)
        return
    # Only offline runs need the server.
    from orchestrator.core.server import LocalServer, ServerConfig, open_local_server

    options = dict(embedded.config)
    if embedded.transport == "memory":
        from orchestrator.testing import memory_connector  # trio.testing is slow to import

        server = LocalServer.from_config(ServerConfig(**options))
        async with trio.open_nursery() as nursery:
            yield Endpoint(
                "ws://127.0.0.1/v1/responses",
                server.token,
                "embedded",
                memory_connector(server, nursery),
            )
            nursery.cancel_scope.cancel()
        return
    async with open_local_server(**options) as running:
        logger.info("offline: running on the embedded server at {}", running.url)
        yield Endpoint(running.url, running.token, "embedded")


def check_fd_budget(
    agents: int, offline: bool | None, api_key: str | Secret | None, transport: str
) -> None:
    """Refuse up front a team that cannot get a socket per agent under the fd limit.

    Raises:
        ConfigurationError: ``config.fd_limit``.
    """
    from orchestrator.core.tuning import fd_limit

    local = is_offline(api_key, offline)
    per_agent = 0 if (local and transport == "memory") else 2 if local else 1
    needed = agents * per_agent + 64
    limit = fd_limit()
    if per_agent and needed > limit:
        raise ConfigurationError(
            f"{agents} agents need about {needed} open files but the limit is {limit}: raise "
            "it (ulimit -n; `orchestrator run` raises the soft limit to the hard one) or run "
            "fewer agents",
            code="config.fd_limit",
        )
