"""Redaction (``orchestrator.core.redaction``) and where it applies: errors when they are made,
events on the bus, log sinks (tracebacks included), the CLI's streams, and endpoint URLs
that would carry a key (docs/faults.md#secrets)."""

from __future__ import annotations

import contextlib
import io
import os
import string

import pytest
from hypothesis import given, strategies as st
from loguru import logger

from orchestrator.core.endpoint import resolve_endpoint
from orchestrator.core.logging import PACKAGES, RedactingStream, Secret, configure
from orchestrator.core.observe import ActorFailed, EventBus, TurnStarted
from orchestrator.core.redaction import (
    REDACTED,
    is_secret_name,
    looks_secret,
    redact,
    register_secret,
)
from orchestrator.errors import (
    ActorDead,
    ConfigurationError,
    ConnectionLost,
    OrchestratorError,
    ServerError,
    TurnFailed,
)
from orchestrator.runner import RunSettings, run
from plans import plan_from_dict


def fragments(value: str, size: int = 8) -> set[str]:
    return {value[i : i + size] for i in range(len(value) - size + 1)}


def leaks(value: str, text: str) -> list[str]:
    """Every 8-character fragment of ``value`` found in ``text``."""
    return sorted(fragment for fragment in fragments(value) if fragment in text)


def custom_key() -> str:
    """A key that looks like nothing in particular (a custom endpoint's), new each time."""
    return "Zq" + os.urandom(16).hex() + "Wv"


# -- what is redacted ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("invalid key sk-proj-abc123DEF456ghi789", f"invalid key {REDACTED}"),
        ("Authorization: Bearer abc.def-ghi_123", f"Authorization: Bearer {REDACTED}"),
        ('{"api_key": "hunter2hunter2"}', f'{{"api_key": "{REDACTED}"}}'),
        ("password=swordfish&user=bob", f"password={REDACTED}&user=bob"),
        ("token: 0xdeadbeef", f"token: {REDACTED}"),
        ("id AKIAABCDEFGHIJKLMNOP here", f"id {REDACTED} here"),
        ("gh ghp_" + "a" * 36, f"gh {REDACTED}"),
        ("slack xoxb-1234567890-abcdef", f"slack {REDACTED}"),
        ("-----BEGIN RSA PRIVATE KEY-----", REDACTED),
    ],
    ids=["sk", "bearer", "json", "query", "token", "aws", "github", "slack", "pem"],
)
def test_credential_shapes_are_redacted(text, expected):
    """Keys, bearer tokens and ``name=value`` credentials are replaced, names kept."""
    assert expected == redact(text)


@pytest.mark.parametrize(
    "text",
    [
        "Use the task-management-2024 board",
        "max_output_tokens: 512, input_tokens=3",
        "a sk-learn-compatible estimator",
        "the Bearer scheme and a token bucket",
        '{"type":"turn.finished","input_tokens":12,"output_tokens":40}',
    ],
)
def test_ordinary_text_is_left_alone(text):
    """Words that merely resemble credentials pass unchanged."""
    assert text == redact(text)
    assert not looks_secret(text)


def test_a_known_value_and_its_fragments_are_scrubbed_whatever_they_look_like():
    """A registered key is scrubbed whole, and so is any 8-character piece of it (a message
    cut short); shorter pieces are ordinary text."""
    key = custom_key()
    register_secret(key)
    text = f"got {key}; cut: {key[:11]}… and …{key[5:13]}, short {key[:7]}"

    cleaned = redact(text)

    assert [] == leaks(key, cleaned)
    assert f"got {REDACTED}; cut: {REDACTED}… and …{REDACTED}, short {key[:7]}" == cleaned
    assert looks_secret(f"x{key[3:12]}x")


def test_a_secret_registers_its_value():
    """Wrapping a key in ``Secret`` (as resolve_api_key does) is enough to have it scrubbed."""
    key = custom_key()
    secret = Secret(key)
    assert REDACTED == redact(key)
    assert key[-4:] in repr(secret)


def test_short_values_are_not_registered():
    """A value under 8 characters would scrub ordinary words: it is ignored."""
    register_secret("abc123")
    assert "abc123" == redact("abc123")


