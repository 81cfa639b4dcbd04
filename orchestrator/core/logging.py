"""Log sinks (set up by the CLI only), the redacting streams, and the ``Secret`` wrapper.

Libraries never add sinks: every package ``__init__`` calls ``logger.disable(...)``. The CLI
calls :func:`configure`, which enables our packages and adds one stderr sink with
``diagnose=False`` (loguru's default ``diagnose=True`` prints local variables of a traceback,
bearer headers included), a patcher that redacts keys in messages and ``extra``, and, last,
redaction of the whole formatted text, tracebacks and exception messages included.

What counts as a secret is decided in :mod:`orchestrator.core.redaction`: anything shaped like a
credential, and every value held in a :class:`Secret` (the API key, once resolved).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from typing import IO, TYPE_CHECKING, Any, Final

from loguru import logger

from orchestrator.core.redaction import redact, register_secret

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from loguru import Record

__all__ = [
    "PACKAGES",
    "RedactingStream",
    "Secret",
    "configure",
    "redact",
    "redacting_patcher",
]

PACKAGES: Final = ("orchestrator", "actors", "plans")

_ANSI: Final = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def redact_formatted(text: str) -> str:
    """``text`` redacted, also when colour codes split a secret: then it loses its colours."""
    if "\x1b[" not in text:
        return redact(text)
    plain = _ANSI.sub("", text)
    cleaned = redact(plain)
    return text if cleaned == plain else cleaned


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Secret):
        return repr(value)
    return value


def redacting_patcher(record: Record) -> None:
    """A loguru patcher that redacts the message and every ``extra`` value."""
    record["message"] = redact(record["message"])
    extra = record["extra"]
    for key, value in list(extra.items()):
        extra[key] = _redact_value(value)


class Secret:
    """Holds a credential; its ``repr``/``str`` show only a fingerprint (``sk-…abcd``).

    Making one registers the value with the redactor: from then on the value, and any
    fragment of 8 characters of it, is scrubbed from every log line, report, trace, event
    and error message. Call :meth:`reveal` at the single place that must send it (the
    handshake header).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        register_secret(value)

    def reveal(self) -> str:
        return self._value

    @property
    def fingerprint(self) -> str:
        value = self._value
        head = value[:3] if value.startswith("sk-") else ""
        return f"{head}…{value[-4:]}" if len(value) > 8 else "…"

    def __repr__(self) -> str:
        return f"Secret({self.fingerprint!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> Any:
        raise TypeError("Secret values cannot be pickled")


class RedactingStream:
    """A text stream whose every write is redacted first; anything else is the wrapped one's.

    ``orchestrator`` commands write stdout and stderr through two of these (report, JSON,
    error lines, tracebacks, the live view, log lines), and :func:`configure` puts one in
    front of a stream sink. ``buffer`` redacts bytes the same way (UTF-8).
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    @property
    def wrapped(self) -> IO[str]:
        return self._stream

    def write(self, text: str) -> int:
        self._stream.write(redact_formatted(text))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    @property
    def buffer(self) -> _RedactingBuffer:
        return _RedactingBuffer(self._stream.buffer)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _RedactingBuffer:
    def __init__(self, buffer: IO[bytes]) -> None:
        self._buffer = buffer

    def write(self, data: bytes) -> int:
        text = bytes(data).decode("utf-8", "surrogateescape")
        self._buffer.write(redact_formatted(text).encode("utf-8", "surrogateescape"))
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._buffer, name)


class _Message(str):
    """What a callable sink receives: the formatted text, redacted, with loguru's ``record``.

    ``record["message"]`` and ``record["extra"]`` are redacted too; ``record["exception"]``
    is the live exception: format it through ``redact`` if you format it yourself.
    """

    record: Any


_configured_sink: int | None = None
_opened_file: IO[str] | None = None


def _sink_for(target: Any) -> Any:
    """The loguru sink that writes ``target`` (stream, open file or callable) redacted."""
    if isinstance(target, RedactingStream):
        return target
    if callable(getattr(target, "write", None)):
        return RedactingStream(target)
    if callable(target):
        function: Callable[[Any], object] = target

        def call(message: Any) -> None:
            redacted = _Message(redact_formatted(str(message)))
            redacted.record = message.record
            function(redacted)

        return call
    raise TypeError(f"a log sink is a text stream, a file path or a callable, not {target!r}")


def configure(
    level: str = "INFO",
    *,
    sink: Any = None,
    colorize: bool | None = None,
    filter: Any = None,
) -> int:
    """Enable our packages' logs with one redacting sink (stderr by default), keeping the
    records ``filter(record)`` accepts when it is given.

    Args:
        level: the lowest level written.
        sink: a text stream, a file path (opened for appending, mode 0600) or a callable
            taking the formatted line; every line is redacted before it gets there,
            tracebacks included.
        colorize: colour the lines (default: when the stream is a terminal).

    Returns:
        The loguru handler id, for ``logger.remove``.
    """
    global _configured_sink, _opened_file
    opened = None
    if isinstance(sink, str | os.PathLike):
        descriptor = os.open(sink, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        sink = opened = os.fdopen(descriptor, "a", encoding="utf-8", buffering=1)
    target = _sink_for(sink if sink is not None else sys.stderr)  # a bad one changes nothing
    if _configured_sink is not None:
        with contextlib.suppress(ValueError):  # removed by its owner meanwhile
            logger.remove(_configured_sink)
        _configured_sink = None
    if _opened_file is not None:
        _opened_file.close()
    _opened_file = opened
    # loguru's default sink has diagnose=True, which prints locals (keys!) in tracebacks.
    with contextlib.suppress(ValueError):
        logger.remove(0)
    for package in PACKAGES:
        logger.enable(package)
    logger.configure(patcher=redacting_patcher)
    _configured_sink = logger.add(
        target,
        level=level,
        diagnose=False,
        backtrace=False,
        colorize=colorize,
        filter=filter,
        format="<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
        "<cyan>{extra}</cyan> {message}",
    )
    return _configured_sink
