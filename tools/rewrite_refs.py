"""Point the code's references to the team's old reference documents at docs/ instead.

Comments and docstrings used to cite sections of documents that are not in the repository:
``spec 5.5`` and ``MUST 4`` (the wire contract), ``RELIABILITY T7``, ``S4``, ``G13`` or
``RELIABILITY 3.2`` (the reliability catalogue), ``DESIGN 6``. This script finds each such
reference in the comments and string literals of the Python files (and the comments of
``pyproject.toml``) and rewrites it to the page and anchor of ``docs/`` that now says the
same thing::

    (spec 5.5)              ->  (docs/protocol.md#event-order-rules)
    T1: a TCP abort ...     ->  docs/recovery.md#lost-sockets: a TCP abort ...
    (RELIABILITY P1, G2)    ->  (docs/faults.md#crash-points)

The tables below are the mapping. Usage, from the repository's root::

    python tools/rewrite_refs.py           rewrite in place, and list what changed
    python tools/rewrite_refs.py --list    list every reference and its replacement only
    python tools/rewrite_refs.py --check   exit 1 if a reference is left

The rewrite is idempotent (a rewritten reference matches no rule, so a second run changes
nothing) and deterministic (files in sorted order, plain text rules): run it again after
merging branches that still carry old references. A bare fault id (``T1``...``T15``,
``S1``...``S8``, ``P1``...``P8``, ``L1``...``L4``, ``G1``...``G16``) is rewritten wherever it
stands in a comment or a string, so look at ``--list`` first when new code may use such a
name for something else. A reference the tables do not cover stops the script with
``MappingError``: add it to a table. A line that grows past 100 characters is
wrapped by pushing its last words down into the same comment block or docstring paragraph
(a comment after code moves above it); a line it cannot wrap is reported, to be wrapped by
hand. Run ``ruff format`` and ``ruff check`` afterwards.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import tokenize
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

ROOT: Final = Path(__file__).resolve().parents[1]
SCANNED: Final = ("orchestrator", "actors", "plans", "tests", "bench")
# Files that quote the old references on purpose (the tests of this script).
EXCLUDED: Final = frozenset({"tests/test_docs.py"})
TOML_FILES: Final = ("pyproject.toml",)
LIMIT: Final = 100

P, R, F, A = "protocol.md", "recovery.md", "faults.md", "architecture.md"

# The wire contract ("spec N.N"), section by section.
SPEC: Final[dict[str, tuple[str, str]]] = {
    "1": (P, "in-one-page"),
    "2": (P, "handshake"),
    "2.1": (P, "handshake"),
    "2.2": (P, "handshake"),
    "2.3": (P, "refused-handshakes"),
    "2.4": (P, "frames-sizes-and-keepalive"),
    "3": (P, "connection-age"),
    "3.1": (P, "connection-age"),
    "3.2": (P, "close-codes"),
    "4": (P, "client-events"),
    "4.1": (P, "creating-a-response"),
    "4.2": (P, "input-items"),
    "4.3": (P, "function-tools"),
    "4.4": (P, "steering"),
    "5": (P, "server-events"),
    "5.1": (P, "sequence-numbers-and-lanes"),
    "5.2": (P, "the-response-object"),
    "5.3": (P, "a-text-answer"),
    "5.4": (P, "a-function-call-answer"),
    "5.5": (P, "event-order-rules"),
    "5.6": (P, "terminal-events-and-usage"),
    "5.7": (P, "warm-ups"),
    "5.8": (P, "other-event-types"),
    "5.9": (P, "steering"),
    "6": (P, "errors"),
    "6.1": (P, "the-error-event"),
    "6.2": (P, "error-codes"),
    "6.3": (P, "error-codes"),
    "6.4": (P, "error-codes"),
    "6.5": (P, "close-codes"),
    "7": (P, "the-connection-local-cache"),
    "7.1": (P, "the-connection-local-cache"),
    "7.2": (P, "continuing-a-chain"),
    "7.3": (P, "eviction"),
    "7.4": (P, "forks"),
    "7.5": (P, "on-a-new-socket"),
    "8": (P, "lanes-and-limits"),
    "9": (P, "how-the-client-uses-it"),
    "9.6": (R, "server-errors-and-rate-limits"),
    "9.7": (R, "planned-rotation"),
    "10": (P, "the-embedded-server"),
    "10.9": (P, "frames-sizes-and-keepalive"),
    "11": (P, "in-one-page"),
}

# The wire contract's requirements of the embedded server ("MUST N" of its section 10).
MUST: Final[dict[str, tuple[str, str]]] = {
    "1": (P, "handshake"),
    "2": (P, "creating-a-response"),
    "3": (P, "server-events"),
    "4": (P, "sequence-numbers-and-lanes"),
    "5": (P, "the-connection-local-cache"),
    "6": (P, "lanes-and-limits"),
    "7": (P, "connection-age"),
    "8": (P, "the-error-event"),
    "9": (P, "frames-sizes-and-keepalive"),
    "10": (P, "determinism-and-latency"),
}

# The reliability catalogue: fault ids, goals, and its numbered sections.
RELIABILITY: Final[dict[str, tuple[str, str]]] = {
    "T1": (R, "lost-sockets"),
    "T2": (R, "lost-sockets"),
    "T3": (R, "final-close-codes"),
    "T4": (R, "expired-connections"),
    "T5": (R, "planned-rotation"),
    "T6": (R, "lost-cache"),
    "T7": (R, "response-already-in-flight"),
    "T8": (R, "malformed-and-unknown-events"),
    "T9": (R, "malformed-and-unknown-events"),
    "T10": (R, "final-close-codes"),
    "T11": (R, "malformed-and-unknown-events"),
    "T12": (R, "silent-peers"),
    "T13": (R, "silent-peers"),
    "T14": (R, "handshake-failures"),
    "T15": (R, "backoff-and-attempts"),
    "S1": (F, "supervision"),
    "S2": (F, "supervision"),
    "S3": (F, "supervision"),
    "S4": (F, "tools-that-hang-or-fail"),
    "S5": (F, "tools-that-hang-or-fail"),
    "S6": (F, "routing"),
    "S7": (F, "routing"),
    "S8": (F, "budgets"),
    "P1": (F, "crash-points"),
    "P2": (F, "poison-jobs"),
    "P3": (F, "crash-points"),
    "P4": (F, "plan-changes"),
    "P5": (F, "signals-and-processes"),
    "P6": (F, "signals-and-processes"),
    "P7": (F, "storage-failures"),
    "P8": (F, "the-fault-model"),
    "L1": (F, "bounded-server-memory"),
    "L2": (F, "the-fault-model"),
    "L3": (F, "the-fault-model"),
    "L4": (F, "the-fault-model"),
    "G1": (F, "the-fault-campaign"),
    "G2": (F, "crash-points"),
    "G3": (F, "poison-jobs"),
    "G4": (F, "signals-and-processes"),
    "G5": (R, "planned-rotation"),
    "G6": (R, "lost-cache"),
    "G7": (F, "supervision"),
    "G8": (F, "tools-that-hang-or-fail"),
    "G9": (F, "decoder-fuzzing"),
    "G10": (F, "bounded-server-memory"),
    "G11": (F, "the-fault-model"),
    "G12": (F, "the-fault-model"),
    "G13": (F, "secrets"),
    "G14": (F, "bad-input"),
    "G15": (F, "clients-of-the-embedded-server"),
    "G16": (F, "test-hygiene"),
    "2.1": (F, "fault-injection"),
    "2.2": (R, "the-matrix"),
    "2.3": (F, "supervision"),
    "2.4": (F, "durable-jobs"),
    "2.5": (F, "bounded-server-memory"),
    "3": (F, "bad-input"),
    "3.1": (F, "plan-files"),
    "3.2": (F, "tool-calls-from-the-model"),
    "3.2 last row": (F, "approvals"),
    "3.3": (F, "keys-and-endpoints"),
    "3.4": (F, "clients-of-the-embedded-server"),
    "3.4 last row": (F, "clients-of-the-embedded-server"),
    "4": (F, "secrets"),
    "5": (F, "the-fault-model"),
}
RANGES: Final[dict[str, tuple[str, str]]] = {
    "T": (R, "the-matrix"),
    "S": (F, "supervision"),
    "P": (F, "durable-jobs"),
    "L": (F, "the-fault-model"),
    "G": (F, "the-fault-model"),
}

# The old design notes, by section.
DESIGN: Final[dict[str, tuple[str, str]]] = {
    "1": (A, "how-a-run-is-wired"),
    "2": (A, "layers"),
    "3": (A, "how-a-turn-flows"),
    "4": (R, "the-matrix"),
    "5": (F, "supervision"),
    "6": (A, "delegation-and-steps"),
    "7": (P, "the-embedded-server"),
    "8": (A, "observing-a-run"),
    "9": (A, "observing-a-run"),
    "10": (A, "layers"),
    "11": (A, "how-a-durable-job-journals-a-turn"),
}


def link(page: str, anchor: str) -> str:
    return f"docs/{page}#{anchor}"


# Phrases that read badly when rewritten word for word: replaced whole, first. Each is
# (files it applies to, pattern, replacement); ``None`` applies everywhere.
PHRASES: Final[list[tuple[str | None, str, str]]] = [
    (None, r"the spec \(section 3\.2\) says", f"{link(R, 'lost-sockets')} says"),
    (None, r"spec 10 MUST 10", link(P, "determinism-and-latency")),
    (None, r'spec 10 SHOULD; RELIABILITY 2\.1 "nemesis"', link(F, "fault-injection")),
    (
        None,
        r"RELIABILITY 3\.1 \(plan files\), 3\.2 \(tool calls\), 3\.3 \(keys and endpoints\), "
        r"and Ctrl-C \(P5\)",
        f"{link(F, 'plan-files')}, {link(F, 'tool-calls-from-the-model')}, "
        f"{link(F, 'keys-and-endpoints')}, and Ctrl-C ({link(F, 'signals-and-processes')})",
    ),
    (
        None,
        r"RELIABILITY 3\.1 rows from 'unknown field' on",
        f"{link(F, 'plan-files')}, from 'unknown field' on",
    ),
    (None, r"RELIABILITY's example", f"the example in {link(F, 'plan-files')}"),
    (None, r'RELIABILITY G13 and section 4, "Secrets"', link(F, "secrets")),
    (
        None,
        r"RELIABILITY 3\.3 rows server\.auth, server\.port,",
        f"{link(F, 'keys-and-endpoints')}: server.auth, server.port,",
    ),
    (
        None,
        r"\(RELIABILITY 3\.4's \"missing\s+input\" defers to the contract: only a missing "
        r"``model`` is\s+refused\.\)",
        f"({link(F, 'clients-of-the-embedded-server')}: only a missing ``model`` is refused.)",
    ),
    (
        None,
        r"every RELIABILITY 3\.2 row for calls from the model",
        f"every case of {link(F, 'tool-calls-from-the-model')}",
    ),
    (None, r"RELIABILITY 3\.2 and the security checklist", link(F, "approvals")),
    (None, r"RELIABILITY 3\.2, last row; security checklist", link(F, "approvals")),
    (None, r"G2's floor", f"the floor of {link(F, 'crash-points')}"),
    (
        None,
        r"T9's two-step decode",
        f"the two-step decode of {link(R, 'malformed-and-unknown-events')}",
    ),
    (None, r"the T8 list", f"the defects of {link(F, 'decoder-fuzzing')}"),
    (None, r"The T8 corpus", f"The hostile corpus of {link(F, 'decoder-fuzzing')}"),
    (None, r"Row S4 '([^']+)' \(async\)", f"'\\1', async ({link(F, 'tools-that-hang-or-fail')})"),
    (None, r"Row S4 \(sync\)", f"'tool hangs', sync ({link(F, 'tools-that-hang-or-fail')})"),
    (None, r"Row S5 '([^']+)'", f"'\\1' ({link(F, 'tools-that-hang-or-fail')})"),
    ("tests/plans/", r"Row '([^']+)' \(([^)]+)\)", f"'\\1', \\2 ({link(F, 'plan-files')})"),
    ("tests/test_tools.py", r"Row '([^']+)'", f"'\\1' ({link(F, 'tool-calls-from-the-model')})"),
    ("tests/plans/", r"Row '([^']+)'", f"'\\1' ({link(F, 'plan-files')})"),
    (
        None,
        r"Spec 5\.4: steps 4-7 per call",
        f"{link(P, 'a-function-call-answer')}: steps 1 to 4 for each call",
    ),
    (None, r"T14 / 3\.3:", f"{link(R, 'handshake-failures')}, {link(F, 'keys-and-endpoints')}:"),
    (None, r"\(spec 5\.5 note\)", f"({link(P, 'a-text-answer')}: clients do not depend on them)"),
    (None, r"spec 5\.5 \(items 1 to 7\)", f"{link(P, 'event-order-rules')} (rules 1 to 7)"),
    (
        None,
        r"\(or 5\.1 envelope rule\)",
        f"(or an envelope rule of {link(P, 'sequence-numbers-and-lanes')})",
    ),
    (None, r"across lanes, 5\.1\)", f"across lanes, {link(P, 'sequence-numbers-and-lanes')})"),
    (None, r"evicts the parent \(7\.3\)", f"evicts the parent ({link(P, 'eviction')})"),
    (None, r"docs/durability\.md", link(A, "how-a-durable-job-journals-a-turn")),
    (None, r"RELIABILITY 3\.1: plan files", link(F, "plan-files")),
    (
        None,
        r"RELIABILITY 3\.2: tool calls from the model,",
        f"{link(F, 'tool-calls-from-the-model')},",
    ),
    (None, r"RELIABILITY 3\.3: keys and endpoints", link(F, "keys-and-endpoints")),
    (
        None,
        r"size limit and keepalive \(spec 2\.4, 6\.5\)",
        f"size limit and keepalive ({link(P, 'frames-sizes-and-keepalive')})",
    ),
    (
        "tests/server/wire.py",
        r"servers send text frames only \(spec 2\.4\)",
        "servers send text frames only (docs/protocol.md)",
    ),
    (
        None,
        r"never rely on it \(spec 5\.3\)",
        f"never rely on it ({link(P, 'a-function-call-answer')})",
    ),
    (
        None,
        r"``function_call_arguments\.done`` \(spec 5\.3\)",
        f"``function_call_arguments.done`` ({link(P, 'a-function-call-answer')})",
    ),
    (
        None,
        r"whole-second integers there \(spec 5\.3\)",
        f"whole-second integers there ({link(P, 'the-response-object')})",
    ),
    (None, r"STYLE(?:\.md)? (?:section )?7", link(F, "test-hygiene")),
]

_ID: Final = r"(?:T1[0-5]|T[1-9]|S[1-8]|P[1-8]|L[1-4]|G1[0-6]|G[1-9])"
_ID_RANGE: Final = rf"{_ID}(?:\s*-\s*{_ID})?"
_NUM: Final = r"\d{1,2}(?:\.\d{1,2}){0,2}"
_SEP: Final = r"\s*(?:,|/|\band\b)\s*"
# A spec section, a range of them, and what may follow one: item (rule) or step numbers.
_SPEC_ITEM: Final = (
    rf"{_NUM}(?:\s*(?:-|\bto\b)\s*{_NUM})?"
    r"(?:\s+(?:items?|steps?)\s+\d+(?:\s*(?:-|\bto\b)\s*\d+)?)?"
)
_REL_ITEM: Final = (
    rf"(?:section\s+)?(?:{_ID_RANGE}|{_NUM}"
    r"(?:,?\s+(?:last\s+row|rows?\s+\d+(?:\s*(?:,|-)\s*\d+)*))?)"
)

SPEC_REF: Final = re.compile(
    rf"\b[Ss]pec(?:\s+sections?)?\s+(?P<items>{_SPEC_ITEM}(?:{_SEP}{_SPEC_ITEM})*)"
    r"(?P<local>\s+\[LOCAL\])?"
)
MUST_REF: Final = re.compile(
    r"(?:\bsection\s+10\s+)?\bMUST\s+(?P<items>\d{1,2}(?:\s*(?:,|\band\b)\s*\d{1,2})*)"
)
RELIABILITY_REF: Final = re.compile(
    rf"\bRELIABILITY\s+(?P<items>{_REL_ITEM}(?:{_SEP}{_REL_ITEM})*)"
)
DESIGN_REF: Final = re.compile(
    r"\bDESIGN(?:\s+section)?\s+(?P<items>\d{1,2}(?:\s*(?:,|\band\b)\s*\d{1,2})*)"
)
BARE_ID_REF: Final = re.compile(rf"(?<![\w/#.-])(?P<items>{_ID_RANGE}(?:{_SEP}{_ID_RANGE})*)\b")
# A docstring that opens with a bare section number of the wire contract: '"""7.3: ...'.
LEADING_NUMBER: Final = re.compile(
    r'\A(?P<quotes>[rRbBuU]?"""|[rRbBuU]?\'\'\')(?P<items>\d\.\d(?:\s+row\s+\d+)?(?:\s+barrier)?)'
    r"(?P<local>\s+\[LOCAL\])?(?=[\s:/])"
)
LOCAL_MARK: Final = re.compile(r"\s*\[LOCAL\]")
_LINK: Final = r"docs/[\w.-]+\.md(?:#[\w-]+)?(?:, (?:rules?|steps?|rows?) \d+(?: to \d+)?)?"
# Links one after the other ("A, B; C / D"): a link already given in the run is dropped.
LINK_RUN: Final = re.compile(rf"{_LINK}(?:(?:,|;| /)\s+{_LINK})*")
LEFTOVER: Final = re.compile(
    rf"\b(?:[Ss]pec(?:\s+section)?\s+\d|RELIABILITY|DESIGN\s+(?:section\s+)?\d|MUST\s+\d)"
    rf"|\[LOCAL\]|(?<![\w/#.-]){_ID}\b|docs/durability\.md|STYLE(?:\.md)? (?:section )?7"
)
LOCAL_NOTE: Final = " (the embedded server's choice)"


