"""The service's hosted tools, simulated offline: what the embedded server answers for them.

The Responses API runs some tools itself, inside one response: the model calls them, the
service runs them and the model goes on with their results, all before the terminal event.
The embedded server does the same with local stand-ins, so that plans using them run offline.
Every result is marked as a simulation, and nothing leaves the machine:

=====================  =======================================================================
``web_search``         a ``web_search_call`` whose action searched the task's words; its
(and ``_preview``)     sources are ``https://example.org/offline-search?...`` links (a reserved
                       domain) and its result says that no search was made
``file_search``        a ``file_search_call`` with the task as its query and one result per
                       vector store, saying the embedded server holds no files
``code_interpreter``   a ``code_interpreter_call``: when the task holds an arithmetic
                       expression, ``print(EXPR)`` and its value (computed by a small evaluator
                       of numbers and + - * / // % **, never by running code); otherwise a
                       ``print`` of a note that no code was run
``image_generation``   an ``image_generation_call`` whose ``result`` is a real 16x16 PNG, one
                       colour taken from the prompt, with the prompt as ``revised_prompt``
``mcp`` (remote)       ``mcp_list_tools`` once per server label and conversation (the
                       ``allowed_tools``, else one ``search`` tool), then an ``mcp_call`` of
                       the first tool whose output says the server was not contacted; or,
                       when ``require_approval`` asks for it (the API's default), an
                       ``mcp_approval_request``: the response ends there, and the call is made
                       in the response whose input approves it (``mcp_approval_response``)
=====================  =======================================================================

Tools the server cannot answer meaningfully are refused before the response starts with a
400 ``error`` event whose code is ``unsupported_tool`` (``param``: ``tools[i].type``): the
computer, shell and patch tools, and ``custom`` tools, whose calls the *client* must run and
answer, which an offline server cannot stand in for. Missing required fields get the
service's ``missing_required_parameter``.

Pure functions, no I/O: ids come from the caller.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import operator
import re
import struct
import zlib
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote_plus, urlsplit

import attrs

from orchestrator.core.protocol.events import HostedTool, Item, UnknownItem

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "SIMULATED",
    "HostedCall",
    "ToolProblem",
    "approved_calls",
    "check_tools",
    "pending",
    "results",
    "simulate",
]

MARK: Final = "[offline simulation]"

WEB_SEARCH: Final = frozenset(
    {
        "web_search",
        "web_search_preview",
        "web_search_2025_08_26",
        "web_search_preview_2025_03_11",
    }
)
SIMULATED: Final = WEB_SEARCH | {"file_search", "code_interpreter", "image_generation", "mcp"}
# Tools whose calls the client runs and answers (computer_call_output, shell_call_output...).
CLIENT_RUN: Final = frozenset(
    {
        "computer_use_preview",
        "computer",
        "local_shell",
        "shell",
        "apply_patch",
        "custom",
    }
)
_OUTPUT_TYPES: Final = {
    "web_search_call": "web_search",
    "file_search_call": "file_search",
    "code_interpreter_call": "code_interpreter",
    "image_generation_call": "image_generation",
}


@attrs.frozen
class ToolProblem:
    """Why a create's tools cannot be answered: the error event's code, message and param."""

    code: str
    message: str
    param: str


@attrs.frozen
class HostedCall:
    """A hosted tool the model decided to use, and the text it works on (the task)."""

    tool: dict[str, Any]
    query: str


def check_tools(tools: Iterable[Any]) -> ToolProblem | None:
    """The first problem with a create's hosted tools, or None."""
    for index, tool in enumerate(tools):
        if not isinstance(tool, HostedTool):
            continue
        kind, data = tool.type, tool.data
        if kind not in SIMULATED:
            why = (
                "its calls are run by the client, and an offline server cannot stand in for it"
                if kind in CLIENT_RUN
                else "it is not a tool type the embedded server knows"
            )
            return ToolProblem(
                "unsupported_tool",
                f"The embedded server does not support {kind!r} tools offline: {why}. "
                f"It simulates {', '.join(sorted(SIMULATED))}.",
                f"tools[{index}].type",
            )
        required = {
            "file_search": ("vector_store_ids",),
            "code_interpreter": ("container",),
            "mcp": ("server_label",),
        }.get(kind, ())
        for name in required:
            if name not in data:
                return ToolProblem(
                    "missing_required_parameter",
                    f"Missing required parameter: 'tools[{index}].{name}'.",
                    f"tools[{index}].{name}",
                )
        if kind == "mcp" and "server_url" not in data and "connector_id" not in data:
            return ToolProblem(
                "missing_required_parameter",
                f"Missing required parameter: 'tools[{index}].server_url'.",
                f"tools[{index}].server_url",
            )
    return None


