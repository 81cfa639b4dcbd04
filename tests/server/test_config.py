"""Configuration of the embedded server (docs/faults.md#keys-and-endpoints: server.auth,
server.port, config.value)."""

from __future__ import annotations

import pytest

from orchestrator.core.server import Fault, LatencyModel, ServerConfig, open_local_server
from orchestrator.errors import ConfigurationError


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "example.com"])
def test_non_loopback_host_without_a_token_is_refused(host):
    """docs/faults.md#keys-and-endpoints: binding a non-loopback address without a token:
    server.auth."""
    with pytest.raises(ConfigurationError) as caught:
        ServerConfig(host=host)
    assert "server.auth" == caught.value.code
    assert host in str(caught.value)
    assert "0.0.0.0" == ServerConfig(host="0.0.0.0", token="secret").host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "localhost"])
def test_loopback_hosts_need_no_token(host):
    """Loopback addresses may run without an explicit token (one is generated)."""
    assert ServerConfig(host=host).token is None


async def test_port_in_use_is_a_server_port_error():
    """docs/faults.md#keys-and-endpoints: a port already in use: server.port naming host and
    port."""
    async with open_local_server() as running:
        with pytest.raises(ConfigurationError) as caught:
            async with open_local_server(port=running.port):
                pass  # pragma: no cover - must not start
    assert "server.port" == caught.value.code
    assert f"127.0.0.1:{running.port} already in use" in str(caught.value)


async def test_running_server_urls_and_token():
    """``RunningServer``: the ws URL, the SDK's base_url, the generated token."""
    async with open_local_server() as running:
        assert f"ws://127.0.0.1:{running.port}/v1/responses" == running.url
        assert f"http://127.0.0.1:{running.port}/v1" == running.base_url
        assert running.token.startswith("local-")
        assert running.token not in repr(running)
    async with open_local_server(token="fixed") as running:
        assert "fixed" == running.token
    async with open_local_server(host="::1") as running:
        assert f"ws://[::1]:{running.port}/v1/responses" == running.url
        assert f"http://[::1]:{running.port}/v1" == running.base_url


@pytest.mark.parametrize(
    "options",
    [
        {"max_message_size": 0},
        {"max_message_size": 2**31},
        {"max_connection_age": 0},
        {"port": 70000},
        {"token": "has space"},
        {"token": ""},
        {"expiry_close_code": 999},
        {"max_active_responses": 0},
    ],
)
def test_out_of_range_settings_are_refused(options):
    """docs/faults.md#keys-and-endpoints config.value: limits out of range are refused at
    construction."""
    with pytest.raises(ConfigurationError):
        ServerConfig(**options)


@pytest.mark.parametrize(
    "build",
    [
        lambda: LatencyModel(time_to_first_token=-1),
        lambda: LatencyModel(tokens_per_second=0),
        lambda: Fault("close", code=1006),
        lambda: Fault("close", code=999),
        lambda: Fault("stall", after_events=-1),
        lambda: Fault("stall", times=0),
    ],
)
def test_bad_latency_or_fault_settings_are_refused(build):
    """Latency and fault settings are validated too (1006 cannot be sent: use abort)."""
    with pytest.raises(ConfigurationError):
        build()


async def test_repr_never_shows_the_token():
    """The token stays out of reprs (it is a credential)."""
    config = ServerConfig(token="sekrit-token")
    assert "sekrit-token" not in repr(config)
    async with open_local_server(config) as running:
        shown = repr(running) + repr(running.server)
    assert "sekrit-token" not in shown
