"""Deterministic local models: what the embedded server "generates".

A policy is a pure function of the request (instructions, tools, the whole effective context)
to a :class:`ModelReply`. Being pure makes every run reproducible: replaying the same
conversation after a reconnect yields the same output, which is what the fault tests compare
against a fault-free golden run.

* ``generic`` makes any plan meaningful offline: it calls the offered tools that were not yet
  called since the last user message, with arguments that validate against each tool's JSON
  schema and are drawn from the conversation's text; once tool outputs are in, it answers
  with a summary of what they returned; without tools it answers the last user message.
* ``scripted`` replays exact turns from a JSON or YAML file (text, function calls, errors).
* ``echo`` repeats the last user message (or the tool outputs).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs
import msgspec
import yaml

from orchestrator.errors import ConfigurationError
from orchestrator.protocol.events import (
    FunctionCallItem,
    FunctionCallOutputItem,
    Item,
    MessageItem,
    ReasoningItem,
    Tool,
    UnknownItem,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

__all__ = [
    "CallSpec",
    "EchoPolicy",
    "GenericPolicy",
    "ModelReply",
    "ModelRequest",
    "Policy",
    "ScriptedPolicy",
    "count_tokens",
    "iter_text",
    "split_arguments",
    "split_text",
]


# -- tokens ------------------------------------------------------------------------------------

_WORD: Final = re.compile(r"\s*\S+")


def iter_text(text: str) -> Iterator[str]:
    """The deltas of ``text``, one per word with its leading whitespace (a "token"), made
    one at a time: streaming a long text never holds a list of all its words."""
    previous: str | None = None
    end = 0
    for match in _WORD.finditer(text):
        if previous is not None:
            yield previous
        previous, end = match.group(0), match.end()
    if previous is None:
        if text:
            yield text
        return
    yield previous + text[end:]


def split_text(text: str) -> list[str]:
    """Split text into deltas, one per word with its leading whitespace (a "token")."""
    return list(iter_text(text))


def split_arguments(arguments: str, deltas: int | None = None) -> list[str]:
    """Split a JSON argument string into ``deltas`` pieces (default: about 8 characters each)."""
    if not arguments:
        return []
    count = deltas if deltas is not None else max(1, -(-len(arguments) // 8))
    count = max(1, min(count, len(arguments)))
    size, extra = divmod(len(arguments), count)
    pieces, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        pieces.append(arguments[start:end])
        start = end
    return pieces


def count_tokens(text: str) -> int:
    """A deterministic stand-in for a tokenizer: about four characters per token."""
    return -(-len(text) // 4) if text else 0


def item_text(item: Item) -> str:
    """The text an item contributes to the context (for token counts and for policies)."""
    if isinstance(item, MessageItem):
        return item.text
    if isinstance(item, FunctionCallItem):
        return f"{item.name}({item.arguments})"
    if isinstance(item, FunctionCallOutputItem):
        if isinstance(item.output, str):
            return item.output
        return "".join(p.text for p in item.output if isinstance(p.text, str))
    if isinstance(item, ReasoningItem):
        return " ".join(part.text for part in item.summary)
    if isinstance(item, UnknownItem):
        return json.dumps(item.data, sort_keys=True)
    return ""


# -- request and reply -------------------------------------------------------------------------


@attrs.frozen
class ModelRequest:
    """What a policy sees: the settings of the create and the effective context.

    ``context`` is the parent chain's items followed by this request's input.
    """

    model: str
    instructions: str | None
    tools: tuple[Tool, ...]
    context: tuple[Item, ...]
    parallel_tool_calls: bool = True
    tool_choice: Any = "auto"


@attrs.frozen
class CallSpec:
    """A function call the model decided to make."""

    name: str
    arguments: str
    deltas: int | None = None


@attrs.frozen
class ModelReply:
    """What a policy decided. Exactly one shape applies:

    * ``text`` and/or ``calls``: a completed response (text first, then the calls);
    * ``failed``: ``response.failed`` with that error code;
    * ``error``: a request-scoped ``error`` event (``error_status`` HTTP status);
    * ``incomplete``: ``response.incomplete`` with that reason, after streaming ``text``.
    """

    text: str | None = None
    text_deltas: tuple[str, ...] | None = None
    calls: tuple[CallSpec, ...] = ()
    reasoning: str | None = None
    failed: str | None = None
    error: str | None = None
    error_status: int = 500
    message: str = ""
    incomplete: str | None = None


class Policy:
    """Base of the local models."""

    name: str = "policy"

    def respond(self, request: ModelRequest) -> ModelReply:  # pragma: no cover - abstract
        raise NotImplementedError


def _last_user_text(context: Sequence[Item]) -> str:
    for item in reversed(context):
        if isinstance(item, MessageItem) and item.role == "user":
            return item.text
    return ""


def _since_last_user(context: Sequence[Item]) -> Sequence[Item]:
    for index in range(len(context) - 1, -1, -1):
        item = context[index]
        if isinstance(item, MessageItem) and item.role == "user":
            return context[index + 1 :]
    return context


def _trailing_outputs(context: Sequence[Item]) -> list[FunctionCallOutputItem]:
    outputs: list[FunctionCallOutputItem] = []
    for item in reversed(context):
        if isinstance(item, FunctionCallOutputItem):
            outputs.append(item)
        else:
            break
    outputs.reverse()
    return outputs


def assistant_turns(context: Sequence[Item]) -> int:
    """How many model turns the context already holds (runs of assistant-produced items).

    A replay of the same conversation on a new socket yields the same count, which keeps the
    scripted policy aligned after reconnects.
    """
    turns, in_run = 0, False
    for item in context:
        produced = isinstance(item, FunctionCallItem | ReasoningItem) or (
            isinstance(item, MessageItem) and item.role == "assistant"
        )
        if produced and not in_run:
            turns += 1
        in_run = produced
    return turns


# -- echo --------------------------------------------------------------------------------------


class EchoPolicy(Policy):
    """Repeats the last user message, or the tool outputs when those came last."""

    name = "echo"

    def respond(self, request: ModelRequest) -> ModelReply:
        outputs = _trailing_outputs(request.context)
        if outputs:
            return ModelReply(text="\n".join(item_text(o) for o in outputs))
        return ModelReply(text=_last_user_text(request.context))


# -- generic -----------------------------------------------------------------------------------

_LONG_TEXT_NAMES: Final = frozenset(
    {
        "query",
        "task",
        "text",
        "question",
        "prompt",
        "message",
        "description",
        "request",
        "goal",
        "topic",
        "instructions",
        "content",
        "input",
        "summary",
        "body",
        "details",
    }
)
_DATE: Final = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
# A number standing alone; a full stop after it ends the sentence ("top 3.") and does not
# make it part of a version or a word ("v1.2", "3.x").
_NUMBER: Final = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?!\.?\w)")
_PROPER: Final = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-zA-Z\-]+")
_STOP_WORDS: Final = frozenset({"I", "The", "A", "An", "Plan", "Please", "Find", "Make", "Use"})


@attrs.define
class _Drawer:
    """Draws argument values from the conversation text, deterministically."""

    text: str
    whole_text: bool = False
    _used: set[str] = attrs.field(factory=set)

    def proper_noun(self) -> str | None:
        for match in _PROPER.finditer(self.text):
            word = match.group(0)
            if word not in self._used and word not in _STOP_WORDS:
                self._used.add(word)
                return word
        return None

    def number(self, low: float | None, high: float | None) -> float | None:
        for match in _NUMBER.finditer(self.text):
            value = float(match.group(0))
            if (low is None or value >= low) and (high is None or value <= high):
                return value
        return None


def _resolve(schema: Any, root: Mapping[str, Any]) -> Any:
    seen = 0
    while isinstance(schema, dict) and "$ref" in schema and seen < 32:
        ref = schema["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            return {}
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        schema, seen = target, seen + 1
    return schema


def _value_for(
    name: str, schema: Any, root: Mapping[str, Any], drawer: _Drawer, depth: int = 0
) -> Any:
    schema = _resolve(schema, root)
    if not isinstance(schema, dict) or depth > 8:
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        options = schema["enum"]
        lowered = drawer.text.lower()
        for option in options:
            if isinstance(option, str) and option.lower() in lowered:
                return option
        return options[0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf"):
        variants = schema.get(key)
        if isinstance(variants, list) and variants:
            non_null = [
                v for v in variants if _resolve(v, root).get("type") not in ("null", None)
            ] or variants
            return _value_for(name, non_null[0], root, drawer, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "string":
        return _string_for(name, schema, drawer)
    if kind in ("integer", "number"):
        return _number_for(schema, drawer, integer=kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if kind == "array":
        minimum = schema.get("minItems", 1)
        items = schema.get("items", {})
        return [_value_for(name, items, root, drawer, depth + 1) for _ in range(max(1, minimum))][
            : schema.get("maxItems", max(1, minimum))
        ]
    if kind == "object" or "properties" in schema:
        return _object_for(schema, root, drawer, depth + 1)
    return _string_for(name, schema, drawer)


def _string_for(name: str, schema: Mapping[str, Any], drawer: _Drawer) -> str:
    lowered = name.lower()
    value: str | None = None
    if schema.get("format") == "date" or "date" in lowered:
        match = _DATE.search(drawer.text)
        value = match.group(0) if match else "2026-01-01"
    elif (
        drawer.whole_text
        or lowered in _LONG_TEXT_NAMES
        or lowered.endswith(("_query", "_text", "_task"))
    ):
        value = drawer.text.strip() or name
    else:
        value = drawer.proper_noun() or drawer.text.strip() or name
    minimum = schema.get("minLength", 0)
    maximum = schema.get("maxLength")
    if isinstance(minimum, int) and len(value) < minimum:
        value = value.ljust(minimum, "x")
    if isinstance(maximum, int) and len(value) > maximum:
        value = value[:maximum]
    return value


def _number_for(schema: Mapping[str, Any], drawer: _Drawer, *, integer: bool) -> int | float:
    low = schema.get("minimum")
    high = schema.get("maximum")
    exclusive_low = schema.get("exclusiveMinimum")
    exclusive_high = schema.get("exclusiveMaximum")
    step = 1 if integer else 0.5
    if isinstance(exclusive_low, int | float):
        low = exclusive_low + step if low is None else max(low, exclusive_low + step)
    if isinstance(exclusive_high, int | float):
        high = exclusive_high - step if high is None else min(high, exclusive_high - step)
    found = drawer.number(low, high)
    if found is not None and (not integer or found == int(found)):
        value: float = found
    elif low is not None:
        value = low
    elif high is not None and high < 1:
        value = high
    else:
        value = 1
    multiple = schema.get("multipleOf")
    if isinstance(multiple, int | float) and multiple > 0:
        value = multiple * max(1, -(-value // multiple))
        if high is not None and value > high:
            value = multiple * (high // multiple)
    return int(value) if integer else float(value)


def _object_for(
    schema: Mapping[str, Any], root: Mapping[str, Any], drawer: _Drawer, depth: int
) -> dict[str, Any]:
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        return {}
    required = schema.get("required")
    names = required if isinstance(required, list) else []
    return {
        name: _value_for(name, properties.get(name, {}), root, drawer, depth)
        for name in names
        if isinstance(name, str)
    }


def arguments_for(tool: Tool, text: str, *, prefer_text: bool = False) -> str:
    """Arguments for ``tool`` that validate against its JSON schema, drawn from ``text``.

    With ``prefer_text`` every free-form string parameter receives the whole text (used for
    terminal tools, whose argument is the answer).
    """
    schema = tool.parameters if isinstance(tool.parameters, dict) else {}
    drawer = _Drawer(text, whole_text=prefer_text)
    value = _object_for(schema, schema, drawer, 0) if schema else {}
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _summarise(outputs: Sequence[FunctionCallOutputItem], calls: Mapping[str, str]) -> str:
    lines = ["Here is what the tools returned:"]
    for output in outputs:
        name = calls.get(output.call_id, "tool")
        content = " ".join(item_text(output).split())
        if len(content) > 280:
            content = content[:277] + "..."
        lines.append(f"- {name}: {content}")
    return "\n".join(lines)


# Tools that end the agent's work ("finish with the answer"): called last, once every other
# tool has answered, with the summary of those answers as their text arguments.
TERMINAL_TOOLS: Final = frozenset({"finish", "final_answer", "submit_answer", "done"})


class GenericPolicy(Policy):
    """Makes any plan meaningful offline (see the module docstring)."""

    name = "generic"

    def respond(self, request: ModelRequest) -> ModelReply:
        context = request.context
        recent = _since_last_user(context)
        called = {item.name for item in recent if isinstance(item, FunctionCallItem)}
        offered = [
            tool
            for tool in request.tools
            if tool.type == "function" and isinstance(tool.name, str) and tool.name
        ]
        choice = request.tool_choice
        if choice == "none":
            offered = []
        elif isinstance(choice, dict) and choice.get("type") == "function":
            offered = [tool for tool in offered if tool.name == choice.get("name")]
        pending = [
            tool for tool in offered if tool.name not in called and tool.name not in TERMINAL_TOOLS
        ]
        if pending:
            if not request.parallel_tool_calls:
                pending = pending[:1]
            text = _last_user_text(context)
            return ModelReply(
                calls=tuple(
                    CallSpec(name=str(tool.name), arguments=arguments_for(tool, text))
                    for tool in pending
                )
            )
        names = {item.call_id: item.name for item in recent if isinstance(item, FunctionCallItem)}
        terminal = [
            tool for tool in offered if tool.name in TERMINAL_TOOLS and tool.name not in called
        ]
        if terminal:
            answered = [item for item in recent if isinstance(item, FunctionCallOutputItem)]
            summary = (
                _summarise(answered, names)
                if answered
                else " ".join(_last_user_text(context).split())
            )
            tool = terminal[0]
            arguments = arguments_for(tool, summary, prefer_text=True)
            return ModelReply(calls=(CallSpec(name=str(tool.name), arguments=arguments),))
        outputs = _trailing_outputs(context)
        if outputs:
            return ModelReply(text=_summarise(outputs, names))
        question = " ".join(_last_user_text(context).split())
        if not question:
            return ModelReply(text="Ready.")
        return ModelReply(text=f"Answer to: {question}")


# -- scripted ----------------------------------------------------------------------------------


class _ScriptCall(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    arguments: str | dict[str, Any] = "{}"
    deltas: int | None = None


class _ScriptError(msgspec.Struct, forbid_unknown_fields=True):
    code: str = "server_error"
    status: int = 500
    message: str = ""


class _ScriptIncomplete(msgspec.Struct, forbid_unknown_fields=True):
    reason: str = "max_output_tokens"
    text: str = ""


class ScriptTurn(msgspec.Struct, forbid_unknown_fields=True):
    """One turn of a script: ``text`` (or explicit ``deltas``) and/or ``function_calls``, or
    ``error`` (an ``error`` event), ``failed`` (``response.failed``) or ``incomplete``."""

    text: str | None = None
    deltas: list[str] | None = None
    function_calls: list[_ScriptCall] = msgspec.field(default_factory=list)
    reasoning: str | None = None
    error: _ScriptError | None = None
    failed: _ScriptError | None = None
    incomplete: _ScriptIncomplete | None = None


class Script(msgspec.Struct, forbid_unknown_fields=True):
    """A script file: ``turns`` for every conversation, or ``models`` keyed by model name
    (``default`` as fallback). ``on_exhausted`` decides what follows the last turn."""

    turns: list[ScriptTurn] = msgspec.field(default_factory=list)
    models: dict[str, list[ScriptTurn]] = msgspec.field(default_factory=dict)
    on_exhausted: Literal["repeat_last", "cycle", "fail"] = "fail"


def load_script(source: Path | str | Mapping[str, Any] | Sequence[Any]) -> Script:
    """Load a script from a JSON/YAML file path or already decoded data.

    Raises:
        ConfigurationError: the file is missing or does not match the script format.
    """
    data: Any
    if isinstance(source, Path | str):
        path = Path(source)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"script {path}: {exc.strerror}") from exc
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                data = yaml.safe_load(raw)
            else:
                data = json.loads(raw)
        except (ValueError, yaml.YAMLError) as exc:
            raise ConfigurationError(f"script {path}: malformed: {exc}") from exc
    else:
        data = source
    if isinstance(data, list):
        data = {"turns": data}
    try:
        return msgspec.convert(data, Script)
    except msgspec.ValidationError as exc:
        raise ConfigurationError(f"script: {exc}") from exc


@attrs.define
class ScriptedPolicy(Policy):
    """Replays exact turns. Turn ``n`` is chosen by the number of model turns already in the
    context, so a replay after a reconnect resumes at the right turn."""

    script: Script
    name: str = "scripted"
    # Replies built once per script turn (the script never changes while it is served).
    _replies: dict[int, ModelReply] = attrs.field(factory=dict, init=False, repr=False)

    def respond(self, request: ModelRequest) -> ModelReply:
        turns = self.script.models.get(request.model) or self.script.models.get("default")
        if turns is None:
            turns = self.script.turns
        index = assistant_turns(request.context)
        if not turns:
            return ModelReply(failed="server_error", message="the script has no turns")
        if index >= len(turns):
            mode = self.script.on_exhausted
            if mode == "repeat_last":
                index = len(turns) - 1
            elif mode == "cycle":
                index %= len(turns)
            else:
                return ModelReply(
                    failed="server_error",
                    message=f"the script has {len(turns)} turns; turn {index + 1} was asked",
                )
        turn = turns[index]
        reply = self._replies.get(id(turn))
        if reply is None:
            reply = self._replies[id(turn)] = _reply_from_turn(turn)
        return reply


def _reply_from_turn(turn: ScriptTurn) -> ModelReply:
    if turn.error is not None:
        return ModelReply(
            error=turn.error.code, error_status=turn.error.status, message=turn.error.message
        )
    if turn.failed is not None:
        return ModelReply(failed=turn.failed.code, message=turn.failed.message)
    if turn.incomplete is not None:
        return ModelReply(text=turn.incomplete.text or None, incomplete=turn.incomplete.reason)
    text = turn.text
    if turn.deltas is not None:
        text = "".join(turn.deltas)
    calls = tuple(
        CallSpec(
            name=call.name,
            arguments=call.arguments
            if isinstance(call.arguments, str)
            else json.dumps(call.arguments, separators=(",", ":")),
            deltas=call.deltas,
        )
        for call in turn.function_calls
    )
    return ModelReply(
        text=text,
        text_deltas=tuple(turn.deltas) if turn.deltas is not None else None,
        calls=calls,
        reasoning=turn.reasoning,
    )


def select_policy(
    model: str,
    configured: str | None,
    script: Script | None,
) -> Policy:
    """The policy for a model name: the configured one, else by name."""
    name = configured
    if name is None:
        lowered = model.lower()
        if "scripted" in lowered:
            name = "scripted"
        elif "echo" in lowered:
            name = "echo"
        else:
            name = "generic"
    if name == "scripted":
        if script is None:
            raise ConfigurationError("the scripted model needs a script (--script FILE)")
        return ScriptedPolicy(script)
    if name == "echo":
        return _ECHO
    return _GENERIC


_ECHO: Final = EchoPolicy()
_GENERIC: Final = GenericPolicy()