def _key(data: dict[str, Any]) -> tuple[str, str]:
    kind = str(data.get("type", ""))
    if kind in WEB_SEARCH:
        kind = "web_search"
    label = data.get("server_label")
    return kind, label if isinstance(label, str) else ""


def _item_key(item: Item) -> tuple[str, str] | None:
    if not isinstance(item, UnknownItem):
        return None
    kind = _OUTPUT_TYPES.get(item.type)
    if kind is not None:
        return kind, ""
    if item.type in ("mcp_call", "mcp_approval_request"):
        label = item.data.get("server_label")
        return "mcp", label if isinstance(label, str) else ""
    return None


def pending(tools: Iterable[Any], recent: Sequence[Item]) -> list[dict[str, Any]]:
    """The simulated hosted tools not used yet in ``recent`` (the items since the last user
    message), in the order offered."""
    used = {key for key in map(_item_key, recent) if key is not None}
    wanted: list[dict[str, Any]] = []
    for tool in tools:
        if isinstance(tool, HostedTool) and tool.type in SIMULATED:
            key = _key(tool.data)
            if key not in used:
                used.add(key)
                wanted.append(tool.data)
    return wanted


def simulate(
    call: HostedCall, context: Sequence[Item], new_id: Callable[[str], str]
) -> list[dict[str, Any]]:
    """The output items of one hosted call; ``context`` is what the response sees so far
    (an ``mcp`` server's tools are listed once per conversation)."""
    data, query = call.tool, " ".join(call.query.split())[:200]
    kind = _key(data)[0]
    if kind == "web_search":
        return [_web_search(query, new_id)]
    if kind == "file_search":
        return [_file_search(data, query, new_id)]
    if kind == "code_interpreter":
        return [_code_interpreter(data, query, new_id)]
    if kind == "image_generation":
        return [_image_generation(query, new_id)]
    return _mcp(data, query, context, new_id)


def _web_search(query: str, new_id: Callable[[str], str]) -> dict[str, Any]:
    """A search that found one source: a link to the query itself."""
    url = "https://example.org/offline-search?q=" + quote_plus(query)
    return {
        "type": "web_search_call",
        "id": new_id("ws"),
        "status": "completed",
        "action": {
            "type": "search",
            "query": query,
            "sources": [{"type": "url", "url": url}],
        },
    }


def _file_search(data: dict[str, Any], query: str, new_id: Callable[[str], str]) -> dict[str, Any]:
    """A search of the tool's vector stores: one result per store, saying it holds nothing."""
    stores = data.get("vector_store_ids")
    names = [s for s in stores if isinstance(s, str)] if isinstance(stores, list) else []
    return {
        "type": "file_search_call",
        "id": new_id("fs"),
        "status": "completed",
        "queries": [query],
        "results": [
            {
                "file_id": "file-offline-" + _digest(store, 12),
                "filename": f"{store}.offline.txt",
                "score": 0.0,
                "text": f"{MARK} the embedded server holds no files of vector store "
                f"{store}; nothing was searched.",
                "attributes": {},
            }
            for store in names
        ],
    }


def _code_interpreter(
    data: dict[str, Any], query: str, new_id: Callable[[str], str]
) -> dict[str, Any]:
    """A run of the query's first arithmetic expression, in the tool's container (or one
    named after the query), with its logs."""
    code, logs = _code_for(query)
    container = data.get("container")
    container_id = container if isinstance(container, str) else "cntr_offline_" + _digest(query, 16)
    return {
        "type": "code_interpreter_call",
        "id": new_id("ci"),
        "status": "completed",
        "code": code,
        "container_id": container_id,
        "outputs": [{"type": "logs", "logs": logs}],
    }


