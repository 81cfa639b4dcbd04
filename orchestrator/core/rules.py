"""Rules more than one layer needs, in one place: they must never disagree.

A leaf module: it imports nothing of ours, so ``plans`` (which imports only the leaves),
the runtime core, the actors and the command line all take their rules from here:

* the **side-effect classes** of tools, which of them need an approval, which may run again
  when a call is in doubt;
* **import paths** (``package.module:attribute``): their syntax, and how one is resolved,
  with a suggestion when it does not resolve;
* when a run is **offline** (no key at hand);
* what a **loopback** host is;
* the **transports** a connection may use;
* how a **Retry-After** value is read;
* the **JSON a tool error** becomes in a ``function_call_output``.
"""

from __future__ import annotations

import difflib
import importlib
import ipaddress
import json
import math
import os
import pkgutil
import re
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = [
    "IMPORT_PATH",
    "MAX_RETRY_AFTER",
    "NEEDS_APPROVAL",
    "RERUNNABLE",
    "SIDE_EFFECTS",
    "ImportPathError",
    "SideEffect",
    "Transport",
    "is_loopback",
    "is_offline",
    "resolve_import",
    "retry_after_seconds",
    "tool_error",
]

Transport = Literal["websocket", "http", "auto"]
"""How a connection reaches ``/responses``: WebSocket mode, HTTP with server-sent events,
or ``auto`` (WebSocket, going on over HTTP when the endpoint has no WebSocket mode)."""
TRANSPORTS: Final = get_args(Transport)

# -- side effects ----------------------------------------------------------------------------------

SideEffect = Literal["read_only", "idempotent_write", "non_idempotent", "destructive", "external"]
SIDE_EFFECTS: Final[tuple[str, ...]] = (
    "read_only",
    "idempotent_write",
    "non_idempotent",
    "destructive",
    "external",
)
# Calls of these run only once an approver said yes.
NEEDS_APPROVAL: Final = frozenset({"destructive", "external"})
# Calls of these may simply run again (with the same idempotency key) when they are in
# doubt: started, with no recorded result, after a crash.
RERUNNABLE: Final = frozenset({"read_only", "idempotent_write"})

# -- import paths ------------------------------------------------------------------------------

_NAME: Final = r"[A-Za-z_][A-Za-z0-9_]*"
IMPORT_PATH: Final = re.compile(rf"{_NAME}(?:\.{_NAME})*:{_NAME}(?:\.{_NAME})*")


class ImportPathError(Exception):
    """``path`` does not name an object: ``message`` says why, ``suggestion`` what may have
    been meant (or ``None``). Callers turn it into their own error (a plan issue, a
    ``ToolDefinitionError``...)."""

    def __init__(self, message: str, suggestion: str | None = None) -> None:
        self.message = message
        self.suggestion = suggestion
        super().__init__(message)


def resolve_import(
    path: str, *, candidate: Callable[[object], bool] = callable, what: str = "callable"
) -> Any:
    """The object ``package.module:attribute`` names (dotted attributes allowed).

    Args:
        candidate: which of the module's names to suggest when the attribute is missing.
        what: how to describe a valid target in messages.

    Raises:
        ImportPathError: bad syntax, the module cannot be imported (its import raised, or it
            does not exist: the closest module is suggested), or the attribute is missing
            (the closest name is suggested).
    """
    if not IMPORT_PATH.fullmatch(path):
        raise ImportPathError(
            f"{path[:200]!r} is not an import path", "expected 'package.module:function'"
        )
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise ImportPathError(
                f"{path!r} not found: no module named {exc.name!r}",
                _module_suggestion(exc.name, attribute),
            ) from None
        raise ImportPathError(_failure(path, exc)) from None
    except (Exception, SystemExit) as exc:  # importing runs arbitrary code
        raise ImportPathError(_failure(path, exc)) from None
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            names = [
                f"{module_name}:{name}"
                for name, value in vars(module).items()
                if not name.startswith("_") and candidate(value)
            ]
            raise ImportPathError(f"{path!r} not found", did_you_mean(path, names)) from None
    return target


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """``did you mean 'x'?`` for the closest candidate, if one is close enough."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"did you mean {matches[0]!r}?" if matches else None


def _failure(path: str, exc: BaseException) -> str:
    detail = str(exc)
    if len(detail) > 200:
        detail = detail[:200] + "..."
    return f"{path!r} could not be imported: {type(exc).__name__}: {detail}"


def _module_suggestion(missing: str, attribute: str) -> str | None:
    parent, _, leaf = missing.rpartition(".")
    try:
        if parent:
            search_path = getattr(importlib.import_module(parent), "__path__", None)
            if search_path is None:
                return None
            names = [info.name for info in pkgutil.iter_modules(search_path)]
        else:
            names = [info.name for info in pkgutil.iter_modules()]
    except (Exception, SystemExit):
        return None
    matches = difflib.get_close_matches(leaf, names, n=1, cutoff=0.6)
    if not matches:
        return None
    module = f"{parent}.{matches[0]}" if parent else matches[0]
    return f"did you mean {module + ':' + attribute!r}?"


# -- endpoints -------------------------------------------------------------------------------------

KEY_VARIABLE: Final = "OPENAI_API_KEY"


def is_offline(api_key: object | None, offline: bool | None = None) -> bool:
    """Whether a run uses the embedded server: as asked, else exactly when no key is at
    hand (neither given nor in ``OPENAI_API_KEY``)."""
    if offline is not None:
        return offline
    return api_key is None and not os.environ.get(KEY_VARIABLE)


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (``127.0.0.0/8``, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# A Retry-After longer than this is taken as this: a server cannot park a client for hours.
MAX_RETRY_AFTER: Final = 300.0


def retry_after_seconds(value: str | float | None) -> float | None:
    """A ``Retry-After`` (or ``retry_after``) value in seconds, capped at
    :data:`MAX_RETRY_AFTER`; ``None`` when absent or not a finite non-negative number (an
    HTTP date is not understood either): the caller's own backoff applies."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    # float() also parses "inf", "nan" and "1e999": garbage, not an instruction to wait.
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER)


# -- tool errors -------------------------------------------------------------------------------

_MAX_MESSAGE: Final = 500


def tool_error(code: str, tool: str, message: str, **extra: object) -> str:
    """The ``function_call_output`` of a call that did not produce a result:
    ``{"error": CODE, "tool": NAME, "message": TEXT, ...}``, the message cut to what a
    model needs to repair its call."""
    payload = {"error": code, "tool": tool[:64], "message": message[:_MAX_MESSAGE], **extra}
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str)