@given(
    key=st.text(string.ascii_letters + string.digits, min_size=8, max_size=48),
    pieces=st.lists(
        st.tuples(
            st.text(string.ascii_letters + string.digits + " .,:", max_size=20),
            st.integers(0, 48),
            st.integers(8, 48),
        ),
        max_size=6,
    ),
)
def test_no_fragment_of_a_known_value_survives(key, pieces):
    """Whatever surrounds them, and however they overlap, no 8 consecutive characters of a
    registered value are left."""
    register_secret(key)
    text = "".join(
        noise + key[start : start + length] for noise, start, length in pieces if start < len(key)
    )
    assert [] == leaks(key, redact(text))


@given(st.text(string.printable, max_size=200))
def test_redaction_is_idempotent(text):
    """Redacting twice changes nothing more (logs redacted at the record and the sink)."""
    once = redact(text)
    assert once == redact(once)


def test_secret_names():
    """Field, header and query names that carry credentials; ordinary ones do not."""
    assert all(map(is_secret_name, ["api_key", "API-Key", "Authorization", "token", "sig"]))
    assert not any(map(is_secret_name, ["api-version", "model", "tokens", "deployment"]))


# -- errors and events ---------------------------------------------------------------------------


def test_errors_are_redacted_when_made():
    """Server text that quotes a key leaves no trace in an error's str, repr, args or
    attributes, so no traceback, report or log line can show it."""
    key = custom_key()
    register_secret(key)
    errors = [
        ServerError("invalid_request_error", f"invalid key {key}", status=400, param=key),
        ConnectionLost(1008, f"policy: key {key} revoked"),
        ActorDead("w", f"crashed: ValueError('{key}')"),
        TurnFailed(f"turn failed: {key}"),
        OrchestratorError(f"sk-proj-abc123DEF456ghi789 and {key}"),
    ]
    shown = [text for e in errors for text in (str(e), repr(e), *map(str, e.args))]
    shown += [errors[0].message, str(errors[0].param), str(errors[1].reason)]
    shown.append(str(errors[2].reason))

    assert [] == [text for text in shown if leaks(key, text) or "sk-proj" in text]
    assert (
        f"server error 400 invalid_request_error: invalid key {REDACTED} (param '{REDACTED}')"
        == str(errors[0])
    )


def test_event_texts_are_redacted_on_the_bus():
    """Listeners and subscribers (the trace, the live view, user code) get events whose free
    texts are redacted; events without secrets pass as they are."""
    key = custom_key()
    register_secret(key)
    seen = []
    bus = EventBus()
    bus.add_listener(seen.append)
    failed = ActorFailed(time=1.0, actor="w", error=f"ValueError('{key}')")
    started = TurnStarted(time=2.0, agent="w", turn=1, connection=1, new_items=1)

    bus.emit(failed)
    bus.emit(started)

    assert f"ValueError('{REDACTED}')" == seen[0].error
    assert started is seen[1]


# -- sinks and streams ---------------------------------------------------------------------------


@pytest.fixture
def configured():
    """Undo configure(): its sink, its patcher and the enabled packages."""
    handlers: list[int] = []
    yield handlers
    for handler in handlers:
        with contextlib.suppress(ValueError):  # replaced by a later configure()
            logger.remove(handler)
    logger.configure(patcher=None)
    for package in PACKAGES:
        logger.disable(package)


def crash(key: str) -> None:
    local_marker = "local-variable-value-7f3a"  # diagnose=True would print it
    raise ValueError(f"server said: bad key {key} ({len(local_marker)})")


@pytest.mark.parametrize("colorize", [False, True])
def test_log_lines_are_redacted_tracebacks_included(configured, colorize):
    """The sink gets the whole formatted line redacted: the message, ``extra``, and the
    exception text in the traceback, coloured or not; locals are never printed."""
    key = custom_key()
    register_secret(key)
    stream = io.StringIO()
    configured.append(configure("DEBUG", sink=stream, colorize=colorize))
    try:
        crash(key)
    except ValueError:
        logger.bind(agent="w", header=f"Bearer {key}").opt(exception=True).warning(
            "w crashed with {}", key
        )

    text = stream.getvalue()
    assert "Traceback" in text
    assert "ValueError: server said: bad key" in text.replace("\x1b[", "").replace("\x1b", "")
    assert "local-variable-value-7f3a" not in text
    assert [] == leaks(key, text)


