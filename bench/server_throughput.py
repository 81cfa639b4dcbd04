"""Embedded server throughput: 12-event function-call turns per second, 1 and 100 clients.

The server runs in its own process (pinned to one core when two are available); the clients
run in this process (pinned to the other core). They must cost far less than the server, so
they are bare: the handshake is wsproto's, each create is one masked frame framed by wsproto,
and the server's unmasked frames are split by hand and left undecoded except the terminal
``response.completed``, from which the response and call ids are sliced. Each client runs
20-turn chains (each turn answers the previous call with a function_call_output and
previous_response_id).

    python -m bench.server_throughput [--seconds 5] [--clients 1 100] [--repeat 3]
        [--server-root DIR]

``--server-root`` serves from another source tree (e.g. ``git archive`` of an older
commit), for before/after comparisons with the same clients.
"""

from __future__ import annotations

import argparse
import struct
import time
from pathlib import Path

import trio
import wsproto
from wsproto.events import AcceptConnection, Request, TextMessage

from bench._common import ROOT, cpus, fc_script, machine, pin, script_file, server_process

CREATE_FIRST = (
    '{"type":"response.create","model":"local-scripted","store":false,'
    '"tools":[{"type":"function","name":"lookup","parameters":{"type":"object",'
    '"properties":{"city":{"type":"string"},"day":{"type":"integer"}},'
    '"required":["city","day"],"additionalProperties":false}}],'
    '"input":[{"type":"message","role":"user","content":"go"}]}'
)
COMPLETED = b'{"type":"response.completed"'
CHAIN = 20


def _continue(previous: str, call_id: str) -> str:
    return (
        '{"type":"response.create","model":"local-scripted","store":false,'
        f'"previous_response_id":"{previous}","input":[{{"type":"function_call_output",'
        f'"call_id":"{call_id}","output":"ok"}}]}}'
    )


class BareClient:
    """A WebSocket client that reads server frames without decoding them."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.buffer = bytearray()

    @classmethod
    async def connect(cls, url: str, token: str) -> BareClient:
        host_port, _, path = url.removeprefix("ws://").partition("/")
        host, _, port = host_port.rpartition(":")
        client = cls(await trio.open_tcp_stream(host.strip("[]"), int(port)))
        headers = [(b"authorization", f"Bearer {token}".encode())]
        await client.stream.send_all(
            client.ws.send(Request(host=host_port, target="/" + path, extra_headers=headers))
        )
        while True:
            client.ws.receive_data(await client.stream.receive_some())
            if any(isinstance(event, AcceptConnection) for event in client.ws.events()):
                return client

    async def send(self, text: str) -> None:
        await self.stream.send_all(self.ws.send(TextMessage(data=text)))

    async def until_completed(self) -> bytes:
        """Skip frames until ``response.completed``; return its payload."""
        buffer = self.buffer
        while True:
            start = 0
            while len(buffer) - start >= 2:
                length = buffer[start + 1] & 0x7F
                head = 2
                if length == 126:
                    if len(buffer) - start < 4:
                        break
                    (length,) = struct.unpack_from("!H", buffer, start + 2)
                    head = 4
                elif length == 127:
                    if len(buffer) - start < 10:
                        break
                    (length,) = struct.unpack_from("!Q", buffer, start + 2)
                    head = 10
                end = start + head + length
                if end > len(buffer):
                    break
                assert buffer[start] == 0x81, "the server sends whole text frames"
                if buffer.startswith(COMPLETED, start + head):
                    payload = bytes(buffer[start + head : end])
                    del buffer[:end]
                    return payload
                start = end
            del buffer[:start]
            data = await self.stream.receive_some(1 << 16)
            if not data:
                raise ConnectionError("the server closed the connection")
            buffer += data


async def client(url: str, token: str, deadline: float, counts: list[int]) -> None:
    bare = await BareClient.connect(url, token)
    async with bare.stream:
        while trio.current_time() < deadline:
            message = CREATE_FIRST
            for _ in range(CHAIN):
                await bare.send(message)
                frame = await bare.until_completed()
                counts[0] += 1
                response_id = frame.split(b'"id":"', 1)[1].split(b'"', 1)[0].decode()
                call_id = frame.split(b'"call_id":"', 1)[1].split(b'"', 1)[0].decode()
                message = _continue(response_id, call_id)


async def measure(url: str, token: str, clients: int, seconds: float) -> float:
    counts = [0]
    # Warm-up so connection setup is not measured.
    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(client, url, token, trio.current_time() + 0.3, [0])
    started = time.perf_counter()
    deadline = trio.current_time() + seconds
    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(client, url, token, deadline, counts)
    return counts[0] / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--server-root", type=Path, default=ROOT)
    args = parser.parse_args()
    available = cpus()
    server_cpu, client_cpu = (available[0], available[1]) if len(available) > 1 else (None, None)
    print(machine())
    pin(client_cpu)
    script = script_file(fc_script(calls=CHAIN))
    with server_process(
        "--model", "scripted", "--script", script, cpu=server_cpu, root=args.server_root
    ) as info:
        for clients in args.clients:
            rates = [
                trio.run(measure, info["url"], info["token"], clients, args.seconds)
                for _ in range(args.repeat)
            ]
            rates.sort()
            print(
                f"clients={clients:4d}  turns/s median {rates[len(rates) // 2]:8.0f}  "
                f"(runs: {', '.join(f'{r:.0f}' for r in rates)})"
            )


if __name__ == "__main__":
    main()