class MappingError(Exception):
    """A reference the tables do not cover: add it to a table (a bug of this script)."""


def _render(links: Iterable[tuple[str, str]]) -> str:
    """The links, each once, joined with commas (an empty anchor links the whole page)."""
    seen: list[str] = []
    for page, anchor in links:
        rendered = link(page, anchor) if anchor else f"docs/{page}"
        if rendered not in seen:
            seen.append(rendered)
    return ", ".join(seen)


def _split(items: str) -> list[str]:
    return [part.strip() for part in re.split(r"\s*(?:,|/|\band\b|;)\s*", items) if part.strip()]


def _spec_links(items: str) -> list[tuple[str, str]]:
    parts: list[tuple[str, str]] = []  # (section, note)
    for found in re.finditer(_SPEC_ITEM, items):
        item = " ".join(found[0].split())
        ranged = re.fullmatch(rf"({_NUM})\s*(?:-|to)\s*({_NUM})", item)
        if ranged:
            first, last = ranged.groups()
            major = first.split(".")[0]
            parts.append((major if major == last.split(".")[0] else "0", ""))
            continue
        match = re.fullmatch(rf"({_NUM})(?:\s+(items?|steps?)\s+(.+))?", item)
        if match is None:
            raise MappingError(f"spec item {item!r}")
        section, kind, numbers = match.groups()
        if section.count(".") == 2:  # 5.5.6: the sixth item of 5.5
            section, _, number = section.rpartition(".")
            kind, numbers = "item", number
        note = ""
        if kind is not None:
            word = "rule" if kind.startswith("item") else "step"
            plural = "s" if re.search(r"-|to", numbers) else ""
            note = f", {word}{plural} {numbers.replace('-', ' to ')}"
        parts.append((section, note))
    for section, _ in parts:
        if section != "0" and section not in SPEC:
            raise MappingError(f"spec section {section!r}")
    sections = [section for section, _ in parts]
    if "0" in sections:  # a range over several major sections: the whole page
        return [(P, "")]
    if len({SPEC[section] for section in sections}) > 3:
        # A long list reads better as the major sections it falls in, or the whole page.
        parts = list(dict.fromkeys((section.split(".")[0], "") for section in sections))
        if len(parts) > 3:
            return [(P, "")]
    return [(SPEC[section][0], SPEC[section][1] + note) for section, note in parts]