def _image_generation(query: str, new_id: Callable[[str], str]) -> dict[str, Any]:
    """A 16x16 PNG of one colour drawn from the query."""
    return {
        "type": "image_generation_call",
        "id": new_id("ig"),
        "status": "completed",
        "result": _png(query),
        "revised_prompt": f"{MARK} {query}",
        "output_format": "png",
        "size": "16x16",
    }


def approved_calls(
    tools: Iterable[Any], context: Sequence[Item], new_id: Callable[[str], str]
) -> list[dict[str, Any]]:
    """The ``mcp_call`` items owed for approvals in ``context``: each approved
    ``mcp_approval_response`` whose request has no call yet."""
    requests = {
        str(item.data.get("id")): item.data
        for item in context
        if isinstance(item, UnknownItem) and item.type == "mcp_approval_request"
    }
    made = {
        item.data.get("approval_request_id")
        for item in context
        if isinstance(item, UnknownItem) and item.type == "mcp_call"
    }
    servers = {
        tool.data.get("server_label"): tool.data
        for tool in tools
        if isinstance(tool, HostedTool) and tool.type == "mcp"
    }
    calls: list[dict[str, Any]] = []
    for item in context:
        if not (isinstance(item, UnknownItem) and item.type == "mcp_approval_response"):
            continue
        request_id = item.data.get("approval_request_id")
        request = requests.get(str(request_id))
        if item.data.get("approve") is not True or request is None or request_id in made:
            continue
        made.add(request_id)
        label = str(request.get("server_label", ""))
        call = _mcp_call(servers.get(label, {}), label, str(request.get("name", "")), new_id)
        call["arguments"] = request.get("arguments", "{}")
        call["approval_request_id"] = request_id
        calls.append(call)
    return calls


def results(recent: Sequence[Item]) -> list[tuple[str, str]]:
    """What the model learnt from the hosted calls in ``recent``, as (tool, text) pairs for
    its answer."""
    found: list[tuple[str, str]] = []
    answered = {
        item.data.get("approval_request_id"): item.data.get("approve")
        for item in recent
        if isinstance(item, UnknownItem) and item.type == "mcp_approval_response"
    }
    for item in recent:
        if not isinstance(item, UnknownItem):
            continue
        data = item.data
        if item.type == "web_search_call":
            action = data.get("action")
            action = action if isinstance(action, dict) else {}
            found.append(
                (
                    "web_search",
                    f"{MARK} no web search was made for {action.get('query', '')!r}",
                )
            )
        elif item.type == "file_search_call":
            texts = [r.get("text", "") for r in data.get("results") or () if isinstance(r, dict)]
            found.append(("file_search", " ".join(texts) or f"{MARK} no files were searched"))
        elif item.type == "code_interpreter_call":
            logs = [o.get("logs", "") for o in data.get("outputs") or () if isinstance(o, dict)]
            found.append(("code_interpreter", "".join(logs).strip()))
        elif item.type == "image_generation_call":
            found.append(("image_generation", f"{MARK} one 16x16 PNG image"))
        elif item.type == "mcp_call":
            name = f"{data.get('server_label', '')}.{data.get('name', '')}"
            output = data.get("output") if data.get("error") is None else data.get("error")
            found.append((name, str(output)))
        elif item.type == "mcp_approval_request" and answered.get(data.get("id")) is False:
            name = f"{data.get('server_label', '')}.{data.get('name', '')}"
            found.append((name, f"the call of {name} was not approved"))
    return found


# -- mcp -----------------------------------------------------------------------------------


def _tool_names(data: dict[str, Any]) -> list[str]:
    allowed = data.get("allowed_tools")
    if isinstance(allowed, dict):
        allowed = allowed.get("tool_names")
    names = [name for name in allowed if isinstance(name, str)] if isinstance(allowed, list) else []
    return names or ["search"]


