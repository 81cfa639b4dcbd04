"""What a credential looks like, and how it is kept out of every text we write.

The one home of credential detection: the log sinks and the CLI's outputs
(``orchestrator.core.logging``), the errors (``orchestrator.errors``), runtime events, tool
error outputs (``actors.tools``) and the plan secret scan (``plans.validate``) all use it.
It imports nothing of ours, so every layer may import it.

Two defences, applied together by :func:`redact`:

* **Known values.** The process knows its keys: every :class:`~orchestrator.core.logging.Secret`
  registers its value (``resolve_api_key`` makes one for each key it resolves, the CLI's
  included), and so does :func:`register_secret`. Any occurrence of a registered value, and
  any fragment of 8 characters or more of one (a key cut by a truncated message), is
  replaced, whatever the value looks like: a custom endpoint's key need not start with ``sk-``.
* **Shapes.** Text that looks like a credential: ``sk-...`` keys, ``Bearer`` tokens, AWS,
  GitHub and Slack tokens, private key blocks, and ``api_key=...`` / ``"token": "..."``
  assignments.
"""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING, Final

import attrs

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "MIN_SECRET_LENGTH",
    "REDACTED",
    "is_secret_name",
    "looks_secret",
    "redact",
    "register_secret",
]

REDACTED: Final = "[REDACTED]"

# Values shorter than this are not registered: scrubbing them would mangle ordinary text.
# It is also the fragment length: no 8 consecutive characters of a registered value survive.
MIN_SECRET_LENGTH: Final = 8
# How many registered values are remembered, most recently registered first. A process
# holds one key or a few; the bound keeps a long test session (an embedded server with its
# own token per test) from making every redaction slower.
_MAX_KNOWN: Final = 16
_BLOCK: Final = MIN_SECRET_LENGTH // 2

