"""Deterministic local models: what the embedded server "generates".

A policy is a pure function of the request (instructions, tools, the whole effective context)
to a :class:`ModelReply`. Being pure makes every run reproducible: replaying the same
conversation after a reconnect yields the same output, which is what the fault tests compare
against a fault-free golden run.

* ``generic`` makes any plan meaningful offline: it calls the offered tools that were not yet
  called since the last user message, with arguments that validate against each tool's JSON
  schema and are drawn from the conversation's text; once tool outputs are in, it answers
  with a summary of what they returned; without tools it answers the last user message. It
  honours ``tool_choice`` (``none``, ``required``, a named function), ``parallel_tool_calls``
  (one call per response when false), ``max_tool_calls``, and ``text.format``: with a
  ``json_schema`` its answer is JSON valid against the schema, fields named like those the
  tools returned taking their values; with ``json_object``, ``{"answer": ...}``.

Every policy's reply is held to ``max_output_tokens`` (:func:`limit_output`): a longer one is
cut and ends ``response.incomplete`` with reason ``max_output_tokens``.
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

from orchestrator.core.protocol.events import (
    FunctionCallItem,
    FunctionCallOutputItem,
    Item,
    MessageItem,
    ReasoningItem,
    Tool,
    ToolDefinition,
    UnknownItem,
)
from orchestrator.errors import ConfigurationError

from . import hosted as hosted_tools
from .generic import answer_for_schema, arguments_for_schema, cut, known_values, summarise
from .hosted import HostedCall

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

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
    "limit_output",
    "respond_with_hosted",
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
    tools: tuple[ToolDefinition, ...]
    context: tuple[Item, ...]
    parallel_tool_calls: bool = True
    tool_choice: Any = "auto"
    text_format: dict[str, Any] | None = None  # ``text.format`` of the create
    max_tool_calls: int | None = None


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
    # Hosted tools to run first (the server simulates them and asks the policy again).
    hosted: tuple[HostedCall, ...] = ()
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


def arguments_for(tool: Tool, text: str, *, prefer_text: bool = False) -> str:
    """Arguments for ``tool`` that validate against its JSON schema, drawn from ``text``
    (see :mod:`orchestrator.core.server.generic`).

    With ``prefer_text`` every free-form string parameter receives the whole text (used for
    terminal tools, whose argument is the answer).
    """
    return arguments_for_schema(tool.parameters, text, prefer_text=prefer_text)


def _summarise(outputs: Sequence[FunctionCallOutputItem], calls: Mapping[str, str]) -> str:
    return summarise([(calls.get(output.call_id, "tool"), item_text(output)) for output in outputs])


# Characters of the question a tool-less answer repeats (a 2 MB question is not repeated).
MAX_QUESTION: Final = 300

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
        offered, forced = _offered(request)
        choice = request.tool_choice
        if choice != "none" and not (isinstance(choice, dict) and forced):
            # The service's own tools first: they run inside this response.
            owed = hosted_tools.pending(request.tools, recent)
            if owed:
                query = _last_user_text(context)
                return ModelReply(hosted=tuple(HostedCall(tool, query) for tool in owed))
        calls = _calls_due(request, offered, called, forced)
        if calls:
            return ModelReply(calls=calls)
        names = {item.call_id: item.name for item in recent if isinstance(item, FunctionCallItem)}
        answered = [item for item in recent if isinstance(item, FunctionCallOutputItem)]
        terminal = [
            tool
            for tool in offered
            if tool.name in TERMINAL_TOOLS and (tool.name not in called or forced)
        ]
        if terminal:
            return ModelReply(calls=(_finish(terminal[0], context, answered, names),))
        return ModelReply(text=_answer(request, recent, answered, names))


def _offered(request: ModelRequest) -> tuple[list[Tool], bool]:
    """The function tools ``tool_choice`` lets the model call, and whether it must call one."""
    offered = [
        tool
        for tool in request.tools
        if isinstance(tool, Tool)
        and tool.type == "function"
        and isinstance(tool.name, str)
        and tool.name
    ]
    choice = request.tool_choice
    forced = choice == "required"
    if choice == "none":
        offered = []
    elif isinstance(choice, dict) and choice.get("type") == "function":
        offered = [tool for tool in offered if tool.name == choice.get("name")]
        forced = bool(offered)
    return offered, forced


def _calls_due(
    request: ModelRequest, offered: list[Tool], called: set[str], forced: bool
) -> tuple[CallSpec, ...]:
    """The calls of the offered tools not called yet since the user spoke (the terminal
    ones wait), as many as ``parallel_tool_calls`` and ``max_tool_calls`` allow."""
    pending = [
        tool for tool in offered if tool.name not in called and tool.name not in TERMINAL_TOOLS
    ]
    if not pending and forced and not any(t.name in TERMINAL_TOOLS for t in offered):
        pending = offered[:1]  # a forced call, even of a tool called before
    if not pending:
        return ()
    if not request.parallel_tool_calls:
        pending = pending[:1]
    if request.max_tool_calls is not None:
        pending = pending[: max(1, request.max_tool_calls)]
    text = _last_user_text(request.context)
    return tuple(
        CallSpec(name=str(tool.name), arguments=arguments_for(tool, text)) for tool in pending
    )


def _finish(
    tool: Tool,
    context: Sequence[Item],
    answered: list[FunctionCallOutputItem],
    names: dict[str, str],
) -> CallSpec:
    """The call of a terminal ``tool``: the summary of the tools' answers (or the question)
    as its text, or its typed answer filled from them."""
    summary = (
        _summarise(answered, names) if answered else " ".join(_last_user_text(context).split())
    )
    if _text_only(tool.parameters):
        arguments = arguments_for(tool, summary, prefer_text=True)
    else:  # a typed answer: the schema filled from the results
        arguments = answer_for_schema(
            tool.parameters,
            _last_user_text(context),
            prose=summary,
            known=known_values(item_text(item) for item in answered),
        )
    return CallSpec(name=str(tool.name), arguments=arguments)


def _answer(
    request: ModelRequest,
    recent: Sequence[Item],
    answered: list[FunctionCallOutputItem],
    names: dict[str, str],
) -> str:
    """The text answer, once no call is due: what the tools (hosted ones included)
    returned, or the question repeated; in the form ``text.format`` asks."""
    context = request.context
    outputs = _trailing_outputs(context)
    learnt = hosted_tools.results(recent)
    if learnt:
        text = summarise(
            [*((names.get(o.call_id, "tool"), item_text(o)) for o in answered), *learnt]
        )
    elif outputs:
        text = _summarise(outputs, names)
    else:
        question = " ".join(_last_user_text(context).split())
        text = f"Answer to: {cut(question, MAX_QUESTION)}" if question else "Ready."
    return _formatted(request, text, outputs)


# Rounds of hosted calls in one response (the generic model needs one per tool it adds).
MAX_HOSTED_ROUNDS: Final = 4


def respond_with_hosted(
    policy: Policy, request: ModelRequest, new_id: Callable[[str], str]
) -> tuple[list[UnknownItem], ModelReply]:
    """``policy``'s reply to ``request`` with its hosted tools run in between, as the service
    runs them inside one response (see :mod:`orchestrator.core.server.hosted`).

    Returns:
        The hosted tools' output items, to stream first, and the reply that follows them
        (empty when an ``mcp_approval_request`` ends the response).
    """
    context = request.context
    items: list[UnknownItem] = [
        UnknownItem(data) for data in hosted_tools.approved_calls(request.tools, context, new_id)
    ]
    if items:
        request = attrs.evolve(request, context=(*context, *items))
    reply = policy.respond(request)
    rounds = 0
    while reply.hosted and rounds < MAX_HOSTED_ROUNDS:
        rounds += 1
        made: list[UnknownItem] = []
        for call in reply.hosted:
            made.extend(
                UnknownItem(data)
                for data in hosted_tools.simulate(call, (*request.context, *made), new_id)
            )
        items.extend(made)
        request = attrs.evolve(request, context=(*request.context, *made))
        if any(isinstance(i, UnknownItem) and i.type == "mcp_approval_request" for i in made):
            return items, ModelReply()  # the response waits for the client's approval
        reply = policy.respond(request)
    if reply.hosted:
        reply = attrs.evolve(reply, hosted=())
    return items, reply


def _text_only(parameters: Any) -> bool:
    """Whether every property of a tool's parameters is a string (its answer is prose)."""
    properties = parameters.get("properties") if isinstance(parameters, dict) else None
    return not isinstance(properties, dict) or all(
        isinstance(p, dict) and p.get("type") == "string" for p in properties.values()
    )


