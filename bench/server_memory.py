"""Embedded server memory under clients that send large requests and never read (issue 10).

The server runs in its own process (``orchestrator serve``), so its RSS is its own. This
process opens ``--clients`` bare WebSocket clients; each sends ``--requests`` creates whose
user message is ``--size`` bytes of words to the generic model (``--model local-echo``
repeats each one, so every answer is as long as its question), then stops reading for good.
Meanwhile one healthy client keeps running small turns. The server's RSS is sampled from
``/proc/PID/status`` while the load sits there for ``--hold`` seconds; its peak is the
kernel's high-water mark (``VmHWM``). At the end every non-reading client reads what is
left to see how its connection ended: the close code, or "open" when the server still
serves it.

    python -m bench.server_memory [--clients 20] [--requests 5] [--size 2000000] [--hold 20]
        [--model NAME] [--server-root DIR] [-- extra serve options]

``--server-root`` serves from another source tree (``git archive`` of an older commit), for
a before/after comparison with the same clients. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
import wsproto
from wsproto.events import AcceptConnection, Request, TextMessage

from bench._common import ROOT, machine

if TYPE_CHECKING:
    from collections.abc import Iterator

TOKEN = "bench-memory-token"
MODEL = "gpt-5-mini"  # any name that is not echo/scripted: the generic model
WORDS = "the quick brown fox jumps over the lazy dog while it rains in Lisbon today "


def status_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of process ``pid``, in KiB."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


@contextlib.contextmanager
def serve(root: Path, extra: list[str]) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``orchestrator serve --port 0`` from source tree ``root``; yields (process, url)."""
    command = [
        sys.executable,
        "-m",
        "orchestrator.cli",
        "serve",
        "--port",
        "0",
        "--token",
        TOKEN,
        *extra,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=root)
    try:
        assert process.stdout is not None
        url = ""
        while not url:
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"server exited with {process.wait()}")
            if line.startswith("serving "):
                url = line.split()[1]
        yield process, url
    finally:
        process.send_signal(2)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def create(text: str, model: str = MODEL) -> str:
    return json.dumps(
        {
            "type": "response.create",
            "model": model,
            "store": False,
            "input": [{"type": "message", "role": "user", "content": text}],
        }
    )


class BareClient:
    """A WebSocket client on a raw socket: it reads only when told to."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.buffer = bytearray()

    @classmethod
    async def connect(cls, url: str) -> BareClient:
        host_port, _, path = url.removeprefix("ws://").partition("/")
        host, _, port = host_port.rpartition(":")
        client = cls(await trio.open_tcp_stream(host.strip("[]"), int(port)))
        headers = [(b"authorization", f"Bearer {TOKEN}".encode())]
        await client.stream.send_all(
            client.ws.send(Request(host=host_port, target="/" + path, extra_headers=headers))
        )
        while True:
            data = await client.stream.receive_some()
            if not data:
                raise RuntimeError("handshake refused")
            client.ws.receive_data(data)
            if any(isinstance(event, AcceptConnection) for event in client.ws.events()):
                return client

    async def send(self, text: str) -> None:
        await self.stream.send_all(self.ws.send(TextMessage(data=text)))

    async def turn(self, text: str) -> None:
        """One small turn: send, then read frames until ``response.completed``."""
        await self.send(create(text))
        while True:
            payload = await self._frame()
            if payload is None:
                raise RuntimeError("closed during a turn")
            if payload.startswith(b'{"type":"response.completed"'):
                return

    async def _frame(self) -> bytes | None:
        """The next whole server frame's payload (unmasked, unfragmented); None at EOF."""
        buffer = self.buffer
        while True:
            if len(buffer) >= 2:
                size, offset = buffer[1] & 0x7F, 2
                if size == 126:
                    size, offset = struct.unpack_from("!H", buffer, 2)[0], 4
                elif size == 127:
                    size, offset = struct.unpack_from("!Q", buffer, 2)[0], 10
                if len(buffer) >= offset + size:
                    payload = bytes(buffer[offset : offset + size])
                    opcode = buffer[0] & 0x0F
                    del buffer[: offset + size]
                    if opcode == 0x8:  # close
                        return b"close:" + payload
                    return payload
            data = await self.stream.receive_some(1 << 20)
            if not data:
                return None
            buffer += data

    async def drain(self, idle: float) -> str:
        """Read everything left: the close code the server sent ("1006": none, EOF), or
        "open" when nothing came for ``idle`` seconds."""
        while True:
            with trio.move_on_after(idle):
                try:
                    payload = await self._frame()
                except trio.BrokenResourceError:
                    return "1006"
                if payload is None:
                    return "1006"
                if payload.startswith(b"close:"):
                    body = payload[6:]
                    return str(struct.unpack("!H", body[:2])[0]) if len(body) >= 2 else "1005"
                continue
            return "open"


