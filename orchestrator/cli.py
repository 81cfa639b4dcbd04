"""The ``orchestrator`` command line.

Exit codes (RELIABILITY section 3): 0 success, 2 usage/configuration/plan error, 3 auth,
4 run failed, 5 budget reached, 130 interrupted.
"""

from __future__ import annotations

import argparse
import signal
import sys
from functools import partial
from pathlib import Path
from typing import Any, Final, NoReturn

import msgspec
import trio

from orchestrator.errors import ConfigurationError

__all__ = ["EXIT_AUTH", "EXIT_BUDGET", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_USAGE", "main"]

EXIT_OK: Final = 0
EXIT_USAGE: Final = 2
EXIT_AUTH: Final = 3
EXIT_FAILED: Final = 4
EXIT_BUDGET: Final = 5
EXIT_INTERRUPTED: Final = 130


def _fail(code: str, message: str, exit_code: int = EXIT_USAGE) -> NoReturn:
    print(f"error[{code}]: {message}", file=sys.stderr)
    raise SystemExit(exit_code)


# -- serve ---------------------------------------------------------------------------------------


def _add_serve(commands: Any) -> None:
    parser = commands.add_parser(
        "serve",
        help="run the embedded Responses-WebSocket server",
        description="Serve the Responses API WebSocket protocol with deterministic local "
        "models, for offline runs, tests, benchmarks and fault injection.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0: any)")
    parser.add_argument(
        "--token",
        help="bearer token clients must send (default: a random token, printed once); "
        "required for a non-loopback --host",
    )
    parser.add_argument(
        "--max-connection-age",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="close connections with websocket_connection_limit_reached after this age "
        "(default 3600)",
    )
    parser.add_argument(
        "--model",
        choices=("generic", "echo", "scripted"),
        help="local model for every model name (default: chosen by model name)",
    )
    parser.add_argument("--script", type=Path, help="JSON/YAML turns for the scripted model")
    parser.add_argument("--seed", type=int, help="make ids deterministic")
    parser.add_argument(
        "--max-message-size",
        type=int,
        default=16 * 1024 * 1024,
        metavar="BYTES",
        help="incoming message limit, enforced with close 1009 (default 16 MiB)",
    )
    parser.add_argument(
        "--strict-single-flight",
        action="store_true",
        help="answer a second create on a busy lane with 409 instead of queueing it",
    )
    parser.add_argument("--ttft", type=float, default=0.0, help="time to first token, seconds")
    parser.add_argument(
        "--tokens-per-second", type=float, default=None, help="pace of output deltas"
    )
    parser.add_argument(
        "--input-token-cost",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="processing time per input token not served from the connection cache",
    )
    parser.add_argument(
        "--faults",
        type=Path,
        metavar="FILE",
        help="JSON list of faults to inject (fields of orchestrator.server.Fault)",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more")
    parser.set_defaults(handler=_serve_command)


def _serve_command(args: argparse.Namespace) -> int:
    from orchestrator.logging import configure
    from orchestrator.server import Fault, LatencyModel, ServerConfig

    configure("DEBUG" if args.verbose > 1 else "INFO" if args.verbose else "WARNING")
    faults: tuple[Fault, ...] = ()
    if args.faults is not None:
        try:
            faults = tuple(msgspec.json.decode(args.faults.read_bytes(), type=list[Fault]))
        except (OSError, msgspec.MsgspecError) as exc:
            _fail("config.value", f"--faults {args.faults}: {exc}")
    try:
        config = ServerConfig(
            host=args.host,
            port=args.port,
            token=args.token,
            model=args.model,
            script=args.script,
            max_connection_age=args.max_connection_age,
            max_message_size=args.max_message_size,
            strict_single_flight=args.strict_single_flight,
            latency=LatencyModel(
                time_to_first_token=args.ttft,
                tokens_per_second=args.tokens_per_second,
                seconds_per_input_token=args.input_token_cost,
            ),
            faults=faults,
            seed=args.seed,
        )
    except ConfigurationError as exc:
        _fail(exc.code, str(exc))
    try:
        trio.run(_serve_until_signal, config, args.token is None)
    except ConfigurationError as exc:
        _fail(exc.code, str(exc))
    return EXIT_OK


async def _serve_until_signal(config: Any, print_token: bool) -> None:
    from orchestrator.server import LocalServer, serve_local_server

    server = LocalServer.from_config(config)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            running = await nursery.start(partial(serve_local_server, config, server=server))
            print(f"serving {running.url}", flush=True)
            print(f"base_url {running.base_url}", flush=True)
            if print_token:
                print(f"token {running.token}", flush=True)
            async for _ in signals:
                print("stopping", file=sys.stderr, flush=True)
                nursery.cancel_scope.cancel()
                break


# -- demo ----------------------------------------------------------------------------------------


def _add_demo(commands: Any) -> None:
    parser = commands.add_parser(
        "demo",
        help="run a short offline conversation on the embedded server (no API key needed)",
    )
    parser.set_defaults(handler=_demo_command)


def _demo_command(args: argparse.Namespace) -> int:
    trio.run(_demo)
    return EXIT_OK


async def _demo() -> None:
    from orchestrator.connection import open_connection
    from orchestrator.protocol.events import (
        FunctionCallOutputItem,
        FunctionTool,
        MessageItem,
        OutputTextDelta,
    )
    from orchestrator.server import open_local_server
    from orchestrator.session import Session

    weather = FunctionTool(
        "weather",
        {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "Today's weather in a city.",
    )
    print("demo: embedded server (no API key needed), generic local model")
    async with (
        open_local_server() as server,
        open_connection(server.url, server.token, agent="demo") as connection,
    ):
        session = Session(model="local-generic", instructions="Be brief.", tools=(weather,))

        def show(event: object) -> None:
            if isinstance(event, OutputTextDelta):
                print(event.delta, end="", flush=True)

        prompt = "What is the weather in Lisbon today?"
        print(f"user: {prompt}")
        response = await connection.run_turn(session, [MessageItem.user(prompt)])
        outputs = []
        for call in response.function_calls:
            print(f"tool: {call.name}({call.arguments})")
            outputs.append(
                FunctionCallOutputItem(call_id=call.call_id, output='{"sky":"sunny","c":21}')
            )
        print("assistant: ", end="")
        await connection.run_turn(session, outputs, on_event=show)
        print()
        stats = connection.statistics()
        print(
            f"turns {stats.turns}, transcript {len(session.transcript)} items, "
            f"{stats.events_received} events, continued by previous_response_id"
        )


# -- entry point -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="Supervised teams of LLM agents over the Responses API WebSocket mode.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(commands)
    _add_demo(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