def _formatted(request: ModelRequest, prose: str, outputs: Sequence[FunctionCallOutputItem]) -> str:
    """The answer in the form ``text.format`` asks: prose, or JSON of the schema."""
    text_format = request.text_format
    kind = text_format.get("type") if text_format is not None else "text"
    if kind == "json_object":
        return json.dumps({"answer": prose}, ensure_ascii=False)
    if kind != "json_schema" or text_format is None:
        return prose
    return answer_for_schema(
        text_format.get("schema"),
        _last_user_text(request.context),
        prose=prose,
        known=known_values(item_text(item) for item in outputs),
    )


def limit_output(reply: ModelReply, max_output_tokens: int | None) -> ModelReply:
    """``reply`` held to ``max_output_tokens`` output tokens, counted as the server streams
    them (a word of text or reasoning, a piece of call arguments): what does not fit is cut
    (text at a word, a call entirely) and the reply ends ``incomplete`` with reason
    ``max_output_tokens``. Errors, failures and replies that fit are returned unchanged."""
    if (
        max_output_tokens is None
        or reply.error is not None
        or reply.failed is not None
        or reply.incomplete is not None
    ):
        return reply
    budget = max_output_tokens
    reasoning_words = split_text(reply.reasoning) if reply.reasoning else []
    if len(reasoning_words) >= budget and (reply.text is not None or reply.calls):
        return ModelReply(reasoning="".join(reasoning_words[:budget]), incomplete=_CUT)
    budget -= len(reasoning_words)
    if reply.text is not None:
        deltas = (
            list(reply.text_deltas) if reply.text_deltas is not None else split_text(reply.text)
        )
        if len(deltas) > budget:
            kept = tuple(deltas[:budget])
            return ModelReply(
                text="".join(kept), text_deltas=kept, reasoning=reply.reasoning, incomplete=_CUT
            )
        budget -= len(deltas)
    calls: list[CallSpec] = []
    for call in reply.calls:
        cost = max(1, len(split_arguments(call.arguments, call.deltas)))
        if cost > budget:
            return ModelReply(
                text=reply.text,
                text_deltas=reply.text_deltas,
                calls=tuple(calls),
                reasoning=reply.reasoning,
                incomplete=_CUT,
            )
        budget -= cost
        calls.append(call)
    return reply


_CUT: Final = "max_output_tokens"


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