async def main(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.server_root) if args.server_root else ROOT
    text = (WORDS * (args.size // len(WORDS) + 1))[: args.size]
    message = create(text, args.model)
    with serve(root, args.serve_options) as (process, url):
        healthy = await BareClient.connect(url)
        await healthy.turn("warm up")
        before = status_kib(process.pid)
        clients = [await BareClient.connect(url) for _ in range(args.clients)]
        sent = [0] * args.clients
        samples: list[int] = []
        healthy_turns = 0
        healthy_latencies: list[float] = []

        async def flood(index: int) -> None:
            for _ in range(args.requests):
                try:
                    await clients[index].send(message)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return  # closed by the server
                sent[index] += 1

        async def keep_turning() -> None:
            nonlocal healthy_turns
            while True:
                started = time.perf_counter()
                await healthy.turn("how is the weather")
                healthy_latencies.append(time.perf_counter() - started)
                healthy_turns += 1
                await trio.sleep(0.1)

        async with trio.open_nursery() as nursery:
            for index in range(args.clients):
                nursery.start_soon(flood, index)
            nursery.start_soon(keep_turning)
            deadline = trio.current_time() + args.hold
            while trio.current_time() < deadline:
                samples.append(status_kib(process.pid)["VmRSS"])
                await trio.sleep(0.25)
            after = status_kib(process.pid)
            nursery.cancel_scope.cancel()
        codes: dict[str, int] = {}
        results = ["?"] * args.clients

        async def drain(index: int) -> None:
            results[index] = await clients[index].drain(args.idle)

        # A server that still streams to them is still serving them: "open" after a while.
        with trio.move_on_after(args.drain_timeout):
            async with trio.open_nursery() as nursery:
                for index in range(args.clients):
                    nursery.start_soon(drain, index)
        results = ["open" if code == "?" else code for code in results]
        for code in results:
            codes[code] = codes.get(code, 0) + 1
    return {
        "machine": machine(),
        "clients": args.clients,
        "requests": args.requests,
        "size": args.size,
        "hold_s": args.hold,
        "requests_fully_sent": sum(sent),
        "rss_before_mib": round(before["VmRSS"] / 1024, 1),
        "rss_max_sampled_mib": round(max(samples) / 1024, 1),
        "rss_end_mib": round(after["VmRSS"] / 1024, 1),
        "rss_peak_vmhwm_mib": round(after["VmHWM"] / 1024, 1),
        "healthy_turns": healthy_turns,
        "healthy_turn_max_s": round(max(healthy_latencies), 3) if healthy_latencies else None,
        "model": args.model,
        "ended_with": codes,
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--size", type=int, default=2_000_000, help="bytes per request")
    parser.add_argument("--hold", type=float, default=20.0, help="seconds the load stays")
    parser.add_argument(
        "--idle", type=float, default=5.0, help="a drained connection silent this long is open"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=20.0, help="seconds to read what is left"
    )
    parser.add_argument(
        "--model", default=MODEL, help="model name (default: the generic model; local-echo)"
    )
    parser.add_argument("--server-root", help="serve from this source tree")
    parser.add_argument("serve_options", nargs="*", help="extra `orchestrator serve` options")
    return parser.parse_args(argv)


if __name__ == "__main__":
    print(json.dumps(trio.run(main, parse()), indent=2))