def _render_spec(match: re.Match[str]) -> str:
    return _render(_spec_links(match["items"])) + (LOCAL_NOTE if match["local"] else "")


def _render_table(table: dict[str, tuple[str, str]], what: str) -> Callable[[re.Match[str]], str]:
    def render(match: re.Match[str]) -> str:
        links = []
        for item in _split(match["items"]):
            if item not in table:
                raise MappingError(f"{what} {item!r}")
            links.append(table[item])
        return _render(links)

    return render


def _reliability_links(items: str) -> list[tuple[str, str]]:
    links = []
    for found in re.finditer(_REL_ITEM, items):
        item = " ".join(found[0].split())
        item = item.removeprefix("section ")
        ranged = re.fullmatch(rf"({_ID})\s*-\s*({_ID})", item)
        if ranged:
            links.append(RANGES[ranged[1][0]])
            continue
        match = re.fullmatch(rf"({_ID}|{_NUM}),?(?:\s+(last\s+row|rows?\s+.+))?", item)
        if match is None:
            raise MappingError(f"RELIABILITY item {item!r}")
        key, rows = match.groups()
        if rows is not None and rows.startswith("last"):
            key = f"{key} last row"
        if key not in RELIABILITY:
            raise MappingError(f"RELIABILITY {key!r}")
        links.append(RELIABILITY[key])
    return links


