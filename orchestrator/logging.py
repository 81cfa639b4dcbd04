"""Log sinks (set up by the CLI only), secret redaction and the ``Secret`` wrapper.

Libraries never add sinks: every package ``__init__`` calls ``logger.disable(...)``. The CLI
calls :func:`configure`, which enables our packages and adds one stderr sink with
``diagnose=False`` (loguru's default ``diagnose=True`` prints local variables of a traceback,
bearer headers included) and a patcher that redacts keys in messages and ``extra``.
"""

from __future__ import annotations

import contextlib
import re
import sys
from typing import TYPE_CHECKING, Any, Final

from loguru import logger

if TYPE_CHECKING:
    from loguru import Record

__all__ = ["PACKAGES", "Secret", "configure", "redact", "redacting_patcher"]

PACKAGES: Final = ("orchestrator", "actors", "plans")

_PATTERNS: Final = (
    # OpenAI-style keys (sk-..., sk-proj-...), our canaries included.
    re.compile(r"\bsk-[A-Za-z0-9_\-]{10,}"),
    # Bearer credentials in headers or URLs.
    re.compile(r"(?i)(bearer\s+)[^\s'\",]+"),
    # key=value / "api_key": "value" shapes.
    re.compile(r"(?i)((?:api[_-]?key|authorization|token)[\"']?\s*[:=]\s*[\"']?)[^\s'\",}]+"),
)


def redact(text: str) -> str:
    """Replace anything that looks like a credential in ``text`` with ``[REDACTED]``."""
    if not text:
        return text
    text = _PATTERNS[0].sub("[REDACTED]", text)
    text = _PATTERNS[1].sub(r"\1[REDACTED]", text)
    return _PATTERNS[2].sub(r"\1[REDACTED]", text)


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

    Call :meth:`reveal` at the single place that must send it (the handshake header).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

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


_configured_sink: int | None = None


def configure(
    level: str = "INFO",
    *,
    sink: Any = None,
    colorize: bool | None = None,
    filter: Any = None,
) -> int:
    """Enable our packages' logs with one redacting sink (stderr by default), keeping the
    records ``filter(record)`` accepts when it is given.

    Returns:
        The loguru handler id, for ``logger.remove``.
    """
    global _configured_sink
    if _configured_sink is not None:
        logger.remove(_configured_sink)
    # loguru's default sink has diagnose=True, which prints locals (keys!) in tracebacks.
    with contextlib.suppress(ValueError):
        logger.remove(0)
    for package in PACKAGES:
        logger.enable(package)
    logger.configure(patcher=redacting_patcher)
    _configured_sink = logger.add(
        sink if sink is not None else sys.stderr,
        level=level,
        diagnose=False,
        backtrace=False,
        colorize=colorize,
        filter=filter,
        format="<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
        "<cyan>{extra}</cyan> {message}",
    )
    return _configured_sink
