"""Fixtures of the server suite: a loopback server and a raw client connected to it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from orchestrator.core.server import RunningServer, open_local_server

from .wire import Client, loopback_client

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture
async def running() -> AsyncIterator[RunningServer]:
    """The embedded server on 127.0.0.1, any port, seed 1, recording client messages."""
    async with open_local_server(seed=1, record_messages=True) as server:
        yield server


@pytest.fixture
async def client(running: RunningServer) -> AsyncIterator[Client]:
    """A raw WebSocket client connected to ``running`` over TCP."""
    async with loopback_client(running) as connected:
        yield connected
