"""The server-sent events decoder of the HTTP transport: bytes cut anywhere, one data per event."""

# Asserts read ``expected == actual``, the expected constant first (docs/faults.md#test-hygiene).

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, strategies as st

from orchestrator.core.protocol.sse import SseDecoder
from orchestrator.errors import RemoteProtocolError

STREAM = (
    b"event: response.created\n"
    b'data: {"type":"response.created"}\n'
    b"\n"
    b": a comment, ignored\n"
    b"id: 7\n"
    b"retry: 100\n"
    b"data: first line\n"
    b"data:second line\n"
    b"\n"
    b"\n"
    b"data\n"
    b"\n"
)
EVENTS = [b'{"type":"response.created"}', b"first line\nsecond line", b""]


def _decode(chunks: list[bytes]) -> list[bytes]:
    decoder = SseDecoder()
    return [data for chunk in chunks for data in decoder.feed(chunk)]


def test_fields_comments_and_multi_line_data():
    """``data`` lines join with newlines, one space after the colon is dropped, comments,
    ``event``/``id``/``retry`` and empty lines between events say nothing."""
    assert EVENTS == _decode([STREAM])


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(newline):
    """LF, CRLF and CR all end lines (the standard allows the three)."""
    assert EVENTS == _decode([STREAM.replace(b"\n", newline)])


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_cut_anywhere_same_events(cuts):
    """However the body arrives in chunks (a CRLF split across two included), the events
    are the same."""
    for newline in (b"\n", b"\r\n", b"\r"):
        body = STREAM.replace(b"\n", newline)
        points = sorted({0, len(body), *(min(c, len(body)) for c in cuts)})
        chunks = [body[a:b] for a, b in itertools.pairwise(points)]
        assert EVENTS == _decode(chunks), (newline, points)


def test_an_unfinished_event_is_not_dispatched():
    """Only a blank line ends an event: a body cut before it yields nothing."""
    assert [] == _decode([b"data: half"])
    assert [] == _decode([b"data: half\n"])


def test_a_leading_byte_order_mark_is_skipped():
    """A UTF-8 BOM before the first field does not rename it."""
    assert [b"x"] == _decode([b"\xef\xbb\xbf", b"data: x\n\n"])


def test_an_event_past_the_limit_is_a_protocol_error():
    """A peer that never ends its line or its event cannot grow the buffer without bound."""
    with pytest.raises(RemoteProtocolError):
        SseDecoder(max_event_size=16).feed(b"data: " + b"x" * 32)
    decoder = SseDecoder(max_event_size=16)
    for _ in range(3):
        decoder.feed(b"data: xxxx\n")
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"data: xxxx\n")