def _render_reliability(match: re.Match[str]) -> str:
    return _render(_reliability_links(match["items"]))


def _render_leading(match: re.Match[str]) -> str:
    items = " ".join(match["items"].split())
    number, _, rest = items.partition(" ")
    if number not in SPEC:
        raise MappingError(f"leading section {number!r}")
    page, anchor = SPEC[number]
    note = ""
    row = re.match(r"row (\d+)", rest)
    if row:
        note = f", row {row[1]}"
    elif rest == "barrier":
        note = ", the barrier"
    if match["local"]:
        note += LOCAL_NOTE
    return f"{match['quotes']}{link(page, anchor)}{note}"


def rewrite_text(text: str, path: str, *, docstring: bool = False) -> str:
    """``text`` (a comment or a string literal) with every reference rewritten.

    Raises:
        MappingError: a reference the tables do not cover.
    """
    for scope, pattern, replacement in PHRASES:
        if scope is None or path.startswith(scope):
            text = re.sub(pattern, replacement, text)
    if docstring:
        text = LEADING_NUMBER.sub(_render_leading, text)
    text = SPEC_REF.sub(_render_spec, text)
    text = MUST_REF.sub(_render_table(MUST, "MUST"), text)
    text = RELIABILITY_REF.sub(_render_reliability, text)
    text = DESIGN_REF.sub(_render_table(DESIGN, "DESIGN section"), text)
    text = BARE_ID_REF.sub(lambda m: _render(_reliability_links(m["items"])), text)
    text = LOCAL_MARK.sub(LOCAL_NOTE, text)
    return LINK_RUN.sub(_without_repeats, text)