def test_a_callable_sink_gets_redacted_text_with_the_record(configured):
    """A callable sink (``configure_logging(sink=lines.append)``) receives the redacted line,
    with loguru's ``record`` (message and extra redacted) for structured use."""
    key = custom_key()
    register_secret(key)
    received = []
    configured.append(configure("INFO", sink=received.append))
    try:
        crash(key)
    except ValueError:
        logger.bind(actor="w").opt(exception=True).error("failed: {}", key)

    assert 1 == len(received)
    assert [] == leaks(key, str(received[0]))
    assert f"failed: {REDACTED}" == received[0].record["message"]
    assert "w" == received[0].record["extra"]["actor"]


def test_a_path_sink_is_a_private_file(configured, tmp_path):
    """``configure_logging(sink=path)`` appends redacted lines to a file only the user reads."""
    key = custom_key()
    register_secret(key)
    path = tmp_path / "run.log"
    configured.append(configure("INFO", sink=path))
    logger.bind(actor="w").info("key is {}", key)
    configured.append(configure("INFO", sink=io.StringIO()))  # closes the file

    assert 0o600 == path.stat().st_mode & 0o777
    assert f"key is {REDACTED}" in path.read_text()


def test_a_sink_of_another_kind_is_refused(configured):
    """A sink that is neither a stream, a path nor a callable is a clear TypeError."""
    with pytest.raises(TypeError, match="a log sink is a text stream, a file path or a callable"):
        configure("INFO", sink=42)


def test_redacting_stream_redacts_text_and_bytes():
    """The CLI's stdout and stderr: text and ``buffer`` writes are redacted; anything else
    (isatty, encoding, flush) is the wrapped stream's."""
    key = custom_key()
    register_secret(key)
    raw = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    stream = RedactingStream(raw)

    stream.write(f"report: {key}\n")
    stream.buffer.write(f'{{"reason": "{key}"}}\n'.encode())
    stream.writelines([f"{key[:10]}\n"])
    stream.flush()

    written = raw.buffer.getvalue().decode()
    assert f'report: {REDACTED}\n{{"reason": "{REDACTED}"}}\n{REDACTED}\n' == written
    assert not stream.isatty()
    assert "utf-8" == stream.encoding


# -- endpoints -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "api_key=abc",
        "api-key=abc&api-version=1",
        "token=abc",
        "access_token=abc",
        "x=sk-proj-abc123DEF456ghi789",
    ],
)
def test_credentials_in_a_query_string_are_refused(query):
    """A key in the URL's query would end up in reports and logs: refused like one in the
    user part, with ``config.url`` and without repeating the value."""
    with pytest.raises(ConfigurationError) as caught:
        resolve_endpoint(f"wss://gw.example/v1/responses?{query}")

    assert "config.url" == caught.value.code
    assert "credentials in the URL's query" in str(caught.value)
    assert "abc" not in str(caught.value)


def test_a_query_without_credentials_is_kept():
    """Ordinary parameters (Azure's api-version) stay in the URL the socket uses."""
    endpoint = resolve_endpoint("https://gw.example/openai/v1?api-version=2025-04-01")
    assert "wss://gw.example/openai/v1/responses?api-version=2025-04-01" == endpoint.url


def test_a_malformed_url_is_a_configuration_error_without_the_key():
    """A bad port is ``config.url`` (not a ValueError), and the URL is shown redacted."""
    with pytest.raises(ConfigurationError, match="invalid endpoint URL") as caught:
        resolve_endpoint("wss://gw.example:99999/v1?api_key=sk-proj-abc123DEF456ghi789")
    assert "sk-proj" not in str(caught.value)


async def test_run_refuses_a_key_in_the_url_before_connecting():
    """``run(base_url=...?api_key=...)`` raises ``config.url`` before any connection: the
    result's ``endpoint`` could otherwise have carried the key."""
    plan = plan_from_dict(
        {
            "name": "p",
            "goal": "g",
            "settings": {"model": "gpt-5-mini"},
            "agents": [{"name": "boss", "role": "planner"}, {"name": "w"}],
        }
    )
    with pytest.raises(ConfigurationError, match="credentials in the URL's query") as caught:
        await run(
            plan,
            settings=RunSettings(
                api_key=custom_key(), base_url="https://gw.example/v1?api_key=abc123"
            ),
        )
    assert "config.url" == caught.value.code