# Values that are credentials by themselves, wherever they appear. Each pattern starts with
# a literal, which the regex engine finds fast; the word boundary before it is checked on
# the few matches (a lookbehind would make the engine try every position).
_SHAPES: Final = (
    # OpenAI-style keys (sk-..., sk-proj-...); a digit sets them apart from words.
    re.compile(r"sk-(?=[A-Za-z0-9_-]*\d)[A-Za-z0-9_-]{10,}"),
    re.compile(r"AKIA[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"gh[pousr]_[A-Za-z0-9]{30,}"),  # GitHub tokens
    re.compile(r"xox[abprs]-[A-Za-z0-9-]{10,}"),  # Slack tokens
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
)
# A bearer credential (RFC 6750 b64token characters), any case; the scheme stays.
_BEARER: Final = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")

# Names of fields, headers and parameters that hold credentials.
_SECRET_NAMES: Final = frozenset(
    {
        "api_key",
        "apikey",
        "api-key",
        "x-api-key",
        "openai_api_key",
        "authorization",
        "password",
        "passwd",
        "secret",
        "secret_key",
        "client_secret",
        "access_token",
        "refresh_token",
        "id_token",
        "auth_token",
        "token",
        "bearer",
        "key",
        "sig",
        "signature",
        "credential",
        "credentials",
    }
)
# ``name = value``, ``name: value``, ``"name": "value"``: the value goes, the name stays.
_ASSIGNMENT: Final = re.compile(
    r"(?i)(?<![A-Za-z0-9_-])"
    r"((?:x-)?api[_-]?key|openai_api_key|authorization|password|passwd|client[_-]secret"
    r"|secret(?:[_-]key)?|(?:access|refresh|id|auth)[_-]token|token)"
    r"([\"']?\s*[:=]\s*[\"']?)"
    # An authorization scheme stays; possessive, so that "Bearer [REDACTED]" is left alone.
    r"((?:bearer|basic|digest|token)\s+)?+"
    r"(?!\[REDACTED\])[^\s'\",;&}\]]+"
)

# A quick, case-sensitive test on the lowered text: only a text it finds something in is
# searched with _ASSIGNMENT (a case-insensitive pattern with a lookbehind, slow on big texts).
_ASSIGNMENT_HINT: Final = re.compile(
    r"(?:key|authorization|passw(?:or)?d|secret|token)[\"']?\s*[:=]"
)


@attrs.frozen
class _Known:
    """The registered values (most recent last) and how to find their fragments: every
    8-character fragment of a value contains one of its aligned 4-character blocks, at a
    known offset, so only the blocks' occurrences need a closer look."""

    values: tuple[str, ...] = ()
    scanner: re.Pattern[str] | None = None
    blocks: dict[str, tuple[tuple[str, int], ...]] = attrs.field(factory=dict)

    @classmethod
    def of(cls, values: tuple[str, ...]) -> _Known:
        blocks: dict[str, list[tuple[str, int]]] = {}
        for value in values:
            for offset in range(0, len(value) - _BLOCK + 1, _BLOCK):
                blocks.setdefault(value[offset : offset + _BLOCK], []).append((value, offset))
        scanner = re.compile("|".join(map(re.escape, blocks)))
        return cls(values, scanner, {block: tuple(at) for block, at in blocks.items()})


_lock = threading.Lock()
# Replaced as a whole, never mutated: readers in other threads (log sinks, tool threads)
# need no lock.
_known = _Known()


def register_secret(value: str) -> None:
    """Scrub ``value``, and every fragment of 8 characters or more of it, from all output.

    Values shorter than :data:`MIN_SECRET_LENGTH` are ignored. The most recent 16 values are
    kept; registering a value again makes it the most recent.
    """
    global _known
    if len(value) < MIN_SECRET_LENGTH:
        return
    with _lock:
        values = _known.values
        if values and values[-1] == value:
            return
        _known = _Known.of((*(v for v in values if v != value), value)[-_MAX_KNOWN:])


def is_secret_name(name: str) -> bool:
    """Whether a field, header or parameter called ``name`` holds a credential."""
    return name.strip().lower() in _SECRET_NAMES


def looks_secret(text: str) -> bool:
    """Whether ``text`` contains something shaped like a credential or a registered value.

    Assignments (``password: x``) do not count here: in a plan they are ordinary prose.
    """
    if any(_shapes(text)) or _BEARER.search(text):
        return True
    return _known_spans(text) != []


def redact(text: str) -> str:
    """``text`` with every registered value (or 8-character fragment of one) and anything
    shaped like a credential replaced by ``[REDACTED]``. Idempotent."""
    if not text:
        return text
    spans = _known_spans(text)
    if spans:
        pieces = []
        position = 0
        for start, end in spans:
            pieces.append(text[position:start])
            pieces.append(REDACTED)
            position = end
        pieces.append(text[position:])
        text = "".join(pieces)
    for pattern in _SHAPES:
        if pattern.search(text):
            text = pattern.sub(_replace_shape, text)
    lowered = text.lower()
    if "bearer" in lowered:
        text = _BEARER.sub(r"\1" + REDACTED, text)
    if _ASSIGNMENT_HINT.search(lowered):
        text = _ASSIGNMENT.sub(r"\1\2\3" + REDACTED, text)
    return text


def _at_word_start(match: re.Match[str]) -> bool:
    start = match.start()
    return start == 0 or not match.string[start - 1].isalnum()


def _replace_shape(match: re.Match[str]) -> str:
    return REDACTED if _at_word_start(match) else match.group()


def _shapes(text: str) -> Iterator[re.Match[str]]:
    """Matches of the credential shapes that start a word."""
    for pattern in _SHAPES:
        for match in pattern.finditer(text):
            if _at_word_start(match):
                yield match


def _known_spans(text: str) -> list[tuple[int, int]]:
    """Sorted, merged ``(start, end)`` spans of ``text`` that match a registered value over
    at least 8 characters."""
    known = _known
    if known.scanner is None:
        return []
    spans: list[tuple[int, int]] = []
    match = known.scanner.search(text)
    while match is not None:
        found = match.start()
        for value, offset in known.blocks[match.group()]:
            origin = found - offset  # where the value would start in text
            low = found
            while low > max(origin, 0) and text[low - 1] == value[low - 1 - origin]:
                low -= 1
            high = found + _BLOCK
            limit = min(origin + len(value), len(text))
            while high < limit and text[high] == value[high - origin]:
                high += 1
            if high - low >= MIN_SECRET_LENGTH:
                spans.append((low, high))
        # From the next character, not the match's end: occurrences may overlap.
        match = known.scanner.search(text, found + 1)
    if len(spans) < 2:
        return spans
    spans.sort()
    merged = [spans[0]]
    for start, end in spans[1:]:
        last_start, last_end = merged[-1]
        if start <= last_end:
            merged[-1] = (last_start, max(last_end, end))
        else:
            merged.append((start, end))
    return merged