def _without_repeats(match: re.Match[str]) -> str:
    parts = re.split(r"((?:,|;| /)\s+)(?=docs/)", match[0])
    kept, seen = [parts[0]], {parts[0]}
    for separator, part in zip(parts[1::2], parts[2::2], strict=True):
        if part not in seen:
            seen.add(part)
            kept += [separator, part]
    return "".join(kept)


# -- files ------------------------------------------------------------------------------------


def _offsets(source: str) -> list[int]:
    starts = [0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    return starts


def _spans(source: str) -> list[tuple[int, int, bool]]:
    """(start, end, is_docstring_like) of every comment and string literal of ``source``."""
    starts = _offsets(source)
    spans = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in (tokenize.COMMENT, tokenize.STRING):
            continue
        (row, col), (end_row, end_col) = token.start, token.end
        start, end = starts[row - 1] + col, starts[end_row - 1] + end_col
        text = token.string
        triple = token.type == tokenize.STRING and re.match(r"[rRbBuU]?(\"\"\"|''')", text)
        spans.append((start, end, bool(triple)))
    return spans


def rewrite_python(source: str, path: str) -> tuple[str, list[tuple[str, str]]]:
    """The source with its references rewritten, and each (old, new) comment or string."""
    changes = []
    pieces = []
    position = 0
    for start, end, docstring in _spans(source):
        old = source[start:end]
        new = rewrite_text(old, path, docstring=docstring)
        divider = _DIVIDER.match(new)
        if divider and new != old:  # a "# -- title ---" line keeps its width
            new = divider[1] + "-" * max(3, len(old) - len(divider[1]))
        pieces.append(source[position:start])
        pieces.append(new)
        position = end
        if new != old:
            changes.append((old, new))
    pieces.append(source[position:])
    rewritten = "".join(pieces)
    if rewritten != source:
        rewritten = reflow(rewritten)
    return rewritten, changes


def rewrite_toml(source: str, path: str) -> tuple[str, list[tuple[str, str]]]:
    """Only the comments of a TOML file (the part of a line after ``  #`` or a leading ``#``)."""
    changes = []
    lines = []
    for line in source.splitlines(keepends=True):
        match = re.search(r"(^|\s)#", line)
        if match is not None:
            head, comment = line[: match.end()], line[match.end() :]
            new = rewrite_text(comment, path)
            if new != comment:
                changes.append((comment.strip(), new.strip()))
            line = head + new
        lines.append(line)
    return "".join(lines), changes


# -- wrapping -----------------------------------------------------------------------------------

_DIVIDER: Final = re.compile(r"^(\s*# -- .*? )-{3,}$")
_BULLET: Final = re.compile(r"^(\s*)([*-] |\d+\. )")
# An entry of a docstring's Args/Returns/Raises list ("name: text"), or such a heading.
_ENTRY: Final = re.compile(r"^\s*[\w.*]+(?: \([^)]*\))?:(?: |$)")


class Unwrappable(Exception):
    pass


def _cut(line: str, indent: int) -> tuple[str, str]:
    """Split ``line`` at its last space that leaves a head within the limit, outside code
    spans and not between "rule", "step" or "row" and its number."""
    cut = min(len(line), LIMIT + 1)
    while True:
        cut = line.rfind(" ", indent + 1, cut)
        if cut == -1 or not line[:cut].strip():
            raise Unwrappable(line)
        head = line[:cut]
        inside_code = head.count("``") % 2 == 1 or head.replace("``", "").count("`") % 2 == 1
        if not inside_code and not re.search(r"\b(?:rules?|steps?|rows?|to)$", head):
            return head.rstrip(), line[cut + 1 :].lstrip()


def reflow(source: str) -> str:
    """Wrap every line over the limit that holds a docs/ link; see the module docstring."""
    lines = source.split("\n")
    strings, comments = _rows(source)
    pushed: set[int] = set()  # rows that received words pushed down from the row above
    index = 0
    while index < len(lines):
        line = lines[index]
        if len(line) <= LIMIT or ("docs/" not in line and index not in pushed):
            index += 1
            continue
        divider = _DIVIDER.match(line)
        if divider and len(divider[1]) + 3 <= LIMIT:
            lines[index] = divider[1] + "-" * (LIMIT - len(divider[1]))
            index += 1
            continue
        if divider:  # too long for a divider: an ordinary comment, wrapped below
            line = lines[index] = divider[1].rstrip()
        try:
            if index in strings:
                _wrap_string(lines, index, strings)
            elif line.lstrip().startswith("#"):
                _wrap_comment(lines, index)
            elif index in comments:
                _lift_comment(lines, index, comments[index])
                pushed = {row + 1 if row >= index else row for row in pushed}
                strings, comments = _rows("\n".join(lines))
                continue  # the comment, now on its own line, is wrapped next
            else:
                raise Unwrappable(line)
            pushed = {row + 1 if row > index else row for row in pushed} | {index + 1}
            strings, comments = _rows("\n".join(lines))
        except Unwrappable:
            print(f"wrap by hand: {line.strip()[:80]}...", file=sys.stderr)
        index += 1
    return "\n".join(lines)


def _rows(source: str) -> tuple[dict[int, tuple[int, int, int]], dict[int, int]]:
    """For each 0-based row: the string literal holding it, as (first row, last row, column
    of its start), and the column of a comment starting on it."""
    strings: dict[int, tuple[int, int, int]] = {}
    comments: dict[int, int] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.STRING:
            first, last = token.start[0] - 1, token.end[0] - 1
            for row in range(first, last + 1):
                strings[row] = (first, last, token.start[1])
        elif token.type == tokenize.COMMENT:
            comments[token.start[0] - 1] = token.start[1]
    return strings, comments


def _wrap_comment(lines: list[str], index: int) -> None:
    line = lines[index]
    indent = len(line) - len(line.lstrip())
    head, rest = _cut(line, indent + 2)
    lines[index] = head
    prefix = " " * indent + "# "
    following = lines[index + 1] if index + 1 < len(lines) else ""
    if (
        following.startswith(prefix)
        and following[len(prefix) :].strip()
        and not following[len(prefix) :].startswith((" ", "-", "*"))
        and not _DIVIDER.match(following)
    ):
        lines[index + 1] = prefix + rest + " " + following[len(prefix) :]
    else:
        lines.insert(index + 1, prefix + rest)


def _lift_comment(lines: list[str], index: int, column: int) -> None:
    """Move the comment after code to a line of its own above the code."""
    line = lines[index]
    indent = line[: len(line) - len(line.lstrip())]
    lines[index : index + 1] = [indent + line[column:], line[:column].rstrip()]


def _wrap_string(lines: list[str], index: int, strings: dict[int, tuple[int, int, int]]) -> None:
    first, last, column = strings[index]
    line = lines[index]
    if first == last and line[:column].strip():
        raise Unwrappable(line)  # a one-line string inside code
    bullet = _BULLET.match(line) if index != first else None
    own = len(line) - len(line.lstrip())
    if index == first:
        indent = column
    elif bullet:
        indent = len(bullet[1]) + len(bullet[2])
    elif _ENTRY.match(line):
        indent = own + 4  # an Args entry: its lines hang under it
    else:
        indent = own
    head, rest = _cut(line, own if index != first else column)
    lines[index] = head
    following = lines[index + 1] if index + 1 <= last else None
    prefix = " " * indent
    if (
        following is not None
        and following.strip()
        and following.startswith(prefix)
        and not following[indent:].startswith(" ")
        and not _BULLET.match(following)
        and not _ENTRY.match(following)
        and following.strip() not in ('"""', "'''")
        and not following.lstrip().startswith(("```", ">>>", ".. "))
    ):
        lines[index + 1] = prefix + rest + " " + following[indent:]
    else:
        lines.insert(index + 1, prefix + rest)


# -- the command --------------------------------------------------------------------------------


def files(root: Path = ROOT) -> list[Path]:
    """Every file the script looks at, in a stable order."""
    found = [root / name for name in TOML_FILES if (root / name).exists()]
    for directory in SCANNED:
        found.extend(p for p in (root / directory).rglob("*.py") if ".venv" not in p.parts)
    return sorted(p for p in found if p.relative_to(root).as_posix() not in EXCLUDED)


def rewrite_file(path: Path, root: Path = ROOT) -> tuple[str, str, list[tuple[str, str]]]:
    """(old source, new source, changes) for one file."""
    relative = path.relative_to(root).as_posix()
    source = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        new, changes = rewrite_toml(source, relative)
    else:
        new, changes = rewrite_python(source, relative)
    return source, new, changes


def leftovers(source: str, path: Path) -> list[str]:
    """References the rewrite would leave (none, unless a rule is missing)."""
    if path.suffix == ".toml":
        texts = [line[line.index("#") :] for line in source.splitlines() if "#" in line]
    else:
        texts = [source[start:end] for start, end, _ in _spans(source)]
    return [match[0] for text in texts for match in LEFTOVER.finditer(text)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--list", action="store_true", help="list references, change nothing")
    mode.add_argument("--check", action="store_true", help="exit 1 if a reference is left")
    args = parser.parse_args(argv)
    total = 0
    left = 0
    for path in files():
        old, new, changes = rewrite_file(path)
        relative = path.relative_to(ROOT).as_posix()
        for before, after in changes:
            total += 1
            if not args.check:
                print(f"{relative}: {' '.join(before.split())}\n    -> {' '.join(after.split())}")
        remaining = leftovers(new, path)
        for reference in remaining:
            left += 1
            print(f"{relative}: left unmapped: {reference!r}", file=sys.stderr)
        if not (args.list or args.check) and new != old:
            path.write_text(new, encoding="utf-8")
    print(
        f"{total} comments and strings {'to rewrite' if args.list or args.check else 'rewritten'}"
        f", {left} references left",
        file=sys.stderr,
    )
    if args.check:
        return 1 if total or left else 0
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
