"""Embedded server throughput: 12-event function-call turns per second, 1 and 100 clients.

The server runs in its own process (pinned to one core when two are available); clients are
bare trio-websocket sockets in this process (pinned to the other core) that decode nothing
but the terminal event, so the figure is the server's. Each client runs 20-turn chains (each
turn answers the previous call with a function_call_output and previous_response_id).

    python -m bench.server_throughput [--seconds 5] [--clients 1 100]
"""

from __future__ import annotations

import argparse
import time

import trio
import trio_websocket

from bench._common import cpus, fc_script, machine, pin, script_file, server_process

CREATE_FIRST = (
    '{"type":"response.create","model":"local-scripted","store":false,'
    '"tools":[{"type":"function","name":"lookup","parameters":{"type":"object",'
    '"properties":{"city":{"type":"string"},"day":{"type":"integer"}},'
    '"required":["city","day"],"additionalProperties":false}}],'
    '"input":[{"type":"message","role":"user","content":"go"}]}'
)


def _continue(previous: str, call_id: str) -> str:
    return (
        '{"type":"response.create","model":"local-scripted","store":false,'
        f'"previous_response_id":"{previous}","input":[{{"type":"function_call_output",'
        f'"call_id":"{call_id}","output":"ok"}}]}}'
    )


async def client(url: str, token: str, deadline: float, counts: list[int]) -> None:
    headers = [(b"authorization", f"Bearer {token}".encode())]
    async with trio_websocket.open_websocket_url(
        url, extra_headers=headers, max_message_size=64 * 2**20
    ) as ws:
        while trio.current_time() < deadline:
            message = CREATE_FIRST
            for _ in range(20):
                await ws.send_message(message)
                while True:
                    frame = await ws.get_message()
                    if frame.startswith('{"type":"response.completed"'):
                        break
                counts[0] += 1
                response_id = frame.split('"id":"', 1)[1].split('"', 1)[0]
                call_id = frame.split('"call_id":"', 1)[1].split('"', 1)[0]
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
    args = parser.parse_args()
    available = cpus()
    server_cpu, client_cpu = (available[0], available[1]) if len(available) > 1 else (None, None)
    print(machine())
    pin(client_cpu)
    script = script_file(fc_script(calls=20))
    with server_process("--model", "scripted", "--script", script, cpu=server_cpu) as info:
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