def _needs_approval(data: dict[str, Any], name: str) -> bool:
    rule = data.get("require_approval", "always")
    if rule == "never":
        return False
    if isinstance(rule, dict):
        never, always = rule.get("never"), rule.get("always")
        if isinstance(never, dict) and name in (never.get("tool_names") or ()):
            return False
        if isinstance(always, dict) and name in (always.get("tool_names") or ()):
            return True
        return not isinstance(never, dict) or isinstance(always, dict)
    return True


def _mcp(
    data: dict[str, Any], query: str, context: Sequence[Item], new_id: Callable[[str], str]
) -> list[dict[str, Any]]:
    label = str(data.get("server_label", ""))
    names = _tool_names(data)
    items: list[dict[str, Any]] = []
    listed = any(
        isinstance(item, UnknownItem)
        and item.type == "mcp_list_tools"
        and item.data.get("server_label") == label
        for item in context
    )
    if not listed:
        items.append(
            {
                "type": "mcp_list_tools",
                "id": new_id("mcpl"),
                "server_label": label,
                "tools": [
                    {
                        "name": name,
                        "description": f"{MARK} a tool of {label!r}; the embedded server "
                        f"does not contact {_host(data)}",
                        "input_schema": {
                            "type": "object",
                            "properties": {"query": {"type": "string"}},
                        },
                        "annotations": None,
                    }
                    for name in names
                ],
            }
        )
    name = names[0]
    arguments = json.dumps({"query": query}, ensure_ascii=False)
    if _needs_approval(data, name):
        items.append(
            {
                "type": "mcp_approval_request",
                "id": new_id("mcpr"),
                "server_label": label,
                "name": name,
                "arguments": arguments,
            }
        )
    else:
        call = _mcp_call(data, label, name, new_id)
        call["arguments"] = arguments
        items.append(call)
    return items


def _mcp_call(
    data: dict[str, Any], label: str, name: str, new_id: Callable[[str], str]
) -> dict[str, Any]:
    return {
        "type": "mcp_call",
        "id": new_id("mcp"),
        "server_label": label,
        "name": name,
        "arguments": "{}",
        "output": f"{MARK} {label}.{name} was not called: the embedded server does not "
        f"contact {_host(data)}",
        "error": None,
        "status": "completed",
    }


def _host(data: dict[str, Any]) -> str:
    url = data.get("server_url")
    if isinstance(url, str):
        return urlsplit(url).hostname or "the server"
    connector = data.get("connector_id")
    return f"connector {connector}" if isinstance(connector, str) else "the server"


# -- code_interpreter ----------------------------------------------------------------------

_EXPRESSION: Final = re.compile(r"[-+(]*\d[\d.\s()+\-*/%]*[*/+\-%][\d.\s()+\-*/%]*\d\)*")
_OPERATORS: Final[dict[type, Callable[[Any, Any], Any]]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


def _code_for(query: str) -> tuple[str, str]:
    """``print(EXPR)`` and its output for the first arithmetic expression of ``query``."""
    for match in _EXPRESSION.finditer(query):
        expression = match.group(0).strip()
        try:
            value = _evaluate(ast.parse(expression, mode="eval").body, 0)
        except (SyntaxError, ValueError, ArithmeticError, TypeError, RecursionError):
            continue
        return f"print({expression})", f"{value}\n"
    note = f"{MARK} no code was run"
    return f"print({note!r})", note + "\n"


def _evaluate(node: ast.AST, depth: int) -> float | int:
    if depth > 50:
        raise ValueError("too deep")
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        if isinstance(node.value, bool):
            raise ValueError("not a number")
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _evaluate(node.operand, depth + 1)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left, depth + 1), _evaluate(node.right, depth + 1)
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 10**6):
            raise ValueError("too large")
        return _OPERATORS[type(node.op)](left, right)  # type: ignore[no-any-return]
    raise ValueError("not arithmetic")


# -- image_generation ----------------------------------------------------------------------


def _png(prompt: str, size: int = 16) -> str:
    """A ``size`` x ``size`` PNG of one colour drawn from ``prompt``, base64-encoded."""
    red, green, blue = hashlib.sha256(prompt.encode()).digest()[:3]
    row = b"\x00" + bytes((red, green, blue)) * size
    pixels = zlib.compress(row * size)

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
    return base64.b64encode(png + chunk(b"IEND", b"")).decode()


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]
