"""What the embedded server logs (issue 13, item 9): connections, refusals and error events
at INFO (``serve -v``), every request and response at DEBUG (``serve -vv``), never a token.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import trio
import trio_websocket

from orchestrator.core.server import open_local_server
from orchestrator.testing import capture_logs

from .wire import auth, http_client, http_upgrade, loopback_client, output_for

SERVER_TOKEN = "sk-server-token-0123456789abcdef"
SERVE = (sys.executable, "-m", "orchestrator.cli", "serve")


async def _session(canary_key: str) -> tuple[int, str]:
    """One refused handshake (with ``canary_key``), then a client that runs a turn,
    continues it with a wrong id, and closes. Returns the port and the response id."""
    async with open_local_server(token=SERVER_TOKEN, model="echo") as running:
        with trio.fail_after(10):
            refused = await http_upgrade(running.port, headers=auth(canary_key))
            assert 401 == refused.status
            async with loopback_client(running) as client:
                first = await client.turn(input="hello", store=False)
                await client.turn(input=[output_for({"call_id": "c1"})], previous_response_id="x")
                await client.ws.aclose()
        return running.port, first[-1]["response"]["id"]


async def test_info_logs_connections_refusals_and_error_events(canary_key):
    """At INFO: the refused handshake (status and code), the connection opened and closed
    (peer and code) and the error event sent (code and param); no request or response
    lines, and neither the server's token nor the refused key."""
    with capture_logs("INFO") as lines:
        port, _ = await _session(canary_key)
    text = "\n".join(lines)
    assert re.search(r"INFO connection 1 from 127\.0\.0\.1:\d+: handshake refused with 401 ", text)
    assert "invalid_api_key (Incorrect API key provided." in text
    assert re.search(r"INFO connection 2 from 127\.0\.0\.1:\d+ opened", text)
    assert re.search(
        r"INFO connection 2 from 127\.0\.0\.1:\d+ closed by the client with 1000", text
    )
    assert (
        "INFO connection 2 sent error previous_response_not_found (status 400, "
        "param previous_response_id)" in text
    )
    assert f"embedded server listening on ws://127.0.0.1:{port}/v1/responses" in text
    assert " request on lane " not in text
    assert "DEBUG" not in text
    assert SERVER_TOKEN not in text
    assert canary_key not in text


async def test_debug_logs_every_request_and_response(canary_key):
    """At DEBUG, also each request (model, input items, previous_response_id, store,
    generate) and each finished response (status and usage)."""
    with capture_logs("DEBUG") as lines:
        _, response_id = await _session(canary_key)
    text = "\n".join(lines)
    assert (
        "DEBUG connection 2 request on lane default: model local-echo, 1 input items, "
        "previous_response_id None, store False, generate True" in text
    )
    assert "previous_response_id x, store True, generate True" in text
    assert re.search(
        rf"DEBUG connection 2 response {response_id} completed: \d+ input tokens "
        r"\(0 cached\), \d+ output tokens",
        text,
    )
    assert SERVER_TOKEN not in text
    assert canary_key not in text


def test_serve_with_v_logs_to_stderr_without_the_token(canary_key):
    """``orchestrator serve -v``: a refused handshake and a connection show up on stderr,
    the token does not (it is printed once, on stdout, only when generated)."""
    server = subprocess.Popen(
        [*SERVE, "--port", "0", "-v", "--token", SERVER_TOKEN],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split()[1]  # "serving ws://127.0.0.1:PORT/..."
        port = int(url.rsplit(":", 1)[1].split("/", 1)[0])

        async def visit() -> None:
            with trio.fail_after(10):
                assert 401 == (await http_upgrade(port, headers=auth(canary_key))).status
                async with trio_websocket.open_websocket_url(
                    url, extra_headers=auth(SERVER_TOKEN)
                ) as ws:
                    await ws.aclose()

        trio.run(visit)
    finally:
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=10)
    assert "handshake refused with 401 invalid_api_key" in stderr
    assert re.search(r"connection 2 from 127\.0\.0\.1:\d+ opened", stderr)
    assert re.search(r"connection 2 from 127\.0\.0\.1:\d+ closed by the client with 1000", stderr)
    assert SERVER_TOKEN not in stderr
    assert canary_key not in stderr


async def test_http_requests_log_refusals_and_requests_without_the_token(canary_key):
    """Over HTTP: a refused POST (401, with ``canary_key``) and a refused create (code and
    param) are logged at INFO, each POST at DEBUG (model, input items, store, stream); the
    token and the refused key never are."""
    with capture_logs("DEBUG") as lines:
        async with (
            open_local_server(token=SERVER_TOKEN, model="echo") as running,
            http_client(running) as client,
        ):
            with trio.fail_after(10):
                refused = await client.request(
                    body={"model": "m", "input": "hi"}, headers=auth(canary_key)
                )
                missing = await client.post(input="hi", previous_response_id="resp_x")
                done = await client.post(input="hi", stream=True)
    assert (401, 400, 200) == (refused.status, missing.status, done.status)
    text = "\n".join(lines)
    assert re.search(
        r"INFO connection 1 from 127\.0\.0\.1:\d+: request refused with 401 invalid_api_key ",
        text,
    )
    assert (
        "INFO connection 1 sent error previous_response_not_found (status 400, "
        "param previous_response_id)" in text
    )
    assert (
        "DEBUG connection 1 POST /v1/responses: model local-echo, 1 input items, "
        "previous_response_id None, store True, stream True" in text
    )
    assert SERVER_TOKEN not in text
    assert canary_key not in text
